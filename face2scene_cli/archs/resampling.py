r"""Fixed spectral statistics that tell a down-then-up resampling from an optical blur.

A resolution loss by a factor :math:`s` (downscale, then upscale back) and a Gaussian blur of
the same effective width look alike to a blur measure, but not in the spectrum:

* the resampled image's power falls off a cliff near :math:`1/(2s)` cycles per pixel (the
  low-resolution grid's Nyquist frequency) where a Gaussian blur's decays smoothly
  (:func:`radial_spectrum`);
* interpolating from a coarser grid makes the local curvature periodic with the
  low-resolution period :math:`s` (Popescu and Farid's resampling trace): the mean absolute
  second derivative along a row or column has a spectral peak at :math:`1/s`, aliased into
  :math:`(0, 1/2]` (:func:`curvature_periodicity`).

FaDeX's downscale head reads both (:class:`~face2scene_cli.archs.fadex.FaDeX` with
``downscale_head``); its other heads leave a resolution loss to the blur estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "NUM_PERIODICITY",
    "NUM_RADIAL",
    "NUM_RESAMPLING",
    "curvature_periodicity",
    "luma",
    "mean_per_cell",
    "power_spectrum",
    "radial_spectrum",
    "resampling_features",
]

#: Radial frequency bands of :func:`radial_spectrum` over (0, 1/2] cycles per pixel (the
#: first band, which holds the DC term, is dropped).
NUM_RADIAL = 23
#: Frequency bins of :func:`curvature_periodicity` over (0, 1/2] cycles per pixel.
NUM_PERIODICITY = 32
#: Width of :func:`resampling_features`.
NUM_RESAMPLING = NUM_RADIAL + NUM_PERIODICITY

_EPS = 1e-6


def luma(x: Tensor) -> Tensor:
    """:math:`(B, 1, H, W)` Rec. 601 luma of :math:`(B, C, H, W)` RGB (C = 1: ``x`` itself)."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def power_spectrum(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The Hann-windowed power spectrum of a luma with its mean removed, and its frequencies.

    Args:
        y: :math:`(B, H, W)` luma.

    Returns:
        ``power`` :math:`(B, H (W/2+1))`: the :func:`torch.fft.rfft2` bins, flattened; ``fy``
        and ``fx`` :math:`(H, W/2+1)`: each bin's vertical and horizontal frequency in cycles
        per pixel.
    """
    h, w = y.shape[-2:]
    win = torch.hann_window(h, periodic=False, dtype=y.dtype, device=y.device)[:, None]
    win = win * torch.hann_window(w, periodic=False, dtype=y.dtype, device=y.device)[None]
    power = torch.fft.rfft2((y - y.mean((1, 2), keepdim=True)) * win).abs().square().flatten(1)
    fy = torch.fft.fftfreq(h, device=y.device, dtype=y.dtype)[:, None].expand(h, w // 2 + 1)
    fx = torch.fft.rfftfreq(w, device=y.device, dtype=y.dtype)[None].expand(h, w // 2 + 1)
    return power, fy, fx


def mean_per_cell(power: Tensor, cell: Tensor, cells: int) -> Tensor:
    r"""The mean of ``power`` :math:`(B, N)` over the bins of each cell: ``cell`` :math:`(N,)`
    holds each bin's cell index in [0, ``cells``); :math:`(B, cells)`, 0 where a cell is empty."""
    count = torch.bincount(cell, minlength=cells).clamp(min=1).to(power.dtype)
    sums = torch.zeros(power.shape[0], cells, dtype=power.dtype, device=power.device)
    return sums.index_add_(1, cell, power) / count


def radial_spectrum(y: Tensor) -> Tensor:
    r"""Log10 power per radial frequency band, relative to the two lowest bands.

    Args:
        y: :math:`(B, H, W)` luma.

    Returns:
        :math:`(B, N_{radial})`: bands of width :math:`1/(2 (N_{radial}+1))` cycles per pixel
        from the second to the last below 1/2 (Hann-windowed; power floored at 1e-6).
    """
    bands = NUM_RADIAL + 1
    power, fy, fx = power_spectrum(y)
    band = ((fy.square() + fx.square()).sqrt() * 2 * bands).long().clamp(max=bands).flatten()
    log_power = mean_per_cell(power, band, bands + 1)[:, 1:bands].clamp(min=_EPS).log10()
    return log_power - log_power[:, :2].mean(1, keepdim=True)


def curvature_periodicity(y: Tensor) -> Tensor:
    r"""Spectrum of the mean absolute second derivative along rows and along columns.

    Args:
        y: :math:`(B, H, W)` luma, H and W >= 4.

    Returns:
        :math:`(B, N_{periodicity})`: log10 of the peak amplitude in each of
        :data:`NUM_PERIODICITY` equal bins over (0, 1/2] cycles per pixel, relative to the
        mean curvature (an empty bin reads -3), averaged over the two directions.
    """
    out = []
    for t in (y, y.transpose(1, 2)):
        d2 = (t[:, :, 2:] - 2 * t[:, :, 1:-1] + t[:, :, :-2]).abs().mean(1)
        mean = d2.mean(1, keepdim=True)
        amp = torch.fft.rfft(d2 - mean).abs()[:, 1:] / (mean * d2.shape[1] ** 0.5 + _EPS)
        freq = torch.fft.rfftfreq(d2.shape[1], device=y.device, dtype=y.dtype)[1:]
        bins = (freq * 2 * NUM_PERIODICITY - 1e-6).long().clamp(0, NUM_PERIODICITY - 1)
        peak = torch.zeros(y.shape[0], NUM_PERIODICITY, dtype=y.dtype, device=y.device)
        peak = peak.scatter_reduce(1, bins.expand_as(amp), amp, "amax", include_self=False)
        out.append(peak.clamp(min=1e-3).log10())
    return (out[0] + out[1]) / 2


def resampling_features(x: Tensor) -> Tensor:
    r""":func:`radial_spectrum` and :func:`curvature_periodicity` of an image's :func:`luma`.

    Args:
        x: :math:`(B, C, H, W)` in [0, 1], C in {1, 3}, H and W >= 4.

    Returns:
        :math:`(B, N_{resampling})` float32, values within about [-6, 2].
    """
    y = luma(x.float())[:, 0]
    return torch.cat([radial_spectrum(y), curvature_periodicity(y)], dim=1)
