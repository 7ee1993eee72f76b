"""``f2s eval``: every restorer on the same inputs, scored side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from face2scene_cli.cli import options as o
from face2scene_cli.cli.runner import configure_logging, diag, step_progress
from face2scene_cli.config import EVAL_VARIANTS, BatchConfig, EvalConfig
from face2scene_cli.errors import ConfigError

DATA = "Data"
RUN = "Run"


def evaluate(
    data: Annotated[
        Path,
        typer.Argument(
            exists=True,
            file_okay=False,
            help="A folder of clean photos (degraded here), or a paired folder with clean/ and "
            "degraded/ (matched by relative path without extension).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            file_okay=False,
            rich_help_panel=DATA,
            help="Where results.md, results.json and the grids go. [default: <DATA>_eval]",
            show_default=False,
        ),
    ] = None,
    suite: Annotated[
        str,
        typer.Option(
            "--suite",
            rich_help_panel=DATA,
            help="standard: the presets noise15, blur-noise, mixed (inside the training "
            "ranges); ood: noise30, noise50, blur3, jpeg10, jpeg20, down4, motion9-noise5, "
            "camera-jpeg80, down2-jpeg30, clean, gray-noise10 (out of distribution); mild: "
            "clean, noise3, noise6, jpeg90, jpeg70, jpeg50, blur1, down1.5, camera-jpeg95 "
            "(light degradations: a restorer must not make them worse).",
        ),
    ] = EvalConfig.suite,
    preset: Annotated[
        list[str] | None,
        typer.Option(
            "--preset",
            "-p",
            rich_help_panel=DATA,
            help="Degrade with this named degradation (repeatable) instead of the suite's: "
            "any name of any suite.",
            show_default=False,
        ),
    ] = None,
    second_order: Annotated[
        int | None,
        typer.Option(
            "--second-order",
            min=0,
            rich_help_panel=DATA,
            help="Also degrade with this many seeded second-order samples. "
            "[default: 1 for the standard suite, 0 for ood]",
            show_default=False,
        ),
    ] = None,
    scale: Annotated[
        int,
        typer.Option(
            "--scale",
            rich_help_panel=DATA,
            help="Evaluate upscaling: degraded photos lose this factor of resolution (1, 2 or "
            "4; standard suite) and every restorer outputs the clean size; bicubic replaces "
            "input.",
        ),
    ] = EvalConfig.scale,
    long_side: Annotated[
        int,
        typer.Option(
            "--long-side",
            min=0,
            rich_help_panel=DATA,
            help="Area-downscale clean photos to this long side first (0 = keep).",
        ),
    ] = EvalConfig.long_side,
    seed: o.Seed = None,
    nlm_h: Annotated[
        list[int] | None,
        typer.Option(
            "--nlm-h",
            min=1,
            rich_help_panel=RUN,
            help="NLM strengths searched (repeatable). [default: 3, 5, ..., 25]",
            show_default=False,
        ),
    ] = None,
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants",
            rich_help_panel=RUN,
            help="Comma-separated variants to run, of: " + ", ".join(EVAL_VARIANTS) + ". "
            "realesrgan costs ~8 CPU-minutes per input megapixel at 1 thread (about 50 s for "
            "a 512x512 photo on 2 cores). [default: all]",
            show_default=False,
        ),
    ] = None,
    tile: o.Tile = None,
    scene_model: Annotated[
        str,
        typer.Option("--scene-model", rich_help_panel=RUN, help="Zoo name of the scene model."),
    ] = "scene-embedded",
    detector: o.Detector = "auto",  # type: ignore[assignment]
    min_face: o.MinFace = 20,  # type: ignore[assignment]
    threads: o.Threads = None,
    quiet: o.Quiet = False,
    debug: o.Debug = False,
) -> None:
    """Score every restorer side by side on the same degraded photos.

    The variants: the degraded input (or its bicubic upscale), OpenCV NLM and an unsharp mask
    at their best parameters per degradation (oracles), Real-ESRGAN x4plus, the scene
    restorer blind, with the code read off the faces, with the clean-crop code (upper bound)
    and with another degradation's code (control). PSNR/SSIM on RGB and Y over the whole
    image, the faces and the rest; MS-SSIM, GMSD, HaarPSI (piq) and the sharpness ratio;
    identity distance of the faces; FaDeX's estimate error. The Markdown table goes to
    stdout; results.json, results.md and the best / worst case grids to --out.

    [bold]Examples[/bold]: f2s eval ./clean --out ./eval --preset noise15 --second-order 0 ·
    f2s eval ./clean --suite ood --variants input,nlm,usm,code ·
    f2s eval ./pairs --out ./eval (pairs/clean/*, pairs/degraded/*)
    """
    import cv2
    import torch

    from face2scene_cli.research.eval.items import degraded_items, find_images, paired_items
    from face2scene_cli.research.eval.scene import evaluate as run_evaluation
    from face2scene_cli.research.eval.scene import load_models
    from face2scene_cli.research.eval.tables import write_results

    configure_logging(debug)
    paired = (data / "clean").is_dir() and (data / "degraded").is_dir()
    if paired and (preset or second_order or scale != 1 or suite != EvalConfig.suite):
        raise ConfigError(
            f"{data} is a paired folder: --suite / --preset / --second-order / --scale do not apply"
        )
    if second_order is None:
        second_order = EvalConfig.second_order if suite == "standard" else 0
    picked = tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else None
    cfg = EvalConfig(
        long_side=0 if paired else long_side,
        suite=suite,
        presets=tuple(preset) if preset else None,
        second_order=second_order,
        seed=seed or 0,
        scale=scale,
        variants=picked or EVAL_VARIANTS,
        nlm_h=tuple(nlm_h) if nlm_h else EvalConfig.nlm_h,
        tile=tile,
    )
    out = out or data.with_name(data.name + "_eval")
    n = BatchConfig(threads=threads or 0).torch_threads  # same rule as the batch commands
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    if paired:
        items = paired_items(data)
    else:
        found = [p for p in find_images(data) if out.resolve() not in p.resolve().parents]
        sources = [(p.relative_to(data).as_posix(), p) for p in found]
        if not sources:
            raise ConfigError(f"{data}: no images found")
        items = degraded_items(sources, cfg)
    upscaler = "realesrgan-x4plus" if "realesrgan" in cfg.variants else None
    models = load_models(scene_model, detector, min_face, upscaler=upscaler)
    with step_progress(3 * len(items), quiet) as tick:
        result = run_evaluation(
            items, models, cfg, oracle_cache=out / "oracle-cache.json", progress=tick
        )
    paths = write_results(out, result)
    typer.echo((out / "results.md").read_text(encoding="utf-8"), nl=False)
    if not quiet:
        diag("info", f"{len(items)} items -> " + ", ".join(str(p) for p in paths))
