"""Noise as a function of brightness, read off a photo's flattest blocks.

Camera noise is signal-dependent: shot noise grows with the light a pixel caught, read noise
does not, so one global sigma overstates the shadows and understates the highlights. The
:class:`NoiseCurve` gives the noise sigma per brightness band and the fit of the
Poisson-Gaussian model ``sigma^2 = read^2 + shot * level`` (sigma and level in 8-bit units).

Per colour channel, the photo is cut into ``block`` x ``block`` blocks (a regular subset of
them on large photos); each block's noise is Immerkær's estimate (the mean absolute response
of a Laplacian difference kernel that cancels planes, scaled to a Gaussian sigma), and each
band takes a low quantile of its blocks' estimates: the flattest blocks, where the estimate is
noise rather than texture, calibrated so that pure Gaussian noise reads its sigma. Blocks with
more than 5% clipped pixels (0 or 255: clipping removes noise) are left out.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["NoiseCurve", "estimate_noise_curve"]

#: The quantile of the block estimates a band takes (the flattest tenth of its blocks).
_QUANTILE = 0.1
#: Pure Gaussian noise in 16 px blocks: the 10% quantile of the estimates over sigma (0.878 at
#: sigma 3, 10 and 30 on 60,000 blocks of seeded noise; ``tests/test_noise_level.py`` checks it).
_QUANTILE_BIAS = 0.878
#: Blocks with more clipped pixels (0 or 255) than this are left out: clipping removes noise.
_MAX_CLIPPED = 0.05


@dataclass(frozen=True)
class NoiseCurve:
    """Noise sigma per brightness band (8-bit units, as ``noise_sigma``).

    Attributes:
        levels: each band's level, 8-bit (0-255): the median brightness of its blocks (the
            band's centre where it has too few).
        sigma: the noise sigma in each band, None where the photo has too few unclipped blocks
            of that brightness.
        read: the fitted signal-independent part (sigma at level 0).
        shot: the fitted signal-dependent part: ``sigma^2 = read^2 + shot * level``; Poisson
            noise of scale s (:func:`~face2scene_cli.degradations.ops.add_poisson_noise`) has
            ``shot`` ~ s^2.
    """

    levels: tuple[float, ...]
    sigma: tuple[float | None, ...]
    read: float
    shot: float

    def at(self, level: float) -> float:
        """The fitted sigma at an 8-bit ``level``."""
        return math.sqrt(self.read**2 + self.shot * max(0.0, level))

    def to_report(self) -> dict[str, Any]:
        """``{"levels", "sigma", "read", "shot"}``, rounded, for the reports."""
        return {
            "levels": [round(v, 1) for v in self.levels],
            "sigma": [None if s is None else round(s, 2) for s in self.sigma],
            "read": round(self.read, 2),
            "shot": round(self.shot, 4),
        }


def _channels_first(pixels: np.ndarray) -> Tensor:
    """(C, H, W) of (H, W, C) pixels: a view of 8-bit ones, 16-bit ones scaled to [0, 1]."""
    if pixels.ndim != 3:
        raise ValueError(f"pixels must be (H, W, C), got shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        with warnings.catch_warnings():  # decoded arrays may be read-only: only read here
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(pixels).permute(2, 0, 1)
    if pixels.dtype == np.uint16:
        scaled = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 65535)
        return torch.from_numpy(scaled)
    raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")


def _block_sigmas(x: Tensor, block: int, max_blocks: int) -> tuple[Tensor, Tensor]:
    """Per block of ``x`` (C, H, W) (uint8 levels, or float in [0, 1]): (mean level, Immerkær
    sigma) in 8-bit units, blocks with few clipped pixels only, on a regular subset of at most
    ~``max_blocks`` block positions; only the blocks read are converted to float."""
    _, h, w = x.shape
    ny, nx = h // block, w // block
    step = max(1, math.ceil(math.sqrt(ny * nx / max_blocks)))
    blocks = (
        x[:, : ny * block, : nx * block]
        .unflatten(1, (ny, block))
        .unflatten(3, (nx, block))[:, ::step, :, ::step]
        .permute(0, 1, 3, 2, 4)
        .reshape(-1, 1, block, block)
        .float()
    )
    if x.dtype != torch.uint8:
        blocks = blocks * 255.0
    clipped = ((blocks < 0.5) | (blocks > 254.5)).flatten(1).float().mean(1) > _MAX_CLIPPED
    blocks = blocks[~clipped]
    # Immerkær's kernel [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] is the outer product of two
    # second differences: zero on planes, 36 x the variance of white noise in its output
    rows = blocks[..., :-2] - 2 * blocks[..., 1:-1] + blocks[..., 2:]
    response = rows[..., :-2, :] - 2 * rows[..., 1:-1, :] + rows[..., 2:, :]
    sigma = response.abs().mean((1, 2, 3)) * math.sqrt(math.pi / 2) / 6
    return blocks.mean((1, 2, 3)), sigma


def _fit(levels: Tensor, var: Tensor, weight: Tensor) -> tuple[float, float]:
    """Weighted least squares of ``var = read^2 + shot * level`` with both parts >= 0 (one
    band alone cannot tell them apart: it is read noise)."""
    if len(levels) < 2:
        return math.sqrt(float(var[0])), 0.0
    a = torch.stack([torch.ones_like(levels), levels], 1) * weight[:, None].sqrt()
    sol = torch.linalg.lstsq(a, var * weight.sqrt()).solution
    read2, shot = float(sol[0]), float(sol[1])
    if shot < 0:
        read2, shot = float((weight * var).sum() / weight.sum()), 0.0
    elif read2 < 0:
        read2, shot = 0.0, float((weight * var * levels).sum() / (weight * levels**2).sum())
    return math.sqrt(read2), shot


def estimate_noise_curve(
    image: Tensor | np.ndarray,
    bands: int = 8,
    block: int = 16,
    min_blocks: int = 12,
    max_blocks: int = 2048,
) -> NoiseCurve:
    r"""Read the noise level per brightness band of a photo.

    Args:
        image: :math:`(C, H, W)`, uint8 levels or float in [0, 1] (decoded 8-bit values /
            255), or the decoded pixels (H, W, C) uint8/uint16; C in {1, 3}, at its native
            resolution (any resampling changes the noise). 8-bit pixels are read in place
            (only the blocks read are copied).
        bands: brightness bands across 0-255.
        block: block side, px.
        min_blocks: blocks a band needs for an estimate.
        max_blocks: block positions read at most (large photos are subsampled on a grid).

    Returns:
        :class:`NoiseCurve`; with no band estimated, ``read`` and ``shot`` are 0.
    """
    if isinstance(image, np.ndarray):
        image = _channels_first(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < block:
        raise ValueError(f"image must be (C, H>={block}, W>={block}), C in {{1, 3}}")
    mean, sigma = _block_sigmas(image.detach().cpu(), block, max_blocks)
    edges = torch.linspace(0.0, 255.0, bands + 1)
    band = torch.bucketize(mean, edges[1:-1])
    levels: list[float] = []
    values: list[float | None] = []
    counts: list[float] = []
    for b in range(bands):
        inside = band == b
        counts.append(float(inside.sum()))
        if counts[-1] >= min_blocks:
            values.append(float(torch.quantile(sigma[inside], _QUANTILE)) / _QUANTILE_BIAS)
            levels.append(float(mean[inside].median()))
        else:
            values.append(None)
            levels.append(float(edges[b] + edges[b + 1]) / 2)
    known = [i for i, v in enumerate(values) if v is not None]
    read = shot = 0.0
    if known:
        var = torch.tensor([values[i] ** 2 for i in known])
        weight = torch.tensor([counts[i] for i in known])
        read, shot = _fit(torch.tensor([levels[i] for i in known]), var, weight)
    return NoiseCurve(tuple(levels), tuple(values), read, shot)
