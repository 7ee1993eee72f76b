"""``f2s models list|verify``: the model zoo and its integrity."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from face2scene_cli.cli.options import Json
from face2scene_cli.cli.runner import cli_errors
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
    """Check every model's files against the sha256 pins in its metadata (exit 6 on a
    mismatch, an unpinned file, or a missing or empty zoo)."""
    _show(verify=True, json_output=json_output)


def _zoo_problems(root: Path, found: list) -> list[str]:
    """What is wrong with the zoo as a whole: missing, or without a model."""
    if not root.is_dir():
        return [f"no model zoo at {root} (F2S_MODELS_DIR or the installed package's models)"]
    if not found:
        return [f"the model zoo at {root} holds no model"]
    return []


def _show(verify: bool, json_output: bool) -> None:
    entries: list[dict] = []
    root = models_dir()
    found = list_models(root)
    zoo_problems = _zoo_problems(root, found) if verify else []
    broken = bool(zoo_problems)
    for model in found:
        if isinstance(model, ModelInfo):
            problems = verify_model(model) if verify else None
            broken |= bool(problems)
            entries.append(_entry(model, problems))
        else:
            broken = True
            entries.append({"name": None, "verified": False, "problems": [str(model)]})
    if json_output:
        doc: dict = {"models_dir": str(root), "models": entries}
        if verify:
            doc["problems"] = zoo_problems
        typer.echo(json.dumps(doc, indent=2))
    else:
        table = Table(
            "model",
            "version",
            "task",
            "licence",
            "source",
            *(["verified"] if verify else []),
            title=f"Models in {root}",
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
            empty = "(none shipped in this version)" if root.is_dir() else "(no such folder)"
            table.add_row(empty, *[""] * (4 + verify))
        stdout.print(table)
    for problem in zoo_problems:
        print(f"f2s: error: {problem}", file=sys.stderr, flush=True)
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


@app.command("analyze")
@cli_errors
def analyze(
    name: Annotated[str, typer.Argument(help="A FaDeX model of the zoo.")] = "fadex-s",
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            exists=True,
            dir_okay=False,
            help="Training YAML whose val section and split define the held-out set.",
        ),
    ] = Path("configs/fadex.yaml"),
    out: Annotated[
        Path, typer.Option("--out", "-o", file_okay=False, help="Where the table and plot go.")
    ] = Path("fadex-analysis"),
    json_output: Json = False,
) -> None:
    """The paper's Fig. 3 on held-out crops: do codes capture degradation, not content?

    Degrades the held-out photos of the split with 8 clearly different operators, restores
    the crops with the blind restorer and compares FaDeX's codes: mean cosine for the same
    degradation on different images (target >= 0.85) and mean |cosine| for the same image
    under different degradations (target <= 0.15), plus estimate errors per degradation type.
    Writes fig3.png and table.json to --out.
    """
    from face2scene_cli.research.train.data import load_splits
    from face2scene_cli.research.train.fadex import (
        build_val_set,
        evaluate_fadex,
        load_train_config,
        plot_fig3,
    )
    from face2scene_cli.restorers.loading import load_fadex

    cfg = load_train_config(config)
    table = evaluate_fadex(
        load_fadex(name), build_val_set(cfg, load_splits(Path(cfg.data.splits))["val"])
    )
    table = {k: v for k, v in table.items() if k != "crop_sources"}
    out.mkdir(parents=True, exist_ok=True)
    plot_fig3(table, out / "fig3.png")
    (out / "table.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    if json_output:
        typer.echo(json.dumps(table, indent=2))
        return
    typer.echo(json.dumps(table.get("summary", table), indent=2))
    typer.echo(f"plot: {out / 'fig3.png'}  table: {out / 'table.json'}")
