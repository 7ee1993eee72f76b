"""``f2s train fadex``: train FaDeX from a YAML config (see ``configs/fadex.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from face2scene_cli.cli import options as o
from face2scene_cli.cli.commands.train_scene import train_scene
from face2scene_cli.cli.runner import cli_errors

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
    wall_limit: Annotated[
        float | None,
        typer.Option(
            "--wall-limit",
            min=1,
            rich_help_panel=o.TRAIN_RUN,
            help="Stop after this many minutes (the LR schedule follows the limit).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train FaDeX (SupCon + regression) on crops of the training photos; best-validation
    weights go to RUN_DIR/best, the table to RUN_DIR/best/val_table.json."""
    from face2scene_cli.research.train.fadex import load_train_config
    from face2scene_cli.research.train.fadex import train_fadex as run

    cfg = load_train_config(config)
    if steps is not None:
        cfg = cfg.replace("train", steps=steps)
    if device is not None:
        cfg = cfg.replace("train", device=device.value)
    if run_dir is not None:
        cfg = cfg.replace("logging", run_dir=str(run_dir))
    if init_from is not None:
        cfg = cfg.replace("network", init_from=str(init_from))
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
) -> None:
    """Retrain FaDeX's code and regression heads on its frozen encoder (cached descriptors);
    the weights go to RUN_DIR/heads-<time>, with their table on crops of TRAINING photos."""
    from face2scene_cli.research.train.fadex_heads import HeadsConfig, run_heads

    given = {"groups": groups, "steps": steps, "orth_weight": orth_weight}
    given["align_weight"] = align_weight
    hc = HeadsConfig(**{k: v for k, v in given.items() if v is not None})
    typer.echo(json.dumps(run_heads(config, source, run_dir, hc), indent=2))


app.command("scene")(train_scene)
