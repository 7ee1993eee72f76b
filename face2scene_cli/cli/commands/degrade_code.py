"""``f2s degrade-code``: what is wrong with a photo, read off its faces (or scene crops)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from face2scene_cli.cli import options as o
from face2scene_cli.cli.runner import configure_logging, diag, printable
from face2scene_cli.config import DEFAULT_MAX_PIXELS, Shard
from face2scene_cli.degradations.estimate import MOTION_READ_PX
from face2scene_cli.engine.report import display_path
from face2scene_cli.errors import ExitCode, F2SError

if TYPE_CHECKING:
    from face2scene_cli.pipelines.reading import ImageDegradation


def degrade_code(
    inputs: o.Inputs,
    refs: o.Refs = None,
    detector: o.Detector = "auto",
    min_face: o.MinFace = 20,
    max_faces: o.MaxFaces = None,
    model: Annotated[
        str, typer.Option("--model", envvar="F2S_FADEX", help="FaDeX model in the zoo.")
    ] = "fadex-s",
    scene: Annotated[
        bool,
        typer.Option(
            "--scene/--faces-only",
            envvar="F2S_SCENE_CROPS",
            help="Read a photo without a usable face off 8 scene crops, as f2s restore does "
            "(FaDeX's estimates were validated on faces; on VAL scene crops read noise within "
            "1.3/255 on average). [default: faces-only]",
            show_default=False,
        ),
    ] = False,
    recursive: o.Recursive = None,
    max_pixels: o.MaxPixels = None,
    shard: o.Shard = None,
    json_output: o.Json = False,
    debug: o.Debug = False,
) -> None:
    """Estimate each photo's degradation from its faces: noise, blur, JPEG, resolution loss.

    Each face is cut at native resolution, restored (Stage I) and read by FaDeX; the photo's
    estimate is the confidence-weighted mean over its faces. Prints, per image and per face,
    the estimates in units (noise sigma in /255, blur sigma in source pixels, JPEG quality)
    and a plain-language summary; --json adds the code vectors. With --scene a photo without
    a usable face is read off scene crops instead. Exit code 5 when no image could be read
    (without --scene: no image has a usable face).

    [bold]Examples[/bold]: f2s degrade-code img.jpg · f2s degrade-code ./photos --json
    """
    from face2scene_cli.engine.plan import find_images, relative_key
    from face2scene_cli.io.images import read_image
    from face2scene_cli.pipelines.reading import SCENE_CROPS
    from face2scene_cli.pipelines.restore import Face2ScenePipeline

    configure_logging(debug)
    part = Shard.parse(shard) if shard is not None else None
    if refs is not None:
        diag(
            "warning",
            "--refs: degrade-code reads faces with the blind restorer (FaDeX's estimates "
            "were validated with it); references are not used here (f2s restore uses them)",
        )
    pipe = Face2ScenePipeline.from_pretrained(
        None,
        fadex=model,
        face_restorer="blind",
        scene_crops=SCENE_CROPS if scene else 0,
        detector=detector,
        min_face=min_face,
        max_faces=max_faces,
        batch_size=8,
    )
    images, _, warnings = find_images(inputs, recursive=recursive is not False)
    images = [i for i in images if part is None or part.contains(relative_key(i.relative))]
    for warning in warnings:
        diag("warning", warning)
    results, failed, any_read = [], False, False
    for image in images:
        entry: dict[str, Any] = {
            "input": display_path(image.path),
            "relative_path": display_path(image.relative),
            "error": None,
        }
        try:
            if image.error is not None:
                raise image.error
            pixels = read_image(image.path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS).pixels
            reading = pipe.read_degradations([pixels])[1][0]
            any_read |= reading.code is not None
            entry.update(_entry(reading, json_output))
            if reading.code is None:
                diag("warning", f"{display_path(image.path)}: no usable face")
        except F2SError as err:
            failed = True
            entry["error"] = {"type": type(err).__name__, "message": str(err)}
            diag("error", f"{display_path(image.path)}: {err}")
        results.append(entry)
        if not json_output:
            _print(entry)
    if json_output:
        typer.echo(json.dumps({"model": model, "images": results}, indent=2))
    if failed:
        raise typer.Exit(ExitCode.FAILED_FILES)
    if not any_read:
        hint = "" if scene else " (--scene reads photos without one)"
        diag("error", f"no usable face in the inputs: the degradation cannot be read{hint}")
        raise typer.Exit(ExitCode.NO_FACE)


def _entry(reading: ImageDegradation, with_codes: bool) -> dict[str, Any]:
    faces = []
    for f in reading.faces:
        face = f.face.to_report()
        face.update({k: round(v, 3) for k, v in f.estimates.to_dict().items()})
        face["weight"] = round(f.weight, 4)
        if with_codes:
            face["code"] = [round(float(v), 5) for v in f.code]
        faces.append(face)
    return {
        "restorer": reading.restorer,
        "faces": faces,
        "degradation": reading.to_report(),
        "noise_curve": reading.noise_curve_report(),
    }


def _print(entry: dict[str, Any]) -> None:
    if entry["error"]:
        return
    deg = entry["degradation"]
    name = printable(entry["relative_path"])
    if deg is None:
        typer.echo(f"{name}: no usable face")
    else:
        crops = deg.get("scene_crops")
        read = f"{len(crops)} scene crop(s)" if crops else f"{len(entry['faces'])} face(s)"
        typer.echo(f"{name}: {deg['summary']}  [{read}, restorer {entry['restorer']}]")
    curve = entry["noise_curve"]
    bands = "  ".join(
        f"{level:.0f}: {'-' if s is None else f'{s:.1f}'}"
        for level, s in zip(curve["levels"], curve["sigma"], strict=True)
    )
    typer.echo(
        f"  noise by brightness (level: sigma /255) {bands}; "
        f"fit read {curve['read']:.1f}, shot {curve['shot']:.3f}"
    )
    for i, f in enumerate(entry["faces"]):
        jpeg = f"JPEG q {f['jpeg_quality']:.0f} (p={f['jpeg_probability']:.2f})"
        motion = ""
        if f["motion_px"] >= MOTION_READ_PX:
            motion = f" (motion {f['motion_px']:.1f} px at {f['motion_angle_deg']:.0f} deg)"
        typer.echo(
            f"  face {i} at {', '.join(f'{v:.0f}' for v in f['box'])}: "
            f"noise {f['noise_sigma']:.1f}/255, blur {f['blur_sigma_px']:.2f} px{motion}, "
            f"{jpeg}, downscale x{f['downscale']:.2f}, weight {f['weight']:.2f}"
        )
