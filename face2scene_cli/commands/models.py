"""``f2s models list|verify``: the model zoo and its integrity."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from face2scene_cli.commands.options import Json
from face2scene_cli.commands.runner import cli_errors
from face2scene_cli.errors import ConfigError, ExitCode
from face2scene_cli.external import fetch_insightface_pack
from face2scene_cli.zoo import ModelInfo, list_models, models_dir, verify_model

app = typer.Typer(
    help="List and verify the shipped models.", no_args_is_help=True, rich_markup_mode="rich"
)
stdout = Console(highlight=False)


def _entry(model: ModelInfo, problems: list[str] | None) -> dict:
    entry = {
        "name": model.name,
        "version": model.version,
        "task": model.task,
        "licence": model.licence,
        "source": model.source,
        "sha256": model.sha256,
        "files": [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes} for f in model.files],
        "input": model.input,
        "trained_with": model.trained_with,
    }
    if problems is not None:
        entry["verified"] = not problems
        entry["problems"] = problems
    return entry


@app.command("list")
@cli_errors
def list_(json_output: Json = False) -> None:
    """List the models in the zoo with their task, licence and source."""
    _show(verify=False, json_output=json_output)


@app.command("verify")
@cli_errors
def verify(json_output: Json = False) -> None:
    """Check every model's files against the sha256 pins in its metadata (exit 6 on mismatch)."""
    _show(verify=True, json_output=json_output)


def _show(verify: bool, json_output: bool) -> None:
    entries, broken = [], False
    for model in list_models():
        if isinstance(model, ModelInfo):
            problems = verify_model(model) if verify else None
            broken |= bool(problems)
            entries.append(_entry(model, problems))
        else:
            broken = True
            entries.append({"name": None, "verified": False, "problems": [str(model)]})
    if json_output:
        typer.echo(json.dumps({"models_dir": str(models_dir()), "models": entries}, indent=2))
    else:
        table = Table(
            "model",
            "version",
            "task",
            "licence",
            "source",
            *(["verified"] if verify else []),
            title=f"Models in {models_dir()}",
        )
        for e in entries:
            row = [
                e.get("name") or "?",
                e.get("version", "-"),
                e.get("task", "-"),
                e.get("licence", "-"),
                e.get("source", "-"),
            ]
            if verify:
                row.append("yes" if e["verified"] else "NO: " + "; ".join(e["problems"]))
            table.add_row(*row)
        if not entries:
            table.add_row("(none shipped in this version)", *[""] * (4 + verify))
        stdout.print(table)
    if verify and broken:
        raise typer.Exit(ExitCode.MODEL_INTEGRITY)


@app.command("fetch")
@cli_errors
def fetch(
    pack: Annotated[str, typer.Argument(help="Pack to download: insightface (buffalo_l).")],
) -> None:
    """Download a third-party model pack (needs internet; f2s never downloads implicitly)."""
    if pack != "insightface":
        raise ConfigError(f"unknown pack {pack!r}; available: insightface")
    folder = fetch_insightface_pack()
    typer.echo(f"insightface pack ready in {folder}")
