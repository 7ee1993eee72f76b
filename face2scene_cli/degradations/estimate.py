"""What FaDeX read off the faces: the :class:`Estimate` (torch-free).

One name per quantity, the same in the per-image report (``degradation``), ``f2s degrade-code
--json``, FaDeX's outputs and :class:`~face2scene_cli.degradations.record.Degradation`:

* ``noise_sigma``: Gaussian-equivalent noise sigma, /255 units;
* ``blur_sigma_px``: equivalent Gaussian blur sigma in source-image pixels;
* ``downscale``: resolution-loss factor, >= 1;
* ``jpeg_quality``: IJG/libjpeg quality 1..100 of the last compression (meaningful when
  ``jpeg_probability`` is high);
* ``jpeg_probability``: probability in [0, 1] that the image was JPEG-compressed at all;
* ``motion_px``, ``motion_angle_deg``: a linear motion (camera-shake) blur, the segment's
  length in px and its direction in degrees as
  :attr:`~face2scene_cli.degradations.record.Degradation.motion_angle_deg`, read by FaDeX's
  motion head (0 from a model without one). ``blur_sigma_px`` already includes it (a segment
  of L px spreads like a Gaussian of L/√12 px); the report states it only from
  :data:`MOTION_READ_PX` on.

Version 0.1 called ``jpeg_probability`` ``jpeg_prob`` in FaDeX's outputs and
``degrade-code``'s faces; :meth:`Estimate.from_dict` still reads that name (for one version),
nothing writes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from face2scene_cli.errors import ConfigError

__all__ = ["ESTIMATE_FIELDS", "MOTION_FIELDS", "MOTION_READ_PX", "Estimate"]

#: The estimated quantities, in report order.
ESTIMATE_FIELDS: tuple[str, ...] = (
    "noise_sigma",
    "blur_sigma_px",
    "downscale",
    "jpeg_quality",
    "jpeg_probability",
)
#: The motion blur's quantities: optional (readings from before the motion head lack them).
MOTION_FIELDS: tuple[str, ...] = ("motion_px", "motion_angle_deg")
#: The segment length (px) from which a reading reports a motion blur: the motion head reads a
#: few px on crops without one (chosen on VAL, see ``benchmarks/results/motion-reading``).
MOTION_READ_PX = 4.5
_OLD_NAMES = {"jpeg_prob": "jpeg_probability"}  # 0.1 names, read until 0.3


@dataclass(frozen=True)
class Estimate:
    """A degradation estimate in physical units (see the module docstring for the fields)."""

    noise_sigma: float
    blur_sigma_px: float
    downscale: float
    jpeg_quality: float
    jpeg_probability: float
    motion_px: float = 0.0
    motion_angle_deg: float = 0.0

    @property
    def jpeg(self) -> bool:
        """Whether the estimate says JPEG (probability >= 0.5)."""
        return self.jpeg_probability >= 0.5

    @property
    def motion(self) -> bool:
        """Whether the estimate says motion blur (a segment of :data:`MOTION_READ_PX` or more)."""
        return self.motion_px >= MOTION_READ_PX

    def to_dict(self) -> dict[str, float]:
        """The raw values as plain floats, :data:`ESTIMATE_FIELDS` then :data:`MOTION_FIELDS`
        order."""
        return {k: float(getattr(self, k)) for k in (*ESTIMATE_FIELDS, *MOTION_FIELDS)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        """From :meth:`to_dict` or :meth:`to_report` (``jpeg_quality`` null = no JPEG, motion
        missing or null = none); also reads the 0.1 name ``jpeg_prob``. Other keys (``code``,
        ``summary``...) are ignored."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"an estimate must be a mapping, got {data!r}")
        d = {_OLD_NAMES.get(k, k): v for k, v in data.items()}
        missing = [k for k in ESTIMATE_FIELDS if k not in d]
        if missing:
            raise ConfigError(
                f"an estimate needs {', '.join(missing)}, got {', '.join(map(str, data))}"
            )
        values = {}
        for k in (*ESTIMATE_FIELDS, *MOTION_FIELDS):
            v = d.get(k)
            if v is None and k in ("jpeg_quality", *MOTION_FIELDS):
                v = 0.0
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"estimate {k} must be a number, got {v!r}")
            values[k] = float(v)
        return cls(**values)

    @classmethod
    def mean(cls, estimates: Sequence[Estimate], weights: Sequence[float]) -> Estimate:
        """The weighted mean of ``estimates`` (``weights`` summing to 1, one per estimate); the
        motion direction is the axial mean (of twice the angles), weighted by each estimate's
        weight times its motion length."""
        if not estimates or len(estimates) != len(weights):
            raise ValueError(f"need one weight per estimate: {len(estimates)} vs {len(weights)}")
        pairs = list(zip(weights, estimates, strict=True))
        values = {
            k: float(sum(w * getattr(e, k) for w, e in pairs))
            for k in (*ESTIMATE_FIELDS, "motion_px")
        }
        axial = [(w * e.motion_px, math.radians(2.0 * e.motion_angle_deg)) for w, e in pairs]
        cos = sum(m * math.cos(a) for m, a in axial)
        sin = sum(m * math.sin(a) for m, a in axial)
        values["motion_angle_deg"] = math.degrees(math.atan2(sin, cos)) / 2.0 % 180.0
        return cls(**values)

    def describe(self) -> str:
        """A plain-language summary, e.g. ``moderate noise (sigma~12/255), mild blur (sigma~0.8
        px), JPEG q~40``."""
        parts = []
        n = self.noise_sigma
        if n < 2:
            parts.append("no visible noise")
        else:
            level = "mild" if n < 6 else "moderate" if n < 15 else "heavy"
            parts.append(f"{level} noise (sigma~{n:.0f}/255)")
        b = self.blur_sigma_px
        if b < 0.6:
            parts.append("sharp")
        else:
            level = "mild" if b < 1.3 else "moderate" if b < 2.2 else "strong"
            parts.append(f"{level} blur (sigma~{b:.1f} px)")
        if self.motion:
            parts.append(
                f"motion blur (~{self.motion_px:.0f} px at {self.motion_angle_deg:.0f} deg)"
            )
        if self.jpeg:
            q = self.jpeg_quality
            level = "heavy " if q < 40 else "light " if q >= 80 else ""
            parts.append(f"{level}JPEG q~{q:.0f}")
        else:
            parts.append("no JPEG artefacts")
        if self.downscale >= 1.5:
            parts.append(f"low resolution (~x{self.downscale:.1f} lost)")
        return ", ".join(parts)

    def to_report(self) -> dict[str, Any]:
        """The estimate fields of the report's ``degradation``: rounded values,
        ``jpeg_quality`` null when the estimate says no JPEG, the motion fields null when it
        says no motion blur, and the ``summary``."""
        motion = self.motion
        return {
            "noise_sigma": round(self.noise_sigma, 3),
            "blur_sigma_px": round(self.blur_sigma_px, 3),
            "jpeg_quality": round(self.jpeg_quality, 1) if self.jpeg else None,
            "jpeg_probability": round(self.jpeg_probability, 3),
            "downscale": round(self.downscale, 3),
            "motion_px": round(self.motion_px, 2) if motion else None,
            "motion_angle_deg": round(self.motion_angle_deg, 1) if motion else None,
            "summary": self.describe(),
        }
