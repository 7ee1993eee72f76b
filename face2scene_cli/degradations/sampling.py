"""Drawing degradations and applying them: :class:`DegradationDistribution` and :func:`apply`.

A :class:`DegradationDistribution` says how training data, ``f2s degrade`` and ``f2s eval``
pick degradations: a mix of presets, a parametric grid (each step present with its own
probability, values uniform in their ranges) and Real-ESRGAN's second-order pipeline
(:mod:`face2scene_cli.degradations.second_order`). Its :meth:`~DegradationDistribution.sample`
draws a :class:`~face2scene_cli.degradations.record.Degradation` record from an explicit
generator, and :func:`apply` applies a record to a batch of images, a pure function of the
image and the record (plus a generator for records without a noise seed). The training
configs share one YAML block for it (``data.degradation``), parsed by
:meth:`DegradationDistribution.from_dict`.

:func:`image_seed` / :func:`image_generator` seed one generator per image from
``(seed, key)`` so that randomness does not depend on file order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from face2scene_cli.degradations.checks import (
    MAX_BLUR_SIGMA,
    MAX_DOWNSCALE,
    MAX_MOTION_PX,
    MAX_NOISE_SIGMA,
    MAX_POISSON_SCALE,
    SEED_MASK,
    flag,
    integer_range,
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
    gaussian_blur,
    motion_kernel2d,
    resize,
)
from face2scene_cli.degradations.record import (
    MODES,
    PRESETS,
    RESIZE_MODES,
    Degradation,
    equivalent_blur,
    motion_kernel_size,
)
from face2scene_cli.degradations.second_order import (
    Draw,
    Generator,
    SecondOrderConfig,
    apply_second_order,
    sample_second_order,
)
from face2scene_cli.errors import ConfigError

__all__ = [
    "DegradationDistribution",
    "apply",
    "image_generator",
    "image_seed",
]


def apply(x: Tensor, degradation: Degradation, generator: torch.Generator | None = None) -> Tensor:
    r"""Apply a degradation record to a batch of images.

    Preset and parametric records run blur -> motion blur -> downscale (-> resize back) ->
    noise (Poisson shot noise, then Gaussian, both clamped, one generator) -> JPEG
    (:data:`~face2scene_cli.degradations.record.PARAMETRIC_ORDER`); the motion
    blur is :func:`~face2scene_cli.degradations.ops.motion_kernel2d` of side
    :func:`~face2scene_cli.degradations.record.motion_kernel_size`, convolved with reflect
    padding (:func:`~face2scene_cli.degradations.ops.blur`); second-order records run
    :func:`apply_second_order` (output quantised to 8-bit levels).

    Args:
        x: images :math:`(B, C, H, W)`, float in [0, 1], C in {1, 3}, any device.
        degradation: the record.
        generator: source of the noise; None = a generator on ``x``'s device seeded
            with ``degradation.seed`` (required when the record has noise and no seed). A
            generator on another device than ``x`` seeds a generator on ``x``'s device.
            Second-order records carry their own noise seeds and ignore it.

    Returns:
        :math:`(B, C, H', W')` in [0, 1], ``(H', W') = degradation.output_size(H, W)``; not
        quantised (except second-order).
    """
    check_image(x)
    if not isinstance(degradation, Degradation):
        raise TypeError(f"degradation must be a Degradation, got {type(degradation).__name__}")
    if degradation.mode == "second-order":
        return apply_second_order(x, degradation.second_order)  # type: ignore[arg-type]
    out = x
    if degradation.blur_sigma_px > 0:
        out = gaussian_blur(out, degradation.blur_sigma_px)
    if degradation.motion_px > 0:
        length = degradation.motion_px
        kernel = motion_kernel2d(
            motion_kernel_size(length), length, math.radians(degradation.motion_angle_deg)
        )
        out = blur(out, kernel)
    if degradation.downscale > 1:
        h, w = x.shape[-2:]
        f = degradation.downscale
        size = (max(1, round(h / f)), max(1, round(w / f)))
        out = resize(out, size, degradation.downscale_kernel)
        if degradation.resize_back:
            out = resize(out, (h, w), "bicubic").clamp(0.0, 1.0)
    if degradation.noise_sigma > 0 or degradation.poisson_scale > 0:
        if generator is None:
            if degradation.seed is None:
                raise ValueError("a degradation with noise needs a seed or a generator")
            generator = torch.Generator(device=x.device)
            generator.manual_seed(degradation.seed)
        gray = degradation.gray_noise
        if degradation.poisson_scale > 0:
            out = add_poisson_noise(out, degradation.poisson_scale, generator, gray=gray)
        if degradation.noise_sigma > 0:
            out = add_gaussian_noise(out, degradation.noise_sigma, generator, gray=gray)
    if degradation.jpeg_quality is not None:
        out = jpeg_compress(out, degradation.jpeg_quality)
    return out.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# the distribution

_MIX_KEYS = ("preset", "parametric", "second_order")


@dataclass(frozen=True)
class DegradationDistribution:
    """How degradations are drawn: the ``data.degradation`` block of the training configs.

    Attributes:
        mix: probabilities of (preset, parametric, second-order); YAML
            ``{preset: p, parametric: p, second_order: p}`` (kinds left out: 0), summing to 1.
        presets: the presets drawn (uniformly) in the preset share.
        p_blur, blur_range: parametric blur: presence probability, sigma range in px.
        p_noise, noise_range: Gaussian noise: presence, sigma range in /255 units.
        p_downscale, downscale_range: resolution loss: presence, factor range (>= 1).
        downscale_kernels: the downscale's filters (:data:`RESIZE_MODES`), one drawn uniformly
            per downscaled draw, after everything else and only when there are several (a
            distribution with one draws exactly what it drew before kernels were drawn).
        resize_back: resize a downscaled image back to its size (training data keeps sizes).
        p_jpeg, jpeg_range: JPEG: presence, quality range (inclusive integers).
        p_motion, motion_range: parametric motion blur: presence, segment length range in px
            (within [1, 21]); the direction is uniform in [0, 180) degrees. Drawn after
            everything else and only when ``p_motion > 0``, so a distribution without motion
            draws exactly what it drew before motion blur existed.
        second_order: the Real-ESRGAN ranges (YAML: a mapping of :class:`SecondOrderConfig`
            fields that differ from its defaults).
        p_clean: the share of draws that leave the image untouched (a parametric record
            with no operator), so that a restorer also learns to leave a clean photo alone.
            Drawn before the kind and only when ``p_clean > 0``, so a distribution without
            it draws exactly what it drew before it existed.
        p_poisson, poisson_range: parametric Poisson (shot) noise, camera noise with the
            Gaussian noise as its read noise: presence, Real-ESRGAN scale range. p_gray_noise:
            the share of parametric draws whose noise is luminance-only. Both drawn after
            motion blur and only when their probability is > 0 (draws unchanged without them).
    """

    mix: tuple[float, float, float] = (0.0, 1.0, 0.0)
    presets: tuple[str, ...] = tuple(PRESETS)
    p_blur: float = 0.5
    blur_range: tuple[float, float] = (0.3, 3.0)
    p_noise: float = 0.5
    noise_range: tuple[float, float] = (0.0, 30.0)
    p_downscale: float = 0.0
    downscale_range: tuple[float, float] = (1.0, 4.0)
    resize_back: bool = True
    p_jpeg: float = 0.5
    jpeg_range: tuple[int, int] = (20, 95)
    p_motion: float = 0.0
    motion_range: tuple[float, float] = (3.0, 15.0)
    second_order: SecondOrderConfig = field(default_factory=SecondOrderConfig)
    p_clean: float = 0.0
    p_poisson: float = 0.0
    poisson_range: tuple[float, float] = (0.1, 3.0)
    p_gray_noise: float = 0.0
    downscale_kernels: tuple[str, ...] = ("bicubic",)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        mix = self.mix
        if isinstance(mix, Mapping):
            unknown = sorted(set(mix) - set(_MIX_KEYS))
            if unknown:
                raise ConfigError(
                    f"mix: unknown kind(s) {', '.join(map(str, unknown))}; "
                    f"known: {', '.join(_MIX_KEYS)}"
                )
            mix = [mix.get(k, 0.0) for k in _MIX_KEYS]
        set_(self, "mix", probabilities("mix", mix, 3))
        presets = self.presets
        if isinstance(presets, str) or not isinstance(presets, (tuple, list)) or not presets:
            raise ConfigError(f"presets must be a list of preset names, got {presets!r}")
        for name in presets:
            Degradation.from_preset(name)
        set_(self, "presets", tuple(presets))
        kernels = self.downscale_kernels
        if (
            isinstance(kernels, str)
            or not isinstance(kernels, (tuple, list))
            or not kernels
            or any(k not in RESIZE_MODES for k in kernels)
        ):
            raise ConfigError(
                f"downscale_kernels must be a list of {', '.join(RESIZE_MODES)}, got {kernels!r}"
            )
        set_(self, "downscale_kernels", tuple(kernels))
        probs = ("p_blur", "p_noise", "p_downscale", "p_jpeg", "p_motion", "p_clean")
        for name in (*probs, "p_poisson", "p_gray_noise"):
            set_(self, name, real(name, getattr(self, name), 0.0, 1.0))
        set_(
            self,
            "poisson_range",
            value_range("poisson_range", self.poisson_range, 0.0, MAX_POISSON_SCALE),
        )
        set_(self, "blur_range", value_range("blur_range", self.blur_range, 0.0, MAX_BLUR_SIGMA))
        set_(
            self, "noise_range", value_range("noise_range", self.noise_range, 0.0, MAX_NOISE_SIGMA)
        )
        set_(
            self,
            "downscale_range",
            value_range("downscale_range", self.downscale_range, 1.0, MAX_DOWNSCALE),
        )
        set_(self, "jpeg_range", integer_range("jpeg_range", self.jpeg_range, 1, 100))
        set_(
            self,
            "motion_range",
            value_range("motion_range", self.motion_range, 1.0, MAX_MOTION_PX),
        )
        flag("resize_back", self.resize_back)
        so = self.second_order
        if isinstance(so, Mapping):
            try:
                so = SecondOrderConfig.from_dict(dict(so))
            except ConfigError as err:
                raise ConfigError(f"second_order: {err}") from err
        if not isinstance(so, SecondOrderConfig):
            raise ConfigError(f"second_order must be a mapping of options, got {so!r}")
        set_(self, "second_order", so)

    @classmethod
    def from_dict(
        cls, data: Any, key: str = "degradation", defaults: DegradationDistribution | None = None
    ) -> DegradationDistribution:
        """Parse the YAML block ``key``: keys missing from ``data`` keep ``defaults``' values
        (None: the class defaults); unknown keys or bad values are ConfigErrors naming
        ``key`` (e.g. ``data.degradation: p_noise must be in [0, 1], got 1.5``)."""
        base = defaults if defaults is not None else cls()
        if data is None:
            return base
        if not isinstance(data, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {data!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown key(s) in {key}: {', '.join(map(str, unknown))}; "
                f"known: {', '.join(names)}"
            )
        try:
            return dataclasses.replace(base, **data)
        except ConfigError as err:
            raise ConfigError(f"{key}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """The YAML block (plain JSON types; :meth:`from_dict` reads it back)."""
        d: dict[str, Any] = {"mix": dict(zip(_MIX_KEYS, self.mix, strict=True))}
        for f in dataclasses.fields(self):
            if f.name not in d:
                value = getattr(self, f.name)
                d[f.name] = list(value) if isinstance(value, tuple) else value
        d["second_order"] = self.second_order.to_dict()
        return d

    def envelope(self) -> dict[str, float]:
        """The extremes it draws, over the kinds with a share: the largest ``noise_sigma``
        (/255), ``blur_sigma_px`` and ``downscale`` and the lowest ``jpeg_quality`` (parametric
        motion blur counts by its :func:`~face2scene_cli.degradations.record.equivalent_blur`
        with the largest Gaussian blur, Poisson noise by its sigma at level 255 with the
        largest Gaussian noise; second order: its passes' noise, blur and JPEG ranges,
        1 / its smallest first resize; blur kernels by their sigma, motion blur not
        included)."""
        env = {"noise_sigma": 0.0, "blur_sigma_px": 0.0, "downscale": 1.0, "jpeg_quality": 100.0}

        def widen(noise: float, blur: float, down: float, jpeg: float) -> None:
            env["noise_sigma"] = max(env["noise_sigma"], noise)
            env["blur_sigma_px"] = max(env["blur_sigma_px"], blur)
            env["downscale"] = max(env["downscale"], down)
            env["jpeg_quality"] = min(env["jpeg_quality"], jpeg)

        preset, parametric, second = self.mix
        if preset > 0:
            for name in self.presets:
                d = Degradation.from_preset(name)
                widen(d.noise_sigma, d.blur_sigma_px, d.downscale, d.jpeg_quality or 100)
        if parametric > 0:
            widen(
                Degradation(
                    "parametric",
                    noise_sigma=self.noise_range[1] if self.p_noise > 0 else 0.0,
                    poisson_scale=self.poisson_range[1] if self.p_poisson > 0 else 0.0,
                ).noise_sigma_at(255.0),
                equivalent_blur(
                    self.blur_range[1] if self.p_blur > 0 else 0.0,
                    self.motion_range[1] if self.p_motion > 0 else 0.0,
                ),
                self.downscale_range[1] if self.p_downscale > 0 else 1.0,
                self.jpeg_range[0] if self.p_jpeg > 0 else 100,
            )
        if second > 0:
            so = self.second_order
            widen(
                max(so.noise_range[1], so.noise_range2[1]),
                max(so.blur_sigma[1], so.blur_sigma2[1]),
                1.0 / so.resize_range[0] if so.resize_prob[1] > 0 else 1.0,
                min(so.jpeg_range[0], so.jpeg_range2[0]),
            )
        return env

    def sample(self, generator: Generator) -> Degradation:
        """Draw one degradation.

        Args:
            generator: the only source of randomness: a torch generator (any device) or a
                numpy one. A distribution with a single kind draws no kind; a second-order
                only distribution draws exactly what :func:`sample_second_order` draws.

        Returns:
            A :class:`Degradation`: preset and parametric ones carry a noise seed drawn here,
            second-order ones their sample; :func:`apply` replays it exactly.
        """
        d = Draw(generator)
        if self.p_clean > 0 and d.uniform() < self.p_clean:
            return Degradation("parametric", resize_back=self.resize_back, seed=d.seed())
        kinds = [m for m, p in zip(MODES, self.mix, strict=True) if p > 0]
        mode = kinds[0] if len(kinds) == 1 else d.choice(MODES, self.mix)
        if mode == "second-order":
            return Degradation(mode, second_order=sample_second_order(self.second_order, d.g))
        seed = d.seed()
        if mode == "preset":
            return Degradation.from_preset(d.choice(self.presets), seed)
        blur_ = d.uniform(*self.blur_range) if d.uniform() < self.p_blur else 0.0
        noise = d.uniform(*self.noise_range) if d.uniform() < self.p_noise else 0.0
        down = d.uniform(*self.downscale_range) if d.uniform() < self.p_downscale else 1.0
        jpeg = d.integer(*self.jpeg_range) if d.uniform() < self.p_jpeg else None
        motion, angle = 0.0, 0.0
        if self.p_motion > 0 and d.uniform() < self.p_motion:
            motion, angle = d.uniform(*self.motion_range), d.uniform(0.0, 180.0)
        poisson = 0.0
        if self.p_poisson > 0 and d.uniform() < self.p_poisson:
            poisson = d.uniform(*self.poisson_range)
        gray = self.p_gray_noise > 0 and d.uniform() < self.p_gray_noise and noise + poisson > 0
        kernel = "bicubic"  # the record's default: no downscale, no filter
        if down > 1:
            kernels = self.downscale_kernels
            kernel = d.choice(kernels) if len(kernels) > 1 else kernels[0]
        return Degradation(
            "parametric",
            blur_sigma_px=blur_,
            motion_px=motion,
            motion_angle_deg=angle,
            noise_sigma=noise,
            jpeg_quality=jpeg,
            downscale=down,
            resize_back=self.resize_back,
            seed=seed,
            poisson_scale=poisson,
            gray_noise=gray,
            downscale_kernel=kernel,
        )

    def apply(
        self, x: Tensor, degradation: Degradation, generator: torch.Generator | None = None
    ) -> Tensor:
        """:func:`apply` (the record alone says what to do; this is for symmetry with
        :meth:`sample`)."""
        return apply(x, degradation, generator)


# --------------------------------------------------------------------------------------------
# seeding


def image_seed(seed: int, key: str) -> int:
    """``int.from_bytes(sha256(f"{seed}:{key}")[:8], "big") & (2**63 - 1)``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & SEED_MASK


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
