"""Options shared by the commands that walk files (Typer ``Annotated`` aliases).

Every option defaults to None and reads ``F2S_<NAME>`` from the environment, so the config
layer can tell "not given" from a value: defaults < ``--config`` file < environment < flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from face2scene_cli.config import ENGINES, OUTPUT_FORMATS
from face2scene_cli.errors import ConfigError

IO = "Input / output"
RUN = "Run"
SCALE = "Scaling out"
LOG = "Logging"
FACES = "Faces"

DETECTOR_CHOICES = ("auto", "insightface", "mtcnn", "dlib")
"""``--detector`` names, spelled here so help does not import the detectors (numpy, dlib);
a test holds them equal to :data:`face2scene_cli.faces.detect.DETECTOR_CHOICES`."""

Inputs = Annotated[
    list[str],
    typer.Argument(
        help="Image files, folders (walked recursively) or glob patterns.", show_default=False
    ),
]
Out = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        envvar="F2S_OUT",
        rich_help_panel=IO,
        help="Output folder; mirrors the input tree. [default: <input>_f2s beside the input]",
    ),
]
Recursive = Annotated[
    bool | None,
    typer.Option(
        "--recursive/--no-recursive",
        envvar="F2S_RECURSIVE",
        rich_help_panel=IO,
        help="Walk sub-folders of input folders. [default: recursive]",
        show_default=False,
    ),
]
Overwrite = Annotated[
    bool | None,
    typer.Option(
        "--overwrite/--resume",
        envvar="F2S_OVERWRITE",
        rich_help_panel=IO,
        help="Redo images that already have a valid output and report. [default: resume]",
        show_default=False,
    ),
]
Format = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        envvar="F2S_FORMAT",
        rich_help_panel=IO,
        help=f"Output format: {'|'.join(OUTPUT_FORMATS)}.",
        show_default=False,
    ),
]
Quality = Annotated[
    int | None,
    typer.Option(
        "--quality",
        envvar="F2S_QUALITY",
        rich_help_panel=IO,
        min=1,
        max=100,
        help="JPEG/WebP quality. [default: 95]",
        show_default=False,
    ),
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        envvar="F2S_MAX_PIXELS",
        rich_help_panel=IO,
        min=1,
        help="Refuse larger images (decompression-bomb guard). [default: 200000000]",
        show_default=False,
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(
        "--seed",
        envvar="F2S_SEED",
        rich_help_panel=RUN,
        help="Base seed; each image's randomness comes from hash(seed, relative path). "
        "[default: 0]",
        show_default=False,
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        envvar="F2S_THREADS",
        rich_help_panel=RUN,
        min=0,
        help="torch CPU threads (0 = every usable core). [default: 0]",
        show_default=False,
    ),
]
IOWorkers = Annotated[
    int | None,
    typer.Option(
        "--io-workers",
        envvar="F2S_IO_WORKERS",
        rich_help_panel=RUN,
        min=1,
        help="Threads that decode and encode beside the compute stage "
        "(default: 1 on up to 4 cores, else 2).",
        show_default=False,
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        envvar="F2S_BATCH_SIZE",
        rich_help_panel=RUN,
        min=1,
        help="Images per compute batch. [default: 1 on the CPU, 4 on CUDA]",
        show_default=False,
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        envvar="F2S_SHARD",
        rich_help_panel=SCALE,
        help="I/N: process only shard I of N (array jobs; shards may share one --out). "
        "Give every shard the same inputs.",
        show_default=False,
    ),
]
Engine = Annotated[
    str | None,
    typer.Option(
        "--engine",
        envvar="F2S_ENGINE",
        rich_help_panel=SCALE,
        help=f"{'|'.join(ENGINES)}: run here, or on a Ray cluster (pip install "
        "'face2scene\\[ray]'). [default: local]",
        show_default=False,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        envvar="F2S_RAY_ADDRESS",
        rich_help_panel=SCALE,
        help="Ray cluster to join: auto or HOST:PORT. [default: start Ray on this machine]",
        show_default=False,
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        envvar="F2S_WORKERS",
        rich_help_panel=SCALE,
        min=0,
        help="Ray workers, each loading the models once (0 = as many as the cluster's "
        "GPUs, or CPUs / --threads, allow). [default: 0]",
        show_default=False,
    ),
]
GpusPerWorker = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-worker",
        envvar="F2S_GPUS_PER_WORKER",
        rich_help_panel=SCALE,
        min=0,
        help="GPUs reserved by each Ray worker (0.5: two workers share a GPU). [default: 0]",
        show_default=False,
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="F2S_CONFIG",
        rich_help_panel=RUN,
        exists=True,
        dir_okay=False,
        help="YAML file of settings (top-level keys and per-command "
        "sections); environment and flags override it.",
    ),
]
PrintConfig = Annotated[
    bool,
    typer.Option(
        "--print-config", rich_help_panel=RUN, help="Print the effective settings as YAML and exit."
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        envvar="F2S_QUIET",
        rich_help_panel=LOG,
        help="No progress output; per-file errors are still printed.",
    ),
]
LogJson = Annotated[
    bool,
    typer.Option(
        "--log-json",
        envvar="F2S_LOG_JSON",
        rich_help_panel=LOG,
        help="Progress and errors as JSON lines on stderr.",
    ),
]
ReportJsonl = Annotated[
    str | None,
    typer.Option(
        "--report-jsonl",
        envvar="F2S_REPORT_JSONL",
        rich_help_panel=LOG,
        help="Also stream each image's report as one JSON line to this file ('-' = stdout).",
    ),
]
Debug = Annotated[
    bool,
    typer.Option(
        "--debug", envvar="F2S_DEBUG", rich_help_panel=LOG, help="Show tracebacks and debug logs."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]

TrainingConfig = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Training YAML (sections data/network/train/val/logging).",
    ),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue from the run folder's checkpoint.")
]


class TrainDevice(str, Enum):
    """Where a training run computes."""

    cpu = "cpu"
    cuda = "cuda"


TRAIN_RUN = "Run"  # help panel of the training overrides
TrainingDevice = Annotated[
    TrainDevice | None,
    typer.Option(
        "--device", rich_help_panel=TRAIN_RUN, help="Override train.device.", show_default=False
    ),
]
RunDir = Annotated[
    Path | None,
    typer.Option(
        "--run-dir", rich_help_panel=TRAIN_RUN, help="Override logging.run_dir.", show_default=False
    ),
]
WallLimit = Annotated[
    float | None,
    typer.Option(
        "--wall-limit",
        min=0.1,
        rich_help_panel=TRAIN_RUN,
        metavar="MINUTES",
        help="Stop cleanly after this many minutes of wall clock (checkpoint, validation); "
        "the learning-rate decay follows the limit.",
        show_default=False,
    ),
]
Set = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        rich_help_panel=TRAIN_RUN,
        metavar="SECTION.KEY=VALUE",
        help="Override one config key with a YAML value (repeatable), e.g. --set "
        "val.every_steps=250; the named flags win over it.",
        show_default=False,
    ),
]
ComputeThreads = Annotated[
    int, typer.Option("--threads", min=1, rich_help_panel=TRAIN_RUN, help="torch CPU threads.")
]


def parse_set(items: list[str] | None, flags: Mapping[str, object] | None = None) -> dict[str, Any]:
    """``--set`` items ``KEY=VALUE`` as ``{KEY: yaml.safe_load(VALUE)}`` (a later item wins),
    then ``flags`` (config key -> a named flag's value, None = not given) over them.

    Raises:
        ConfigError: an item without ``=`` or a key, or a value that is not YAML.
    """
    import yaml

    found: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            found[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not YAML ({err})") from err
    found.update({k: v for k, v in (flags or {}).items() if v is not None})
    return found


Tile = Annotated[
    int | None,
    typer.Option(
        "--tile",
        envvar="F2S_TILE",
        min=32,
        help="Scene restorer tile side in px. [default: automatic from free memory]",
        show_default=False,
    ),
]

Detector = Annotated[
    str | None,
    typer.Option(
        "--detector",
        envvar="F2S_DETECTOR",
        rich_help_panel=FACES,
        help=f"Face detector: {'|'.join(DETECTOR_CHOICES)} (auto = insightface when "
        "its pack is on disk, else mtcnn). [default: auto]",
        show_default=False,
    ),
]
MinFace = Annotated[
    int | None,
    typer.Option(
        "--min-face",
        envvar="F2S_MIN_FACE",
        rich_help_panel=FACES,
        min=1,
        help="Ignore faces smaller than this (pixels, shorter box side). [default: 20]",
        show_default=False,
    ),
]
MaxFaces = Annotated[
    int | None,
    typer.Option(
        "--max-faces",
        envvar="F2S_MAX_FACES",
        rich_help_panel=FACES,
        min=1,
        help="Keep at most this many faces per image (most confident first).",
        show_default=False,
    ),
]
Refs = Annotated[
    Path | None,
    typer.Option(
        "--refs",
        "-r",
        envvar="F2S_REFS",
        rich_help_panel=FACES,
        exists=True,
        file_okay=False,
        help="Reference photos: refs/<person>/*.jpg or refs/*.jpg.",
    ),
]
Identity = Annotated[
    str | None,
    typer.Option(
        "--identity",
        envvar="F2S_IDENTITY",
        rich_help_panel=FACES,
        help="Identity encoder: auto|dlib|arcface (auto = arcface when its pack is on "
        "disk, else dlib). [default: auto]",
        show_default=False,
    ),
]
RefsK = Annotated[
    int | None,
    typer.Option(
        "--refs-k",
        envvar="F2S_REFS_K",
        rich_help_panel=FACES,
        min=1,
        help="References chosen per matched face. [default: 3]",
        show_default=False,
    ),
]
