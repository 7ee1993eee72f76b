"""``f2s models list|verify|fetch|analyze``: the model zoo, its integrity, its scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from face2scene_cli.cli.options import Json
from face2scene_cli.cli.runner import cli_errors, research_logging
from face2scene_cli.errors import ConfigError, ExitCode
from face2scene_cli.external import fetch_insightface_pack
from face2scene_cli.zoo import ModelInfo, list_models, models_dir, require_model, verify_model

app = typer.Typer(
    help="List, verify and analyze the shipped models.",
    no_args_is_help=True,
    rich_markup_mode="rich",
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


SCENE = "Scene model"


def _resolve(name: str) -> ModelInfo:
    """The verified model NAME: a model folder when NAME is a directory (a training run's
    export), else a zoo model."""
    folder = Path(name)
    if folder.is_dir():
        if not (folder / "metadata.json").is_file():
            raise ConfigError(
                f"{folder}: no metadata.json; analyze reads a model folder (a zoo model or a "
                "training run's export), not a checkpoint"
            )
        return require_model(folder.name, folder.parent)
    return require_model(name)


@app.command("analyze")
@cli_errors
def analyze(
    name: Annotated[
        str,
        typer.Argument(help="A zoo model (FaDeX or scene) or a model folder (a run's export)."),
    ] = "fadex-s",
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            exists=True,
            dir_okay=False,
            help="FaDeX: training YAML whose val section and split define the held-out set.",
        ),
    ] = Path("configs/fadex.yaml"),
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            file_okay=False,
            help="Where table.json (and FaDeX's fig3.png) go. "
            "[default: fadex-analysis, or runs/eval-scene for a scene model]",
            show_default=False,
        ),
    ] = None,
    json_output: Json = False,
    card: Annotated[
        bool,
        typer.Option("--card", rich_help_panel=SCENE, help="Write the model card (README.md) too."),
    ] = False,
    speed: Annotated[
        bool,
        typer.Option(
            "--speed", rich_help_panel=SCENE, help="Only time the restorer on a real photo."
        ),
    ] = False,
    photo: Annotated[
        str, typer.Option("--photo", rich_help_panel=SCENE, help="--speed: the sample photo.")
    ] = "mate/storm",
    megapixels: Annotated[
        float,
        typer.Option(
            "--megapixels",
            min=0.0,
            rich_help_panel=SCENE,
            help="--speed: resize the photo to this many megapixels first (0 = keep).",
        ),
    ] = 0.0,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, rich_help_panel=SCENE, help="--speed: runs timed.")
    ] = 3,
    splits: Annotated[
        Path,
        typer.Option(
            "--splits",
            dir_okay=False,
            rich_help_panel=SCENE,
            help="The split manifest whose VAL photos are evaluated.",
        ),
    ] = Path("data/splits.yaml"),
    long_side: Annotated[
        int | None,
        typer.Option(
            "--long-side",
            min=0,
            rich_help_panel=SCENE,
            help="Area-downscale the VAL photos to this long side (0 = keep). [default: 512]",
            show_default=False,
        ),
    ] = None,
    oracle_cache: Annotated[
        Path,
        typer.Option(
            "--oracle-cache",
            dir_okay=False,
            rich_help_panel=SCENE,
            help="NLM / unsharp-mask grid scores kept between runs (keyed by the images' content).",
        ),
    ] = Path("runs/eval-oracle-cache.json"),
    threads: Annotated[
        int, typer.Option("--threads", min=1, rich_help_panel=SCENE, help="torch/OpenCV threads.")
    ] = 2,
) -> None:
    """Score a model on held-out photos: FaDeX's Fig. 3 check, or a scene model's card.

    What runs follows the model's task (its metadata).

    FaDeX, the paper's Fig. 3 (do codes capture degradation, not content?): the held-out
    photos of the split under 8 clearly different operators, restored blind; mean cosine of
    the codes for the same degradation on different images (target >= 0.85) and mean
    |cosine| for the same image under different degradations (target <= 0.15), plus the
    estimate errors per degradation type. Writes fig3.png and table.json to --out.

    A scene model, the model card's evaluation: the VAL photos under the f2s eval
    degradations, every variant scored, the targets and the tile check. The Markdown table
    goes to stdout, table.json to --out, the card (README.md) to the model folder with --card.
    """
    from face2scene_cli.research.train.fadex_export import FADEX_TASK
    from face2scene_cli.research.train.scene_export import SCENE_TASK

    info = _resolve(name)
    if info.task == FADEX_TASK:
        given = [flag for flag, on in (("--card", card), ("--speed", speed)) if on]
        if given:
            raise ConfigError(f"{' and '.join(given)}: for a scene model; {name} is a FaDeX")
        _analyze_fadex(info, config, out or Path("fadex-analysis"), json_output)
        return
    if info.task != SCENE_TASK:
        raise ConfigError(
            f"{name}: task {info.task!r}; analyze knows FaDeX ({FADEX_TASK!r}) and scene "
            f"models ({SCENE_TASK!r})"
        )
    import cv2
    import torch

    from face2scene_cli.io.images import atomic_write_bytes
    from face2scene_cli.research.eval import scene_card
    from face2scene_cli.restorers.scene import load_scene_restorer

    research_logging()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    if speed:
        restorer = load_scene_restorer(info.folder.name, root=info.folder.parent)
        typer.echo(json.dumps(scene_card.speed_check(restorer, photo, megapixels, repeats)))
        return
    doc, markdown = scene_card.card_evaluation(str(info.folder), splits, long_side, oracle_cache)
    out = out or Path("runs/eval-scene")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "table.json", (json.dumps(doc, indent=1) + "\n").encode())
    if card:
        from face2scene_cli.research.eval.tables import write_card

        write_card(info.folder, markdown)
    typer.echo(json.dumps(doc, indent=2) if json_output else markdown, nl=json_output)


def _analyze_fadex(info: ModelInfo, config: Path, out: Path, json_output: bool) -> None:
    """Fig. 3, the estimate errors and the range check (issue 15's levels) of the FaDeX
    ``info`` on the held-out crops of ``config``'s split: fig3.png and table.json to ``out``,
    the summary and which ranges are read within tolerance (or the table) on stdout."""
    from face2scene_cli.research.splits import load_splits
    from face2scene_cli.research.train.fadex_config import load_train_config
    from face2scene_cli.research.train.fadex_eval import (
        build_val_set,
        evaluate_fadex,
        evaluate_ranges,
        plot_fig3,
    )
    from face2scene_cli.restorers.loading import load_fadex

    cfg = load_train_config(config)
    model = load_fadex(info.folder.name, info.folder.parent)
    photos = load_splits(Path(cfg.data.splits))["val"]
    table = evaluate_fadex(model, build_val_set(cfg, photos))
    table = {k: v for k, v in table.items() if k != "crop_sources"}
    table["ranges"] = evaluate_ranges(model, cfg, photos)
    out.mkdir(parents=True, exist_ok=True)
    plot_fig3(table, out / "fig3.png")
    (out / "table.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    if json_output:
        typer.echo(json.dumps(table, indent=2))
        return
    summary = {**table.get("summary", {}), "ranges_met": table["ranges"]["met"]}
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"plot: {out / 'fig3.png'}  table: {out / 'table.json'}")
