"""Image degradation operators in batched torch: blur kernels, blur, resize and noise.

Every operation works on a batch of images ``x`` of shape :math:`(B, C, H, W)`, ``C`` in {1, 3},
floating point with values in :math:`[0, 1]`, on whatever device ``x`` lives on (CPU or CUDA);
no image goes through numpy or OpenCV (only the small motion kernel is drawn with OpenCV).
Randomness only comes from an explicit :class:`torch.Generator`; the global RNG is never used,
so the same input and the same generator seed give the same output bits on CPU. Noise levels
are in /255 units, blur sigmas and kernel sizes in pixels. JPEG is
:mod:`face2scene_cli.degradations.jpeg`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.degradations.checks import (
    MAX_BLUR_SIGMA,
    SEED_MASK,
    odd_kernel_size,
    real,
)
from face2scene_cli.degradations.record import RESIZE_MODES
from face2scene_cli.errors import ConfigError

__all__ = [
    "add_gaussian_noise",
    "add_poisson_noise",
    "blur",
    "check_image",
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_kernel2d",
    "generalized_gaussian_kernel2d",
    "motion_kernel2d",
    "plateau_kernel2d",
    "resize",
    "rgb_to_gray",
    "sinc_kernel2d",
]


def check_image(x: Tensor, name: str = "x") -> None:
    """Refuse anything but a floating (B, C, H, W) tensor with C in {1, 3}."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{name} must not be empty, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor in [0, 1], got {x.dtype}")


# --------------------------------------------------------------------------------------------
# kernels


def gaussian_kernel1d(kernel_size: int, sigma: float) -> Tensor:
    r"""Normalised 1-D Gaussian kernel.

    Args:
        kernel_size: odd length :math:`k`, 3..63.
        sigma: standard deviation in pixels, > 0.

    Returns:
        float32 CPU tensor of shape :math:`(k,)` summing to 1.
    """
    k = odd_kernel_size(kernel_size)
    s = real("sigma", sigma, 0.0, math.inf, lo_open=True)
    ax = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-0.5 * (ax / s) ** 2)
    return (g / g.sum()).float()


def _quadratic_form(k: int, sigma_x: float, sigma_y: float, rotation: float) -> Tensor:
    """:math:`[x, y] \\Sigma^{-1} [x, y]^T` on a (k, k) grid, Sigma = U diag(sx², sy²) U^T."""
    ax = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(rotation), math.sin(rotation)
    ix, iy = 1.0 / sigma_x**2, 1.0 / sigma_y**2
    a = c * c * ix + s * s * iy
    b = c * s * (ix - iy)
    d = s * s * ix + c * c * iy
    return a * xx * xx + 2.0 * b * xx * yy + d * yy * yy


def _kernel_args(
    kernel_size: int, sigma_x: float, sigma_y: float | None, rotation: float
) -> tuple[int, float, float, float]:
    k = odd_kernel_size(kernel_size)
    sx = real("sigma_x", sigma_x, 0.0, math.inf, lo_open=True)
    sy = sx if sigma_y is None else real("sigma_y", sigma_y, 0.0, math.inf, lo_open=True)
    rot = real("rotation", rotation, -math.inf, math.inf)
    return k, sx, sy, rot


def _normalise(kernel: Tensor) -> Tensor:
    return (kernel / kernel.sum()).float()


def gaussian_kernel2d(
    kernel_size: int, sigma_x: float, sigma_y: float | None = None, rotation: float = 0.0
) -> Tensor:
    r"""Isotropic or anisotropic 2-D Gaussian kernel (Real-ESRGAN ``bivariate_Gaussian``).

    :math:`k(x, y) \propto \exp(-\tfrac12 [x, y] \Sigma^{-1} [x, y]^T)` with
    :math:`\Sigma = R(\theta)\, \mathrm{diag}(\sigma_x^2, \sigma_y^2)\, R(\theta)^T`; ``x`` runs
    along columns, ``y`` along rows.

    Args:
        kernel_size: odd size :math:`k`, 3..63 (Real-ESRGAN uses 7..21).
        sigma_x: standard deviation along the (rotated) x axis in pixels, > 0.
        sigma_y: along the y axis; None = ``sigma_x`` (isotropic).
        rotation: angle :math:`\theta` in radians.

    Returns:
        float32 CPU tensor of shape :math:`(k, k)` summing to 1.
    """
    k, sx, sy, rot = _kernel_args(kernel_size, sigma_x, sigma_y, rotation)
    return _normalise(torch.exp(-0.5 * _quadratic_form(k, sx, sy, rot)))


def generalized_gaussian_kernel2d(
    kernel_size: int,
    sigma_x: float,
    sigma_y: float | None = None,
    rotation: float = 0.0,
    beta: float = 1.0,
) -> Tensor:
    r"""Generalised Gaussian kernel :math:`\exp(-\tfrac12 (v^T \Sigma^{-1} v)^\beta)`.

    As Real-ESRGAN's ``bivariate_generalized_Gaussian``; ``beta`` = 1 is the Gaussian, < 1 has
    heavier tails, > 1 a flatter top. Arguments as :func:`gaussian_kernel2d`, ``beta`` > 0.

    Returns:
        float32 CPU tensor of shape :math:`(k, k)` summing to 1.
    """
    k, sx, sy, rot = _kernel_args(kernel_size, sigma_x, sigma_y, rotation)
    b = real("beta", beta, 0.0, math.inf, lo_open=True)
    return _normalise(torch.exp(-0.5 * _quadratic_form(k, sx, sy, rot).pow(b)))


def plateau_kernel2d(
    kernel_size: int,
    sigma_x: float,
    sigma_y: float | None = None,
    rotation: float = 0.0,
    beta: float = 1.0,
) -> Tensor:
    r"""Plateau-shaped kernel :math:`1 / ((v^T \Sigma^{-1} v)^\beta + 1)`.

    As Real-ESRGAN's ``bivariate_plateau``. Arguments as :func:`gaussian_kernel2d`,
    ``beta`` > 0.

    Returns:
        float32 CPU tensor of shape :math:`(k, k)` summing to 1.
    """
    k, sx, sy, rot = _kernel_args(kernel_size, sigma_x, sigma_y, rotation)
    b = real("beta", beta, 0.0, math.inf, lo_open=True)
    return _normalise(torch.reciprocal(_quadratic_form(k, sx, sy, rot).pow(b) + 1.0))


def sinc_kernel2d(kernel_size: int, cutoff: float, pad_to: int = 0) -> Tensor:
    r"""Circular low-pass (2-D sinc / Airy) kernel, Real-ESRGAN's ``circular_lowpass_kernel``.

    :math:`k(r) \propto \omega_c J_1(\omega_c r) / (2 \pi r)`, centre
    :math:`\omega_c^2 / (4\pi)`; it models ringing and overshoot artifacts.

    Args:
        kernel_size: odd size :math:`k`, 3..63.
        cutoff: cut-off frequency :math:`\omega_c` in radians per pixel, in (0, pi].
        pad_to: zero-pad the kernel to this odd size if larger than ``kernel_size``.

    Returns:
        float32 CPU tensor of shape :math:`(\max(k, \text{pad\_to}),) * 2` summing to 1.
    """
    k = odd_kernel_size(kernel_size)
    w = real("cutoff", cutoff, 0.0, math.pi, lo_open=True)
    ax = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    r = torch.sqrt(xx * xx + yy * yy)
    c = (k - 1) // 2
    r[c, c] = 1.0  # placeholder, replaced by the limit below
    kernel = w * torch.special.bessel_j1(w * r) / (2 * math.pi * r)
    kernel[c, c] = w * w / (4 * math.pi)
    kernel = _normalise(kernel)
    if pad_to and pad_to > k:
        p = (odd_kernel_size(pad_to, "pad_to") - k) // 2
        kernel = F.pad(kernel, (p, p, p, p))
    return kernel


def motion_kernel2d(kernel_size: int, length: float, angle: float) -> Tensor:
    """Linear motion (camera-shake) blur: a ``length`` px segment through the centre at
    ``angle`` radians, drawn 8x supersampled with an anti-aliased line and area-reduced.

    Args:
        kernel_size: odd size :math:`k` >= ``length``, 3..63.
        length: segment length in pixels, in [1, k].
        angle: direction in radians (0 = horizontal).

    Returns:
        float32 CPU tensor of shape :math:`(k, k)` summing to 1.
    """
    import cv2  # only here: the rest of this module is torch

    k = odd_kernel_size(kernel_size)
    n = real("length", length, 1.0, float(k))
    ss = 8
    canvas = np.zeros((k * ss, k * ss), np.float32)
    c = (k * ss - 1) / 2
    dx, dy = math.cos(angle) * (n * ss - 1) / 2, math.sin(angle) * (n * ss - 1) / 2
    p0 = (round(c - dx), round(c - dy))
    p1 = (round(c + dx), round(c + dy))
    cv2.line(canvas, p0, p1, 1.0, thickness=ss, lineType=cv2.LINE_AA)
    small = cv2.resize(canvas, (k, k), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small / small.sum())


# --------------------------------------------------------------------------------------------
# blur


def _pad(x: Tensor, ph: int, pw: int) -> Tensor:
    """Reflect padding; replicate where the image is too small to reflect."""
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (pw, pw, ph, ph), mode=mode)


def blur(x: Tensor, kernel: Tensor) -> Tensor:
    r"""Convolve every channel with a 2-D kernel (depthwise), reflect padding, same size out.

    Args:
        x: images :math:`(B, C, H, W)`, float in [0, 1].
        kernel: :math:`(k_h, k_w)` shared by the batch or :math:`(B, k_h, k_w)` one per image;
            odd sizes. It is used as given (correlation; our kernels are symmetric) and is not
            renormalised.

    Returns:
        :math:`(B, C, H, W)` on ``x``'s device and dtype. Images smaller than the kernel radius
        are padded by replication instead of reflection.
    """
    check_image(x)
    if not isinstance(kernel, Tensor) or kernel.ndim not in (2, 3):
        raise ValueError(
            f"kernel must have shape (kh, kw) or (B, kh, kw), got "
            f"{tuple(kernel.shape) if isinstance(kernel, Tensor) else type(kernel).__name__}"
        )
    b, c, h, w = x.shape
    kh, kw = kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sizes must be odd, got {tuple(kernel.shape)}")
    weight = kernel.to(device=x.device, dtype=x.dtype)
    xp = _pad(x, kh // 2, kw // 2)
    if weight.ndim == 2:
        return F.conv2d(xp, weight.expand(c, 1, kh, kw), groups=c)
    if weight.shape[0] != b:
        raise ValueError(f"per-image kernels need {b} kernels, got {tuple(kernel.shape)}")
    weight = weight[:, None].expand(b, c, kh, kw).reshape(b * c, 1, kh, kw)
    out = F.conv2d(xp.reshape(1, b * c, *xp.shape[-2:]), weight, groups=b * c)
    return out.view(b, c, h, w)


def _gaussian_size(sigma: float) -> int:
    return max(7, 2 * math.ceil(3.0 * sigma) + 1)


def gaussian_blur(x: Tensor, sigma: float, kernel_size: int | None = None) -> Tensor:
    r"""Isotropic Gaussian blur, separable fast path (two 1-D passes), reflect padding.

    Args:
        x: images :math:`(B, C, H, W)`, float in [0, 1].
        sigma: standard deviation in pixels, (0, 10].
        kernel_size: odd kernel size; None = ``max(7, 2 * ceil(3 * sigma) + 1)``.

    Returns:
        :math:`(B, C, H, W)`, same device and dtype; equal (up to float rounding) to
        ``blur(x, gaussian_kernel2d(k, sigma))``.
    """
    check_image(x)
    s = real("blur sigma", sigma, 0.0, MAX_BLUR_SIGMA, lo_open=True)
    k = _gaussian_size(s) if kernel_size is None else odd_kernel_size(kernel_size)
    taps = gaussian_kernel1d(k, s).double().tolist()
    r = k // 2
    h, w = x.shape[-2:]
    xp = _pad(x, r, r)
    # Accumulating shifted slices is ~10x faster on CPU than a (1, k) conv2d and runs anywhere.
    rows = xp[..., :, 0:w] * taps[0]
    for i in range(1, k):
        rows.add_(xp[..., :, i : i + w], alpha=taps[i])
    out = rows[..., 0:h, :] * taps[0]
    for i in range(1, k):
        out.add_(rows[..., i : i + h, :], alpha=taps[i])
    return out


# --------------------------------------------------------------------------------------------
# resize


def resize(
    x: Tensor, size: tuple[int, int], mode: str = "bicubic", antialias: bool | None = None
) -> Tensor:
    r"""Resize with :func:`torch.nn.functional.interpolate`.

    Args:
        x: images :math:`(B, C, H, W)`.
        size: output :math:`(H', W')`, each >= 1.
        mode: ``area``, ``bilinear`` or ``bicubic`` (``align_corners=False``).
        antialias: None = True when downscaling in either direction (bilinear/bicubic only;
            ``area`` averages and needs none).

    Returns:
        :math:`(B, C, H', W')`; bicubic may overshoot [0, 1] (not clamped here).
    """
    check_image(x)
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise ValueError(f"size must be a pair of positive ints (H, W), got {size!r}")
    size = (int(size[0]), int(size[1]))
    if size == tuple(x.shape[-2:]):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    if antialias is None:
        antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


# --------------------------------------------------------------------------------------------
# noise


def _generator_for(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` if it lives on ``device``, else a device generator seeded from it."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, SEED_MASK, (1,), generator=generator, device=generator.device))
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _per_image(value: float | Sequence[float] | Tensor, b: int, x: Tensor, name: str) -> Tensor:
    """A scalar or per-image parameter as a (B, 1, 1, 1) tensor on x's device."""
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{name} must be a number or have shape ({b},), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ConfigError(f"{name} must be finite and >= 0, got {t.tolist()}")
    return t.to(device=x.device, dtype=x.dtype).view(b, 1, 1, 1)


def rgb_to_gray(x: Tensor) -> Tensor:
    r"""BT.601 luma :math:`0.299 R + 0.587 G + 0.114 B`; (B, 3, H, W) -> (B, 1, H, W)."""
    check_image(x)
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def add_gaussian_noise(
    x: Tensor,
    sigma: float | Sequence[float] | Tensor,
    generator: torch.Generator,
    *,
    gray: bool = False,
    clip: bool = True,
) -> Tensor:
    r"""Add white Gaussian noise.

    Args:
        x: images :math:`(B, C, H, W)` in [0, 1].
        sigma: standard deviation in /255 units (15 means 15/255), a number or one per image
            (shape :math:`(B,)`), >= 0.
        generator: source of the noise (a generator on another device seeds a device one).
        gray: one noise field shared by all channels (luminance noise) instead of per channel.
        clip: clamp the result to [0, 1].

    Returns:
        :math:`(B, C, H, W)`, same device and dtype.
    """
    check_image(x)
    b, c, h, w = x.shape
    s = _per_image(sigma, b, x, "noise sigma") / 255.0
    g = _generator_for(generator, x.device)
    shape = (b, 1, h, w) if gray else (b, c, h, w)
    noise = torch.randn(shape, generator=g, device=x.device, dtype=x.dtype)
    out = x + noise * s
    return out.clamp(0.0, 1.0) if clip else out


def add_poisson_noise(
    x: Tensor,
    scale: float | Sequence[float] | Tensor,
    generator: torch.Generator,
    *,
    gray: bool = False,
    clip: bool = True,
) -> Tensor:
    r"""Add signal-dependent Poisson (shot) noise as Real-ESRGAN's ``generate_poisson_noise_pt``.

    The image is rounded to 8 bits, the number of distinct levels ``n`` is counted per image,
    ``vals = 2 ** ceil(log2(n))``, and ``noise = (Poisson(img * vals) / vals - img) * scale``.

    Args:
        x: images :math:`(B, C, H, W)` in [0, 1].
        scale: noise scale (Real-ESRGAN draws 0.05..3), a number or one per image, >= 0.
        generator: source of the noise.
        gray: noise computed on the BT.601 luma and shared by all channels.
        clip: clamp the result to [0, 1].

    Returns:
        :math:`(B, C, H, W)`, same device and dtype.
    """
    check_image(x)
    b = x.shape[0]
    s = _per_image(scale, b, x, "poisson scale")
    g = _generator_for(generator, x.device)
    img = rgb_to_gray(x) if gray else x
    levels = (img.clamp(0.0, 1.0) * 255.0).round()
    img = levels / 255.0
    offsets = torch.arange(b, device=x.device).view(b, 1, 1, 1) * 256
    hist = torch.bincount((levels.long() + offsets).flatten(), minlength=256 * b)
    counts = (hist.view(b, 256) > 0).sum(dim=1).to(torch.float64)
    vals = torch.exp2(torch.ceil(torch.log2(counts))).to(x.dtype).view(b, 1, 1, 1)
    noisy = torch.poisson((img * vals).float(), generator=g).to(x.dtype) / vals
    out = x + (noisy - img) * s
    return out.clamp(0.0, 1.0) if clip else out
