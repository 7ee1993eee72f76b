"""The blind face restorer: non-learned, CPU, deterministic (``"blind"``).

:class:`BlindFaceRestorer` is used when no reference-based restorer is available (and to make
FaDeX's training pairs): a per-crop noise estimate, then OpenCV non-local means with a strength
tied to that estimate, mild JPEG deblocking along the 8x8 grid, and a mild unsharp mask.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor

from face2scene_cli.restorers.face.base import FaceRestorer, RestoredFaces, check_crops

__all__ = ["BlindFaceRestorer", "blockiness", "estimate_noise_sigma"]

_MAD_TO_SIGMA = 1.0 / 0.6745


# ------------------------------------------------------------------------------------------
# numpy helpers (one crop, float32 HxWxC in [0, 1])


def estimate_noise_sigma(img: np.ndarray, flat_fraction: float = 0.5) -> float:
    r"""Robust white-noise sigma of one image, in /255 units (MAD on the flattest blocks).

    The finest diagonal Haar band :math:`HH = (a - b - c + d) / 2` of every 2x2 block has the
    noise's variance and little image energy. Texture leaks into it, so only the
    ``flat_fraction`` of blocks whose coarse gradient (of the 2x2 means, 3x3 smoothed) is
    lowest are used; :math:`\sigma = \mathrm{median}(|HH|) / 0.6745` over them, averaged over
    channels (Donoho's estimator restricted to flat areas).

    Args:
        img: float array (H, W) or (H, W, C) in [0, 1], H and W >= 4.
        flat_fraction: share of 2x2 blocks used, in (0, 1].

    Returns:
        sigma in /255 units (15.0 means 15/255).
    """
    x = img.astype(np.float32)
    if x.ndim == 2:
        x = x[..., None]
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w]
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    hh = np.abs(a - b - c + d) / 2.0
    ll = ((a + b + c + d) / 4.0).mean(axis=2)
    gy, gx = np.gradient(cv2.blur(ll, (3, 3)))
    grad = np.abs(gx) + np.abs(gy)
    cut = np.quantile(grad, float(np.clip(flat_fraction, 1e-3, 1.0)))
    mask = grad <= cut
    sig = np.median(hh[mask].reshape(-1, x.shape[2]), axis=0) * _MAD_TO_SIGMA
    return float(sig.mean() * 255.0)


def blockiness(img: np.ndarray) -> tuple[float, int, int]:
    """JPEG blocking strength of one image and the phase of its 8x8 grid.

    Compares the mean absolute luminance step across columns (rows) at each of the 8 phases;
    the grid's phase has the largest steps. The score is
    ``(step at the grid phase) / (median step) - 1``, >= 0; about 0 for an unblocked image,
    0.2-1+ for visible blocking.

    Args:
        img: float array (H, W) or (H, W, C) in [0, 1], H and W >= 16.

    Returns:
        ``(score, phase_y, phase_x)``: block boundaries lie between pixel ``p + 8k - 1`` and
        ``p + 8k``.
    """
    y = img if img.ndim == 2 else img.mean(axis=2)
    dx = np.abs(np.diff(y, axis=1)).mean(axis=0)  # step between column j and j+1
    dy = np.abs(np.diff(y, axis=0)).mean(axis=1)
    scores, phases = [], []
    for d in (dy, dx):
        per = np.array([d[p::8].mean() if len(d[p::8]) else 0.0 for p in range(8)])
        ref = float(np.median(per)) + 1e-6
        k = int(np.argmax(per))
        scores.append(float(per[k] / ref - 1.0))
        phases.append((k + 1) % 8)
    return float(max(0.0, min(scores))), phases[0], phases[1]


def _deblock(img: np.ndarray, strength: float, py: int, px: int) -> np.ndarray:
    """Blend the two pixels on each side of the 8x8 grid lines towards their local mean."""
    out = img.copy()
    h, w = img.shape[:2]
    a = float(np.clip(strength, 0.0, 1.0)) * 0.5
    for j in range(px if px > 0 else 8, w, 8):  # boundary between columns j-1 and j
        left, right = img[:, j - 1], img[:, j]
        m = 0.5 * (left + right)
        out[:, j - 1] = left + a * (m - left)
        out[:, j] = right + a * (m - right)
    src = out.copy()
    for i in range(py if py > 0 else 8, h, 8):
        top, bottom = src[i - 1], src[i]
        m = 0.5 * (top + bottom)
        out[i - 1] = top + a * (m - top)
        out[i] = bottom + a * (m - bottom)
    return out


class BlindFaceRestorer(FaceRestorer):
    r"""Non-learned blind restorer: noise estimate -> non-local means -> deblock -> sharpen.

    Per crop (8-bit internally, like a decoded photo):

    1. :func:`estimate_noise_sigma` (MAD on the finest Haar band), :math:`\hat\sigma` in /255.
    2. If :math:`\hat\sigma \ge` ``min_sigma``: OpenCV ``fastNlMeansDenoisingColored`` (RGB) or
       ``fastNlMeansDenoising`` (gray) with ``h = h_factor * sigma_hat`` (and the same for
       colour), template 7, search window ``search_window``.
    3. :func:`blockiness` on the input; when above ``deblock_threshold``, the pixel pairs on
       the detected 8x8 grid lines are pulled towards their mean (strength grows with the
       score, at most half-way).
    4. Unsharp mask, Gaussian sigma 1 px, amount ``sharpen`` scaled down by the noise
       removed (no sharpening of what is left of heavy noise).

    Confidence :math:`= \exp(-\hat\sigma / 25) \cdot (1 - \min(b, 1) / 2)` with ``b`` the
    blockiness score: 1 for a clean crop, ~0.55 at sigma 15, ~0.3 at sigma 30, halved at
    most by blocking. It says how much had to be guessed, not how good the output is.

    Deterministic (OpenCV's NLM is deterministic for a fixed thread count and input); a gray
    input stays gray (C=1 in, C=1 out; a 3-channel crop with equal channels is processed as
    gray and returned with equal channels).

    Args:
        h_factor: NLM strength per unit of estimated sigma.
        min_sigma: below this estimated sigma (/255) no denoising is done.
        search_window: NLM search window (odd); 21 is OpenCV's default, 15 is ~2x faster.
        deblock_threshold: blockiness score above which deblocking is applied.
        sharpen: unsharp-mask amount for a clean crop.
    """

    name = "blind-nlm"
    version = "1"
    uses_references = False

    def __init__(
        self,
        h_factor: float = 0.9,
        min_sigma: float = 1.5,
        search_window: int = 15,
        deblock_threshold: float = 0.15,
        sharpen: float = 0.3,
    ) -> None:
        if h_factor <= 0:
            raise ValueError(f"h_factor must be > 0, got {h_factor}")
        if search_window < 3 or search_window % 2 == 0:
            raise ValueError(f"search_window must be odd and >= 3, got {search_window}")
        if sharpen < 0:
            raise ValueError(f"sharpen must be >= 0, got {sharpen}")
        self.h_factor = float(h_factor)
        self.min_sigma = float(min_sigma)
        self.search_window = int(search_window)
        self.deblock_threshold = float(deblock_threshold)
        self.sharpen = float(sharpen)

    def restore_one(self, img: np.ndarray) -> tuple[np.ndarray, float]:
        """Restore one crop: float32 (H, W) or (H, W, 3) in [0, 1] -> (same shape, confidence)."""
        gray = (
            img.ndim == 2
            or img.shape[2] == 1
            or bool(
                np.array_equal(img[..., 0], img[..., 1])
                and np.array_equal(img[..., 0], img[..., 2])
            )
        )
        src = img if img.ndim == 2 else (img[..., 0] if gray else img)
        u8 = np.clip(np.rint(src * 255.0), 0, 255).astype(np.uint8)
        sigma = estimate_noise_sigma(u8.astype(np.float32) / 255.0)
        out = u8
        if sigma >= self.min_sigma:
            h = self.h_factor * sigma
            if gray:
                out = cv2.fastNlMeansDenoising(u8, None, h, 7, self.search_window)
            else:
                out = cv2.fastNlMeansDenoisingColored(u8, None, h, h, 7, self.search_window)
        f = out.astype(np.float32) / 255.0
        score, py, px = (0.0, 0, 0)
        if min(f.shape[:2]) >= 16:
            score, py, px = blockiness(u8.astype(np.float32) / 255.0)
            if score > self.deblock_threshold:
                f = _deblock(f, min(1.0, score), py, px)
        amount = self.sharpen * math.exp(-sigma / 10.0)
        if amount > 1e-3:
            soft = cv2.GaussianBlur(f, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
            f = f + amount * (f - soft)
        f = np.clip(f, 0.0, 1.0)
        if img.ndim == 3 and gray:
            f = np.repeat(f[..., None], img.shape[2], axis=2)
        conf = math.exp(-sigma / 25.0) * (1.0 - 0.5 * min(score, 1.0))
        return f.astype(np.float32), float(min(1.0, max(0.0, conf)))

    def restore(self, lq: Tensor, references: list[list[Tensor]] | None = None) -> RestoredFaces:
        """Restore a batch of crops (``references`` are ignored: this restorer is blind).

        Args:
            lq: :math:`(B, C, H, W)` float in [0, 1], C in {1, 3}.
            references: ignored.

        Returns:
            :class:`RestoredFaces`; ``hq`` has ``lq``'s shape, dtype and device.
        """
        check_crops(lq, references)
        arr = lq.detach().float().clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()
        outs, confs = [], []
        for img in arr:
            f, c = self.restore_one(img[..., 0] if img.shape[2] == 1 else img)
            outs.append(f[..., None] if f.ndim == 2 else f)
            confs.append(c)
        hq = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).to(lq.device, lq.dtype)
        return RestoredFaces(
            hq=hq.contiguous(),
            confidence=torch.tensor(confs, dtype=torch.float32),
            method=self.method,
        )
