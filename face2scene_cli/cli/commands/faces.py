"""``f2s faces``: list the faces f2s finds and whose they are (check a gallery before a run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from face2scene_cli.cli import options as o
from face2scene_cli.cli.runner import (
    configure_logging,
    diag,
    load_settings,
    print_config,
    printable,
)
from face2scene_cli.config import FacesConfig
from face2scene_cli.engine.report import display_path
from face2scene_cli.errors import ExitCode, F2SError

stdout = Console(highlight=False)


def faces(
    inputs: o.Inputs,
    refs: o.Refs = None,
    detector: o.Detector = None,
    min_face: o.MinFace = None,
    max_faces: o.MaxFaces = None,
    identity: o.Identity = None,
    refs_k: o.RefsK = None,
    save_crops: Annotated[
        Path | None,
        typer.Option(
            "--save-crops",
            envvar="F2S_SAVE_CROPS",
            rich_help_panel=o.FACES,
            file_okay=False,
            help="Write each aligned face crop here (PNG, mirrors the input tree).",
            show_default=False,
        ),
    ] = None,
    face_size: Annotated[
        int | None,
        typer.Option(
            "--face-size",
            envvar="F2S_FACE_SIZE",
            rich_help_panel=o.FACES,
            min=64,
            help="Aligned crop size (FFHQ 5-point template). [default: 512]",
            show_default=False,
        ),
    ] = None,
    recursive: o.Recursive = None,
    max_pixels: o.MaxPixels = None,
    config: o.ConfigFile = None,
    show_config: o.PrintConfig = False,
    json_output: o.Json = False,
    debug: o.Debug = False,
) -> None:
    """List the faces in photos: box, score, matched person, similarity, chosen references.

    With --refs each face is matched to the best person of the gallery above the identity
    model's published threshold, else "unknown". Use it to check a gallery before a long run.

    [bold]Examples[/bold]: f2s faces group.jpg · f2s faces ./photos --refs ./refs --json ·
    f2s faces img.jpg --save-crops ./crops
    """
    configure_logging(debug)
    (cfg,) = load_settings("faces", config, [FacesConfig], locals())
    if show_config:
        print_config(cfg)
        return
    from face2scene_cli.engine.local import find_images
    from face2scene_cli.faces.align import FaceAligner
    from face2scene_cli.io.images import read_image
    from face2scene_cli.pipelines.reading import FaceFinder

    finder = FaceFinder.from_settings(cfg, FaceAligner(size=cfg.face_size))
    gallery = finder.gallery
    images, _, warnings = find_images(inputs, recursive=cfg.recursive)
    for warning in warnings + [str(w) for w in (gallery.warnings if gallery else [])]:
        diag("warning", warning)
    results: list[dict[str, Any]] = []
    failed = found_any = False
    for image in images:
        entry: dict[str, Any] = {
            "input": display_path(image.path),
            "relative_path": display_path(image.relative),
            "faces": [],
            "error": None,
        }
        try:
            if image.error is not None:
                raise image.error
            pixels = read_image(image.path, max_pixels=cfg.max_pixels).pixels
            found = finder.find(pixels)
            entry["faces"] = [f.to_report() for f in found]
            found_any |= bool(found)
            if cfg.save_crops is not None:
                _save_crops(cfg.save_crops, image.relative, found)
        except F2SError as err:
            failed = True
            entry["error"] = {"type": type(err).__name__, "message": str(err)}
            diag("error", f"{display_path(image.path)}: {err}")
        results.append(entry)
    if json_output:
        payload: dict[str, Any] = {"images": results}
        if gallery is not None:
            payload["gallery"] = gallery.summary()
        typer.echo(json.dumps(payload, indent=2))
    else:
        _print_table(results)
    if failed:
        raise typer.Exit(ExitCode.FAILED_FILES)
    if not found_any:
        diag("error", "no face found in the inputs")
        raise typer.Exit(ExitCode.NO_FACE)


def _save_crops(root: Path, relative: Path, found: list) -> None:
    from face2scene_cli.io.images import Image, atomic_write_bytes, encode_image

    for i, item in enumerate(found):
        if item.aligned is None:
            continue
        target = root / relative.parent / f"{relative.stem}_face{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        crop = Image(pixels=item.aligned.crop, source_format="PNG")
        atomic_write_bytes(target, encode_image(crop, "png"))


def _print_table(results: list[dict[str, Any]]) -> None:
    table = Table("image", "#", "box (x0,y0,x1,y1)", "score", "person", "similarity", "references")
    for entry in results:
        if entry["error"]:
            message = Text(printable(entry["error"]["message"]), style="red")
            table.add_row(Text(printable(entry["input"])), "-", message, "", "", "", "")
            continue
        name = Text(printable(entry["relative_path"]))
        if not entry["faces"]:
            table.add_row(name, "-", "no face", "", "", "", "")
        for i, face in enumerate(entry["faces"]):
            sim = face["similarity"]
            table.add_row(
                name if i == 0 else "",
                str(i),
                ", ".join(f"{v:.0f}" for v in face["box"]),
                f"{face['score']:.2f}",
                Text(printable(face["person"] or "unknown")),
                "-" if sim is None else f"{sim:.3f}",
                Text(printable(", ".join(face["references"]) or "-")),
            )
    stdout.print(table)
