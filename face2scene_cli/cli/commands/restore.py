"""``f2s restore``: restore whole photos, guided by the degradation their faces reveal."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer

from face2scene_cli.cli import options as o
from face2scene_cli.cli.runner import (
    LogOptions,
    configure_logging,
    load_settings,
    print_config,
    run_files,
)
from face2scene_cli.config import BatchConfig, RestoreConfig
from face2scene_cli.errors import ConfigError

if TYPE_CHECKING:
    from face2scene_cli.pipelines.restore import Face2ScenePipeline

RES = "Restoration"


def check_device(device: str) -> str:
    """The device as given, or a ConfigError when it is not there (never a silent fallback)."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here (f2s doctor)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: MPS is not available here (f2s doctor)")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or mps, got {device!r}")
    return device


def restore(
    inputs: o.Inputs,
    refs: o.Refs = None,
    blind: Annotated[
        bool | None,
        typer.Option(
            "--blind/--face-code",
            envvar="F2S_BLIND",
            rich_help_panel=RES,
            help="Read no code (faces or scene crops): restore with the null degradation "
            "code. [default: face-code]",
            show_default=False,
        ),
    ] = None,
    tile: o.Tile = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            envvar="F2S_PRECISION",
            rich_help_panel=RES,
            help="fp32|fp16|bf16 (fp16/bf16 tiles with NaN/Inf are re-run in fp32). "
            "[default: fp16 on CUDA; on the CPU bf16 where the scene model allows it and the CPU "
            "has native bf16 (AVX512-BF16/AMX), else fp32]",
            show_default=False,
        ),
    ] = None,
    scale: Annotated[
        int | None,
        typer.Option(
            "--scale",
            envvar="F2S_SCALE",
            rich_help_panel=RES,
            help="1, 2 or 4: the output's size over the input's (scene-embedded: bicubic "
            "upscaling before restoring; realesrgan-x4plus: its x4 output area-resized). "
            "[default: 1]",
            show_default=False,
        ),
    ] = None,
    scene_model: Annotated[
        str | None,
        typer.Option(
            "--scene-model",
            envvar="F2S_SCENE_MODEL",
            rich_help_panel=RES,
            help="Scene restorer (zoo name or model folder): scene-embedded (ours, "
            "conditioned on the faces' degradation code) or realesrgan-x4plus (Real-ESRGAN, "
            "blind, slow on CPU). [default: scene-embedded]",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            envvar="F2S_DEVICE",
            rich_help_panel=RES,
            help="cpu|cuda|cuda:N|mps; a missing device is an error, never a silent "
            "fallback. [default: cpu]",
            show_default=False,
        ),
    ] = None,
    face_restorer: Annotated[
        str | None,
        typer.Option(
            "--face-restorer",
            envvar="F2S_FACE_RESTORER",
            rich_help_panel=RES,
            help="Stage I face restorer: auto (ref-guided with --refs when available, else "
            "blind) or a name that `f2s doctor` lists (built-ins and plugins). [default: auto]",
            show_default=False,
        ),
    ] = None,
    paste_faces: Annotated[
        bool | None,
        typer.Option(
            "--paste-faces/--no-paste-faces",
            envvar="F2S_PASTE_FACES",
            rich_help_panel=RES,
            help="Blend the Stage I faces into the restored photo (soft mask, colour "
            "matched). [default: no-paste-faces]",
            show_default=False,
        ),
    ] = None,
    save_faces: Annotated[
        bool | None,
        typer.Option(
            "--save-faces",
            envvar="F2S_SAVE_FACES",
            rich_help_panel=RES,
            help="Also write each face's aligned LQ and Stage I crops to "
            "<output stem>.faces/face<i>_lq.png, _hq.png.",
            show_default=False,
        ),
    ] = None,
    save_compare: Annotated[
        bool | None,
        typer.Option(
            "--save-compare",
            envvar="F2S_SAVE_COMPARE",
            rich_help_panel=RES,
            help="Also write input | output side by side to <output stem>.compare.<ext>.",
            show_default=False,
        ),
    ] = None,
    detector: o.Detector = None,
    min_face: o.MinFace = None,
    max_faces: o.MaxFaces = None,
    identity: o.Identity = None,
    refs_k: o.RefsK = None,
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
    """Restore photos: read the degradation off each photo's faces, restore the whole scene.

    Faces are detected and (with --refs) matched to their person; each face crop is restored
    by the Stage I restorer with that person's references (unknown people: blind) and FaDeX
    reads the degradation from the (degraded, restored) pair; the code, through MapNet,
    conditions the scene restorer on the whole photo. A photo without a usable face is read
    off 8 scene crops instead (restored by the blind Stage I restorer); its report says
    source: scene.

    [bold]Examples[/bold]: f2s restore ./photos --refs ./refs · f2s restore img.jpg --out ./out
    --format jpg --quality 92 · f2s restore ./scans --blind --tile 256 · f2s restore ./photos
    --paste-faces --save-compare
    """
    configure_logging(debug)
    batch_cfg, restore_cfg = load_settings(
        "restore", config, [BatchConfig, RestoreConfig], locals()
    )
    if show_config:
        print_config(batch_cfg, restore_cfg)
        return
    log = LogOptions.from_values(locals())
    batch_cfg = batch_cfg.resolved(restore_cfg.device)

    def build() -> Face2ScenePipeline:
        from face2scene_cli.pipelines.restore import Face2ScenePipeline

        check_device(restore_cfg.device)  # where the job runs: here, or on each Ray worker
        settings = dataclasses.asdict(restore_cfg)
        return Face2ScenePipeline.from_pretrained(**settings, batch_size=batch_cfg.batch_size)

    run_files(inputs, build, batch_cfg, log)
