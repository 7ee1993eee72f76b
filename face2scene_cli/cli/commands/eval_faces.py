"""``f2s eval-faces``: Stage I on real photos, blind vs reference-guided face restoration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from face2scene_cli.cli.runner import cli_errors, research_logging


@cli_errors
def eval_faces(
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json",
            dir_okay=False,
            help="Also write the rows and tables here.",
            show_default=False,
        ),
    ] = None,
    size: Annotated[int, typer.Option("--size", min=64, help="Aligned face size (px).")] = 512,
    ablation: Annotated[
        bool,
        typer.Option("--ablation", help="Also run ref-guided without its identity gate."),
    ] = False,
) -> None:
    """Measure blind vs reference-guided face restoration on the shipped people photos.

    Every face, under the f2s degrade presets and one second-order sample, restored blind,
    with references made from its own clean photo (optimistic: there are no second photos
    of these people offline) and with every other person's (a control). Face PSNR and dlib
    identity distance against the clean face; one Markdown table per restorer on stdout.
    About 30 min on 2 busy CPU cores with --ablation (one torch thread).
    """
    import torch

    from face2scene_cli.research.eval.faces import format_table, run

    research_logging()
    torch.set_num_threads(1)
    result = run(size, ablation)
    for key, table in result["tables"].items():
        typer.echo(format_table(table, key) + "\n")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
