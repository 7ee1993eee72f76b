"""The evaluation's items: clean photos degraded on the fly, or (clean, degraded) pairs.

Clean photos are area-downscaled to ``long_side`` (8-bit RGB) and degraded by named presets
and seeded Real-ESRGAN second-order samples (:func:`degraded_items`); a paired folder gives
``clean/X`` with ``degraded/X`` (:func:`paired_items`). :class:`EvalConfig` says which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from face2scene_cli.config import EvalConfig
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import DegradationDistribution, apply, image_seed
from face2scene_cli.errors import ConfigError, F2SError, InputError
from face2scene_cli.faces.detect import as_rgb_uint8
from face2scene_cli.io.images import read_image
from face2scene_cli.io.tensors import to_tensor

__all__ = [
    "IMAGE_SUFFIXES",
    "EvalItem",
    "degrade_item",
    "degraded_items",
    "find_images",
    "item_degradation",
    "paired_items",
    "val_sources",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


@dataclass
class EvalItem:
    """One (clean, degraded) pair.

    Attributes:
        name: the image's name (relative path or photo name).
        degradation: preset name, ``second-order-K`` or ``paired``.
        clean, lq: (H, W, 3) uint8 RGB of the same size.
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


def item_degradation(name: str, degradation: str, seed: int) -> Degradation:
    """The degradation of item ``name`` under ``degradation`` (a preset or ``second-order-K``).

    A preset's noise is seeded with ``image_seed(seed, f"{name}|{preset}")``; the
    ``second-order-K`` sample is drawn from ``image_seed(seed, "second-order-K")`` (the same
    sample for every image).
    """
    if degradation.startswith("second-order-"):
        g = torch.Generator().manual_seed(image_seed(seed, degradation))
        return DegradationDistribution(mix=(0.0, 0.0, 1.0)).sample(g)
    return Degradation.from_preset(degradation, image_seed(seed, f"{name}|{degradation}"))


def degrade_item(clean: np.ndarray, degradation: Degradation) -> np.ndarray:
    """The degraded copy of ``clean`` (H, W, 3) uint8 -> same shape uint8."""
    y = apply(to_tensor(clean), degradation)
    return (y[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def degraded_items(sources: list[tuple[str, Path]], config: EvalConfig) -> list[EvalItem]:
    """Every ``(name, path)`` clean photo under every preset and second-order sample."""
    degs = list(config.presets) + [f"second-order-{k}" for k in range(config.second_order)]
    if not degs:
        raise ConfigError("no degradation to evaluate: give a preset or --second-order >= 1")
    for d in config.presets:
        Degradation.from_preset(d)  # unknown names fail before any work
    items = []
    for name, path in sources:
        clean = _fit_long_side(_load_rgb8(path), config.long_side)
        for d in degs:
            deg = item_degradation(name, d, config.seed)
            truth = None if deg.mode == "second-order" else deg
            items.append(EvalItem(name, d, clean, degrade_item(clean, deg), truth))
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


def val_sources(splits: Path = Path("data/splits.yaml")) -> list[tuple[str, Path]]:
    """``(name, path)`` of the VAL photos of the split manifest."""
    from face2scene_cli.research.splits import load_splits

    return [(p.name, p.path) for p in load_splits(splits)["val"]]
