"""``f2s train scene``: train the Stage II scene restorer + MapNet (FaDeX frozen)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from face2scene_cli.cli import options as o
from face2scene_cli.cli.runner import cli_errors


class Condition(str, Enum):
    blind = "blind"
    code = "code"


@cli_errors
def train_scene(
    config: o.TrainingConfig = Path("configs/scene.yaml"),
    resume: o.Resume = False,
    condition: Annotated[
        Condition | None,
        typer.Option(
            "--condition",
            rich_help_panel=o.TRAIN_RUN,
            show_default=False,
            help="Override train.condition (blind: null tokens; code: FaDeX codes).",
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            rich_help_panel=o.TRAIN_RUN,
            show_default=False,
            file_okay=False,
            help="Warm-start from a run's checkpoint folder (e.g. the blind phase).",
        ),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes",
            min=0.1,
            rich_help_panel=o.TRAIN_RUN,
            show_default=False,
            help="Override train.max_minutes (wall clock, cache building included).",
        ),
    ] = None,
    device: o.TrainingDevice = None,
    run_dir: o.RunDir = None,
) -> None:
    """Train MapNet + the scene network on degraded crops of the training photos; the best
    validation weights are exported to logging.export_to (a model folder with metadata and
    card). Touch RUN_DIR/STOP to end a run cleanly."""
    from face2scene_cli.research.train.scene import load_scene_config
    from face2scene_cli.research.train.scene import train_scene as run

    train: dict[str, object] = {}
    if condition is not None:
        train["condition"] = condition.value
    if init_from is not None:
        train["init_from"] = str(init_from)
    if minutes is not None:
        train["max_minutes"] = minutes
    if device is not None:
        train["device"] = device.value
    overrides: dict[str, dict[str, object]] = {"train": train}
    if run_dir is not None:
        overrides["logging"] = {"run_dir": str(run_dir)}
    result = run(load_scene_config(config, **overrides), resume=resume)
    typer.echo(json.dumps(result, indent=2))
