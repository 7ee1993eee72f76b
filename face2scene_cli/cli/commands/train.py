"""``f2s train fadex|fadex-heads|scene``: train f2s networks from YAML configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from face2scene_cli.cli import options as o
from face2scene_cli.cli.commands.train_scene import train_scene
from face2scene_cli.cli.runner import cli_errors, research_logging

app = typer.Typer(help="Train f2s networks from YAML configs.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Train f2s networks from YAML configs (BasicSR-style sections)."""


@app.command("fadex")
@cli_errors
def train_fadex(
    config: o.TrainingConfig = Path("configs/fadex.yaml"),
    resume: o.Resume = False,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            rich_help_panel=o.TRAIN_RUN,
            help="Override train.steps.",
            show_default=False,
        ),
    ] = None,
    device: o.TrainingDevice = None,
    run_dir: o.RunDir = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            exists=True,
            dir_okay=False,
            rich_help_panel=o.TRAIN_RUN,
            help="Warm-start weights (a checkpoint's model.safetensors).",
            show_default=False,
        ),
    ] = None,
    wall_limit: o.WallLimit = None,
    sets: o.Set = None,
) -> None:
    """Train FaDeX (SupCon + regression) on crops of the training photos; best-validation
    weights go to RUN_DIR/best, the table to RUN_DIR/best/val_table.json."""
    from face2scene_cli.research.train.fadex import train_fadex as run
    from face2scene_cli.research.train.fadex_config import load_train_config

    flags = {
        "train.steps": steps,
        "train.device": device.value if device else None,
        "logging.run_dir": str(run_dir) if run_dir else None,
        "network.init_from": str(init_from) if init_from else None,
    }
    cfg = load_train_config(config, o.parse_set(sets, flags))
    research_logging()
    result = run(cfg, resume=resume, wall_limit_s=None if wall_limit is None else wall_limit * 60)
    summary = (result.best_table or {}).get("summary", {})
    typer.echo(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "steps": result.steps,
                "wall_s": round(result.wall_s, 1),
                "best_step": result.best_step,
                "best_score": result.best_score,
                "val": summary,
            },
            indent=2,
        )
    )


@app.command("fadex-heads")
@cli_errors
def train_fadex_heads(
    config: o.TrainingConfig = Path("configs/fadex.yaml"),
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            exists=True,
            file_okay=False,
            help="FaDeX model folder whose encoder is kept (Z unchanged).",
        ),
    ] = Path("models/fadex-s"),
    run_dir: Annotated[
        Path, typer.Option("--run-dir", rich_help_panel=o.TRAIN_RUN, help="Run folder.")
    ] = Path("runs/fadex-heads"),
    groups: Annotated[
        int | None,
        typer.Option("--groups", min=20, help="Operator groups to make [default: 2000]."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, rich_help_panel=o.TRAIN_RUN, help="[default: 12000]"),
    ] = None,
    orth_weight: Annotated[
        float | None,
        typer.Option("--orth-weight", min=0.0, help="Squared-cosine weight [default: 3]."),
    ] = None,
    align_weight: Annotated[
        float | None,
        typer.Option("--align-weight", min=0.0, help="(1 - cos)^2 weight [default: 2]."),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            rich_help_panel=o.TRAIN_RUN,
            metavar="KEY=VALUE",
            help="Override one heads setting with a YAML value (repeatable), e.g. --set "
            "views=4; the named flags win over it.",
            show_default=False,
        ),
    ] = None,
    threads: o.ComputeThreads = 1,
) -> None:
    """Retrain FaDeX's code and regression heads on its frozen encoder (cached descriptors);
    the weights go to RUN_DIR/heads-<time>, with their table on crops of TRAINING photos."""
    from face2scene_cli.research.train.data import config_section
    from face2scene_cli.research.train.fadex_heads import HeadsConfig, run_heads

    flags = {"groups": groups, "steps": steps, "orth_weight": orth_weight}
    flags["align_weight"] = align_weight
    hc = config_section(HeadsConfig, o.parse_set(sets, flags), "the heads settings")
    research_logging()
    typer.echo(json.dumps(run_heads(config, source, run_dir, hc, threads), indent=2))


app.command("scene")(train_scene)
