"""Full-reference image quality metrics: PSNR and SSIM, on numpy images and torch batches;
piq's MS-SSIM, GMSD and HaarPSI; the sharpness ratio.

Conventions (those of BasicSR's ``calculate_psnr`` / ``calculate_ssim``):

* numpy inputs are ``(H, W)`` or ``(H, W, C)`` arrays of any real dtype (uint8, uint16, float);
  they are converted to float64. ``data_range`` is the peak value (255 for 8-bit data).
* PSNR of identical images is ``inf`` (``float("inf")``; ``json.dumps(..., allow_nan=False)``
  refuses it, so callers that log it must map it, e.g. to None).
* SSIM follows Wang et al. 2004: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
  K2 = 0.03, computed on the 'valid' region (5 pixels cropped on each side, as BasicSR's
  ``cv2.filter2D(...)[5:-5, 5:-5]``) and averaged over pixels and then channels. It equals
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``. Images need at least 11x11 pixels.
* ``y_channel=True`` compares the BT.601 luma of RGB images as MATLAB's / BasicSR's
  ``rgb2ycbcr``: the data are scaled to [0, 255] (``* 255 / data_range``), then
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` (studio range 16..235), and the metric is
  computed with a data range of 255. Channels are taken in RGB order. Single-channel images are
  used as they are.
* ``mask`` (``(H, W)``, truthy = inside) restricts a metric to a region, e.g. the faces or the
  rest: PSNR averages the squared error over the masked pixels (all channels); SSIM averages the
  SSIM map over the masked pixels of the valid region (the mask is cropped like the image).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.errors import NotAvailableError

__all__ = [
    "MS_SSIM_MIN_SIDE",
    "gradient_energy",
    "perceptual_scores",
    "piq_metric",
    "psnr",
    "psnr_torch",
    "rgb_to_y",
    "sharpness_ratio",
    "ssim",
    "ssim_map",
    "ssim_map_mean",
    "ssim_torch",
]

_WIN = 11
_SIGMA = 1.5
_K1 = 0.01
_K2 = 0.03


def _gaussian_window() -> np.ndarray:
    ax = np.arange(_WIN, dtype=np.float64) - (_WIN - 1) / 2
    g = np.exp(-(ax**2) / (2 * _SIGMA**2))
    return g / g.sum()


def rgb_to_y(img: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """BT.601 studio-range luma of an RGB image, on the [0, 255] scale (16..235).

    Args:
        img: ``(H, W, 3)`` RGB, values in [0, data_range].
        data_range: the peak value of ``img``.

    Returns:
        float64 ``(H, W)``.
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"rgb_to_y needs an (H, W, 3) image, got shape {a.shape}")
    a = a * (255.0 / data_range)
    return 16.0 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0


def _prepare(
    a: np.ndarray, b: np.ndarray, data_range: float, y_channel: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """Both images as float64 (H, W, C) arrays, and the data range they are on."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"images must be (H, W) or (H, W, C), got shape {a.shape}")
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if y_channel and a.shape[2] == 3:
        return rgb_to_y(a, data_range)[..., None], rgb_to_y(b, data_range)[..., None], 255.0
    return a.astype(np.float64), b.astype(np.float64), float(data_range)


def _mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != shape[:2]:
        raise ValueError(f"mask must have shape {shape[:2]} (H, W), got {m.shape}")
    return m.astype(bool)


def psnr(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 255.0,
    y_channel: bool = False,
    mask: np.ndarray | None = None,
) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range² / MSE)`` in dB.

    Args:
        a, b: images ``(H, W)`` or ``(H, W, C)`` of the same shape, any real dtype.
        data_range: peak value (255 for 8-bit, 65535 for 16-bit, 1 for [0, 1] floats).
        y_channel: compare the BT.601 luma of RGB images (see the module docs).
        mask: optional ``(H, W)`` region; the MSE is taken over its pixels only.

    Returns:
        PSNR in dB; ``inf`` when the images (or their masked parts) are identical.
    """
    x, y, peak = _prepare(a, b, data_range, y_channel)
    m = _mask(mask, x.shape)
    diff = (x - y) ** 2
    if m is not None:
        if not m.any():
            raise ValueError("mask selects no pixel")
        diff = diff[m]
    mse = float(np.mean(diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def _filter_valid(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation with ``w`` over axes 0 and 1, 'valid' region only."""
    k = len(w)
    h, wd = img.shape[:2]
    rows = w[0] * img[0 : h - k + 1]
    for i in range(1, k):
        rows += w[i] * img[i : i + h - k + 1]
    out = w[0] * rows[:, 0 : wd - k + 1]
    for i in range(1, k):
        out += w[i] * rows[:, i : i + wd - k + 1]
    return out


def ssim_map(
    a: np.ndarray, b: np.ndarray, data_range: float = 255.0, y_channel: bool = False
) -> np.ndarray:
    """The SSIM map on the valid region: ``(H - 10, W - 10, C)`` float64 (C = 1 for Y/gray)."""
    x, y, peak = _prepare(a, b, data_range, y_channel)
    if x.shape[0] < _WIN or x.shape[1] < _WIN:
        raise ValueError(f"SSIM needs images of at least {_WIN}x{_WIN} pixels, got {x.shape[:2]}")
    c1 = (_K1 * peak) ** 2
    c2 = (_K2 * peak) ** 2
    w = _gaussian_window()
    mu1 = _filter_valid(x, w)
    mu2 = _filter_valid(y, w)
    s11 = _filter_valid(x * x, w) - mu1 * mu1
    s22 = _filter_valid(y * y, w) - mu2 * mu2
    s12 = _filter_valid(x * y, w) - mu1 * mu2
    num = (2 * mu1 * mu2 + c1) * (2 * s12 + c2)
    den = (mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2)
    return num / den


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 255.0,
    y_channel: bool = False,
    mask: np.ndarray | None = None,
) -> float:
    """Structural similarity (Wang et al. 2004), mean over the valid region and the channels.

    Args:
        a, b: images ``(H, W)`` or ``(H, W, C)``, same shape, at least 11x11, any real dtype.
        data_range: peak value (sets C1 = (0.01 L)², C2 = (0.03 L)²).
        y_channel: compare the BT.601 luma of RGB images.
        mask: optional ``(H, W)`` region; the SSIM map is averaged over the masked pixels of the
            valid region (the mask is cropped by 5 pixels on each side like the map).

    Returns:
        SSIM in [-1, 1]; 1 for identical images.
    """
    smap = ssim_map(a, b, data_range, y_channel)
    return ssim_map_mean(smap, mask)


def ssim_map_mean(smap: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The SSIM of an :func:`ssim_map` ``(H - 10, W - 10, C)``: its mean over the pixels (those
    of ``mask``, ``(H, W)``, cropped by 5 pixels on each side like the map) and the channels.
    Computing the map once and this per region is what :func:`ssim` with ``mask`` does."""
    if mask is None:
        return float(smap.mean(axis=(0, 1)).mean())
    r = _WIN // 2
    m = _mask(mask, (smap.shape[0] + 2 * r, smap.shape[1] + 2 * r))[r:-r, r:-r]
    if not m.any():
        raise ValueError("mask selects no pixel of the SSIM valid region (5 px from the borders)")
    return float(smap[m].mean(axis=0).mean())


# --------------------------------------------------------------------------------------------
# torch batch versions


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(
            f"x and y must be (B, C, H, W) of the same shape, got {tuple(x.shape)}, "
            f"{tuple(y.shape)}"
        )


def psnr_torch(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR per image of two batches.

    Args:
        x, y: :math:`(B, C, H, W)` in [0, data_range].
        data_range: peak value (1 for [0, 1] tensors).

    Returns:
        :math:`(B,)` float32 in dB, ``inf`` for identical images (computed in float64).
    """
    _check_pair(x, y)
    mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(data_range**2 / mse)).float()


def ssim_torch(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """SSIM per image of two batches, same definition as :func:`ssim` (valid region, mean over
    pixels and channels), computed in float64 on the inputs' device.

    Args:
        x, y: :math:`(B, C, H, W)` in [0, data_range], H and W >= 11.
        data_range: peak value.

    Returns:
        :math:`(B,)` float32.
    """
    _check_pair(x, y)
    _, c, h, w = x.shape
    if h < _WIN or w < _WIN:
        raise ValueError(f"SSIM needs images of at least {_WIN}x{_WIN} pixels, got {(h, w)}")
    g = torch.from_numpy(_gaussian_window()).to(x.device)
    win_h = g.view(1, 1, _WIN, 1).expand(c, 1, _WIN, 1)
    win_w = g.view(1, 1, 1, _WIN).expand(c, 1, 1, _WIN)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, win_h, groups=c), win_w, groups=c)

    a, bb = x.double(), y.double()
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu1, mu2 = filt(a), filt(bb)
    s11 = filt(a * a) - mu1 * mu1
    s22 = filt(bb * bb) - mu2 * mu2
    s12 = filt(a * bb) - mu1 * mu2
    smap = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return smap.mean(dim=(2, 3)).mean(dim=1).float()


# ------------------------------------------------------------------------------------------
# piq's weight-free metrics, and the sharpness ratio

#: piq's MS-SSIM (5 scales, 11 px window) needs both sides at least this long.
MS_SSIM_MIN_SIDE = 161


def piq_metric(module: str, name: str) -> Callable[..., Tensor]:
    """``piq.<module>.<name>`` without running piq's package ``__init__``.

    piq 0.8.0's ``__init__`` imports torchvision for its VGG / Inception metrics (LPIPS, DISTS,
    FID, which download weights we never use), and the PyPI torchvision wheels are CUDA builds
    that cannot load beside the CPU torch; so piq is installed with ``--no-deps`` (Makefile)
    and only the modules of the weight-free metrics are imported.
    """
    if "piq" not in sys.modules:
        spec = importlib.util.find_spec("piq")
        if spec is None or spec.submodule_search_locations is None:
            raise NotAvailableError(
                "the perceptual metrics need piq: pip install --no-deps piq==0.8.0"
            )
        pkg = importlib.util.module_from_spec(spec)  # the package, its __init__ not run
        sys.modules["piq"] = pkg
    return getattr(importlib.import_module(f"piq.{module}"), name)


def _as_batch(img: np.ndarray) -> Tensor:
    a = torch.from_numpy(np.array(img, dtype=np.float32)) / 255.0
    return (a[None, None] if a.ndim == 2 else a.permute(2, 0, 1)[None]).contiguous()


def perceptual_scores(out: np.ndarray, clean: np.ndarray) -> dict[str, float | None]:
    """piq's MS-SSIM, GMSD and HaarPSI of ``out`` vs ``clean``, both (H, W, 3) or (H, W) uint8.

    Returns:
        ``{"ms_ssim", "gmsd", "haarpsi"}``: MS-SSIM and HaarPSI in [0, 1], higher is better;
        GMSD >= 0, lower is better. MS-SSIM is None when a side is shorter than
        :data:`MS_SSIM_MIN_SIDE`.
    """
    if out.shape != clean.shape:
        raise ValueError(f"images differ in shape: {out.shape} vs {clean.shape}")
    x, y = _as_batch(out), _as_batch(clean)
    scores: dict[str, float | None] = {"ms_ssim": None}
    if min(out.shape[:2]) >= MS_SSIM_MIN_SIDE:
        ms_ssim = piq_metric("ms_ssim", "multi_scale_ssim")
        scores["ms_ssim"] = float(ms_ssim(x, y, data_range=1.0))
    scores["gmsd"] = float(piq_metric("gmsd", "gmsd")(x, y, data_range=1.0))
    scores["haarpsi"] = float(piq_metric("haarpsi", "haarpsi")(x, y, data_range=1.0))
    return scores


def gradient_energy(img: np.ndarray) -> float:
    """Mean squared 3x3 Sobel gradient magnitude of the BT.601 luma (or of a gray image),
    on the [0, 255] scale: ``mean(gx² + gy²)`` over the pixels (reflected border)."""
    a = np.asarray(img)
    y = rgb_to_y(a) if a.ndim == 3 else a.astype(np.float64)
    gx = cv2.Sobel(y, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    gy = cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    return float(np.mean(gx**2 + gy**2))


def sharpness_ratio(out: np.ndarray, clean: np.ndarray) -> float | None:
    """:func:`gradient_energy` of ``out`` over that of ``clean``: 1 = as sharp as the truth,
    > 1 = noise or artefacts left or invented, < 1 = over-smoothed; None for a flat ``clean``."""
    ref = gradient_energy(clean)
    return gradient_energy(out) / ref if ref > 0 else None
