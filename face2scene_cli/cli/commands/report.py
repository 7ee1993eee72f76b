"""``f2s report merge``: one run summary from the per-shard summaries of an array job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from face2scene_cli.cli.runner import cli_errors
from face2scene_cli.engine.report import (
    SCHEMA_VERSION,
    SHARD_SUMMARY_GLOB,
    SUMMARY_NAME,
    display_path,
    merge_summaries,
)
from face2scene_cli.errors import ConfigError

app = typer.Typer(
    help="Work with run reports and summaries.", no_args_is_help=True, rich_markup_mode="rich"
)


@app.command("merge")
@cli_errors
def merge(
    folders: Annotated[
        list[Path],
        typer.Argument(
            help="Output folders (or summary files) holding the shards' summaries.",
            exists=True,
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the merged summary. [default: DIR/f2s-summary.json]",
        ),
    ] = None,
) -> None:
    """Merge the per-shard summaries (f2s-summary.shard-I-of-N.json) into one summary.

    Every shard of the split must be there, once, with the same command and settings.

    [bold]Example[/bold]: f2s report merge ./photos_f2s
    """
    from face2scene_cli.io.images import atomic_write_bytes

    paths = [p for folder in folders for p in _summary_files(folder)]
    if not paths:
        raise ConfigError(f"no {SHARD_SUMMARY_GLOB} in {', '.join(map(display_path, folders))}")
    merged = merge_summaries([_read(p) for p in paths])
    target = output or (folders[0] if folders[0].is_dir() else folders[0].parent) / SUMMARY_NAME
    atomic_write_bytes(target, merged.to_json().encode())
    c = merged.counts
    typer.echo(
        f"merged {len(paths)} summaries: {c['done']} done, {c['skipped']} skipped, "
        f"{c['failed']} failed, {c['pending']} pending of {c['total']} -> {display_path(target)}"
    )


def _summary_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(path.glob(SHARD_SUMMARY_GLOB))


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read summary {display_path(path)}: {err}") from err
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"{display_path(path)} is not an f2s {SCHEMA_VERSION} summary")
    return data
