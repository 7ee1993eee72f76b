"""``f2s degrade`` as a batch job: synthetic degradations applied to whole images.

Colour or grey pixels are degraded; an alpha channel is carried through untouched (only
resized when the degradation downscales). 16-bit images are degraded in float and written
back in 16 bits.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from face2scene_cli.config import DegradeConfig
from face2scene_cli.degradations.record import PRESETS, Degradation
from face2scene_cli.degradations.sampling import (
    DegradationDistribution,
    apply,
    image_generator,
    image_seed,
)
from face2scene_cli.degradations.second_order import SecondOrderConfig
from face2scene_cli.engine.job import LoadedImage, Processed
from face2scene_cli.errors import F2SError
from face2scene_cli.io.tensors import from_tensor, to_tensor

# Bump when an algorithm change alters outputs, so resumed runs redo stale images.
ALGORITHM_VERSION = 1


class DegradePipeline:
    """Applies one degradation per image, seeded by hash(seed, relative path)."""

    command = "degrade"

    def __init__(self, config: DegradeConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.fixed = _fixed(config)  # built once, before any image is read
        self.distribution = DegradationDistribution(
            mix=(0.0, 0.0, 1.0),
            second_order=SecondOrderConfig(final_scale=int(config.downscale or 1)),
        )

    def settings(self) -> dict[str, Any]:
        return {
            "algorithm_version": ALGORITHM_VERSION,
            "mode": self.config.mode,
            "preset": self.config.preset,
            "params": self.fixed.to_dict() if self.fixed else self.distribution.to_dict(),
        }

    def warnings(self) -> list[str]:
        """Always empty: degrading reads no setup files that could be skipped."""
        return []

    def degradation(self, seed: int, key: str) -> Degradation:
        """The degradation of the image ``key``: the fixed one with the noise seed
        ``image_seed(seed, key)``, or a second-order sample drawn from that seed."""
        if self.fixed is not None:
            return self.fixed.with_seed(image_seed(seed, key))
        return self.distribution.sample(image_generator(seed, key, device=self.device))

    def models(self) -> list[dict[str, str]]:
        return []

    def process(self, batch: list[LoadedImage], seed: int) -> list[Processed | F2SError]:
        return [self._one(loaded, seed) for loaded in batch]

    def _one(self, loaded: LoadedImage, seed: int) -> Processed:
        t0 = time.perf_counter()
        image = loaded.image
        pixels = image.pixels
        colour, alpha = (pixels[..., :-1], pixels[..., -1:]) if image.has_alpha else (pixels, None)
        x = to_tensor(colour).to(self.device)
        degradation = self.degradation(seed, loaded.item.key)
        y = apply(x, degradation)
        out = from_tensor(y.cpu(), pixels.dtype)
        if alpha is not None:
            a = to_tensor(alpha)
            if a.shape[-2:] != y.shape[-2:]:
                a = F.interpolate(a, size=y.shape[-2:], mode="area")
            out = torch.cat(
                [torch.from_numpy(out), torch.from_numpy(from_tensor(a, pixels.dtype))], dim=-1
            ).numpy()
        timings = {"degrade": time.perf_counter() - t0}
        fields = {"applied_degradation": degradation.to_dict()}
        return Processed(image.with_pixels(out), fields, timings)


def _fixed(cfg: DegradeConfig) -> Degradation | None:
    """The fixed degradation of preset/parametric mode, without its noise seed (None in
    second-order mode). ``downscale`` is kept: the output stays smaller."""
    if cfg.mode == "preset":
        return PRESETS[cfg.preset]  # type: ignore[index]
    if cfg.mode == "parametric":
        return Degradation(
            "parametric",
            blur_sigma_px=cfg.blur_sigma or 0.0,
            motion_px=cfg.motion_px or 0.0,
            motion_angle_deg=cfg.motion_angle or 0.0,
            noise_sigma=cfg.noise_sigma or 0.0,
            poisson_scale=cfg.shot_noise or 0.0,
            gray_noise=bool(cfg.gray_noise),
            jpeg_quality=cfg.jpeg_quality,
            downscale=cfg.downscale or 1.0,
            downscale_kernel=cfg.downscale_kernel or "bicubic",
        )
    return None
