"""Synthetic image degradations in batched torch: blur, resize, noise and JPEG.

Every operation works on a batch of images ``x`` of shape :math:`(B, C, H, W)`, ``C`` in {1, 3},
floating point with values in :math:`[0, 1]`, on whatever device ``x`` lives on (CPU or CUDA);
nothing goes through numpy or OpenCV. Randomness only comes from an explicit
:class:`torch.Generator`; the global RNG is never used, so the same input and the same generator
seed give the same output bits on CPU.

Two pipelines are built from the primitives:

* :func:`degrade_parametric` applies a fixed :class:`DegradationParams` (or one of :data:`PRESETS`)
  in the order **blur -> downscale -> noise -> JPEG** (:data:`PARAMETRIC_ORDER`).
* The Real-ESRGAN second-order pipeline (Wang et al. 2021, ``realesrgan_model.py``) is split into
  sampling (:func:`sample_second_order`, :func:`sample_second_order_batch`), which draws every
  random choice into a JSON-serialisable :class:`SecondOrderSample`, and applying
  (:func:`apply_second_order`, :func:`apply_second_order_batch`), a pure function of the image and
  the sample, so a logged sample replays bit for bit.

:func:`describe` gives the JSON description the per-image report stores, and
:func:`image_generator` seeds one generator per image from ``(seed, key)`` so that randomness
does not depend on file order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.errors import ConfigError

__all__ = [
    "KERNEL_TYPES",
    "PARAMETRIC_ORDER",
    "PRESETS",
    "RESIZE_MODES",
    "DegradationParams",
    "KernelSpec",
    "NoiseSpec",
    "ResizeSpec",
    "SecondOrderConfig",
    "SecondOrderSample",
    "add_gaussian_noise",
    "add_poisson_noise",
    "apply_second_order",
    "apply_second_order_batch",
    "blur",
    "dct_kron",
    "degrade_parametric",
    "describe",
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_kernel2d",
    "generalized_gaussian_kernel2d",
    "get_preset",
    "image_generator",
    "image_seed",
    "jpeg_compress",
    "jpeg_quant_tables",
    "plateau_kernel2d",
    "resize",
    "rgb_to_gray",
    "sample_second_order",
    "sample_second_order_batch",
    "sinc_kernel2d",
]

#: Blur kernel families of Real-ESRGAN's ``random_mixed_kernels``.
KERNEL_TYPES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
#: Interpolation modes accepted by :func:`resize`.
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
#: The order in which :func:`degrade_parametric` applies its steps.
PARAMETRIC_ORDER: tuple[str, ...] = ("blur", "downscale", "noise", "jpeg")

_MAX_BLUR_SIGMA = 10.0  # px; the parametric Gaussian kernel is 2*ceil(3*sigma)+1 wide (<= 61)
_MAX_NOISE_SIGMA = 255.0  # /255 units
_MAX_SCALE = 64.0
_MAX_KERNEL_SIZE = 63
_FINAL_ORDERS = ("resize_then_jpeg", "jpeg_then_resize")
_NOISE_KINDS = ("gaussian", "poisson")
_SINC = "sinc"
_MASK63 = (1 << 63) - 1


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_image(x: Tensor, name: str = "x") -> None:
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


def _real(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] (or (lo, hi]); ConfigError naming the bad value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    bad_lo = v <= lo if lo_open else v < lo
    if not math.isfinite(v) or bad_lo or v > hi:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{name} must be in {bracket}{lo:g}, {hi:g}], got {value!r}")
    return v


def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return int(value)


def _kernel_size(value: Any, name: str = "kernel_size") -> int:
    k = _integer(name, value, 3, _MAX_KERNEL_SIZE)
    if k % 2 == 0:
        raise ConfigError(f"{name} must be odd, got {value!r}")
    return k


def _range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{name} must be a [low, high] pair, got {value!r}")
    a = _real(f"{name}[0]", value[0], lo, hi, lo_open=lo_open)
    b = _real(f"{name}[1]", value[1], lo, hi, lo_open=lo_open)
    if a > b:
        raise ConfigError(f"{name} must have low <= high, got {value!r}")
    return (a, b)


def _probs(name: str, value: Any, n: int) -> tuple[float, ...]:
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise ConfigError(f"{name} must be a list of {n} probabilities, got {value!r}")
    ps = tuple(_real(f"{name}[{i}]", p, 0.0, 1.0) for i, p in enumerate(value))
    if abs(sum(ps) - 1.0) > 1e-6:
        raise ConfigError(f"{name} must sum to 1, got {value!r} (sum {sum(ps):g})")
    return ps


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
    k = _kernel_size(kernel_size)
    s = _real("sigma", sigma, 0.0, math.inf, lo_open=True)
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
    k = _kernel_size(kernel_size)
    sx = _real("sigma_x", sigma_x, 0.0, math.inf, lo_open=True)
    sy = sx if sigma_y is None else _real("sigma_y", sigma_y, 0.0, math.inf, lo_open=True)
    rot = _real("rotation", rotation, -math.inf, math.inf)
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
    b = _real("beta", beta, 0.0, math.inf, lo_open=True)
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
    b = _real("beta", beta, 0.0, math.inf, lo_open=True)
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
    k = _kernel_size(kernel_size)
    w = _real("cutoff", cutoff, 0.0, math.pi, lo_open=True)
    ax = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    r = torch.sqrt(xx * xx + yy * yy)
    c = (k - 1) // 2
    r[c, c] = 1.0  # placeholder, replaced by the limit below
    kernel = w * torch.special.bessel_j1(w * r) / (2 * math.pi * r)
    kernel[c, c] = w * w / (4 * math.pi)
    kernel = _normalise(kernel)
    if pad_to and pad_to > k:
        p = (_kernel_size(pad_to, "pad_to") - k) // 2
        kernel = F.pad(kernel, (p, p, p, p))
    return kernel


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
    _check_image(x)
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
    _check_image(x)
    s = _real("blur sigma", sigma, 0.0, _MAX_BLUR_SIGMA, lo_open=True)
    k = _gaussian_size(s) if kernel_size is None else _kernel_size(kernel_size)
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
    _check_image(x)
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
    seed = int(torch.randint(0, _MASK63, (1,), generator=generator, device=generator.device))
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
    _check_image(x)
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
    _check_image(x)
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
    _check_image(x)
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


# --------------------------------------------------------------------------------------------
# JPEG

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
    q = _integer("jpeg quality", quality, 1, 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    out = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        t = torch.tensor(base, dtype=torch.int64)
        out.append(torch.clamp((t * scale + 50) // 100, 1, 255))
    return out[0], out[1]


def dct_kron(device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """kron(D, D) for the orthonormal 8-point DCT-II D (JPEG's FDCT scaling):
    vec(D X D^T) = K vec(X), row-major; (64, 64)."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
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
        out.append(_integer("jpeg quality", math.floor(v + 0.5), 1, 100))
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
    _check_image(x)
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


# --------------------------------------------------------------------------------------------
# parametric pipeline


@dataclass(frozen=True)
class DegradationParams:
    """A fixed degradation, applied as blur -> downscale -> noise -> JPEG.

    Attributes:
        blur_sigma: isotropic Gaussian blur sigma in pixels of the input, [0, 10]; 0/None = none.
        noise_sigma: white Gaussian colour noise sigma in /255 units, [0, 255]; 0 = none.
        jpeg_quality: JPEG quality 1..100; None = no JPEG.
        scale: downscale factor in [1, 64]; the output is ``(round(H / scale), round(W / scale))``
            (Python rounding, at least 1 px), bicubic with antialiasing. 1 = keep the size.
    """

    blur_sigma: float | None = None
    noise_sigma: float = 0.0
    jpeg_quality: int | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.blur_sigma is not None:
            blur = _real("blur_sigma", self.blur_sigma, 0.0, _MAX_BLUR_SIGMA)
            object.__setattr__(self, "blur_sigma", blur)
        noise = _real("noise_sigma", self.noise_sigma, 0.0, _MAX_NOISE_SIGMA)
        object.__setattr__(self, "noise_sigma", noise)
        if self.jpeg_quality is not None:
            q = _integer("jpeg_quality", self.jpeg_quality, 1, 100)
            object.__setattr__(self, "jpeg_quality", q)
        object.__setattr__(self, "scale", _real("scale", self.scale, 1.0, _MAX_SCALE))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: ``{"blur_sigma", "noise_sigma", "jpeg_quality", "scale"}``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationParams:
        """Rebuild from :meth:`to_dict` (missing keys take defaults; unknown keys are refused)."""
        if not isinstance(data, dict):
            raise ConfigError(f"degradation params must be a mapping, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown degradation parameter(s): {', '.join(map(str, unknown))}; "
                f"known: {', '.join(sorted(names))}"
            )
        return cls(**data)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The output size for an input of ``height`` x ``width``."""
        if self.scale == 1:
            return height, width
        return max(1, round(height / self.scale)), max(1, round(width / self.scale))


#: Named degradations for ``f2s degrade --preset``; all keep the size (scale 1).
PRESETS: dict[str, DegradationParams] = {
    "noise15": DegradationParams(noise_sigma=15.0),
    "blur-noise": DegradationParams(blur_sigma=1.5, noise_sigma=5.0),
    "mixed": DegradationParams(blur_sigma=1.0, noise_sigma=10.0, jpeg_quality=45),
}


def get_preset(name: str) -> DegradationParams:
    """The preset called ``name``; ConfigError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown degradation preset {name!r}; known: {', '.join(PRESETS)}"
        ) from None


def degrade_parametric(
    x: Tensor, params: DegradationParams, generator: torch.Generator | None = None
) -> Tensor:
    r"""Apply a fixed degradation: blur -> downscale -> noise -> JPEG (:data:`PARAMETRIC_ORDER`).

    Args:
        x: images :math:`(B, C, H, W)`, float in [0, 1], C in {1, 3}.
        params: the degradation.
        generator: noise source; required when ``params.noise_sigma`` > 0. A generator on
            another device than ``x`` seeds a generator on ``x``'s device.

    Returns:
        :math:`(B, C, H', W')` in [0, 1] with ``(H', W') = params.output_size(H, W)``.
    """
    _check_image(x)
    if not isinstance(params, DegradationParams):
        raise TypeError(f"params must be DegradationParams, got {type(params).__name__}")
    out = x
    if params.blur_sigma:
        out = gaussian_blur(out, params.blur_sigma)
    size = params.output_size(*x.shape[-2:])
    if size != tuple(x.shape[-2:]):
        out = resize(out, size, "bicubic")
    if params.noise_sigma > 0:
        if generator is None:
            raise ValueError("degrade_parametric needs a generator when noise_sigma > 0")
        out = add_gaussian_noise(out, params.noise_sigma, generator, clip=True)
    if params.jpeg_quality is not None:
        out = jpeg_compress(out, params.jpeg_quality)
    return out.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Real-ESRGAN second-order pipeline: configuration and samples


@dataclass(frozen=True)
class SecondOrderConfig:
    """Ranges of the Real-ESRGAN second-order degradation (defaults = ``train_realesrgan_x4plus``).

    Names follow the Real-ESRGAN options; ``*2`` fields belong to the second degradation.
    Ranges are ``(low, high)`` pairs; noise sigmas are in /255 units; blur sigmas in pixels.

    Attributes:
        kernel_size_range: odd kernel sizes drawn uniformly from this range (within 7..21).
        kernel_list / kernel_prob: blur kernel families and their probabilities.
        sinc_prob: probability that the first blur is a sinc kernel instead.
        blur_sigma, betag_range, betap_range: Gaussian sigma, generalised and plateau betas.
        resize_prob: probabilities of (up, down, keep); resize_range: scale factor range.
        gaussian_noise_prob: Gaussian noise, else Poisson; noise_range: Gaussian sigma;
            poisson_scale_range: Poisson scale; gray_noise_prob: luminance-only noise.
        jpeg_range: integer JPEG qualities, inclusive.
        second_blur_prob: probability of the second blur.
        final_sinc_prob: probability of the final sinc filter (with the resize back).
        final_scale: output size is ``(H // final_scale, W // final_scale)``; 1 keeps the size,
            4 is the Real-ESRGAN x4 super-resolution setting.
        antialias: antialias bilinear/bicubic downscaling (Real-ESRGAN does not: False).
    """

    kernel_size_range: tuple[int, int] = (7, 21)
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[int, int] = (30, 95)

    second_blur_prob: float = 0.8
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[int, int] = (30, 95)

    final_sinc_prob: float = 0.8
    final_scale: int = 1
    antialias: bool = False

    def __post_init__(self) -> None:
        ks = self.kernel_size_range
        if not isinstance(ks, (tuple, list)) or len(ks) != 2:
            raise ConfigError(f"kernel_size_range must be a [low, high] pair, got {ks!r}")
        lo = _integer("kernel_size_range[0]", ks[0], 7, 21)
        hi = _integer("kernel_size_range[1]", ks[1], 7, 21)
        if lo % 2 == 0 or hi % 2 == 0 or lo > hi:
            raise ConfigError(f"kernel_size_range must be odd sizes low <= high, got {ks!r}")
        object.__setattr__(self, "kernel_size_range", (lo, hi))
        for suffix in ("", "2"):
            kl = getattr(self, "kernel_list" + suffix)
            if (
                not isinstance(kl, (tuple, list))
                or not kl
                or any(k not in KERNEL_TYPES for k in kl)
            ):
                raise ConfigError(
                    f"kernel_list{suffix} must hold kernel types from {', '.join(KERNEL_TYPES)}, "
                    f"got {kl!r}"
                )
            object.__setattr__(self, "kernel_list" + suffix, tuple(kl))
            kp = _probs("kernel_prob" + suffix, getattr(self, "kernel_prob" + suffix), len(kl))
            object.__setattr__(self, "kernel_prob" + suffix, kp)
            for name in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
                _real(name + suffix, getattr(self, name + suffix), 0.0, 1.0)
            pairs = {
                "blur_sigma": (0.0, 20.0, True),
                "betag_range": (0.0, 16.0, True),
                "betap_range": (0.0, 16.0, True),
                "resize_range": (0.0, 8.0, True),
                "noise_range": (0.0, _MAX_NOISE_SIGMA, False),
                "poisson_scale_range": (0.0, 16.0, False),
            }
            for name, (a, b, open_) in pairs.items():
                value = _range(name + suffix, getattr(self, name + suffix), a, b, lo_open=open_)
                object.__setattr__(self, name + suffix, value)
            rp = _probs("resize_prob" + suffix, getattr(self, "resize_prob" + suffix), 3)
            object.__setattr__(self, "resize_prob" + suffix, rp)
            jr = getattr(self, "jpeg_range" + suffix)
            if not isinstance(jr, (tuple, list)) or len(jr) != 2:
                raise ConfigError(f"jpeg_range{suffix} must be a [low, high] pair, got {jr!r}")
            jlo = _integer(f"jpeg_range{suffix}[0]", jr[0], 1, 100)
            jhi = _integer(f"jpeg_range{suffix}[1]", jr[1], 1, 100)
            if jlo > jhi:
                raise ConfigError(f"jpeg_range{suffix} must have low <= high, got {jr!r}")
            object.__setattr__(self, "jpeg_range" + suffix, (jlo, jhi))
        _real("second_blur_prob", self.second_blur_prob, 0.0, 1.0)
        _real("final_sinc_prob", self.final_sinc_prob, 0.0, 1.0)
        _integer("final_scale", self.final_scale, 1, 16)
        if not isinstance(self.antialias, bool):
            raise ConfigError(f"antialias must be true or false, got {self.antialias!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecondOrderConfig:
        """Rebuild from :meth:`to_dict` (missing keys take defaults; unknown keys are refused)."""
        if not isinstance(data, dict):
            raise ConfigError(f"second-order config must be a mapping, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown second-order option(s): {', '.join(map(str, unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _from_fields(cls: type, data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping, got {data!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    if set(data) != set(names):
        raise ConfigError(
            f"{what} must have keys {', '.join(names)}, got {', '.join(map(str, data))}"
        )
    return cls(**data)


@dataclass(frozen=True)
class KernelSpec:
    """The parameters of one sampled blur kernel; :meth:`build` rebuilds the kernel exactly.

    Attributes:
        kind: one of :data:`KERNEL_TYPES` or ``"sinc"``.
        size: odd kernel size.
        sigma_x, sigma_y, rotation: Gaussian-family shape (pixels, radians); unused for sinc.
        beta: shape exponent of the generalised / plateau kernels (1 otherwise).
        cutoff: sinc cut-off frequency in radians per pixel (0 for the other kinds).
    """

    kind: str
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    rotation: float = 0.0
    beta: float = 1.0
    cutoff: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in (*KERNEL_TYPES, _SINC):
            raise ConfigError(
                f"kernel kind must be one of {(*KERNEL_TYPES, _SINC)}, got {self.kind!r}"
            )
        _kernel_size(self.size, "kernel size")

    def build(self) -> Tensor:
        """The kernel, float32 CPU :math:`(size, size)`, summing to 1."""
        if self.kind == _SINC:
            return sinc_kernel2d(self.size, self.cutoff)
        if self.kind.startswith("generalized"):
            fn = generalized_gaussian_kernel2d
        elif self.kind.startswith("plateau"):
            fn = plateau_kernel2d
        else:
            return gaussian_kernel2d(self.size, self.sigma_x, self.sigma_y, self.rotation)
        return fn(self.size, self.sigma_x, self.sigma_y, self.rotation, self.beta)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelSpec:
        return _from_fields(cls, data, "kernel")


@dataclass(frozen=True)
class ResizeSpec:
    """One sampled resize: ``direction`` (up/down/keep), ``scale`` factor and ``mode``."""

    direction: str
    scale: float
    mode: str

    def __post_init__(self) -> None:
        if self.direction not in ("up", "down", "keep"):
            raise ConfigError(f"resize direction must be up, down or keep, got {self.direction!r}")
        _real("resize scale", self.scale, 0.0, 8.0, lo_open=True)
        if self.mode not in RESIZE_MODES:
            raise ConfigError(f"resize mode must be one of {RESIZE_MODES}, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResizeSpec:
        return _from_fields(cls, data, "resize")


@dataclass(frozen=True)
class NoiseSpec:
    """One sampled noise step.

    Attributes:
        kind: ``gaussian`` or ``poisson``.
        amount: Gaussian sigma in /255 units, or the Poisson scale.
        gray: luminance-only noise (one field shared by the channels).
        seed: 63-bit seed of the generator this step draws its noise from.
    """

    kind: str
    amount: float
    gray: bool
    seed: int

    def __post_init__(self) -> None:
        if self.kind not in _NOISE_KINDS:
            raise ConfigError(f"noise kind must be gaussian or poisson, got {self.kind!r}")
        _real("noise amount", self.amount, 0.0, _MAX_NOISE_SIGMA)
        if not isinstance(self.gray, bool):
            raise ConfigError(f"noise gray flag must be a bool, got {self.gray!r}")
        _integer("noise seed", self.seed, 0, _MASK63)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseSpec:
        return _from_fields(cls, data, "noise")

    def apply(self, x: Tensor) -> Tensor:
        """Add this noise to ``x`` (B, C, H, W) using a generator on x's device seeded ``seed``."""
        g = torch.Generator(device=x.device)
        g.manual_seed(self.seed)
        if self.kind == "gaussian":
            return add_gaussian_noise(x, self.amount, g, gray=self.gray, clip=True)
        return add_poisson_noise(x, self.amount, g, gray=self.gray, clip=True)


@dataclass(frozen=True)
class SecondOrderSample:
    """Every random choice of one Real-ESRGAN second-order degradation.

    Applying it (:func:`apply_second_order`) is a pure function of the image and the sample.
    Kernels are stored as parameters (:class:`KernelSpec`) and rebuilt; noise is stored as the
    seed of a per-step generator.

    Attributes:
        kernel1: first blur.
        resize1: first resize; output ``int(H * scale)``.
        noise1, jpeg1: first noise and JPEG quality.
        kernel2: second blur, None = skipped.
        resize2: second resize; output ``int(H / final_scale * scale)``.
        noise2, jpeg2: second noise and JPEG quality.
        final_order: ``resize_then_jpeg`` (resize back + sinc, then JPEG) or
            ``jpeg_then_resize``.
        final_mode: mode of the resize back to ``(H // final_scale, W // final_scale)``.
        sinc: final sinc kernel, None = none.
        final_scale, antialias: copied from the config.
    """

    kernel1: KernelSpec
    resize1: ResizeSpec
    noise1: NoiseSpec
    jpeg1: int
    kernel2: KernelSpec | None
    resize2: ResizeSpec
    noise2: NoiseSpec
    jpeg2: int
    final_order: str
    final_mode: str
    sinc: KernelSpec | None
    final_scale: int = 1
    antialias: bool = False

    def __post_init__(self) -> None:
        _integer("jpeg1", self.jpeg1, 1, 100)
        _integer("jpeg2", self.jpeg2, 1, 100)
        if self.final_order not in _FINAL_ORDERS:
            raise ConfigError(
                f"final_order must be one of {_FINAL_ORDERS}, got {self.final_order!r}"
            )
        if self.final_mode not in RESIZE_MODES:
            raise ConfigError(f"final_mode must be one of {RESIZE_MODES}, got {self.final_mode!r}")
        _integer("final_scale", self.final_scale, 1, 16)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain JSON types (``json.dumps``-able, floats round-trip exactly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecondOrderSample:
        """Rebuild a sample from :meth:`to_dict`."""
        if not isinstance(data, dict):
            raise ConfigError(f"second-order sample must be a mapping, got {data!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        if set(data) != set(names):
            raise ConfigError(
                f"second-order sample must have keys {', '.join(names)}, "
                f"got {', '.join(map(str, data))}"
            )
        d = dict(data)
        for key in ("kernel1", "kernel2", "sinc"):
            d[key] = None if d[key] is None else KernelSpec.from_dict(d[key])
        for key in ("resize1", "resize2"):
            d[key] = ResizeSpec.from_dict(d[key])
        for key in ("noise1", "noise2"):
            d[key] = NoiseSpec.from_dict(d[key])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# sampling


class _Draw:
    """Scalar draws from a torch.Generator (float64 uniforms, ints, weighted choices)."""

    def __init__(self, generator: torch.Generator) -> None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.g = generator

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        u = torch.rand((), generator=self.g, dtype=torch.float64, device=self.g.device).item()
        return lo + (hi - lo) * u

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] inclusive."""
        return int(torch.randint(lo, hi + 1, (), generator=self.g, device=self.g.device).item())

    def choice(self, items: Sequence[Any], probs: Sequence[float] | None = None) -> Any:
        if probs is None:
            return items[self.integer(0, len(items) - 1)]
        u, acc = self.uniform(), 0.0
        for item, p in zip(items, probs, strict=True):
            acc += p
            if u < acc:
                return item
        return next(item for item, p in zip(reversed(items), reversed(probs), strict=True) if p > 0)

    def seed(self) -> int:
        return self.integer(0, _MASK63 - 1)


def _beta(d: _Draw, lo: float, hi: float) -> float:
    """Real-ESRGAN's beta draw: half the time in [lo, 1], else in [1, hi] (1 clamped to range)."""
    one = min(max(1.0, lo), hi)
    return d.uniform(lo, one) if d.uniform() < 0.5 else d.uniform(one, hi)


def _sample_kernel(
    d: _Draw,
    sizes: Sequence[int],
    kinds: Sequence[str],
    probs: Sequence[float],
    sinc_prob: float,
    sigma: tuple[float, float],
    betag: tuple[float, float],
    betap: tuple[float, float],
) -> KernelSpec:
    size = d.choice(sizes)
    if d.uniform() < sinc_prob:
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return KernelSpec(_SINC, size, cutoff=d.uniform(lo, math.pi))
    kind = d.choice(kinds, probs)
    sx = d.uniform(*sigma)
    if kind.endswith("aniso"):
        sy, rot = d.uniform(*sigma), d.uniform(-math.pi, math.pi)
    else:
        sy, rot = sx, 0.0
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _beta(d, *betag)
    elif kind.startswith("plateau"):
        beta = _beta(d, *betap)
    return KernelSpec(kind, size, sx, sy, rot, beta)


def _sample_resize(d: _Draw, probs: Sequence[float], rng: tuple[float, float]) -> ResizeSpec:
    direction = d.choice(("up", "down", "keep"), probs)
    if direction == "up":
        scale = d.uniform(1.0, rng[1])
    elif direction == "down":
        scale = d.uniform(rng[0], 1.0)
    else:
        scale = 1.0
    return ResizeSpec(direction, scale, d.choice(RESIZE_MODES))


def _sample_noise(
    d: _Draw,
    gauss_prob: float,
    sigma: tuple[float, float],
    poisson: tuple[float, float],
    gray_prob: float,
) -> NoiseSpec:
    if d.uniform() < gauss_prob:
        kind, amount = "gaussian", d.uniform(*sigma)
    else:
        kind, amount = "poisson", d.uniform(*poisson)
    gray = d.uniform() < gray_prob
    return NoiseSpec(kind, amount, gray, d.seed())


def _sample_shared(cfg: SecondOrderConfig, d: _Draw) -> dict[str, Any]:
    """The decisions shared by a batch (they fix the output sizes): resizes and final order."""
    return {
        "resize1": _sample_resize(d, cfg.resize_prob, cfg.resize_range),
        "resize2": _sample_resize(d, cfg.resize_prob2, cfg.resize_range2),
        "final_order": _FINAL_ORDERS[0] if d.uniform() < 0.5 else _FINAL_ORDERS[1],
        "final_mode": d.choice(RESIZE_MODES),
    }


def _sample_one(cfg: SecondOrderConfig, d: _Draw, shared: dict[str, Any]) -> SecondOrderSample:
    sizes = list(range(cfg.kernel_size_range[0], cfg.kernel_size_range[1] + 1, 2))
    kernel1 = _sample_kernel(
        d, sizes, cfg.kernel_list, cfg.kernel_prob, cfg.sinc_prob,
        cfg.blur_sigma, cfg.betag_range, cfg.betap_range,
    )  # fmt: skip
    noise1 = _sample_noise(
        d, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range, cfg.gray_noise_prob
    )
    jpeg1 = d.integer(*cfg.jpeg_range)
    kernel2 = None
    if d.uniform() < cfg.second_blur_prob:
        kernel2 = _sample_kernel(
            d, sizes, cfg.kernel_list2, cfg.kernel_prob2, cfg.sinc_prob2,
            cfg.blur_sigma2, cfg.betag_range2, cfg.betap_range2,
        )  # fmt: skip
    noise2 = _sample_noise(
        d, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2,
        cfg.gray_noise_prob2,
    )  # fmt: skip
    jpeg2 = d.integer(*cfg.jpeg_range2)
    sinc = None
    if d.uniform() < cfg.final_sinc_prob:
        sinc = KernelSpec(_SINC, d.choice(sizes), cutoff=d.uniform(math.pi / 3, math.pi))
    return SecondOrderSample(
        kernel1=kernel1,
        resize1=shared["resize1"],
        noise1=noise1,
        jpeg1=jpeg1,
        kernel2=kernel2,
        resize2=shared["resize2"],
        noise2=noise2,
        jpeg2=jpeg2,
        final_order=shared["final_order"],
        final_mode=shared["final_mode"],
        sinc=sinc,
        final_scale=cfg.final_scale,
        antialias=cfg.antialias,
    )


def sample_second_order(config: SecondOrderConfig, generator: torch.Generator) -> SecondOrderSample:
    """Draw every random choice of one second-order degradation.

    Args:
        config: the ranges.
        generator: the only source of randomness (any device; scalar draws).

    Returns:
        A :class:`SecondOrderSample`; ``apply_second_order(x, sample)`` applies it.
    """
    if not isinstance(config, SecondOrderConfig):
        raise TypeError(f"config must be SecondOrderConfig, got {type(config).__name__}")
    d = _Draw(generator)
    return _sample_one(config, d, _sample_shared(config, d))


def sample_second_order_batch(
    config: SecondOrderConfig, generator: torch.Generator, batch_size: int
) -> tuple[SecondOrderSample, ...]:
    """Samples for a training batch: one resize/order decision per batch, the rest per image.

    As in Real-ESRGAN, the resizes (direction, scale, mode), the final order and the final
    resize mode are drawn once per batch so the outputs stack; kernels, noise (kind, level, gray
    flag, seed), JPEG qualities, whether the second blur and the final sinc apply are per image.

    Returns:
        ``batch_size`` samples sharing their resize fields.
    """
    if not isinstance(config, SecondOrderConfig):
        raise TypeError(f"config must be SecondOrderConfig, got {type(config).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    d = _Draw(generator)
    shared = _sample_shared(config, d)
    return tuple(_sample_one(config, d, shared) for _ in range(batch_size))


# --------------------------------------------------------------------------------------------
# applying


def _pulse(size: int) -> Tensor:
    k = torch.zeros(size, size)
    k[size // 2, size // 2] = 1.0
    return k


def _blur_each(x: Tensor, specs: Sequence[KernelSpec | None]) -> Tensor:
    """Blur image i with specs[i] (None = identity), kernels zero-padded to a common size."""
    if all(s is None for s in specs):
        return x
    if all(s == specs[0] for s in specs):
        return blur(x, specs[0].build())  # type: ignore[union-attr]
    size = max(s.size for s in specs if s is not None)
    kernels = []
    for s in specs:
        if s is None:
            kernels.append(_pulse(size))
        else:
            p = (size - s.size) // 2
            kernels.append(F.pad(s.build(), (p, p, p, p)))
    return blur(x, torch.stack(kernels))


def _noise_each(x: Tensor, specs: Sequence[NoiseSpec]) -> Tensor:
    # one image at a time, so an image's noise does not depend on the rest of the batch
    return torch.cat([s.apply(x[i : i + 1]) for i, s in enumerate(specs)])


def _check_shared(samples: Sequence[SecondOrderSample]) -> None:
    first = samples[0]
    for i, s in enumerate(samples):
        if not isinstance(s, SecondOrderSample):
            raise TypeError(f"samples[{i}] must be a SecondOrderSample, got {type(s).__name__}")
        for name in ("resize1", "resize2", "final_order", "final_mode", "final_scale", "antialias"):
            a, b = getattr(first, name), getattr(s, name)
            if a != b:
                raise ValueError(
                    f"samples of one batch must share {name} (use sample_second_order_batch): "
                    f"samples[0] has {a!r}, samples[{i}] has {b!r}"
                )


def apply_second_order_batch(x: Tensor, samples: Sequence[SecondOrderSample]) -> Tensor:
    r"""Apply per-image second-order samples to a batch (Real-ESRGAN ``feed_data`` order).

    blur1 -> resize1 -> noise1 -> clamp -> JPEG1 -> [blur2] -> resize2 -> noise2 -> final
    (resize back to ``(H // s, W // s)`` + [sinc], JPEG2 — in ``final_order``) -> clamp and
    round to 8-bit levels (``round(x * 255) / 255``).

    Args:
        x: images :math:`(B, C, H, W)`, float in [0, 1], C in {1, 3}, any device.
        samples: ``B`` samples sharing their resize fields (:func:`sample_second_order_batch`).

    Returns:
        :math:`(B, C, H // s, W // s)` in [0, 1], ``s = final_scale``.
    """
    _check_image(x)
    samples = tuple(samples)
    b, _, h, w = x.shape
    if len(samples) != b:
        raise ValueError(f"need one sample per image: {b} images, {len(samples)} samples")
    _check_shared(samples)
    s0 = samples[0]
    fs = s0.final_scale

    out = _blur_each(x, [s.kernel1 for s in samples])
    r = s0.resize1.scale
    out = resize(out, (max(1, int(h * r)), max(1, int(w * r))), s0.resize1.mode, s0.antialias)
    out = _noise_each(out, [s.noise1 for s in samples])
    out = jpeg_compress(out.clamp(0.0, 1.0), [s.jpeg1 for s in samples])

    out = _blur_each(out, [s.kernel2 for s in samples])
    r = s0.resize2.scale
    size2 = (max(1, int(h / fs * r)), max(1, int(w / fs * r)))
    out = resize(out, size2, s0.resize2.mode, s0.antialias)
    out = _noise_each(out, [s.noise2 for s in samples])

    final = (max(1, h // fs), max(1, w // fs))
    qualities = [s.jpeg2 for s in samples]
    if s0.final_order == "resize_then_jpeg":
        out = resize(out, final, s0.final_mode, s0.antialias)
        out = _blur_each(out, [s.sinc for s in samples])
        out = jpeg_compress(out.clamp(0.0, 1.0), qualities)
    else:
        out = jpeg_compress(out.clamp(0.0, 1.0), qualities)
        out = resize(out, final, s0.final_mode, s0.antialias)
        out = _blur_each(out, [s.sinc for s in samples])
    return torch.clamp(torch.round(out * 255.0), 0.0, 255.0) / 255.0


def apply_second_order(x: Tensor, sample: SecondOrderSample) -> Tensor:
    r"""Apply one second-order sample to every image of ``x``; pure function of (x, sample).

    Args:
        x: images :math:`(B, C, H, W)`, float in [0, 1], C in {1, 3} (usually B = 1).
        sample: from :func:`sample_second_order` or :meth:`SecondOrderSample.from_dict`.

    Returns:
        :math:`(B, C, H // s, W // s)` in [0, 1], quantised to 8-bit levels. Every image gets the
        same kernels and the same noise seeds.
    """
    _check_image(x)
    if not isinstance(sample, SecondOrderSample):
        raise TypeError(f"sample must be a SecondOrderSample, got {type(sample).__name__}")
    return apply_second_order_batch(x, [sample] * x.shape[0])


# --------------------------------------------------------------------------------------------
# report and seeding helpers


def describe(
    spec: DegradationParams | SecondOrderConfig,
    *,
    preset: str | None = None,
    sample: SecondOrderSample | Sequence[SecondOrderSample] | None = None,
) -> dict[str, Any]:
    """The JSON-serialisable description of an applied degradation for the report.

    * ``describe(params)`` -> ``{"mode": "parametric", "preset": None, "params": params.to_dict()}``
    * ``describe(PRESETS[name], preset=name)`` -> ``mode`` ``"preset"``, ``preset`` the name.
    * ``describe(config, sample=s)`` -> ``{"mode": "second-order", "preset": None, "params":
      {"config": config.to_dict(), "sample": s.to_dict()}}`` (``sample`` a list of dicts for a
      batch, None if not given); the sample replays the degradation exactly.

    Parametric steps run in :data:`PARAMETRIC_ORDER` (blur, downscale, noise, JPEG).
    """
    if isinstance(spec, DegradationParams):
        if sample is not None:
            raise ValueError("a parametric degradation has no second-order sample")
        if preset is not None:
            get_preset(preset)
        mode = "parametric" if preset is None else "preset"
        return {"mode": mode, "preset": preset, "params": spec.to_dict()}
    if isinstance(spec, SecondOrderConfig):
        if preset is not None:
            raise ValueError("second-order degradations have no preset name")
        if sample is None:
            s: Any = None
        elif isinstance(sample, SecondOrderSample):
            s = sample.to_dict()
        else:
            s = [item.to_dict() for item in sample]
        return {
            "mode": "second-order",
            "preset": None,
            "params": {"config": spec.to_dict(), "sample": s},
        }
    raise TypeError(f"cannot describe {type(spec).__name__}")


def image_seed(seed: int, key: str) -> int:
    """``int.from_bytes(sha256(f"{seed}:{key}")[:8], "big") & (2**63 - 1)``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _MASK63


def image_generator(seed: int, key: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator for one image, seeded from ``(seed, key)`` only (not from file order).

    Args:
        seed: the run's base seed.
        key: a stable per-image key, e.g. the input's path relative to the input folder.
        device: the device the generator lives on.

    Returns:
        ``torch.Generator(device)`` seeded with :func:`image_seed` ``(seed, key)``.
    """
    g = torch.Generator(device=device)
    g.manual_seed(image_seed(seed, key))
    return g
