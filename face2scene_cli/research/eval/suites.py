"""The evaluation's named degradations and suites: what ``f2s eval --suite`` degrades with.

* ``standard``: the presets of :data:`~face2scene_cli.degradations.record.PRESETS` (inside
  the training ranges) plus seeded second-order samples;
* ``ood`` (out of distribution): degradations never used in training by name and partly
  outside the training ranges (:data:`OOD`): strong noise, heavy blur, strong JPEG, x4 loss of
  resolution, motion blur, camera (signal-dependent) noise, a chat-app copy, the clean photo
  itself (a restorer must not damage it) and a noisy grayscale photo;
* ``mild``: light degradations (:data:`MILD`) of the kind a good phone photo or a careful
  scan carries, which a restorer must improve a little or leave alone (do no harm).

:func:`degrade` applies one by name to a clean photo; it returns the clean photo the output
is scored against (the grayscale item turns the truth gray too), the degraded image, and the
:class:`~face2scene_cli.degradations.record.Degradation` that FaDeX's estimates are scored
against where one record describes the degradation (None otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from face2scene_cli.degradations.jpeg import jpeg_compress
from face2scene_cli.degradations.ops import (
    resize,
    rgb_to_gray,
)
from face2scene_cli.degradations.record import PRESETS, Degradation
from face2scene_cli.degradations.sampling import DegradationDistribution, apply, image_seed
from face2scene_cli.degradations.second_order import SecondOrderConfig
from face2scene_cli.errors import ConfigError
from face2scene_cli.io.tensors import to_tensor

__all__ = ["MILD", "OOD", "SUITES", "Degraded", "degradation_names", "degrade"]

#: The out-of-distribution degradations: name -> what it does.
OOD: dict[str, str] = {
    "noise30": "Gaussian colour noise σ 30/255",
    "noise50": "Gaussian colour noise σ 50/255",
    "blur3": "Gaussian blur σ 3 px",
    "jpeg10": "JPEG quality 10 (4:2:0)",
    "jpeg20": "JPEG quality 20 (4:2:0)",
    "down4": "bicubic downscale x4, then bicubic up to the size",
    "motion9-noise5": "motion blur 9 px (seeded direction) + Gaussian noise σ 5/255",
    "camera-jpeg80": "Poisson shot noise (scale 1) + Gaussian read noise σ 2/255 + JPEG q80",
    "down2-jpeg30": "bicubic downscale x2, JPEG q30 (4:2:0), bicubic up to the size",
    "clean": "nothing: the clean photo itself",
    "gray-noise10": "the photo in grayscale (BT.601 luma) + gray noise σ 10/255",
}
#: The light degradations: name -> what it does.
MILD: dict[str, str] = {
    "noise3": "Gaussian colour noise σ 3/255",
    "noise6": "Gaussian colour noise σ 6/255",
    "jpeg90": "JPEG quality 90 (4:2:0)",
    "jpeg70": "JPEG quality 70 (4:2:0)",
    "jpeg50": "JPEG quality 50 (4:2:0)",
    "blur1": "Gaussian blur σ 1 px",
    "down1.5": "bicubic downscale x1.5, then bicubic up to the size",
    "camera-jpeg95": "Poisson shot noise (scale 0.25) + Gaussian read noise σ 1/255 + JPEG q95",
}
#: The suites of ``f2s eval --suite``: their named degradations (second-order samples apart).
SUITES: dict[str, tuple[str, ...]] = {
    "standard": tuple(PRESETS),
    "ood": tuple(OOD),
    "mild": ("clean", *MILD),
}
#: The OOD and mild degradations one parametric record describes exactly (FaDeX's estimates
#: are scored).
_RECORDS: dict[str, Degradation] = {
    "noise30": Degradation("parametric", noise_sigma=30.0),
    "noise50": Degradation("parametric", noise_sigma=50.0),
    "blur3": Degradation("parametric", blur_sigma_px=3.0),
    "jpeg10": Degradation("parametric", jpeg_quality=10),
    "jpeg20": Degradation("parametric", jpeg_quality=20),
    "down4": Degradation("parametric", downscale=4.0, resize_back=True),
    "clean": Degradation("parametric"),
    "noise3": Degradation("parametric", noise_sigma=3.0),
    "noise6": Degradation("parametric", noise_sigma=6.0),
    "jpeg90": Degradation("parametric", jpeg_quality=90),
    "jpeg70": Degradation("parametric", jpeg_quality=70),
    "jpeg50": Degradation("parametric", jpeg_quality=50),
    "blur1": Degradation("parametric", blur_sigma_px=1.0),
    "down1.5": Degradation("parametric", downscale=1.5, resize_back=True),
    "camera-jpeg80": Degradation("parametric", poisson_scale=1.0, noise_sigma=2.0, jpeg_quality=80),
    "camera-jpeg95": Degradation(
        "parametric", poisson_scale=0.25, noise_sigma=1.0, jpeg_quality=95
    ),
    "gray-noise10": Degradation("parametric", noise_sigma=10.0, gray_noise=True),
}
#: What FaDeX's estimates of each OOD item are scored against (None: no single record; FaDeX
#: reads one noise sigma, which shot noise does not have).
_OOD_TRUTH: dict[str, Degradation] = {
    name: d for name, d in _RECORDS.items() if d.poisson_scale == 0
}


def _motion9_noise5(generator: torch.Generator) -> Degradation:
    """``motion9-noise5``'s record: its direction is the first draw of ``generator`` (the
    item's, which then draws the noise; the record carries no seed of its own)."""
    angle = float(torch.rand((), generator=generator)) * 180.0
    return Degradation("parametric", motion_px=9.0, motion_angle_deg=angle, noise_sigma=5.0)


@dataclass(frozen=True)
class Degraded:
    """One degraded photo: ``clean`` (H, W, 3) uint8 (the truth, H and W multiples of the
    scale), ``lq`` (H / scale, W / scale, 3) uint8, and the record FaDeX is scored against."""

    clean: np.ndarray
    lq: np.ndarray
    truth: Degradation | None


def degradation_names(suite: str, names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The named degradations to run: ``names`` (checked: presets and OOD names) or the
    suite's (ConfigError for an unknown suite or name)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    if names is None:
        return SUITES[suite]
    known = (*PRESETS, *OOD, *MILD)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown degradation(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(names)


def _fit(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _named(name: str, x: Tensor, seed: int) -> Tensor:
    """The OOD or mild degradation ``name`` of ``x`` (1, C, H, W) in [0, 1], size kept."""
    g = torch.Generator().manual_seed(seed)
    h, w = x.shape[-2:]
    if name in _RECORDS:
        return apply(x, _RECORDS[name].with_seed(seed))
    if name == "motion9-noise5":
        return apply(x, _motion9_noise5(g), g)
    if name == "down2-jpeg30":
        small = resize(x, (round(h / 2), round(w / 2)), "bicubic").clamp(0, 1)
        return resize(jpeg_compress(small, 30), (h, w), "bicubic").clamp(0, 1)
    raise ConfigError(f"unknown OOD or mild degradation {name!r}")


def degrade(clean: np.ndarray, name: str, key: str, seed: int, scale: int = 1) -> Degraded:
    """Degrade ``clean`` (H, W, 3) uint8 by the named degradation ``name``.

    Args:
        clean: the clean photo.
        name: a preset, an :data:`OOD` or :data:`MILD` name or ``second-order-K`` (the K-th
            seeded sample, the same for every photo).
        key: the photo's stable name; the noise seed is ``image_seed(seed, f"{key}|{name}")``.
        seed: the run's base seed.
        scale: resolution loss of the output (1, 2 or 4): presets lose it after their blur
            (bicubic, antialiased), second-order samples by their ``final_scale``; the OOD
            degradations keep the size (``scale`` must be 1).

    Returns:
        :class:`Degraded`; ``truth`` is None for second-order samples, for OOD degradations
        no single record describes, and when ``scale`` > 1.
    """
    if scale not in (1, 2, 4):
        raise ConfigError(f"scale must be 1, 2 or 4, got {scale}")
    clean = _fit(clean, scale)
    if name.startswith("second-order-"):
        dist = DegradationDistribution(
            mix=(0.0, 0.0, 1.0), second_order=SecondOrderConfig(final_scale=scale)
        )
        deg = dist.sample(torch.Generator().manual_seed(image_seed(seed, name)))
        return Degraded(clean, _to_uint8(apply(to_tensor(clean), deg)), None)
    item_seed = image_seed(seed, f"{key}|{name}")
    if name in OOD or name in MILD:
        if scale != 1:
            raise ConfigError(f"{name}: the OOD and mild degradations keep the size (scale 1 only)")
        x = to_tensor(clean)
        if name == "gray-noise10":
            x = rgb_to_gray(x).expand(-1, 3, -1, -1)
            clean = _to_uint8(x)
        truth = (
            _motion9_noise5(torch.Generator().manual_seed(item_seed))
            if name == "motion9-noise5"
            else _OOD_TRUTH.get(name)
        )
        return Degraded(clean, _to_uint8(_named(name, x, item_seed)), truth)
    deg = Degradation.from_preset(name, item_seed)
    if scale == 1:
        return Degraded(clean, _to_uint8(apply(to_tensor(clean), deg)), deg)
    low = Degradation(
        "parametric",
        blur_sigma_px=deg.blur_sigma_px,
        noise_sigma=deg.noise_sigma,
        jpeg_quality=deg.jpeg_quality,
        downscale=float(scale),
        seed=item_seed,
    )
    return Degraded(clean, _to_uint8(apply(to_tensor(clean), low)), None)
