"""Training data for FaDeX: real photo crops, degradation operators, (LQ, HQ) groups.

Content comes only from the photos of :mod:`face2scene_cli.research.sample_data` (package
registries), split by whole photo in ``data/splits.yaml``. A *group* is one degradation operator
applied to several crops of different content, which is what supervised-contrastive training needs
(positives = same operator). Everything is 8-bit like a decoded photo: the LQ crop is quantised to
uint8 after degradation and the HQ crop is :class:`BlindFaceRestorer`'s output (or, with
probability ``p_clean_hq``, the clean crop).

How a sample is made (mimicking "degraded photo -> crop at native resolution"):
a square region of ``crop + margin`` px is cut from a clean base image (around a detected
face for people photos with probability ``p_face``), the operator is applied to the whole
region, and the crop is cut at a random offset in ``[0, margin)`` so the 8x8 JPEG grid has a
random phase, as it has in a face crop cut from a compressed photo.

Operators are :class:`~face2scene_cli.degradations.record.Degradation` records drawn from
``data.degradation`` (:class:`~face2scene_cli.degradations.sampling.DegradationDistribution`):
*parametric* = blur -> downscale (resized back, see :mod:`face2scene_cli.archs.fadex`) ->
Gaussian noise -> JPEG, each step present with its own probability and values drawn uniformly
from the configured ranges; or *second order* = Real-ESRGAN's two-stage pipeline (output size
kept), which has no single label and only feeds the contrastive loss.

Worker processes (:func:`group_worker`) make groups ahead of training into a queue; the
trainer keeps a ring buffer of groups and re-uses each several times (NLM per crop is the
bottleneck: ~15-25 ms per 128 px crop on one core).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml

from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import DegradationDistribution, apply
from face2scene_cli.errors import ConfigError
from face2scene_cli.io.images import read_image
from face2scene_cli.research.sample_data import Photo
from face2scene_cli.restorers.face.blind import BlindFaceRestorer

__all__ = [
    "FADEX_DEGRADATIONS",
    "DataConfig",
    "Group",
    "PhotoBank",
    "config_section",
    "degradation_labels",
    "dlib_faces",
    "group_worker",
    "make_group",
    "quantize_u8",
    "read_training_yaml",
    "rgb_float",
]

logger = logging.getLogger(__name__)

#: The photos held out for validation (whole photos; two of them show people).
#: FaDeX's operators (``data.degradation`` of ``configs/fadex.yaml``): 20 % second order.
FADEX_DEGRADATIONS = DegradationDistribution(
    mix=(0.0, 0.8, 0.2),
    p_noise=0.6,
    noise_range=(0.5, 30.0),
    p_blur=0.45,
    blur_range=(0.3, 3.0),
    p_downscale=0.25,
    downscale_range=(1.25, 4.0),
    resize_back=True,
    p_jpeg=0.5,
    jpeg_range=(20, 95),
)


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section of ``configs/fadex.yaml``.

    Attributes:
        splits: path of the split manifest (YAML), relative to the repository root.
        crop: side of the crops the workers make (training sub-crops are <= this).
        margin: extra region size; the crop's offset in the region is random in [0, margin).
        crops_per_group: crops of different content per operator in one group.
        p_face: probability of a face-centred region when the photo has detected faces.
        p_clean_hq: probability that the HQ input is the clean crop instead of the restored one.
        degradation: the operators' distribution (YAML block ``data.degradation``; keys it
            leaves out keep :data:`FADEX_DEGRADATIONS`' values).
        base_long_side: large photos (long side above the first value) are area-downscaled to
            each of these long sides to make clean content (removes their own JPEG/noise).
        workers: background worker processes making groups.
        queue_size: groups waiting in the queue.
    """

    splits: str = "data/splits.yaml"
    crop: int = 128
    margin: int = 16
    crops_per_group: int = 8
    p_face: float = 0.3
    p_clean_hq: float = 0.25
    degradation: DegradationDistribution = FADEX_DEGRADATIONS
    base_long_side: tuple[int, ...] = (1024, 640)
    workers: int = 1
    queue_size: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.degradation, DegradationDistribution):
            dist = DegradationDistribution.from_dict(
                self.degradation, "data.degradation", FADEX_DEGRADATIONS
            )
            object.__setattr__(self, "degradation", dist)
        object.__setattr__(self, "base_long_side", tuple(self.base_long_side))
        if self.crop < 32 or self.crop % 8:
            raise ConfigError(f"data.crop must be a multiple of 8 >= 32, got {self.crop}")
        if self.crops_per_group < 2:
            raise ConfigError(f"data.crops_per_group must be >= 2, got {self.crops_per_group}")
        for name in ("p_face", "p_clean_hq"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1], got {v}")


# ------------------------------------------------------------------------------------------
# splits


# ------------------------------------------------------------------------------------------
# content


def rgb_float(path: Path) -> np.ndarray:
    """A photo as float32 (H, W, C) in [0, 1], C in {1, 3} (alpha dropped; equal RGB channels
    -> 1), the form the trainers' samples are cut from."""
    px = read_image(path).pixels
    scale = 65535.0 if px.dtype == np.uint16 else 255.0
    a = px.astype(np.float32) / scale
    if a.shape[2] >= 3:
        a = a[..., :3]
        if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            a = a[..., :1]
    else:
        a = a[..., :1]
    return np.ascontiguousarray(a)


def dlib_faces(img: np.ndarray) -> list[tuple[float, float, float]]:
    """(cx, cy, size) of dlib HOG faces in a float (H, W, C) image, where the trainers centre
    face crops; [] when dlib is not importable."""
    if importlib.util.find_spec("dlib") is None:
        return []
    import dlib

    a8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if a8.shape[2] == 1:
        a8 = np.repeat(a8, 3, axis=2)
    dets = dlib.get_frontal_face_detector()(np.ascontiguousarray(a8), 1)
    return [((d.left() + d.right()) / 2, (d.top() + d.bottom()) / 2, d.width()) for d in dets]


@dataclass
class _Base:
    name: str
    image: np.ndarray  # (H, W, C) float32
    faces: list[tuple[float, float, float]] = field(default_factory=list)


class PhotoBank:
    """Clean base images of a list of photos, with their detected faces.

    Photos whose long side exceeds ``base_long_side[0]`` are area-downscaled to each long side
    in ``base_long_side`` (clean content at several scales); others are used as they are.
    """

    def __init__(self, photos: list[Photo], base_long_side: tuple[int, ...], min_side: int):
        self.bases: list[_Base] = []
        for photo in photos:
            img = rgb_float(photo.path)
            h, w = img.shape[:2]
            versions = [img]
            if max(h, w) > base_long_side[0]:
                versions = []
                for side in base_long_side:
                    f = side / max(h, w)
                    size = (max(1, round(w * f)), max(1, round(h * f)))
                    r = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
                    versions.append(r.reshape(size[1], size[0], img.shape[2]))
            for v in versions:
                if min(v.shape[:2]) < min_side:
                    continue
                faces = dlib_faces(v) if photo.people else []
                self.bases.append(_Base(photo.name, np.ascontiguousarray(v), faces))
        if not self.bases:
            raise ConfigError(f"no photo is at least {min_side} px on its short side")

    def region(self, rng: np.random.Generator, size: int, p_face: float) -> np.ndarray:
        """A random ``size`` x ``size`` region (H, W, C) of a random base."""
        base = self.bases[int(rng.integers(len(self.bases)))]
        img = base.image
        h, w = img.shape[:2]
        if base.faces and rng.random() < p_face:
            cx, cy, _ = base.faces[int(rng.integers(len(base.faces)))]
            x0 = round(cx - size / 2 + rng.uniform(-0.15, 0.15) * size)
            y0 = round(cy - size / 2 + rng.uniform(-0.15, 0.15) * size)
            x0, y0 = min(max(x0, 0), w - size), min(max(y0, 0), h - size)
        else:
            x0, y0 = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        return img[y0 : y0 + size, x0 : x0 + size]


# ------------------------------------------------------------------------------------------
# operators


def degradation_labels(op: Degradation) -> np.ndarray:
    """FaDeX's regression targets of an operator: ``[noise_sigma, blur, downscale,
    jpeg_quality (0 if none), jpeg present, has_label]``; second-order operators have none.

    ``noise_sigma`` is the record's noise at mid-grey, :meth:`Degradation.noise_sigma_at`
    (128): FaDeX reads one sigma, and shot noise has one per brightness.

    ``blur`` is the optical blur, :meth:`Degradation.equivalent_blur_px`: the Gaussian sigma
    and the motion blur as one sigma, ``sqrt(blur_sigma_px^2 + (motion_px / sqrt(12))^2)``
    (the regression loss adds the resolution loss,
    :func:`~face2scene_cli.research.train.fadex.effective_blur`)."""
    if op.mode == "second-order":
        return np.array([0, 0, 1, 0, 0, 0], dtype=np.float32)
    q = op.jpeg_quality
    return np.array(
        [op.noise_sigma_at(128.0), op.equivalent_blur_px(), op.downscale, q or 0, q is not None, 1],
        dtype=np.float32,
    )


# ------------------------------------------------------------------------------------------
# groups


@dataclass
class Group:
    """One operator on ``N`` crops of different content (uint8, gray replicated to 3 channels).

    Attributes:
        lq, hq, clean: uint8 tensors :math:`(N, 3, S, S)`; ``hq`` is already the chosen HQ
            input (restored or, per crop, clean).
        hq_is_clean: :math:`(N,)` bool.
        labels: :math:`(6,)` float32, see :func:`degradation_labels`.
        op: the operator, :meth:`Degradation.to_dict`.
    """

    lq: torch.Tensor
    hq: torch.Tensor
    clean: torch.Tensor
    hq_is_clean: torch.Tensor
    labels: torch.Tensor
    op: dict[str, Any]


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """``x`` in [0, 1] (clamped) as 8-bit pixel values, uint8."""
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def make_group(
    bank: PhotoBank,
    op: Degradation,
    cfg: DataConfig,
    rng: np.random.Generator,
    restorer: BlindFaceRestorer,
    *,
    p_clean_hq: float | None = None,
) -> Group:
    """Apply ``op`` to ``cfg.crops_per_group`` random regions and build the (LQ, HQ) crops."""
    s, m = cfg.crop, cfg.margin
    pc = cfg.p_clean_hq if p_clean_hq is None else p_clean_hq
    lqs, hqs, cleans, flags = [], [], [], []
    for _ in range(cfg.crops_per_group):
        region = bank.region(rng, s + m, cfg.p_face)
        x = torch.from_numpy(region).permute(2, 0, 1)[None].contiguous()
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        y = apply(x, op, gen)
        oy, ox = int(rng.integers(0, m)), int(rng.integers(0, m))
        lq = quantize_u8(y[..., oy : oy + s, ox : ox + s])
        clean = quantize_u8(x[..., oy : oy + s, ox : ox + s])
        use_clean = bool(rng.random() < pc)
        hq = clean if use_clean else quantize_u8(restorer.restore(lq.float() / 255.0).hq)
        if lq.shape[1] == 1:
            lq, hq, clean = (t.expand(1, 3, s, s) for t in (lq, hq, clean))
        lqs.append(lq)
        hqs.append(hq)
        cleans.append(clean)
        flags.append(use_clean)
    return Group(
        lq=torch.cat(lqs).contiguous(),
        hq=torch.cat(hqs).contiguous(),
        clean=torch.cat(cleans).contiguous(),
        hq_is_clean=torch.tensor(flags),
        labels=torch.from_numpy(degradation_labels(op)),
        op=op.to_dict(),
    )


def group_worker(cfg: DataConfig, photos: list[Photo], seed: int, queue: Any, stop: Any) -> None:
    """Process target: make groups forever into ``queue`` until ``stop`` is set.

    One torch thread and one OpenCV thread (the trainer owns the other cores).
    """
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rng = np.random.default_rng(seed)
    bank = PhotoBank(photos, cfg.base_long_side, cfg.crop + cfg.margin)
    restorer = BlindFaceRestorer()
    while not stop.is_set():
        op = cfg.degradation.sample(rng)
        group = make_group(bank, op, cfg, rng, restorer)
        while not stop.is_set():
            try:
                queue.put(group, timeout=1.0)
                break
            except Exception:  # queue.Full
                continue


def crop_batch(t: torch.Tensor, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random top-left offset for a ``size`` sub-crop of the last two dims of ``t``."""
    s = t.shape[-1]
    if size > s:
        raise ValueError(f"sub-crop {size} is larger than the crops ({s})")
    return int(rng.integers(0, s - size + 1)), int(rng.integers(0, s - size + 1))


def config_section(cls: type, data: Any, name: str) -> Any:
    """One section of a training YAML as the dataclass ``cls`` (None: its defaults); a
    non-mapping, unknown keys or bad values are ConfigErrors naming the section. Lists become
    tuples (frozen dataclasses)."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a mapping, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {name}: {', '.join(unknown)}; known: {sorted(names)}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**clean)
    except TypeError as err:
        raise ConfigError(f"{name}: {err}") from err


def read_training_yaml(
    path: Path, sections: Iterable[str], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A training YAML (``yaml.safe_load``) with ``overrides`` applied, for the config loaders.

    Args:
        path: the YAML file (sections, plus an optional top-level ``name``).
        sections: the section names the config knows.
        overrides: ``{"section.key": value}`` (values already parsed), applied over the file.

    Raises:
        ConfigError: the file is unreadable or not YAML, or has an unknown section; an
            override is not ``section.key`` of a known section (named). Unknown keys are left
            to :func:`config_section`, which names them.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    known = set(sections)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(doc).__name__}")
    unknown = sorted(set(doc) - known - {"name"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in known or not key:
            raise ConfigError(
                f"override {dotted!r}: expected section.key, the section one of "
                f"{', '.join(sorted(known))}"
            )
        part = doc.get(section) or {}
        if not isinstance(part, dict):
            raise ConfigError(f"{path}: {section} must be a mapping, got {part!r}")
        doc[section] = {**part, key: value}
    return doc
