"""Do no harm: a restored photo must still explain its input, else it falls back.

A restoration is consistent when the read degradation, applied to the output, gives back the
input up to the input's own noise: blur the output by the read blur, lose its resolution by
the read downscale factor, and what is left of the input minus that is noise (and JPEG
error). The check low-passes that residual (a Gaussian of ``lowpass_sigma`` px, which keeps
invented structure — wrinkles, texture, double contours — and removes most noise) and takes
its RMS (/255): the white noise the faces read, sigma, leaves
:math:`\\sigma / (2 \\sqrt{\\pi}\\, \\sigma_{lp})` of itself after that filter, and the rest
may reach ``base`` (calibrated per model on the VAL photos, stored in its ``scene.json``).
Beyond that limit, over the whole photo or a face's crop, the output "moved further from the
input than the read degradation explains" and that region falls back to the input (upscaled
to the output size), recorded in the report's ``scene.fallback`` with the reason.

A photo without a face is read off scene crops and checked the same way (the photo only); the
limits were calibrated on face readings, so a scene-crop code that fails is not trusted and the
photo is restored with the null code instead (``to: blind``, what ``f2s restore`` did with such
photos before it read scene crops). With ``--blind`` there is no check (``scene.check`` null).

A photo whose reading says there is nothing to restore (:class:`CleanLimits`: little noise,
no blur, no or a light JPEG; calibrated per model on VAL, ``guard.clean`` of its
``scene.json``) is handed back as its input before the scene restorer runs
(:func:`nothing_to_restore`): the model alters fine texture by more than such light
degradations cost (a fallback with ``region: photo``, recorded like the others).

A reading beyond what the model was trained on (:func:`trained_envelope`, from its
``training.json``) is said in a warning (:func:`outside_training`); the check decides the
fallback. Nothing here prints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.degradations.checks import positive, settings_block
from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.noise_level import NoiseCurve
from face2scene_cli.degradations.ops import blur as blur_with
from face2scene_cli.degradations.ops import gaussian_blur, resize
from face2scene_cli.degradations.record import MAX_MOTION_PX, MOTION_SIGMA_PER_PX, optical_blur
from face2scene_cli.degradations.sampling import DegradationDistribution
from face2scene_cli.errors import ConfigError
from face2scene_cli.restorers.deblur import motion_kernel_for

__all__ = [
    "NOISE_MARGIN",
    "CleanLimits",
    "ConsistencyCheck",
    "Fallback",
    "GuardSettings",
    "apply_fallbacks",
    "check_restoration",
    "consistency_residual",
    "noise_outside_training",
    "nothing_to_restore",
    "outside_training",
    "trained_envelope",
]


@dataclass(frozen=True)
class CleanLimits:
    """Readings under which a photo is kept as it is (``scene.json`` ``guard.clean``; chosen on
    VAL by ``benchmarks/clean_limits_val.py``).

    Attributes:
        noise: /255; FaDeX's noise σ and the noise curve's read noise both below it.
        blur: px; FaDeX's blur σ below it.
        jpeg_quality: no JPEG read, or one read at this quality or above.
    """

    noise: float
    blur: float
    jpeg_quality: float

    def __post_init__(self) -> None:
        for name in ("noise", "blur", "jpeg_quality"):
            positive(f"guard.clean.{name}", getattr(self, name))


@dataclass(frozen=True)
class GuardSettings:
    """The consistency check's limits (``scene.json`` ``guard``; calibrated on VAL by
    ``scripts/calibrate_guard.py``).

    Attributes:
        base: residual RMS (/255) allowed over the whole photo beyond the read noise's share.
        face_base: the same for a face's crop (faces are small: their residual is noisier).
        lowpass_sigma: the residual's low-pass Gaussian, px.
        clean: the readings under which the photo is kept as it is (None: always restored);
            a mapping (from ``scene.json``) becomes :class:`CleanLimits`.
    """

    base: float
    face_base: float
    lowpass_sigma: float = 1.5
    clean: CleanLimits | None = None

    def __post_init__(self) -> None:
        for name in ("base", "face_base", "lowpass_sigma"):
            positive(f"guard.{name}", getattr(self, name))
        object.__setattr__(self, "clean", settings_block("guard.clean", self.clean, CleanLimits))

    @property
    def noise_share(self) -> float:
        """RMS of unit white noise after the low-pass (the fraction of sigma that is left)."""
        return 1.0 / (2.0 * math.sqrt(math.pi) * self.lowpass_sigma)

    def limit(self, estimate: Estimate, face: bool = False) -> float:
        """The residual allowed (/255) for this reading."""
        return (self.face_base if face else self.base) + self.noise_share * estimate.noise_sigma


@dataclass(frozen=True)
class Fallback:
    """A region that failed the check: ``photo`` or one ``face`` (its report index), given back
    as the ``input`` or, for a photo whose code was read off scene crops, restored ``blind``
    (the null code) instead."""

    region: str
    face: int | None
    reason: str
    to: str = "input"

    def to_report(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConsistencyCheck:
    """What the check measured (the report's ``scene.check``): residual and limit of the
    photo and of each face (/255)."""

    residual: float
    limit: float
    faces: list[dict[str, float | int]]

    def to_report(self) -> dict[str, Any]:
        return {
            "residual": round(self.residual, 3),
            "limit": round(self.limit, 3),
            "faces": [{k: round(v, 3) for k, v in f.items()} for f in self.faces],
        }


def consistency_residual(
    lq: Tensor, out: Tensor, estimate: Estimate, lowpass_sigma: float
) -> Tensor:
    r"""The low-passed residual of the input against the re-degraded output, in /255 units.

    Args:
        lq: the input :math:`(1, C, H, W)` in [0, 1].
        out: the output :math:`(1, C, sH, sW)` in [0, 1] (``s`` = the upscaling factor).
        estimate: the faces' reading: its downscale (a down-then-up resampling) and the
            optical blur left in its blur once the resolution loss takes its share
            (:func:`~face2scene_cli.degradations.record.optical_blur`; FaDeX's blur is the
            two together) are applied to ``out``; a motion blur it states is applied as its
            kernel (length and direction), the Gaussian then being what the blur holds beyond
            the motion's spread.
        lowpass_sigma: the low-pass Gaussian, px.

    Returns:
        :math:`(1, C, H, W)`: ``G * (lq - D(out))`` times 255.
    """
    h, w = lq.shape[-2:]
    x = out if out.shape[-2:] == (h, w) else F.interpolate(out, size=(h, w), mode="area")
    f = estimate.downscale if estimate.downscale > 1.05 else 1.0
    blur = optical_blur(estimate.blur_sigma_px, f)
    if estimate.motion:
        kernel = motion_kernel_for(estimate)
        spread = MOTION_SIGMA_PER_PX * min(estimate.motion_px, MAX_MOTION_PX)
        blur = math.sqrt(max(blur**2 - spread**2, 0.0))
        x = blur_with(x, kernel)
    if blur > 0.3:
        x = gaussian_blur(x, blur)
    if f > 1.0:
        x = resize(resize(x, (max(1, round(h / f)), max(1, round(w / f))), "bicubic"), (h, w))
    return gaussian_blur(lq - x, lowpass_sigma) * 255.0


def _rms(x: Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def check_restoration(
    lq: Tensor,
    out: Tensor,
    estimate: Estimate,
    faces: list[tuple[int, tuple[int, int, int, int]]],
    settings: GuardSettings,
) -> tuple[ConsistencyCheck, list[Fallback]]:
    """Check a restoration against the degradation its faces read.

    Args:
        lq: the input :math:`(1, C, H, W)` in [0, 1].
        out: the output :math:`(1, C, sH, sW)` in [0, 1].
        estimate: the photo's reading (aggregated over its faces).
        faces: ``(report index, (x0, y0, x1, y1))`` of each read face, input pixels.
        settings: the limits.

    Returns:
        What was measured, and the regions to fall back: the whole photo when its residual
        is over its limit (then no face is listed), else each face over the face limit.
    """
    res = consistency_residual(lq, out, estimate, settings.lowpass_sigma)
    limit = settings.limit(estimate)
    face_limit = settings.limit(estimate, face=True)
    photo = _rms(res)
    per_face = []
    for index, (x0, y0, x1, y1) in faces:
        r = _rms(res[..., y0:y1, x0:x1]) if x1 > x0 and y1 > y0 else 0.0
        per_face.append({"face": index, "residual": r, "limit": face_limit})
    check = ConsistencyCheck(photo, limit, per_face)
    sigma = f"read noise σ {estimate.noise_sigma:.1f}"
    if photo > limit:
        why = (
            f"the output does not explain the input: residual {photo:.2f}/255 > "
            f"{limit:.2f}/255 allowed for the {sigma}"
        )
        return check, [Fallback("photo", None, why)]
    fallbacks = [
        Fallback(
            "face",
            int(f["face"]),
            f"the face moved further from the input than the read degradation explains: "
            f"residual {f['residual']:.2f}/255 > {face_limit:.2f}/255 for the {sigma}",
        )
        for f in per_face
        if f["residual"] > face_limit
    ]
    return check, fallbacks


def nothing_to_restore(
    estimate: Estimate, curve: NoiseCurve | None, limits: CleanLimits
) -> Fallback | None:
    """The photo's fallback to its input when its reading is under ``limits`` (None when it
    is not, and it is restored).

    Args:
        estimate: the photo's reading (its faces', else its scene crops').
        curve: its noise per brightness (its read noise must be under the limit too: FaDeX
            reads light noise low); None when not read.
        limits: the model's :class:`CleanLimits`.
    """
    curve_noise = 0.0 if curve is None else curve.read
    noise = max(estimate.noise_sigma, curve_noise)
    if noise >= limits.noise or estimate.blur_sigma_px >= limits.blur:
        return None
    if estimate.jpeg and estimate.jpeg_quality < limits.jpeg_quality:
        return None
    jpeg = f"JPEG q{estimate.jpeg_quality:.0f}" if estimate.jpeg else "no JPEG"
    why = (
        f"nothing to restore: the reading (noise σ {noise:.1f}, blur σ "
        f"{estimate.blur_sigma_px:.1f} px, {jpeg}) is under what this model improves (noise "
        f"< {limits.noise:g}, blur < {limits.blur:g} px, JPEG >= q{limits.jpeg_quality:g})"
    )
    return Fallback("photo", None, why)


def _feather(h: int, w: int, box: tuple[int, int, int, int], width: int) -> Tensor:
    """(1, 1, h, w) weights: 1 inside ``box``, ramping to 0 over ``width`` px outside."""
    x0, y0, x1, y1 = box
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    dy = torch.clamp(torch.maximum(y0 - ys, ys - (y1 - 1)), min=0)
    dx = torch.clamp(torch.maximum(x0 - xs, xs - (x1 - 1)), min=0)
    return torch.clamp(1 - torch.maximum(dx, dy) / max(width, 1), min=0)[None, None]


def apply_fallbacks(
    out: Tensor,
    lq: Tensor,
    fallbacks: list[Fallback],
    boxes: dict[int, tuple[int, int, int, int]],
) -> Tensor:
    """The output with each fallback region given back as the input.

    Args:
        out: the output :math:`(1, C, sH, sW)` in [0, 1].
        lq: the input :math:`(1, C, H, W)` in [0, 1] (bicubic-upscaled to ``out``'s size).
        fallbacks: from :func:`check_restoration`.
        boxes: face report index -> its box in input pixels (faces feather out over a
            quarter of their size).

    Returns:
        A new tensor like ``out`` (``out`` itself when there is nothing to fall back).
    """
    if not fallbacks:
        return out
    sh, sw = out.shape[-2:]
    up = lq if lq.shape[-2:] == (sh, sw) else resize(lq, (sh, sw), "bicubic").clamp(0, 1)
    if any(f.region == "photo" for f in fallbacks):
        return up.clone()
    s = sh / lq.shape[-2]
    weight = torch.zeros(1, 1, sh, sw)
    for f in fallbacks:
        x0, y0, x1, y1 = (round(v * s) for v in boxes[int(f.face)])  # type: ignore[arg-type]
        ramp = max(1, round(max(x1 - x0, y1 - y0) / 4))
        weight = torch.maximum(weight, _feather(sh, sw, (x0, y0, x1, y1), ramp))
    return out * (1 - weight) + up * weight


def trained_envelope(training: dict[str, Any]) -> dict[str, float] | None:
    """The extremes of the degradations a scene model was trained on
    (:meth:`DegradationDistribution.envelope`), from its ``training.json``; None when it does
    not say (its ``config.data.degradation`` block, or the flat keys of releases before it)."""
    data = training.get("config", {}).get("data", {})
    block = data.get("degradation")
    if block is None:
        names = set(DegradationDistribution.__dataclass_fields__)
        block = {k: v for k, v in data.items() if k in names}
    if not block:
        return None
    try:
        return DegradationDistribution.from_dict(block).envelope()
    except ConfigError:
        return None


#: The noise (/255) a reading may exceed the trained noise by before it is called beyond it:
#: FaDeX's noise error, also granted to the noise curve.
NOISE_MARGIN = 5.0


def noise_outside_training(curve: NoiseCurve, envelope: dict[str, float]) -> str | None:
    """The brightness band whose noise lies beyond the trained noise, with the same 5/255
    margin as :func:`outside_training` (the noisiest such band), e.g. ``"noise σ 41 at
    level 207 > 30"``; None when every band is inside."""
    bands = [(s, lv) for lv, s in zip(curve.levels, curve.sigma, strict=True) if s is not None]
    sigma, level = max(bands, default=(0.0, 0.0))
    if sigma <= envelope["noise_sigma"] + NOISE_MARGIN:
        return None
    return f"noise σ {sigma:.0f} at level {level:.0f} > {envelope['noise_sigma']:.0f}"


def outside_training(estimate: Estimate, envelope: dict[str, float]) -> list[str]:
    """What the reading says lies beyond the trained envelope, with a margin for FaDeX's error
    (noise 5/255, blur 0.5 px, downscale 20 %, JPEG quality 5), e.g.
    ``["noise σ 38 > 30"]``."""
    out = []
    if estimate.noise_sigma > envelope["noise_sigma"] + NOISE_MARGIN:
        out.append(f"noise σ {estimate.noise_sigma:.0f} > {envelope['noise_sigma']:.0f}")
    if estimate.blur_sigma_px > envelope["blur_sigma_px"] + 0.5:
        out.append(f"blur σ {estimate.blur_sigma_px:.1f} px > {envelope['blur_sigma_px']:.1f}")
    if estimate.downscale > envelope["downscale"] * 1.2:
        out.append(f"downscale x{estimate.downscale:.1f} > x{envelope['downscale']:.1f}")
    if estimate.jpeg and estimate.jpeg_quality < envelope["jpeg_quality"] - 5:
        out.append(f"JPEG q{estimate.jpeg_quality:.0f} < q{envelope['jpeg_quality']:.0f}")
    return out
