"""``f2s data``: the real photos f2s tests, trains and evaluates on (fetch, list, export)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from face2scene_cli.cli.runner import cli_errors, diag
from face2scene_cli.errors import ConfigError

app = typer.Typer(
    help="Fetch, verify, list and export the real photos f2s tests and trains on.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

Dest = Annotated[
    Path | None,
    typer.Option(
        "--dest",
        file_okay=False,
        help="Data folder. [default: $F2S_DATA_DIR, else ~/.cache/face2scene/data]",
        show_default=False,
    ),
]


@app.command("fetch")
@cli_errors
def fetch(
    dest: Dest = None,
    all_tiers: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also the train-only packages (more train/val photos; `make traindata`). "
            "Without it, only the packages the tests need (`make testdata`).",
        ),
    ] = False,
) -> None:
    """Download the pinned Debian packages' photos and verify them by sha256 (idempotent)."""
    from face2scene_cli.research.sample_data import SampleDataError, data_dir, fetch_debian_photos

    start = time.monotonic()
    try:
        photos = fetch_debian_photos(
            dest, progress=lambda msg: typer.echo(msg, err=True), include_train=all_tiers
        )
    except SampleDataError:
        if os.environ.get("CI", "").strip().lower() not in {"1", "true", "yes"}:
            diag("note", "without the Debian photos, tests that need them are skipped")
        raise
    took = time.monotonic() - start
    target = data_dir() if dest is None else dest
    typer.echo(
        f"{len(photos)} Debian photos verified in {target / 'debian'} ({took:.1f} s)", err=True
    )


@app.command("list")
@cli_errors
def list_photos(dest: Dest = None) -> None:
    """List the photos available here: name, source, WxH, size, people."""
    from PIL import Image

    from face2scene_cli.research.sample_data import (
        DEBIAN_PHOTOS,
        check_debian_photos,
        package_photos,
        package_tier,
    )

    report = check_debian_photos(dest, include_train=True)
    rows = []
    for p in package_photos() + report.ok:
        try:
            with Image.open(p.path) as im:
                size = f"{im.width}x{im.height}"
        except OSError:  # a listing must not die on one odd file
            size = "?"
        kib = f"{p.path.stat().st_size / 1024:.0f} KiB"
        rows.append((p.name, p.source, size, kib, "people" if p.people else "-"))
    header = ("name", "source", "WxH", "size", "people")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    tier = {e.name: package_tier(e.package) for e in DEBIAN_PHOTOS}
    missing = [n for n in report.missing if tier.get(n, "test") == "test"]
    corrupt = [n for n in report.corrupt if tier.get(n, "test") == "test"]
    if missing or corrupt:
        diag(
            "warning",
            f"{len(missing)} Debian photos missing, {len(corrupt)} corrupt: run `f2s data fetch`",
        )
    extra = len(report.missing) + len(report.corrupt) - len(missing) - len(corrupt)
    if extra:
        diag(
            "note",
            f"{extra} train-only Debian photos not fetched or corrupt: "
            "run `f2s data fetch --all` (make traindata)",
        )


@app.command("dir")
def show_dir(dest: Dest = None) -> None:
    """Print the data folder."""
    from face2scene_cli.research.sample_data import data_dir

    typer.echo(data_dir() if dest is None else dest)


@app.command("export")
@cli_errors
def export(
    split: Annotated[
        str, typer.Argument(help="train | val | test, as data/splits.yaml assigns them.")
    ],
    folder: Annotated[Path, typer.Argument(file_okay=False, help="Where the photos go.")],
    splits: Annotated[
        Path,
        typer.Option("--splits", exists=True, dir_okay=False, help="The split manifest."),
    ] = Path("data/splits.yaml"),
) -> None:
    """Copy one split's photos into a folder (e.g. for f2s eval FOLDER), verified by sha256."""
    from face2scene_cli.io.images import atomic_write_bytes
    from face2scene_cli.research.splits import load_splits

    photos = load_splits(splits).get(split)
    if photos is None:
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        target = folder / (photo.name.replace("/", "_") + photo.path.suffix.lower())
        atomic_write_bytes(target, photo.path.read_bytes())
    typer.echo(f"{len(photos)} {split} photos in {folder}")
