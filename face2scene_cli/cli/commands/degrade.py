"""``f2s degrade``: make degraded copies of clean photos (training data, evaluation inputs)."""

from __future__ import annotations

from typing import Annotated

import typer

from face2scene_cli.cli import options as o
from face2scene_cli.cli.runner import (
    LogOptions,
    configure_logging,
    diag,
    load_settings,
    print_config,
    run_files,
)
from face2scene_cli.config import BatchConfig, DegradeConfig
from face2scene_cli.degradations.record import PRESETS

DEG = "Degradation"


def degrade(
    inputs: o.Inputs,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            "-p",
            envvar="F2S_PRESET",
            rich_help_panel=DEG,
            help=f"Named degradation: {', '.join(PRESETS)}.",
            show_default=False,
        ),
    ] = None,
    blur_sigma: Annotated[
        float | None,
        typer.Option(
            "--blur-sigma",
            envvar="F2S_BLUR_SIGMA",
            rich_help_panel=DEG,
            min=0,
            help="Gaussian blur sigma in pixels.",
            show_default=False,
        ),
    ] = None,
    motion_px: Annotated[
        float | None,
        typer.Option(
            "--motion-px",
            envvar="F2S_MOTION_PX",
            rich_help_panel=DEG,
            min=0,
            max=21,
            help="Linear motion (camera-shake) blur: the segment's length in pixels, 1-21.",
            show_default=False,
        ),
    ] = None,
    motion_angle: Annotated[
        float | None,
        typer.Option(
            "--motion-angle",
            envvar="F2S_MOTION_ANGLE",
            rich_help_panel=DEG,
            min=0,
            max=180,
            help="Direction of the motion blur in degrees: 0 horizontal (default), 90 vertical.",
            show_default=False,
        ),
    ] = None,
    noise_sigma: Annotated[
        float | None,
        typer.Option(
            "--noise-sigma",
            envvar="F2S_NOISE_SIGMA",
            rich_help_panel=DEG,
            min=0,
            help="Gaussian noise sigma in /255 units.",
            show_default=False,
        ),
    ] = None,
    shot_noise: Annotated[
        float | None,
        typer.Option(
            "--shot-noise",
            envvar="F2S_SHOT_NOISE",
            rich_help_panel=DEG,
            min=0,
            max=16,
            help="Camera (Poisson) shot noise, Real-ESRGAN's scale: sigma ~ scale x sqrt(level)"
            "/255, before the Gaussian noise (the read noise).",
            show_default=False,
        ),
    ] = None,
    gray_noise: Annotated[
        bool | None,
        typer.Option(
            "--gray-noise/--colour-noise",
            envvar="F2S_GRAY_NOISE",
            rich_help_panel=DEG,
            help="Luminance-only noise (one field in every channel). [default: colour]",
            show_default=False,
        ),
    ] = None,
    jpeg_quality: Annotated[
        int | None,
        typer.Option(
            "--jpeg-quality",
            envvar="F2S_JPEG_QUALITY",
            rich_help_panel=DEG,
            min=1,
            max=100,
            help="JPEG compression quality.",
            show_default=False,
        ),
    ] = None,
    downscale: Annotated[
        float | None,
        typer.Option(
            "--downscale",
            envvar="F2S_DOWNSCALE",
            rich_help_panel=DEG,
            min=1,
            help="Downscale factor (the output is smaller by this factor).",
            show_default=False,
        ),
    ] = None,
    downscale_kernel: Annotated[
        str | None,
        typer.Option(
            "--downscale-kernel",
            envvar="F2S_DOWNSCALE_KERNEL",
            rich_help_panel=DEG,
            help="The downscale's filter: area (pixel averaging, as photo apps shrink), "
            "bilinear or bicubic (default). Needs --downscale; alone with it, a plain resize.",
            show_default=False,
        ),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option("--scale", min=1, hidden=True, help="Deprecated: --downscale."),
    ] = None,
    out: o.Out = None,
    recursive: o.Recursive = None,
    overwrite: o.Overwrite = None,
    fmt: o.Format = None,
    quality: o.Quality = None,
    max_pixels: o.MaxPixels = None,
    seed: o.Seed = None,
    threads: o.Threads = None,
    io_workers: o.IOWorkers = None,
    batch_size: o.BatchSize = None,
    shard: o.Shard = None,
    engine: o.Engine = None,
    ray_address: o.RayAddress = None,
    workers: o.Workers = None,
    gpus_per_worker: o.GpusPerWorker = None,
    config: o.ConfigFile = None,
    show_config: o.PrintConfig = False,
    quiet: o.Quiet = False,
    log_json: o.LogJson = False,
    report_jsonl: o.ReportJsonl = None,
    debug: o.Debug = False,
) -> None:
    """Make degraded copies of clean photos (second-order, preset or explicit parameters).

    The default is the Real-ESRGAN second-order pipeline sampled per image from its seed;
    explicit parameters are applied in the order blur, motion blur, downscale, noise, JPEG.

    Outputs are PNG by default (a JPEG output would add a compression the report does not
    describe); each report records the sampled parameters so a sample can be replayed.

    [bold]Examples[/bold]: f2s degrade ./clean --out ./lq --preset mixed ·
    f2s degrade img.png --noise-sigma 15 --jpeg-quality 40 ·
    f2s degrade img.png --motion-px 9 --motion-angle 30 ·
    f2s degrade img.png --downscale 4 --downscale-kernel area ·
    f2s degrade img.png --shot-noise 1 --noise-sigma 2 --jpeg-quality 80 ·
    f2s degrade ./clean --seed 7
    """
    configure_logging(debug)
    if scale is not None:
        diag(
            "warning", "--scale is deprecated for degrade (it reads as upscaling): use --downscale"
        )
        downscale = scale if downscale is None else downscale
    batch_cfg, degrade_cfg = load_settings(
        "degrade", config, [BatchConfig, DegradeConfig], locals(), defaults={"format": "png"}
    )
    if show_config:
        print_config(batch_cfg, degrade_cfg)
        return
    log = LogOptions.from_values(locals())
    from face2scene_cli.pipelines.degrade import DegradePipeline

    run_files(inputs, lambda: DegradePipeline(degrade_cfg), batch_cfg.resolved(), log)
