"""Undo a read blur the scene restorer left: a regularised Wiener deconvolution of its output.

The scene restorer never saw motion blur in training (it denoises a camera-shaken photo and
leaves the shake) and corrects a Gaussian blur beyond its training range (2.5 px) only in
part. FaDeX reads both: a motion's length and direction
(:attr:`~face2scene_cli.degradations.estimate.Estimate.motion_px`, ``motion_angle_deg``), the
optical blur left once a resolution loss takes its share
(:func:`~face2scene_cli.degradations.record.optical_blur`). So :class:`Deblur` takes the known
kernel off the restored photo by a Wiener filter whose regulariser is the discrete Laplacian
(:func:`deconvolve`: it keeps the mean and damps what the kernel left near zero): the motion's
segment, or a Gaussian of a fraction of the optical blur (what the network leaves of it). Its
settings are calibrated per scene model on VAL (``scene.json`` ``deblur``). Nothing here prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.degradations.checks import positive, settings_block
from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.ops import gaussian_kernel2d, motion_kernel2d
from face2scene_cli.degradations.record import MAX_MOTION_PX, motion_kernel_size, optical_blur

__all__ = ["Deblur", "GaussianDeblur", "deconvolve", "motion_kernel_for"]


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
class GaussianDeblur:
    """The Gaussian part of :class:`Deblur`.

    Attributes:
        fraction: of the read optical blur taken off (the network undoes the rest itself).
        regularization: the Laplacian weight of :func:`deconvolve`.
        min_px: the optical blur (px) from which it runs.
        max_downscale: it runs only under this read resolution loss (a resampling is not a
            Gaussian: on VAL, deconvolving x4 downscaled photos lost ~0.8 dB).
        max_motion_px: it runs only while the motion head reads a shorter segment than this
            (px, under the length a motion is stated from): a motion read short is read as a
            Gaussian blur, and deconvolving it as one loses.
    """

    fraction: float
    regularization: float
    min_px: float
    max_downscale: float
    max_motion_px: float

    def __post_init__(self) -> None:
        for name in ("fraction", "regularization", "min_px", "max_downscale", "max_motion_px"):
            positive(f"deblur.gaussian.{name}", getattr(self, name))

    def sigma(self, estimate: Estimate) -> float | None:
        """The Gaussian sigma (px) to take off for this reading; None when it does not run."""
        if estimate.downscale >= self.max_downscale or estimate.motion_px >= self.max_motion_px:
            return None
        blur = optical_blur(estimate.blur_sigma_px, estimate.downscale)
        return self.fraction * blur if blur >= self.min_px else None


@dataclass(frozen=True)
class Deblur:
    """The deconvolutions calibrated for a scene model (``scene.json`` ``deblur``; chosen on
    VAL by ``benchmarks/deblur_val.py``).

    Attributes:
        motion: the Laplacian weight for a stated motion blur (None: a motion stays).
        gaussian: the :class:`GaussianDeblur` for a photo without a stated motion (None: its
            blur stays); a mapping (from ``scene.json``) becomes one.
    """

    motion: float | None = None
    gaussian: GaussianDeblur | None = None

    def __post_init__(self) -> None:
        if self.motion is not None:
            positive("deblur.motion", self.motion)
        gaussian = settings_block("deblur.gaussian", self.gaussian, GaussianDeblur)
        object.__setattr__(self, "gaussian", gaussian)

    def plan(self, estimate: Estimate) -> tuple[Tensor, dict[str, Any]] | None:
        """The kernel to take off for this reading and what to report of it (``kernel``:
        ``motion`` with ``motion_px`` and ``motion_angle_deg``, or ``gaussian`` with
        ``sigma_px``; ``regularization``); None when nothing is."""
        if estimate.motion:
            if self.motion is None:
                return None
            done = {"kernel": "motion", "motion_px": round(estimate.motion_px, 2)}
            done["motion_angle_deg"] = round(estimate.motion_angle_deg, 1)
            return motion_kernel_for(estimate), done | {"regularization": self.motion}
        sigma = None if self.gaussian is None else self.gaussian.sigma(estimate)
        if sigma is None:
            return None
        kernel = gaussian_kernel2d(2 * math.ceil(3 * sigma) + 1, sigma)
        done = {"kernel": "gaussian", "sigma_px": round(sigma, 3)}
        return kernel, done | {"regularization": self.gaussian.regularization}

    def __call__(
        self, restored: Tensor, estimate: Estimate
    ) -> tuple[Tensor, dict[str, Any] | None]:
        """``restored`` :math:`(1, C, H, W)` in [0, 1] with the read blur taken off, and what
        was (None, and ``restored`` itself, when nothing was: no such reading, or a photo too
        small for the kernel)."""
        planned = self.plan(estimate)
        if planned is None or min(restored.shape[-2:]) <= 4 * planned[0].shape[-1]:
            return restored, None
        kernel, done = planned
        return deconvolve(restored, kernel, float(done["regularization"])), done
