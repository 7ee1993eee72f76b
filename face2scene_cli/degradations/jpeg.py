"""JPEG compression in batched torch, as libjpeg does it: YCbCr, 4:2:0 chroma, 8x8 DCT,
the IJG quantisation tables scaled by quality (1..100), rounding, back to RGB.

Works on :math:`(B, C, H, W)` batches in :math:`[0, 1]` (C in {1, 3}) on any device, with one
quality per image; no numpy or OpenCV on the way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.degradations.checks import integer
from face2scene_cli.degradations.ops import check_image
from face2scene_cli.errors import ConfigError

__all__ = ["dct_kron", "jpeg_compress", "jpeg_quant_tables"]


# IJG (libjpeg jcparam.c) base tables, natural (row-major) order; rows = vertical frequency.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)


def jpeg_quant_tables(quality: int) -> tuple[Tensor, Tensor]:
    """The libjpeg quantisation tables for a quality (``jpeg_set_quality(q, force_baseline)``).

    ``scale = 5000 // q`` if q < 50 else ``200 - 2 q``; each entry is
    ``clamp((base * scale + 50) // 100, 1, 255)``.

    Args:
        quality: JPEG quality, integer 1..100.

    Returns:
        ``(luma, chroma)`` int64 CPU tensors of shape :math:`(8, 8)`, natural order.
    """
    q = integer("jpeg quality", quality, 1, 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    out = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        t = torch.tensor(base, dtype=torch.int64)
        out.append(torch.clamp((t * scale + 50) // 100, 1, 255))
    return out[0], out[1]


def dct_matrix(dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal 8-point DCT-II D (JPEG's FDCT scaling), (8, 8) on the CPU:
    ``D[k, n]`` weighs sample n in frequency k."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(dtype)


def dct_kron(device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """kron(D, D) for :func:`dct_matrix` D: vec(D X D^T) = K vec(X), row-major; (64, 64)."""
    d = dct_matrix()
    return torch.kron(d, d).to(device=device, dtype=dtype)


def _qualities(quality: int | float | Sequence[float] | Tensor, b: int) -> list[int]:
    if isinstance(quality, Tensor):
        values = quality.detach().flatten().cpu().tolist() if quality.ndim else [quality.item()]
    elif isinstance(quality, (int, float)) and not isinstance(quality, bool):
        values = [quality]
    elif isinstance(quality, Sequence) and not isinstance(quality, str):
        values = list(quality)
    else:
        raise ConfigError(f"jpeg quality must be a number or a sequence, got {quality!r}")
    if len(values) == 1:
        values = values * b
    if len(values) != b:
        raise ValueError(f"jpeg quality needs 1 or {b} values, got {len(values)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"jpeg quality must be in [1, 100], got {v!r}")
        out.append(integer("jpeg quality", math.floor(v + 0.5), 1, 100))
    return out


def _block_dct_quantise(planes: Tensor, tables: Tensor, kron: Tensor) -> Tensor:
    """DCT, quantise, round, dequantise, IDCT on 8x8 blocks. planes (N, H, W), tables (N, 64)."""
    n, h, w = planes.shape
    blocks = planes.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(n, -1, 64)
    coef = blocks @ kron.T
    t = tables[:, None, :]
    coef = torch.round(coef / t) * t
    rec = coef @ kron
    return rec.reshape(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, h, w)


def jpeg_compress(x: Tensor, quality: int | float | Sequence[float] | Tensor) -> Tensor:
    r"""JPEG compress-decompress round trip in torch (DiffJPEG-style, libjpeg conventions).

    RGB -> JFIF YCbCr, 4:2:0 chroma subsampling (2x2 mean), level shift, 8x8 orthonormal
    block DCT, quantisation with the IJG tables scaled by quality (:func:`jpeg_quant_tables`),
    rounding, dequantisation, IDCT, clamping of the planes to [0, 255], chroma upsampling by
    bilinear interpolation (= libjpeg's "fancy" triangle upsampling), YCbCr -> RGB, clamp. The
    image is padded to a multiple of 16 by edge replication and cropped back. A single channel is
    coded as luma only. Rounding is not differentiable (no straight-through estimator).

    Args:
        x: images :math:`(B, C, H, W)` in [0, 1] (clamped first), C in {1, 3}.
        quality: one quality for all, or :math:`B` of them (sequence or tensor); numbers in
            [1, 100], rounded to integers like libjpeg's quality setting.

    Returns:
        :math:`(B, C, H, W)` in [0, 1], same device and dtype (computed in float32); values are
        not quantised to 8 bits.
    """
    check_image(x)
    b, c, h, w = x.shape
    qs = _qualities(quality, b)
    tabs = [jpeg_quant_tables(q) for q in qs]
    luma = torch.stack([t[0] for t in tabs]).reshape(b, 64).to(x.device, torch.float32)
    kron = dct_kron(x.device)
    dtype = x.dtype
    mult = 16 if c == 3 else 8
    ph, pw = (-h) % mult, (-w) % mult
    img = x.float().clamp(0.0, 1.0) * 255.0
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), mode="replicate")
    hp, wp = img.shape[-2:]
    if c == 1:
        y = _block_dct_quantise(img[:, 0] - 128.0, luma, kron) + 128.0
        out = y.clamp(0.0, 255.0)[:, None]
    else:
        chroma_t = torch.stack([t[1] for t in tabs]).reshape(b, 64).to(x.device, torch.float32)
        r, g, bl = img.unbind(1)
        y = 0.299 * r + 0.587 * g + 0.114 * bl
        cb = -0.168735892 * r - 0.331264108 * g + 0.5 * bl
        cr = 0.5 * r - 0.418687589 * g - 0.081312411 * bl
        chroma = F.avg_pool2d(torch.stack([cb, cr], dim=1), 2)  # centred at 0 (= minus 128)
        y = (_block_dct_quantise(y - 128.0, luma, kron) + 128.0).clamp(0.0, 255.0)
        ch = _block_dct_quantise(
            chroma.reshape(b * 2, hp // 2, wp // 2), chroma_t.repeat_interleave(2, dim=0), kron
        )
        ch = (ch + 128.0).clamp(0.0, 255.0) - 128.0
        ch = F.interpolate(
            ch.view(b, 2, hp // 2, wp // 2), size=(hp, wp), mode="bilinear", align_corners=False
        )
        cb, cr = ch.unbind(1)
        out = torch.stack(
            [y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], dim=1
        ).clamp(0.0, 255.0)
    out = out[..., :h, :w] / 255.0
    return out.to(dtype)
