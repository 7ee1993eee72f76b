"""What was done to an image: the :class:`Degradation` record (torch-free).

One record covers the three kinds of degradation of the project:

* ``preset``: a named fixed degradation (:data:`PRESETS`, ``f2s degrade --preset``);
* ``parametric``: explicit values, applied as blur -> motion blur -> downscale -> noise -> JPEG
  (noise: Poisson shot noise, then Gaussian read noise, as a camera makes it);
* ``second-order``: one sample of the Real-ESRGAN second-order pipeline
  (:class:`SecondOrderSample`, every random choice, replayable bit for bit).

Units are physical and the names are the ones FaDeX estimates use
(:class:`~face2scene_cli.degradations.estimate.Estimate`): ``noise_sigma`` in /255 units,
``blur_sigma_px`` in pixels, ``jpeg_quality`` 1..100, ``downscale`` a factor >= 1. Motion
blur (``motion_px``, a segment's length) has no estimate of its own: FaDeX reads it as the
Gaussian blur of the same spread, :func:`equivalent_blur` (``motion_px / sqrt(12)``). The
downscale factor always means the same thing, a resolution loss by that factor; whether the
image is then resized back to its input size is the separate ``resize_back`` flag (the
training data keeps sizes, ``f2s degrade --scale`` makes the output smaller).

:meth:`Degradation.to_dict` / :meth:`Degradation.from_dict` give the JSON form stored in
reports (``applied_degradation``) and training caches; :func:`Degradation.from_dict` also reads
the field names of version 0.1 (``params.scale``, ``blur_sigma``, the scene trainer's
``kind``/``blur``/``noise``/``jpeg`` dicts) for one version.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from face2scene_cli.degradations.checks import (
    MAX_BLUR_SIGMA,
    MAX_DOWNSCALE,
    MAX_MOTION_PX,
    MAX_NOISE_SIGMA,
    MAX_POISSON_SCALE,
    SEED_MASK,
    choice,
    flag,
    integer,
    odd_kernel_size,
    real,
)
from face2scene_cli.errors import ConfigError

__all__ = [
    "DOWNSCALE_SIGMA_PER_FACTOR",
    "FINAL_ORDERS",
    "KERNEL_TYPES",
    "MODES",
    "MOTION",
    "MOTION_SIGMA_PER_PX",
    "PARAMETRIC_ORDER",
    "PRESETS",
    "REALESRGAN_KERNELS",
    "RESIZE_MODES",
    "SINC",
    "Degradation",
    "KernelSpec",
    "NoiseSpec",
    "ResizeSpec",
    "SecondOrderSample",
    "equivalent_blur",
    "motion_kernel_size",
    "optical_blur",
]

#: The kinds of :class:`Degradation`.
MODES: tuple[str, ...] = ("preset", "parametric", "second-order")
#: Blur kernel families of Real-ESRGAN's ``random_mixed_kernels``.
REALESRGAN_KERNELS: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
#: Linear camera-shake blur (not in Real-ESRGAN): a segment of ``length`` px at ``rotation``.
MOTION = "motion"
#: Every blur kernel family a second-order degradation may draw.
KERNEL_TYPES: tuple[str, ...] = (*REALESRGAN_KERNELS, MOTION)
#: The circular low-pass kernel kind (ringing), besides :data:`KERNEL_TYPES`.
SINC = "sinc"
#: Interpolation modes of the resize operator.
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
#: The order in which a preset or parametric degradation applies its steps (``motion``: the
#: linear motion blur of ``motion_px``, right after the Gaussian blur).
PARAMETRIC_ORDER: tuple[str, ...] = ("blur", "motion", "downscale", "noise", "jpeg")
#: Standard deviation of a uniform segment of 1 px along its direction: ``1 / sqrt(12)``.
MOTION_SIGMA_PER_PX = 1.0 / math.sqrt(12.0)
#: Gaussian sigma (px) that best matches a bicubic down-then-up resampling by factor s, per
#: unit of s (least-squares fit on two real photos, s = 1.25-4: 0.49 at 1.25, 1.56 at 4).
DOWNSCALE_SIGMA_PER_FACTOR = 0.39
#: The two orders of the second-order pipeline's last stage.
FINAL_ORDERS: tuple[str, ...] = ("resize_then_jpeg", "jpeg_then_resize")
_NOISE_KINDS = ("gaussian", "poisson")


def equivalent_blur(blur_sigma_px: float, motion_px: float) -> float:
    """The Gaussian sigma (px) with the spread of a Gaussian blur followed by a motion blur:
    ``sqrt(blur_sigma_px^2 + (motion_px / sqrt(12))^2)`` (a segment of L px has standard
    deviation L / sqrt(12) along its direction; FaDeX's blur label for a parametric record)."""
    return math.hypot(blur_sigma_px, MOTION_SIGMA_PER_PX * motion_px)


def optical_blur(effective_px: float, downscale: float) -> float:
    """The optical blur (px) in an effective blur (FaDeX's ``blur_sigma_px``: optical blur and
    resolution loss as one Gaussian) once a resolution loss by ``downscale`` takes its share:
    ``sqrt(max(0, effective_px^2 - (0.39 s)^2))`` for s > 1, else ``effective_px``."""
    if downscale <= 1.0:
        return effective_px
    return math.sqrt(max(0.0, effective_px**2 - (DOWNSCALE_SIGMA_PER_FACTOR * downscale) ** 2))


def motion_kernel_size(motion_px: float) -> int:
    """The side of the motion-blur kernel of a ``motion_px`` segment: the smallest odd integer
    >= ``motion_px``, at least 3."""
    return max(3, math.ceil(motion_px) | 1)


def _from_fields(cls: type, data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping, got {data!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    if set(data) != set(names):
        raise ConfigError(
            f"{what} must have keys {', '.join(names)}, got {', '.join(map(str, data))}"
        )
    return cls(**data)


# --------------------------------------------------------------------------------------------
# the parts of a second-order sample


@dataclass(frozen=True)
class KernelSpec:
    """The parameters of one sampled blur kernel; ``ops`` rebuilds the kernel exactly
    (:func:`face2scene_cli.degradations.second_order.build_kernel`).

    Attributes:
        kind: one of :data:`KERNEL_TYPES` or ``"sinc"``.
        size: odd kernel size.
        sigma_x, sigma_y, rotation: Gaussian-family shape (pixels, radians); unused for sinc;
            ``rotation`` is also the motion direction.
        beta: shape exponent of the generalised / plateau kernels (1 otherwise).
        cutoff: sinc cut-off frequency in radians per pixel (0 for the other kinds).
        length: motion-blur segment length in pixels (0 for the other kinds).
    """

    kind: str
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    rotation: float = 0.0
    beta: float = 1.0
    cutoff: float = 0.0
    length: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in (*KERNEL_TYPES, SINC):
            raise ConfigError(
                f"kernel kind must be one of {(*KERNEL_TYPES, SINC)}, got {self.kind!r}"
            )
        odd_kernel_size(self.size, "kernel size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelSpec:
        """Rebuild from :meth:`to_dict`; records written before motion blur have no
        ``length`` (0)."""
        if isinstance(data, dict) and "length" not in data:
            data = {**data, "length": 0.0}
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
        real("resize scale", self.scale, 0.0, 8.0, lo_open=True)
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
        real("noise amount", self.amount, 0.0, MAX_NOISE_SIGMA)
        if not isinstance(self.gray, bool):
            raise ConfigError(f"noise gray flag must be a bool, got {self.gray!r}")
        integer("noise seed", self.seed, 0, SEED_MASK)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseSpec:
        return _from_fields(cls, data, "noise")


@dataclass(frozen=True)
class SecondOrderSample:
    """Every random choice of one Real-ESRGAN second-order degradation.

    Applying it (:func:`face2scene_cli.degradations.second_order.apply_second_order`) is a pure
    function of the image and the sample. Kernels are stored as parameters (:class:`KernelSpec`)
    and rebuilt; noise is stored as the seed of a per-step generator.

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
        integer("jpeg1", self.jpeg1, 1, 100)
        integer("jpeg2", self.jpeg2, 1, 100)
        if self.final_order not in FINAL_ORDERS:
            raise ConfigError(
                f"final_order must be one of {FINAL_ORDERS}, got {self.final_order!r}"
            )
        if self.final_mode not in RESIZE_MODES:
            raise ConfigError(f"final_mode must be one of {RESIZE_MODES}, got {self.final_mode!r}")
        integer("final_scale", self.final_scale, 1, 16)

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
# the record


@dataclass(frozen=True)
class Degradation:
    """One degradation, applied or to apply (:func:`~face2scene_cli.degradations.sampling.apply`).

    Attributes:
        mode: ``preset``, ``parametric`` or ``second-order`` (:data:`MODES`).
        preset: the preset's name (``preset`` mode only; its values fill the fields below).
        blur_sigma_px: isotropic Gaussian blur sigma in input pixels, [0, 10]; 0 = none.
        motion_px: linear motion (camera-shake) blur, the segment's length in input pixels,
            0 (none) or [1, 21]; kernel :func:`~face2scene_cli.degradations.ops.motion_kernel2d`
            of side :func:`motion_kernel_size`.
        motion_angle_deg: the segment's direction in degrees, [0, 180): 0 = horizontal,
            90 = vertical (image rows grow downwards, so 45 runs from top left to bottom right).
        noise_sigma: white Gaussian noise sigma in /255 units, [0, 255]; 0 = none.
        poisson_scale: signal-dependent Poisson (shot) noise, Real-ESRGAN's scale
            (:func:`~face2scene_cli.degradations.ops.add_poisson_noise`: sigma^2 ~ scale^2 *
            level in 8-bit units), [0, 16]; 0 = none. Added before the Gaussian noise.
        gray_noise: both noises are luminance noise (one field shared by the channels), as
            after a camera's or an app's colour denoising; False = colour noise.
        jpeg_quality: JPEG quality 1..100; None = no JPEG.
        downscale: resolution loss factor in [1, 64]: an antialiased resize with
            ``downscale_kernel`` to ``(round(H / downscale), round(W / downscale))`` (at least
            1 px); 1 = none.
        resize_back: resize the downscaled image back to the input size (bicubic, clamped), so
            the loss of resolution shows as missing detail, not as fewer pixels.
        downscale_kernel: the downscale's filter, one of :data:`RESIZE_MODES` (``area``:
            pixel averaging, what most photo apps and OpenCV's ``INTER_AREA`` do; ``bilinear``,
            ``bicubic``: antialiased); the resize back is bicubic whatever it is.
        seed: 63-bit seed of the noise generator (None: the caller passes a generator).
        second_order: the Real-ESRGAN sample (``second-order`` mode only; the fields above are
            then unused: 0 / None / 1 / False).
    Steps run in :data:`PARAMETRIC_ORDER`: blur -> motion blur -> downscale -> noise -> JPEG.
    """

    mode: str
    preset: str | None = None
    blur_sigma_px: float = 0.0
    motion_px: float = 0.0
    motion_angle_deg: float = 0.0
    noise_sigma: float = 0.0
    jpeg_quality: int | None = None
    downscale: float = 1.0
    resize_back: bool = False
    seed: int | None = None
    second_order: SecondOrderSample | None = None
    poisson_scale: float = 0.0
    gray_noise: bool = False
    downscale_kernel: str = "bicubic"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"degradation mode must be one of {', '.join(MODES)}, got {self.mode!r}"
            )
        if (self.mode == "preset") != (self.preset is not None):
            raise ConfigError("a degradation names a preset if and only if its mode is preset")
        if self.mode == "second-order":
            if not isinstance(self.second_order, SecondOrderSample):
                raise ConfigError("a second-order degradation needs its SecondOrderSample")
            plain = Degradation("parametric")
            fields = (
                "blur_sigma_px",
                "motion_px",
                "motion_angle_deg",
                "noise_sigma",
                "jpeg_quality",
                "downscale",
                "resize_back",
                "poisson_scale",
                "gray_noise",
                "downscale_kernel",
            )
            if any(getattr(self, f) != getattr(plain, f) for f in (*fields, "seed")):
                raise ConfigError(
                    f"a second-order degradation takes no {', '.join(fields)} or seed"
                )
            return
        if self.second_order is not None:
            raise ConfigError(f"a {self.mode} degradation has no second-order sample")
        set_ = object.__setattr__
        set_(self, "blur_sigma_px", real("blur_sigma_px", self.blur_sigma_px, 0.0, MAX_BLUR_SIGMA))
        motion = real("motion_px", self.motion_px, 0.0, MAX_MOTION_PX)
        if 0.0 < motion < 1.0:
            raise ConfigError(
                f"motion_px must be 0 (none) or in [1, {MAX_MOTION_PX:g}], got {motion!r}"
            )
        set_(self, "motion_px", motion)
        angle = real("motion_angle_deg", self.motion_angle_deg, 0.0, 180.0)
        if angle == 180.0:
            raise ConfigError("motion_angle_deg must be in [0, 180), got 180")
        set_(self, "motion_angle_deg", angle)
        set_(self, "noise_sigma", real("noise_sigma", self.noise_sigma, 0.0, MAX_NOISE_SIGMA))
        set_(
            self,
            "poisson_scale",
            real("poisson_scale", self.poisson_scale, 0.0, MAX_POISSON_SCALE),
        )
        flag("gray_noise", self.gray_noise)
        if self.jpeg_quality is not None:
            set_(self, "jpeg_quality", integer("jpeg_quality", self.jpeg_quality, 1, 100))
        set_(self, "downscale", real("downscale", self.downscale, 1.0, MAX_DOWNSCALE))
        flag("resize_back", self.resize_back)
        choice("downscale_kernel", self.downscale_kernel, RESIZE_MODES)
        if self.seed is not None:
            set_(self, "seed", integer("seed", self.seed, 0, SEED_MASK))

    @classmethod
    def from_preset(cls, name: str, seed: int | None = None) -> Degradation:
        """The preset called ``name`` (with a noise seed); ConfigError listing the known names."""
        if not isinstance(name, str) or name not in PRESETS:
            raise ConfigError(f"unknown degradation preset {name!r}; known: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], seed=seed)

    def with_seed(self, seed: int | None) -> Degradation:
        """The same degradation with another noise seed (second-order samples carry theirs)."""
        if self.mode == "second-order":
            return self
        return dataclasses.replace(self, seed=seed)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The output size for an input of ``height`` x ``width``."""
        if self.mode == "second-order":
            s = self.second_order.final_scale  # type: ignore[union-attr]
            return max(1, height // s), max(1, width // s)
        if self.downscale == 1 or self.resize_back:
            return height, width
        return max(1, round(height / self.downscale)), max(1, round(width / self.downscale))

    def equivalent_blur_px(self) -> float:
        """FaDeX's blur label: :func:`equivalent_blur` of the Gaussian and the motion blur (0
        for second-order records; the resolution loss is not included)."""
        return equivalent_blur(self.blur_sigma_px, self.motion_px)

    def noise_sigma_at(self, level: float) -> float:
        """The noise sigma (/255) at brightness ``level`` (8-bit units) of a preset or
        parametric record: ``sqrt(noise_sigma^2 + poisson_scale^2 * level)``, the Gaussian read
        noise and the shot noise together (0 for second-order records)."""
        return math.sqrt(self.noise_sigma**2 + self.poisson_scale**2 * max(0.0, level))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types. Preset and parametric: ``{"mode", "preset", "blur_sigma_px",
        "motion_px", "motion_angle_deg", "noise_sigma", "jpeg_quality", "downscale",
        "resize_back", "seed", "poisson_scale", "gray_noise", "downscale_kernel"}`` (records
        written before motion blur lack the two motion keys, those before shot noise
        ``poisson_scale`` and ``gray_noise``, those before the kernel ``downscale_kernel``;
        :meth:`from_dict` reads them as 0 / false / bicubic); second-order:
        ``{"mode", "preset": None, "sample": SecondOrderSample.to_dict()}``."""
        if self.mode == "second-order":
            return {"mode": self.mode, "preset": None, "sample": self.second_order.to_dict()}  # type: ignore[union-attr]
        d = dataclasses.asdict(self)
        d.pop("second_order")
        return d

    @classmethod
    def from_dict(cls, data: Any) -> Degradation:
        """Rebuild from :meth:`to_dict`; also reads the 0.1 forms (see the module docstring).

        Missing fields take their defaults, unknown fields are refused (ConfigError)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a degradation must be a mapping, got {data!r}")
        if "params" in data or "kind" in data:
            data = _from_v01(data)
        d = dict(data)
        if d.get("mode") == "second-order":
            unknown = sorted(set(d) - {"mode", "preset", "sample"})
            if unknown or d.get("preset") is not None or "sample" not in d:
                raise ConfigError(
                    "a second-order degradation has keys mode, preset (null) and sample, "
                    f"got {', '.join(map(str, d))}"
                )
            return cls("second-order", second_order=SecondOrderSample.from_dict(d["sample"]))
        names = {f.name for f in dataclasses.fields(cls)} - {"second_order"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown degradation field(s): {', '.join(map(str, unknown))}; "
                f"known: {', '.join(sorted(names))}"
            )
        if "mode" not in d:
            raise ConfigError("a degradation needs its mode (preset, parametric or second-order)")
        out = cls(**d)
        if out.mode == "preset" and out != cls.from_preset(out.preset, out.seed):  # type: ignore[arg-type]
            raise ConfigError(f"the values of preset {out.preset!r} differ from the preset's")
        return out


def _from_v01(data: dict[str, Any]) -> dict[str, Any]:
    """The 0.1 forms as :meth:`Degradation.to_dict` writes them now (read for one version).

    ``f2s degrade`` reports: ``{"mode", "preset", "params": {"blur_sigma", "noise_sigma",
    "jpeg_quality", "scale"}}`` or ``params`` = the second-order sample; the scene trainer's
    cache: ``{"kind": "preset", "name", "seed"}``, ``{"kind": "parametric", "blur", "noise",
    "downscale" (down-then-up), "jpeg", "seed"}`` or ``{"kind": "second_order", "sample"}``.
    """
    if "params" in data:
        params = data["params"]
        if data.get("mode") == "second-order":
            return {"mode": "second-order", "preset": None, "sample": params}
        if not isinstance(params, dict):
            raise ConfigError(f"degradation params must be a mapping, got {params!r}")
        return {
            "mode": data.get("mode"),
            "preset": data.get("preset"),
            "blur_sigma_px": params.get("blur_sigma") or 0.0,
            "noise_sigma": params.get("noise_sigma", 0.0),
            "jpeg_quality": params.get("jpeg_quality"),
            "downscale": params.get("scale", 1.0),
        }
    kind = data["kind"]
    if kind == "preset":
        return Degradation.from_preset(data.get("name"), data.get("seed")).to_dict()
    if kind == "parametric":
        return {
            "mode": "parametric",
            "blur_sigma_px": data.get("blur", 0.0),
            "noise_sigma": data.get("noise", 0.0),
            "jpeg_quality": data.get("jpeg"),
            "downscale": data.get("downscale", 1.0),
            "resize_back": True,
            "seed": data.get("seed"),
        }
    if kind == "second_order" and "sample" in data:
        return {"mode": "second-order", "preset": None, "sample": data["sample"]}
    raise ConfigError(f"cannot read the 0.1 degradation {data!r}")


#: Named degradations of ``f2s degrade --preset`` and ``f2s eval``; all keep the size.
PRESETS: dict[str, Degradation] = {
    "noise15": Degradation("preset", "noise15", noise_sigma=15.0),
    "blur-noise": Degradation("preset", "blur-noise", blur_sigma_px=1.5, noise_sigma=5.0),
    "mixed": Degradation("preset", "mixed", blur_sigma_px=1.0, noise_sigma=10.0, jpeg_quality=45),
}
