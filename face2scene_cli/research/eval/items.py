"""The evaluation's items: clean photos degraded on the fly, or (clean, degraded) pairs.

Clean photos are area-downscaled to ``long_side`` (8-bit RGB) and degraded by the named
degradations of a suite (:mod:`~face2scene_cli.research.eval.suites`) and seeded Real-ESRGAN
second-order samples (:func:`degraded_items`); a paired folder gives
``clean/X`` with ``degraded/X`` (:func:`paired_items`). :class:`EvalConfig` says which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from face2scene_cli.config import EvalConfig
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.errors import ConfigError, F2SError, InputError
from face2scene_cli.faces.detect import as_rgb_uint8
from face2scene_cli.io.images import read_image
from face2scene_cli.research.eval.suites import degradation_names, degrade

__all__ = [
    "IMAGE_SUFFIXES",
    "EvalItem",
    "degraded_items",
    "find_images",
    "paired_items",
    "split_sources",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


@dataclass
class EvalItem:
    """One (clean, degraded) pair.

    Attributes:
        name: the image's name (relative path or photo name).
        degradation: preset name, ``second-order-K`` or ``paired``.
        clean: (H, W, 3) uint8 RGB, the truth.
        lq: (H / s, W / s, 3) uint8 RGB, the degraded image (s: the evaluation's scale).
        truth: the applied preset (its fields are what FaDeX estimates), when known.
    """

    name: str
    degradation: str
    clean: np.ndarray
    lq: np.ndarray
    truth: Degradation | None = None


def _load_rgb8(path: Path) -> np.ndarray:
    try:
        return as_rgb_uint8(read_image(path).pixels)
    except F2SError as err:
        raise InputError(f"{path}: {err}") from err


def _fit_long_side(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if side <= 0 or max(h, w) <= side:
        return img
    f = side / max(h, w)
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, hidden entries skipped), sorted."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


def degraded_items(sources: list[tuple[str, Path]], config: EvalConfig) -> list[EvalItem]:
    """Every ``(name, path)`` clean photo under every named degradation of the config (its
    ``presets``, else its suite's) and every second-order sample, at its ``scale``."""
    names = degradation_names(config.suite, config.presets)
    degs = list(names) + [f"second-order-{k}" for k in range(config.second_order)]
    if not degs:
        raise ConfigError("no degradation to evaluate: give a preset or --second-order >= 1")
    items = []
    for name, path in sources:
        clean = _fit_long_side(_load_rgb8(path), config.long_side)
        for d in degs:
            out = degrade(clean, d, name, config.seed, config.scale)
            items.append(EvalItem(name, d, out.clean, out.lq, out.truth))
    return items


def paired_items(folder: Path) -> list[EvalItem]:
    """``folder/clean/X`` with ``folder/degraded/X`` (matched by relative path without the
    extension; the degraded image must have the clean one's size)."""
    clean_dir, lq_dir = folder / "clean", folder / "degraded"
    degraded = {p.relative_to(lq_dir).with_suffix("").as_posix(): p for p in find_images(lq_dir)}
    items = []
    for path in find_images(clean_dir):
        key = path.relative_to(clean_dir).with_suffix("").as_posix()
        if key not in degraded:
            logger.warning("%s has no degraded counterpart; skipped", path)
            continue
        clean, lq = _load_rgb8(path), _load_rgb8(degraded[key])
        if clean.shape != lq.shape:
            raise InputError(
                f"{degraded[key]}: size {lq.shape[1]}x{lq.shape[0]} differs from its clean "
                f"image's {clean.shape[1]}x{clean.shape[0]}"
            )
        items.append(EvalItem(key, "paired", clean, lq))
    if not items:
        raise InputError(f"{folder}: no clean/degraded pair found")
    return items


def split_sources(
    split: str = "val", splits: Path = Path("data/splits.yaml")
) -> list[tuple[str, Path]]:
    """``(name, path)`` of the photos of one split (``train``, ``val`` or ``test``) of the
    split manifest."""
    from face2scene_cli.research.splits import load_splits

    return [(p.name, p.path) for p in load_splits(splits)[split]]
