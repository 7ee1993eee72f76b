"""Undo a read motion blur: a regularised Wiener deconvolution of the scene restorer's output.

The scene restorer never saw motion blur in training: it denoises a camera-shaken photo and
leaves the shake. FaDeX reads the shake's length and direction
(:attr:`~face2scene_cli.degradations.estimate.Estimate.motion_px`, ``motion_angle_deg``), so the
known linear kernel is taken off the restored (denoised) photo by a Wiener filter whose
regulariser is the discrete Laplacian (:func:`deconvolve`): it keeps the mean, damps what the
kernel left near zero. The strength is calibrated per scene model on VAL (``scene.json``
``motion_deblur``). Nothing here prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.ops import motion_kernel2d
from face2scene_cli.degradations.record import MAX_MOTION_PX, motion_kernel_size
from face2scene_cli.errors import ConfigError

__all__ = ["MotionDeblur", "deconvolve", "motion_kernel_for"]


def deconvolve(x: Tensor, kernel: Tensor, regularization: float) -> Tensor:
    r"""Laplacian-regularised Wiener deconvolution of every channel by one kernel.

    :math:`\hat X = \bar K X / (|K|^2 + \lambda |D|^2)` with :math:`D` the 5-point Laplacian,
    on the image reflect-padded by twice the kernel's size (no wrap-around ringing at the
    borders).

    Args:
        x: :math:`(B, C, H, W)` in [0, 1], H and W larger than twice the kernel.
        kernel: :math:`(k, k)`, odd k, summing to 1 (a blur kernel as
            :func:`~face2scene_cli.degradations.ops.blur` applies it).
        regularization: :math:`\lambda` > 0; larger keeps more of the blur and less noise.

    Returns:
        :math:`(B, C, H, W)` clamped to [0, 1], in ``x``'s dtype.
    """
    if regularization <= 0:
        raise ValueError(f"regularization must be > 0, got {regularization}")
    k = kernel.shape[-1]
    pad = 2 * k
    xp = F.pad(x.double(), (pad, pad, pad, pad), mode="reflect")
    h, w = xp.shape[-2:]
    psf = torch.zeros(h, w, dtype=torch.float64, device=x.device)
    psf[:k, :k] = kernel.to(device=x.device, dtype=torch.float64)
    psf = torch.roll(psf, (-(k // 2), -(k // 2)), (0, 1))
    lap = torch.zeros(h, w, dtype=torch.float64, device=x.device)
    lap[0, 0] = 4.0
    lap[0, 1] = lap[1, 0] = lap[0, -1] = lap[-1, 0] = -1.0
    otf, reg = torch.fft.rfft2(psf), torch.fft.rfft2(lap)
    gain = otf.conj() / (otf.abs().square() + regularization * reg.abs().square())
    out = torch.fft.irfft2(torch.fft.rfft2(xp) * gain, s=(h, w))
    return out[..., pad : pad + x.shape[-2], pad : pad + x.shape[-1]].clamp(0, 1).to(x.dtype)


def motion_kernel_for(estimate: Estimate) -> Tensor:
    """The linear motion kernel a reading states (its length, capped at the record's
    maximum, and direction)."""
    length = min(max(estimate.motion_px, 1.0), MAX_MOTION_PX)
    angle = math.radians(estimate.motion_angle_deg)
    return motion_kernel2d(motion_kernel_size(length), length, angle)


@dataclass(frozen=True)
class MotionDeblur:
    """The motion deconvolution calibrated for a scene model (``scene.json``
    ``motion_deblur``; chosen on VAL by ``benchmarks/motion_deblur_val.py``).

    Attributes:
        regularization: the Laplacian weight of :func:`deconvolve`.
    """

    regularization: float

    def __post_init__(self) -> None:
        r = self.regularization
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0:
            raise ConfigError(f"motion_deblur.regularization must be a number > 0, got {r!r}")

    def __call__(self, restored: Tensor, estimate: Estimate) -> Tensor:
        """``restored`` :math:`(1, C, H, W)` in [0, 1] with the read motion taken off, or
        ``restored`` itself when the reading states none
        (:attr:`~face2scene_cli.degradations.estimate.Estimate.motion`) or the photo is too
        small for the kernel."""
        if not estimate.motion:
            return restored
        kernel = motion_kernel_for(estimate)
        if min(restored.shape[-2:]) <= 4 * kernel.shape[-1]:
            return restored
        return deconvolve(restored, kernel, self.regularization)
