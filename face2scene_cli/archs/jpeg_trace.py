"""JPEG quality read off the quantisation a crop still carries (no learning).

A decoded JPEG keeps, on its 8x8 grid, luma DCT coefficients that are integer multiples of
the quantisation table's entries (up to the 8-bit rounding of the decoded pixels, a few
hundredths of a step). :func:`trace_jpeg` finds the grid phase, measures the step of each of
the first low-frequency coefficients from the periodicity of its values, and fits the
libjpeg (IJG) quality whose luma table has those steps. It works on native, unresampled
crops only, and only when the JPEG compression was the last operation (a resize or a filter
afterwards erases the trace; then :attr:`JpegTrace.found` is False and FaDeX's learned head
is what remains).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from face2scene_cli.degradations.jpeg import dct_kron, dct_matrix, jpeg_quant_tables

__all__ = ["JpegTrace", "trace_jpeg"]

# zig-zag positions (row-major index in the 8x8 block) whose steps are measured: DC and the
# first 14 AC coefficients, the ones real content drives away from zero
_ZIGZAG = (0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4)
_MAX_STEP = 128  # the largest quantisation step tried (DC at quality ~6)
_MIN_VALUES = 16  # coefficients needed off zero to measure a step
_PHASE_BLOCKS = 16  # blocks per side the grid phase is read on (a 135 px central window)
_STEP_BLOCKS = 32  # blocks per side the steps are measured on (the central 256 px)
# q divides the values when their mean cos(2 pi c / q) exceeds max(_PEAK, _SIGNIFICANT /
# sqrt(count)): the 8-bit rounding of decoded RGB leaves ~0.2 of luma error (mean cos ~0.82
# at q = 2), and for values that q does not divide the mean cos is ~0 +- 1 / sqrt(2 count)
_PEAK = 0.6
_SIGNIFICANT = 3.0


@dataclass(frozen=True)
class JpegTrace:
    """What :func:`trace_jpeg` found, per crop (B crops).

    Attributes:
        found: :math:`(B,)` bool: a quantisation grid with at least one step >= 2.
        quality: :math:`(B,)` float: the IJG quality whose luma table fits the measured steps
            best (middle of the tied range); 100 where nothing was found.
        fit_error: :math:`(B,)` float: mean |log(measured / table step)| over the best-fitting
            three quarters of the measured positions (0 = an
            exact IJG table; large = custom tables, e.g. a camera's own).
        steps: :math:`(B, 15)` int64: measured steps at the zig-zag positions (0 = too few
            values off zero to tell).
    """

    found: Tensor
    quality: Tensor
    fit_error: Tensor
    steps: Tensor


@cache
def _dct_basis() -> Tensor:
    """kron(D, D) of the orthonormal 8-point DCT-II, float64 on the CPU, (64, 64)."""
    return dct_kron(torch.device("cpu"), torch.float64)


@cache
def _ijg_luma_steps() -> Tensor:
    """(100, 15) float64: the luma table's steps at the zig-zag positions, quality 1..100."""
    tables = torch.stack([jpeg_quant_tables(q)[0].flatten() for q in range(1, 101)])
    return tables[:, list(_ZIGZAG)].double()


def _block_coefficients(y: Tensor) -> Tensor:
    """(N, 64) DCT coefficients (row-major) of the whole 8x8 blocks of ``y`` (H, W) from its
    origin."""
    h, w = y.shape[0] // 8 * 8, y.shape[1] // 8 * 8
    blocks = y[:h, :w].reshape(h // 8, 8, w // 8, 8).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 64) @ _dct_basis().T


def _central(y: Tensor, side: int) -> Tensor:
    """The central ``side`` x ``side`` region of ``y`` (H, W) (all of a smaller side), its
    origin moved by whole 8 px blocks so the JPEG grid phase is the same as ``y``'s."""
    oy, ox = (max(0, (n - side) // 2) // 8 * 8 for n in y.shape)
    return y[oy : oy + side, ox : ox + side]


def _grid_phase(y: Tensor) -> tuple[int, int]:
    """The phase whose blocks have the most AC coefficients at exactly zero, read on the
    central :data:`_PHASE_BLOCKS` blocks: the DCT of every 8x8 window at once, separably
    (rows, then columns), then the share of zeros per phase. All 63 AC coefficients decide:
    with only the highest frequencies, a smooth crop has them near zero at every phase and
    the phase (then the quality) came out wrong on 3 in 12 held-out q20 crops."""
    y = _central(y, 8 * _PHASE_BLOCKS + 7).float()
    n_y, n_x = ((n - 7) // 8 for n in y.shape)
    d = dct_matrix(torch.float32)
    rows = y.unfold(1, 8, 1) @ d.T  # (H, W - 7, v): each window row's frequencies
    coeffs = rows.unfold(0, 8, 1) @ d.T  # (H - 7, W - 7, v, u)
    zero = (coeffs[: 8 * n_y, : 8 * n_x].abs() < 0.35).float()
    zero[..., 0, 0] = 0.0  # DC
    share = zero.reshape(n_y, 8, n_x, 8, 64).sum(4).mean((0, 2))
    best = int(share.flatten().argmax())  # the first of equals, in (dy, dx) order
    return best // 8, best % 8


def _step(values: Tensor) -> int:
    """The largest q in 1.._MAX_STEP that divides ``values`` (1D); 0 = too few off zero."""
    q = torch.arange(2, _MAX_STEP + 1, dtype=values.dtype)[:, None]
    off = values.abs()[None, :] >= q / 2  # the values a step q would not round to zero
    count = off.sum(1)
    peak = (torch.cos(2 * math.pi * values[None, :] / q) * off).sum(1) / count.clamp(min=1)
    need = torch.clamp(_SIGNIFICANT / count.clamp(min=1).sqrt(), min=_PEAK)
    ok = torch.nonzero((count >= _MIN_VALUES) & (peak > need)).flatten()
    if ok.numel():
        return int(ok[-1]) + 2
    return 1 if int((values.abs() >= 1).sum()) >= _MIN_VALUES else 0


def trace_jpeg(lq: Tensor) -> JpegTrace:
    r"""Measure the JPEG quantisation left in native crops.

    Args:
        lq: :math:`(B, C, H, W)` float in [0, 1] (decoded 8-bit values / 255), C in {1, 3},
            RGB order, H and W >= 16; the crop must not be resampled.

    Returns:
        :class:`JpegTrace`.
    """
    if lq.ndim != 4 or lq.shape[1] not in (1, 3) or min(lq.shape[2:]) < 16:
        raise ValueError(f"lq must be (B, C, H>=16, W>=16) with C in {{1, 3}}, got {lq.shape}")
    x = lq.detach().to("cpu", torch.float64) * 255.0
    luma = x[:, 0] if x.shape[1] == 1 else 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    table = _ijg_luma_steps()
    steps = torch.zeros(lq.shape[0], len(_ZIGZAG), dtype=torch.int64)
    quality = torch.full((lq.shape[0],), 100.0)
    error = torch.zeros(lq.shape[0])
    for b in range(lq.shape[0]):
        y = luma[b] - 128.0
        dy, dx = _grid_phase(y)
        coeffs = _block_coefficients(_central(y[dy:, dx:], 8 * _STEP_BLOCKS))
        for i, pos in enumerate(_ZIGZAG):
            steps[b, i] = _step(coeffs[:, pos])
        known = steps[b] > 0
        if not bool(known.any()) or int(steps[b].max()) < 2:
            continue
        # trimmed mean over positions: clipped or near-empty positions can mislead one step
        err = (table[:, known].log() - steps[b, known].double().log()).abs()
        keep = max(1, math.ceil(0.75 * err.shape[1]))
        err = err.sort(dim=1).values[:, :keep].mean(1)
        ties = torch.nonzero(err <= err.min() + 1e-9).flatten() + 1
        quality[b] = float(ties.double().median())
        error[b] = float(err.min())
    return JpegTrace(found=steps.max(1).values >= 2, quality=quality, fit_error=error, steps=steps)
