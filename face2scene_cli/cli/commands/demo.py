"""``f2s demo``: degrade, read and restore sample photos that ship inside packages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", file_okay=False, help="Where the demo writes.")
    ] = Path("demo_out"),
) -> None:
    """Run f2s on sample photos as a user would and print PSNR/SSIM before and after.

    Makes degraded copies of real photos (f2s degrade), reads their degradation off the faces
    (f2s degrade-code), restores them (f2s restore --refs, references made from the clean
    photos themselves: an optimistic setting that shows the plumbing) and reruns to show
    resume. Exit code 1 when an output is worse than its degraded input.
    """
    from face2scene_cli.research.demo import run_demo

    raise typer.Exit(run_demo(out))
