"""Run settings: frozen dataclasses built from defaults < YAML file < F2S_* environment < flags.

The CLI declares each option with ``envvar="F2S_<NAME>"`` and a default of ``None``, so a value
that reaches :func:`build_config` as not-None came from the environment or a flag and wins over
the file; the file wins over the dataclass defaults. A YAML file has top-level keys shared by all
commands and one optional section per command (``degrade:``, ``restore:`` ...) that wins over them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from face2scene_cli.degradations.checks import choice
from face2scene_cli.degradations.record import PRESETS, RESIZE_MODES
from face2scene_cli.errors import ConfigError

T = TypeVar("T")

OUTPUT_FORMATS = ("same", "png", "jpg", "webp", "tiff")
ENGINES = ("local", "ray")
DEFAULT_MAX_PIXELS = 200_000_000  # roughly 14000x14000
"""Default decompression-bomb limit (pixels of the first frame, as claimed by the header)."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the images whose relative path hashes to ``index``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` with 0 <= I < N.

        Raises:
            ConfigError: not of that form.
        """
        index, sep, count = text.strip().partition("/")
        if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise ConfigError(f"shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
        return cls(int(index), int(count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def contains(self, key: str) -> bool:
        """Whether the image with relative path ``key`` belongs to this shard (stable across
        machines, runs and added files)."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def usable_cores() -> int:
    """The CPU cores this process may run on: ``os.sched_getaffinity`` where the platform has
    it (it honours ``taskset`` and cgroup cpusets), else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_io_workers(cores: int | None = None) -> int:
    """The default ``io_workers``: 1 on up to 4 cores (``cores``, default
    :func:`usable_cores`), else 2."""
    return 1 if (cores if cores is not None else usable_cores()) <= 4 else 2


def default_batch_size(device: str = "cpu") -> int:
    """Images per compute batch when none is set: 1 on the CPU (photos gain nothing from
    sharing a call there, and each one is written as soon as it is done), 4 on an accelerator
    (the faces and tiles of several photos share its calls)."""
    return 1 if device == "cpu" else 4


# Upper bounds that keep a typo (threads: 100000) from exhausting the machine's threads.
_MOST = {"threads": 1024, "io_workers": 256, "batch_size": 4096, "workers": 4096}


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """Settings of the batch engine shared by every command that walks files.

    Attributes:
        out: output folder; None = a sibling of the input folder named ``<input>_f2s``.
        recursive: walk sub-folders of input folders.
        overwrite: redo images whose output and report are already valid.
        format: output format, ``same`` keeps the input's (png for formats we do not write).
        quality: JPEG/WebP quality 1-100.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).
        seed: base seed; each image's generator is seeded by hash(seed, relative path).
        threads: torch CPU threads; 0 = every usable core (:func:`usable_cores`). The I/O
            workers do not get cores of their own: decoding and encoding mostly wait on the
            disk or run in OpenCV / PIL C code that releases the GIL.
        io_workers: threads that decode and encode images beside the compute thread; default
            :func:`default_io_workers`: 1 on up to 4 usable cores, else 2.
        batch_size: images handed to the compute stage at once; None = the command's
            :func:`default_batch_size` for its device (see :meth:`resolved`).
        shard: ``I/N``: process only shard I of N (array jobs sharing one output folder).
        engine: ``local`` (this process) or ``ray`` (a Ray Data actor pool).
        ray_address: Ray cluster to join (``auto``, ``HOST:PORT``); None = start one here.
        workers: Ray workers (actors); 0 = as many as the cluster's CPUs (or GPUs) allow.
        gpus_per_worker: GPUs reserved by each Ray worker (fractions share a GPU).
    """

    out: Path | None = None
    recursive: bool = True
    overwrite: bool = False
    format: str = "same"
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0
    threads: int = 0
    io_workers: int = dataclasses.field(default_factory=lambda: default_io_workers())
    batch_size: int | None = None
    shard: str | None = None
    engine: str = "local"
    ray_address: str | None = None
    workers: int = 0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.shard is not None:
            Shard.parse(self.shard)
        if self.workers < 0 or self.gpus_per_worker < 0:
            raise ConfigError("workers and gpus_per_worker must be >= 0")
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(
                f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}"
            )
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality must be in 1..100, got {self.quality}")
        for name in ("max_pixels", "io_workers", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        for name, most in _MOST.items():
            if getattr(self, name) is not None and getattr(self, name) > most:
                raise ConfigError(f"{name} must be <= {most}, got {getattr(self, name)}")

    def resolved(self, device: str = "cpu") -> BatchConfig:
        """This config with ``batch_size`` set (:func:`default_batch_size` of ``device`` when
        it was not): what the engines run with."""
        if self.batch_size is not None:
            return self
        return dataclasses.replace(self, batch_size=default_batch_size(device))

    @property
    def shard_spec(self) -> Shard | None:
        """The parsed ``shard`` (None = every image)."""
        return Shard.parse(self.shard) if self.shard is not None else None

    @property
    def torch_threads(self) -> int:
        """The explicit torch thread count this run uses: ``threads``, or every usable core."""
        return self.threads or usable_cores()


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The YAML config file as a dict (``{}`` without a file); safe_load only."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def file_section(data: dict[str, Any], command: str, cls: type[Any]) -> dict[str, Any]:
    """The keys of ``cls`` set by the file: top-level keys, overridden by the command's section
    (which :func:`check_file_keys` has checked is a mapping)."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged = {_key(k): v for k, v in data.items() if not isinstance(v, dict) and _key(k) in names}
    section = data.get(command) or {}
    merged.update({_key(k): v for k, v in section.items() if _key(k) in names})
    return merged


def check_file_keys(data: dict[str, Any], command: str, classes: list[type[Any]]) -> None:
    """Refuse keys that no settings class of the command knows (typos must not pass silently)."""
    known = {f.name for cls in classes for f in dataclasses.fields(cls)}
    top = {_key(k) for k, v in data.items() if not isinstance(v, dict)}
    if not isinstance(data.get(command) or {}, dict):
        raise ConfigError(
            f"config section {command!r} must be a mapping of settings, "
            f"got {type(data[command]).__name__} {data[command]!r}"
        )
    section = {_key(k) for k in (data.get(command) or {})}
    unknown = sorted((top | section) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) for {command}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )


def build_config(
    cls: type[T],
    from_file: dict[str, Any],
    overrides: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> T:
    """Instantiate ``cls`` from its defaults (a command may replace some with ``defaults``),
    then file values, then not-None overrides (flags and F2S_* variables)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(defaults or {})
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if overrides.get(f.name) is not None:
            values[f.name] = _coerce(f.name, overrides[f.name], hints[f.name])
        elif f.name in from_file:
            values[f.name] = _coerce(f.name, from_file[f.name], hints[f.name])
    return cls(**values)


def config_as_dict(*configs: Any) -> dict[str, Any]:
    """The effective settings of one or more config dataclasses as plain YAML/JSON types."""
    out: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def _key(name: str) -> str:
    return str(name).replace("-", "_")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a YAML/env value to the field's type, with an error naming the key."""
    args = typing.get_args(hint)
    optional = type(None) in args and (
        typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)
    )
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is Path:
            return Path(os.path.expanduser(str(value)))
        if hint is str:
            return str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}") from err
    return value


@dataclasses.dataclass(frozen=True)
class FaceSettings:
    """How faces are found and matched to a reference gallery (``f2s restore`` and ``f2s faces``).

    Attributes:
        detector: ``auto``, insightface, mtcnn, dlib or a registered detector plugin.
        min_face: ignore faces smaller than this (px, shorter box side).
        max_faces: keep at most this many faces per image (None = all).
        refs: reference photos, ``refs/<person>/*.jpg`` or ``refs/*.jpg`` (None = none).
        identity: identity encoder: auto | dlib | arcface (``auto``: arcface when its pack is
            on disk, else dlib).
        refs_k: references chosen per matched face.
    """

    detector: str = "auto"
    min_face: int = 20
    max_faces: int | None = None
    refs: Path | None = None
    identity: str = "auto"
    refs_k: int = 3

    def __post_init__(self) -> None:
        if self.min_face < 1 or self.refs_k < 1:
            raise ConfigError(
                f"min_face and refs_k must be >= 1, got {self.min_face}, {self.refs_k}"
            )
        if self.max_faces is not None and self.max_faces < 1:
            raise ConfigError(f"max_faces must be >= 1, got {self.max_faces}")
        if self.refs is not None and not self.refs.is_dir():
            raise ConfigError(f"refs: {self.refs} is not a folder")


@dataclasses.dataclass(frozen=True)
class FacesConfig(FaceSettings):
    """Settings of ``f2s faces`` (besides :class:`FaceSettings`).

    Attributes:
        face_size: aligned crop size (FFHQ 5-point template).
        save_crops: write each aligned face crop here (None = do not).
        recursive: walk sub-folders of input folders.
        max_pixels: refuse images with more pixels than this.
    """

    face_size: int = 512
    save_crops: Path | None = None
    recursive: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.face_size < 64:
            raise ConfigError(f"face_size must be >= 64, got {self.face_size}")


@dataclasses.dataclass(frozen=True)
class RestoreConfig(FaceSettings):
    """Settings of ``f2s restore`` that change the outputs (besides :class:`FaceSettings`).

    Attributes:
        blind: read no code (faces or scene crops); restore with MapNet's null tokens.
        tile: tile side in px (None = automatic from free memory).
        precision: fp32 | fp16 | bf16 (None = the scene model's default: fp16 on CUDA; on
            the CPU bf16 where the model allows it and the CPU has native bf16, else fp32).
        scale: 1, 2 or 4, the output's size over the input's (scene-embedded: bicubic
            upscaling before restoring; realesrgan-x4plus: its x4 output area-resized).
        device: cpu | cuda | cuda:N | mps.
        scene_model: zoo name (or model folder) of the scene restorer: ``scene-embedded``
            (conditioned on the faces' code) or ``realesrgan-x4plus`` (blind x4 upscaler).
        face_restorer: Stage I restorer by name; ``auto`` = ``ref-guided`` when it is
            available and references are given, else ``blind``.
        paste_faces: blend the Stage I faces into the restored photo.
        save_faces: also write each face's aligned LQ / HQ crops.
        save_compare: also write an input | output side-by-side image.
    """

    blind: bool = False
    tile: int | None = None
    precision: str | None = None
    scale: int = 1
    device: str = "cpu"
    scene_model: str = "scene-embedded"
    face_restorer: str = "auto"
    paste_faces: bool = False
    save_faces: bool = False
    save_compare: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale not in (1, 2, 4):
            raise ConfigError(f"scale must be 1, 2 or 4, got {self.scale}")
        if self.precision not in (None, "fp32", "fp16", "bf16"):
            raise ConfigError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.tile is not None and self.tile < 32:
            raise ConfigError(f"tile must be >= 32 px, got {self.tile}")


@dataclasses.dataclass(frozen=True)
class DegradeConfig:
    """Settings of ``f2s degrade``.

    Attributes:
        preset: a named preset (noise15, blur-noise, mixed); excludes the parametric options.
        blur_sigma: Gaussian blur sigma in pixels (parametric mode).
        motion_px: linear motion blur, segment length in pixels, 0 or 1-21 (parametric mode).
        motion_angle: the motion's direction in degrees, [0, 180): 0 horizontal, 90 vertical
            (needs ``motion_px``; default 0).
        noise_sigma: Gaussian noise sigma in /255 units (parametric mode).
        shot_noise: Poisson (shot) noise scale, 0-16 (parametric mode; the record's
            ``poisson_scale``): camera noise, added before the Gaussian (read) noise.
        gray_noise: luminance-only noise (needs ``noise_sigma`` or ``shot_noise``).
        jpeg_quality: JPEG quality 1-100 (parametric mode).
        downscale: downscale factor >= 1, the output is that much smaller (parametric and
            second-order modes).
        downscale_kernel: the downscale's filter, ``area`` (pixel averaging, as photo apps
            shrink), ``bilinear`` or ``bicubic`` (default); it makes the mode parametric (a
            plain resize, nothing else unless asked) and needs ``downscale``.
    Without a preset or parametric option, the Real-ESRGAN second-order pipeline is sampled
    per image from its seed.
    """

    preset: str | None = None
    blur_sigma: float | None = None
    motion_px: float | None = None
    motion_angle: float | None = None
    noise_sigma: float | None = None
    shot_noise: float | None = None
    gray_noise: bool | None = None
    jpeg_quality: int | None = None
    downscale: float | None = None
    downscale_kernel: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.preset is not None and any(
            v is not None
            for v in (*self._parametric, self.motion_angle, self.gray_noise, self.downscale)
        ):
            raise ConfigError(
                "--preset cannot be combined with --blur-sigma/--motion-px/--motion-angle/"
                "--noise-sigma/--shot-noise/--gray-noise/--jpeg-quality/--downscale/"
                "--downscale-kernel"
            )
        if self.downscale_kernel is not None:
            choice("downscale_kernel", self.downscale_kernel, RESIZE_MODES)
            if not self.downscale or self.downscale == 1:
                raise ConfigError("--downscale-kernel needs --downscale (a factor > 1)")
        if self.motion_angle is not None and not self.motion_px:
            raise ConfigError("--motion-angle needs --motion-px (the motion blur's length)")
        if self.gray_noise and not (self.noise_sigma or self.shot_noise):
            raise ConfigError("--gray-noise needs --noise-sigma or --shot-noise (the noise)")
        if self.downscale is not None and self.downscale < 1:
            raise ConfigError(f"downscale must be >= 1, got {self.downscale}")
        if (
            self.mode == "second-order"
            and self.downscale is not None
            and not self.downscale.is_integer()
        ):
            raise ConfigError(
                f"the second-order pipeline takes an integer --downscale, got {self.downscale}"
            )

    @property
    def mode(self) -> str:
        """preset | parametric | second-order."""
        if self.preset is not None:
            return "preset"
        if any(v is not None for v in self._parametric):
            return "parametric"
        return "second-order"

    @property
    def _parametric(self) -> tuple[float | int | None, ...]:
        return (
            self.blur_sigma,
            self.motion_px,
            self.noise_sigma,
            self.shot_noise,
            self.jpeg_quality,
            self.downscale_kernel,
        )


#: The variants ``f2s eval`` can run (:mod:`face2scene_cli.research.eval.scene`).
EVAL_VARIANTS: tuple[str, ...] = (
    "input",
    "bicubic",
    "nlm",
    "usm",
    "realesrgan",
    "blind",
    "code",
    "restore",
    "upper",
    "wrong",
)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on and how (defaults: ``f2s eval``'s and the model card's).

    Attributes:
        long_side: clean photos are area-downscaled to this long side (0 = keep the size).
        suite: ``standard`` (the presets), ``ood`` (out of distribution) or ``mild`` (light
            degradations), see :mod:`face2scene_cli.research.eval.suites`.
        presets: named degradations to run instead of the suite's (any suite's names).
        second_order: how many seeded second-order samples (the same ones for every image).
        seed: base seed of the degradations.
        scale: the restorers' output size over the degraded image's (1, 2 or 4); above 1 the
            degraded images are that much smaller and ``bicubic`` replaces ``input``.
        variants: which of :data:`EVAL_VARIANTS` to run (``input`` / ``bicubic`` always).
        nlm_h: the NLM strengths searched.
        usm_sigma, usm_amount: the unsharp-mask grid searched (amount 0 = the input).
        tile: the scene restorer's tile side (None = automatic).
    """

    long_side: int = 512
    suite: str = "standard"
    presets: tuple[str, ...] | None = None
    second_order: int = 1
    seed: int = 0
    scale: int = 1
    variants: tuple[str, ...] = EVAL_VARIANTS
    nlm_h: tuple[int, ...] = tuple(range(3, 26, 2))
    usm_sigma: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    usm_amount: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
    tile: int | None = None

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in EVAL_VARIANTS]
        if unknown:
            raise ConfigError(
                f"unknown eval variant(s) {', '.join(unknown)}; known: {', '.join(EVAL_VARIANTS)}"
            )
        if self.scale not in (1, 2, 4):
            raise ConfigError(f"scale must be 1, 2 or 4, got {self.scale}")
