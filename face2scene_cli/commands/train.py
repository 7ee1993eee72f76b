"""``f2s train fadex``: train FaDeX from a YAML config (see ``configs/fadex.yaml``)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from face2scene_cli.commands.options import Resume, TrainingConfig
from face2scene_cli.commands.runner import cli_errors

app = typer.Typer(help="Train f2s networks from YAML configs.", no_args_is_help=True)

RUN = "Run"


@app.callback()
def main() -> None:
    """Train f2s networks from YAML configs (BasicSR-style sections)."""


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


@app.command("fadex")
@cli_errors
def train_fadex(
    config: TrainingConfig = Path("configs/fadex.yaml"),
    resume: Resume = False,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", min=1, rich_help_panel=RUN, help="Override train.steps.", show_default=False
        ),
    ] = None,
    device: Annotated[
        Device | None,
        typer.Option(
            "--device", rich_help_panel=RUN, help="Override train.device.", show_default=False
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir", rich_help_panel=RUN, help="Override logging.run_dir.", show_default=False
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            exists=True,
            dir_okay=False,
            rich_help_panel=RUN,
            help="Warm-start weights (a checkpoint's model.safetensors).",
            show_default=False,
        ),
    ] = None,
    wall_limit: Annotated[
        float | None,
        typer.Option(
            "--wall-limit",
            min=1,
            rich_help_panel=RUN,
            help="Stop after this many minutes (the LR schedule follows the limit).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train FaDeX (SupCon + regression) on crops of the training photos; best-validation
    weights go to RUN_DIR/best, the table to RUN_DIR/best/val_table.json."""
    from face2scene_cli.train.fadex import load_train_config
    from face2scene_cli.train.fadex import train_fadex as run

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
