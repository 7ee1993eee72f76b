"""Real-ESRGAN's second-order degradation (Wang et al. 2021, ``realesrgan_model.py``).

Split into sampling (:func:`sample_second_order`, :func:`sample_second_order_batch`), which
draws every random choice into a JSON-serialisable
:class:`~face2scene_cli.degradations.record.SecondOrderSample`, and applying
(:func:`apply_second_order`, :func:`apply_second_order_batch`), a pure function of the image
and the sample, so a logged sample replays bit for bit. :class:`SecondOrderConfig` holds the
ranges (defaults = ``train_realesrgan_x4plus``); :class:`Draw` makes the scalar draws from a
torch or numpy generator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.degradations.checks import (
    MAX_MOTION_PX,
    MAX_NOISE_SIGMA,
    MAX_POISSON_SCALE,
    SEED_MASK,
    flag,
    integer,
    probabilities,
    real,
    value_range,
)
from face2scene_cli.degradations.jpeg import jpeg_compress
from face2scene_cli.degradations.ops import (
    add_gaussian_noise,
    add_poisson_noise,
    blur,
    check_image,
    gaussian_kernel2d,
    generalized_gaussian_kernel2d,
    motion_kernel2d,
    plateau_kernel2d,
    resize,
    sinc_kernel2d,
)
from face2scene_cli.degradations.record import (
    FINAL_ORDERS,
    KERNEL_TYPES,
    MOTION,
    REALESRGAN_KERNELS,
    RESIZE_MODES,
    SINC,
    KernelSpec,
    NoiseSpec,
    ResizeSpec,
    SecondOrderSample,
    motion_kernel_size,
)
from face2scene_cli.errors import ConfigError

__all__ = [
    "Draw",
    "Generator",
    "SecondOrderConfig",
    "add_noise",
    "apply_second_order",
    "apply_second_order_batch",
    "build_kernel",
    "sample_second_order",
    "sample_second_order_batch",
]

#: The random sources the samplers accept.
Generator: TypeAlias = "torch.Generator | np.random.Generator"


# --------------------------------------------------------------------------------------------
# Real-ESRGAN second-order pipeline: configuration


@dataclass(frozen=True)
class SecondOrderConfig:
    """Ranges of the Real-ESRGAN second-order degradation (defaults = ``train_realesrgan_x4plus``).

    Names follow the Real-ESRGAN options; ``*2`` fields belong to the second degradation.
    Ranges are ``(low, high)`` pairs; noise sigmas are in /255 units; blur sigmas in pixels.

    Attributes:
        kernel_size_range: odd kernel sizes drawn uniformly from this range (within 7..21).
        kernel_list / kernel_prob: blur kernel families and their probabilities (Real-ESRGAN's
            six by default; ``motion`` adds camera shake, a segment of ``motion_range`` px, the
            kernel size grown to hold it).
        sinc_prob: probability that the first blur is a sinc kernel instead.
        blur_sigma, betag_range, betap_range: Gaussian sigma, generalised and plateau betas.
        resize_prob: probabilities of (up, down, keep); resize_range: scale factor range.
        gaussian_noise_prob: Gaussian noise, else Poisson; noise_range: Gaussian sigma;
            poisson_scale_range: Poisson scale; gray_noise_prob: luminance-only noise.
        jpeg_range: integer JPEG qualities, inclusive.
        second_blur_prob: probability of the second blur.
        final_sinc_prob: probability of the final sinc filter (with the resize back).
        motion_range: motion-blur segment length in px (both passes), within 1..21.
        final_scale: output size is ``(H // final_scale, W // final_scale)``; 1 keeps the size,
            4 is the Real-ESRGAN x4 super-resolution setting.
        antialias: antialias bilinear/bicubic downscaling (Real-ESRGAN does not: False).
    """

    kernel_size_range: tuple[int, int] = (7, 21)
    kernel_list: tuple[str, ...] = REALESRGAN_KERNELS
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
    kernel_list2: tuple[str, ...] = REALESRGAN_KERNELS
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

    motion_range: tuple[float, float] = (3.0, 15.0)
    final_sinc_prob: float = 0.8
    final_scale: int = 1
    antialias: bool = False

    def __post_init__(self) -> None:
        ks = self.kernel_size_range
        if not isinstance(ks, (tuple, list)) or len(ks) != 2:
            raise ConfigError(f"kernel_size_range must be a [low, high] pair, got {ks!r}")
        lo = integer("kernel_size_range[0]", ks[0], 7, 21)
        hi = integer("kernel_size_range[1]", ks[1], 7, 21)
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
            kp = probabilities(
                "kernel_prob" + suffix, getattr(self, "kernel_prob" + suffix), len(kl)
            )
            object.__setattr__(self, "kernel_prob" + suffix, kp)
            for name in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
                real(name + suffix, getattr(self, name + suffix), 0.0, 1.0)
            pairs = {
                "blur_sigma": (0.0, 20.0, True),
                "betag_range": (0.0, 16.0, True),
                "betap_range": (0.0, 16.0, True),
                "resize_range": (0.0, 8.0, True),
                "noise_range": (0.0, MAX_NOISE_SIGMA, False),
                "poisson_scale_range": (0.0, MAX_POISSON_SCALE, False),
            }
            for name, (a, b, open_) in pairs.items():
                value = value_range(
                    name + suffix, getattr(self, name + suffix), a, b, lo_open=open_
                )
                object.__setattr__(self, name + suffix, value)
            rp = probabilities("resize_prob" + suffix, getattr(self, "resize_prob" + suffix), 3)
            object.__setattr__(self, "resize_prob" + suffix, rp)
            jr = getattr(self, "jpeg_range" + suffix)
            if not isinstance(jr, (tuple, list)) or len(jr) != 2:
                raise ConfigError(f"jpeg_range{suffix} must be a [low, high] pair, got {jr!r}")
            jlo = integer(f"jpeg_range{suffix}[0]", jr[0], 1, 100)
            jhi = integer(f"jpeg_range{suffix}[1]", jr[1], 1, 100)
            if jlo > jhi:
                raise ConfigError(f"jpeg_range{suffix} must have low <= high, got {jr!r}")
            object.__setattr__(self, "jpeg_range" + suffix, (jlo, jhi))
        mr = value_range("motion_range", self.motion_range, 1.0, MAX_MOTION_PX)
        object.__setattr__(self, "motion_range", mr)
        real("second_blur_prob", self.second_blur_prob, 0.0, 1.0)
        real("final_sinc_prob", self.final_sinc_prob, 0.0, 1.0)
        integer("final_scale", self.final_scale, 1, 16)
        flag("antialias", self.antialias)

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


# --------------------------------------------------------------------------------------------
# sampling


class Draw:
    """Scalar draws (float64 uniforms, ints, weighted choices) from a torch or numpy generator."""

    def __init__(self, generator: torch.Generator | np.random.Generator) -> None:
        if not isinstance(generator, (torch.Generator, np.random.Generator)):
            raise TypeError(
                f"generator must be a torch.Generator or numpy Generator, "
                f"got {type(generator).__name__}"
            )
        self.g = generator

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        g = self.g
        if isinstance(g, np.random.Generator):
            u = float(g.random())
        else:
            u = torch.rand((), generator=g, dtype=torch.float64, device=g.device).item()
        return lo + (hi - lo) * u

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] inclusive."""
        g = self.g
        if isinstance(g, np.random.Generator):
            return int(g.integers(lo, hi + 1))
        return int(torch.randint(lo, hi + 1, (), generator=g, device=g.device).item())

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
        return self.integer(0, SEED_MASK - 1)


def _beta(d: Draw, lo: float, hi: float) -> float:
    """Real-ESRGAN's beta draw: half the time in [lo, 1], else in [1, hi] (1 clamped to range)."""
    one = min(max(1.0, lo), hi)
    return d.uniform(lo, one) if d.uniform() < 0.5 else d.uniform(one, hi)


def _sample_kernel(
    d: Draw,
    sizes: Sequence[int],
    kinds: Sequence[str],
    probs: Sequence[float],
    sinc_prob: float,
    sigma: tuple[float, float],
    betag: tuple[float, float],
    betap: tuple[float, float],
    motion: tuple[float, float],
) -> KernelSpec:
    size = d.choice(sizes)
    if d.uniform() < sinc_prob:
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return KernelSpec(SINC, size, cutoff=d.uniform(lo, math.pi))
    kind = d.choice(kinds, probs)
    if kind == MOTION:
        length = d.uniform(*motion)
        size = max(size, motion_kernel_size(length))
        return KernelSpec(MOTION, size, rotation=d.uniform(0.0, math.pi), length=length)
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


def _sample_resize(d: Draw, probs: Sequence[float], rng: tuple[float, float]) -> ResizeSpec:
    direction = d.choice(("up", "down", "keep"), probs)
    if direction == "up":
        scale = d.uniform(1.0, rng[1])
    elif direction == "down":
        scale = d.uniform(rng[0], 1.0)
    else:
        scale = 1.0
    return ResizeSpec(direction, scale, d.choice(RESIZE_MODES))


def _sample_noise(
    d: Draw,
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


def _sample_shared(cfg: SecondOrderConfig, d: Draw) -> dict[str, Any]:
    """The decisions shared by a batch (they fix the output sizes): resizes and final order."""
    return {
        "resize1": _sample_resize(d, cfg.resize_prob, cfg.resize_range),
        "resize2": _sample_resize(d, cfg.resize_prob2, cfg.resize_range2),
        "final_order": FINAL_ORDERS[0] if d.uniform() < 0.5 else FINAL_ORDERS[1],
        "final_mode": d.choice(RESIZE_MODES),
    }


def _sample_one(cfg: SecondOrderConfig, d: Draw, shared: dict[str, Any]) -> SecondOrderSample:
    sizes = list(range(cfg.kernel_size_range[0], cfg.kernel_size_range[1] + 1, 2))
    kernel1 = _sample_kernel(
        d, sizes, cfg.kernel_list, cfg.kernel_prob, cfg.sinc_prob,
        cfg.blur_sigma, cfg.betag_range, cfg.betap_range, cfg.motion_range,
    )  # fmt: skip
    noise1 = _sample_noise(
        d, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range, cfg.gray_noise_prob
    )
    jpeg1 = d.integer(*cfg.jpeg_range)
    kernel2 = None
    if d.uniform() < cfg.second_blur_prob:
        kernel2 = _sample_kernel(
            d, sizes, cfg.kernel_list2, cfg.kernel_prob2, cfg.sinc_prob2,
            cfg.blur_sigma2, cfg.betag_range2, cfg.betap_range2, cfg.motion_range,
        )  # fmt: skip
    noise2 = _sample_noise(
        d, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2,
        cfg.gray_noise_prob2,
    )  # fmt: skip
    jpeg2 = d.integer(*cfg.jpeg_range2)
    sinc = None
    if d.uniform() < cfg.final_sinc_prob:
        sinc = KernelSpec(SINC, d.choice(sizes), cutoff=d.uniform(math.pi / 3, math.pi))
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


def sample_second_order(config: SecondOrderConfig, generator: Generator) -> SecondOrderSample:
    """Draw every random choice of one second-order degradation.

    Args:
        config: the ranges.
        generator: the only source of randomness: a torch generator (any device; scalar
            draws) or a numpy one.

    Returns:
        A :class:`SecondOrderSample`; ``apply_second_order(x, sample)`` applies it.
    """
    if not isinstance(config, SecondOrderConfig):
        raise TypeError(f"config must be SecondOrderConfig, got {type(config).__name__}")
    d = Draw(generator)
    return _sample_one(config, d, _sample_shared(config, d))


def sample_second_order_batch(
    config: SecondOrderConfig, generator: Generator, batch_size: int
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
    d = Draw(generator)
    shared = _sample_shared(config, d)
    return tuple(_sample_one(config, d, shared) for _ in range(batch_size))


# --------------------------------------------------------------------------------------------
# applying


def build_kernel(spec: KernelSpec) -> Tensor:
    """The kernel of ``spec``, float32 CPU :math:`(size, size)`, summing to 1."""
    if spec.kind == SINC:
        return sinc_kernel2d(spec.size, spec.cutoff)
    if spec.kind == MOTION:
        return motion_kernel2d(spec.size, spec.length, spec.rotation)
    if spec.kind.startswith("generalized"):
        fn = generalized_gaussian_kernel2d
    elif spec.kind.startswith("plateau"):
        fn = plateau_kernel2d
    else:
        return gaussian_kernel2d(spec.size, spec.sigma_x, spec.sigma_y, spec.rotation)
    return fn(spec.size, spec.sigma_x, spec.sigma_y, spec.rotation, spec.beta)


def add_noise(x: Tensor, spec: NoiseSpec) -> Tensor:
    """Add ``spec``'s noise to ``x`` (B, C, H, W) from a generator on x's device seeded
    ``spec.seed``; clamped to [0, 1]."""
    g = torch.Generator(device=x.device)
    g.manual_seed(spec.seed)
    if spec.kind == "gaussian":
        return add_gaussian_noise(x, spec.amount, g, gray=spec.gray, clip=True)
    return add_poisson_noise(x, spec.amount, g, gray=spec.gray, clip=True)


def _pulse(size: int) -> Tensor:
    k = torch.zeros(size, size)
    k[size // 2, size // 2] = 1.0
    return k


def _blur_each(x: Tensor, specs: Sequence[KernelSpec | None]) -> Tensor:
    """Blur image i with specs[i] (None = identity), kernels zero-padded to a common size."""
    if all(s is None for s in specs):
        return x
    if all(s == specs[0] for s in specs):
        return blur(x, build_kernel(specs[0]))  # type: ignore[union-attr]
    size = max(s.size for s in specs if s is not None)
    kernels = []
    for s in specs:
        if s is None:
            kernels.append(_pulse(size))
        else:
            p = (size - s.size) // 2
            kernels.append(F.pad(build_kernel(s), (p, p, p, p)))
    return blur(x, torch.stack(kernels))


def _noise_each(x: Tensor, specs: Sequence[NoiseSpec]) -> Tensor:
    # one image at a time, so an image's noise does not depend on the rest of the batch
    return torch.cat([add_noise(x[i : i + 1], s) for i, s in enumerate(specs)])


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
    check_image(x)
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
    check_image(x)
    if not isinstance(sample, SecondOrderSample):
        raise TypeError(f"sample must be a SecondOrderSample, got {type(sample).__name__}")
    return apply_second_order_batch(x, [sample] * x.shape[0])
