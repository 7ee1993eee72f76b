"""Colour fixes applied to a restored image against its input: wavelet or AdaIN.

A restorer can shift colours (GFPGAN #188, OSEDiff #16); these keep the input's low
frequencies (wavelet) or per-channel statistics (AdaIN) and the restorer's detail.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COLOR_FIXES", "adain_color_fix", "apply_color_fix", "wavelet_color_fix"]

#: The ``color_fix`` choices of :class:`~face2scene_cli.restorers.scene.RestoreSettings`.
COLOR_FIXES = ("wavelet", "adain", "none")


def _low_pass(x: Tensor, levels: int) -> Tensor:
    """Repeated dilated 3x3 binomial blurs (the wavelet residual), replicate padding."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    k2 = (k[:, None] * k[None, :] / 16.0).expand(x.shape[1], 1, 3, 3)
    for i in range(levels):
        d = 2**i
        x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), k2, dilation=d, groups=x.shape[1])
    return x


def wavelet_color_fix(out: Tensor, ref: Tensor, levels: int = 5) -> Tensor:
    r"""Keep ``out``'s high frequencies and ``ref``'s low ones (StableSR's wavelet fix).

    ``out + lowpass(ref - out)`` (equal to ``high(out) + low(ref)``, the low pass is linear).
    Shapes :math:`(B, C, H, W)`, same for both; returns ``out``'s shape.
    """
    return out + _low_pass(ref - out, levels)


def adain_color_fix(out: Tensor, ref: Tensor) -> Tensor:
    """Match per-channel mean and standard deviation of ``out`` to ``ref``
    (:math:`(B, C, H, W)`)."""
    om, os_ = out.mean((2, 3), keepdim=True), out.std((2, 3), keepdim=True)
    rm, rs = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    return (out - om) / (os_ + 1e-6) * rs + rm


def apply_color_fix(kind: str, out: Tensor, ref: Tensor) -> Tensor:
    """The colour fix ``kind`` (one of :data:`COLOR_FIXES`) of ``out`` against ``ref``
    (:math:`(B, C, H, W)`, same shape); ``none`` returns ``out`` itself."""
    if kind == "wavelet":
        return wavelet_color_fix(out, ref)
    if kind == "adain":
        return adain_color_fix(out, ref)
    if kind != "none":
        raise ValueError(f"color fix must be one of {', '.join(COLOR_FIXES)}, got {kind!r}")
    return out
