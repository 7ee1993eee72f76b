"""What FaDeX read off the faces: the :class:`Estimate` (torch-free).

One name per quantity, the same in the per-image report (``degradation``), ``f2s degrade-code
--json``, FaDeX's outputs and :class:`~face2scene_cli.degradations.record.Degradation`:

* ``noise_sigma``: Gaussian-equivalent noise sigma, /255 units;
* ``blur_sigma_px``: equivalent Gaussian blur sigma in source-image pixels;
* ``downscale``: resolution-loss factor, >= 1;
* ``jpeg_quality``: IJG/libjpeg quality 1..100 of the last compression (meaningful when
  ``jpeg_probability`` is high);
* ``jpeg_probability``: probability in [0, 1] that the image was JPEG-compressed at all.

Version 0.1 called the last one ``jpeg_prob`` in FaDeX's outputs and ``degrade-code``'s faces;
:meth:`Estimate.from_dict` still reads that name (for one version), nothing writes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from face2scene_cli.errors import ConfigError

__all__ = ["ESTIMATE_FIELDS", "Estimate"]

#: The estimated quantities, in report order.
ESTIMATE_FIELDS: tuple[str, ...] = (
    "noise_sigma",
    "blur_sigma_px",
    "downscale",
    "jpeg_quality",
    "jpeg_probability",
)
_OLD_NAMES = {"jpeg_prob": "jpeg_probability"}  # 0.1 names, read until 0.3


@dataclass(frozen=True)
class Estimate:
    """A degradation estimate in physical units (see the module docstring for the fields)."""

    noise_sigma: float
    blur_sigma_px: float
    downscale: float
    jpeg_quality: float
    jpeg_probability: float

    @property
    def jpeg(self) -> bool:
        """Whether the estimate says JPEG (probability >= 0.5)."""
        return self.jpeg_probability >= 0.5

    def to_dict(self) -> dict[str, float]:
        """The raw values as plain floats, :data:`ESTIMATE_FIELDS` order."""
        return {k: float(getattr(self, k)) for k in ESTIMATE_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        """From :meth:`to_dict` or :meth:`to_report` (``jpeg_quality`` null = no JPEG); also
        reads the 0.1 name ``jpeg_prob``. Other keys (``code``, ``summary``...) are ignored."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"an estimate must be a mapping, got {data!r}")
        d = {_OLD_NAMES.get(k, k): v for k, v in data.items()}
        missing = [k for k in ESTIMATE_FIELDS if k not in d]
        if missing:
            raise ConfigError(
                f"an estimate needs {', '.join(missing)}, got {', '.join(map(str, data))}"
            )
        values = {}
        for k in ESTIMATE_FIELDS:
            v = d[k]
            if k == "jpeg_quality" and v is None:
                v = 0.0
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"estimate {k} must be a number, got {v!r}")
            values[k] = float(v)
        return cls(**values)

    @classmethod
    def mean(cls, estimates: Sequence[Estimate], weights: Sequence[float]) -> Estimate:
        """The weighted mean of ``estimates`` (``weights`` summing to 1, one per estimate)."""
        if not estimates or len(estimates) != len(weights):
            raise ValueError(f"need one weight per estimate: {len(estimates)} vs {len(weights)}")
        return cls(
            **{
                k: float(sum(w * getattr(e, k) for w, e in zip(weights, estimates, strict=True)))
                for k in ESTIMATE_FIELDS
            }
        )

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
        ``jpeg_quality`` null when the estimate says no JPEG, and the ``summary``."""
        return {
            "noise_sigma": round(self.noise_sigma, 3),
            "blur_sigma_px": round(self.blur_sigma_px, 3),
            "jpeg_quality": round(self.jpeg_quality, 1) if self.jpeg else None,
            "jpeg_probability": round(self.jpeg_probability, 3),
            "downscale": round(self.downscale, 3),
            "summary": self.describe(),
        }
