"""``f2s train scene``: train the Stage II scene restorer + MapNet (FaDeX frozen)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from face2scene_cli.cli import options as o
from face2scene_cli.cli.runner import cli_errors, diag, research_logging


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
    wall_limit: o.WallLimit = None,
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", min=0.1, hidden=True, help="Deprecated: --wall-limit."),
    ] = None,
    device: o.TrainingDevice = None,
    run_dir: o.RunDir = None,
    sets: o.Set = None,
) -> None:
    """Train MapNet + the scene network on degraded crops of the training photos; the best
    validation weights are exported to logging.export_to (a model folder with metadata and
    card). --wall-limit sets train.max_minutes (cache building included). Touch RUN_DIR/STOP
    to end a run cleanly."""
    from face2scene_cli.research.train.scene import train_scene as run
    from face2scene_cli.research.train.scene_config import load_scene_config

    if minutes is not None:
        diag("warning", "--minutes is deprecated for train scene: use --wall-limit")
        wall_limit = minutes if wall_limit is None else wall_limit
    flags = {
        "train.condition": condition.value if condition else None,
        "train.init_from": str(init_from) if init_from else None,
        "train.max_minutes": wall_limit,
        "train.device": device.value if device else None,
        "logging.run_dir": str(run_dir) if run_dir else None,
    }
    cfg = load_scene_config(config, o.parse_set(sets, flags))
    research_logging()
    typer.echo(json.dumps(run(cfg, resume=resume), indent=2))
