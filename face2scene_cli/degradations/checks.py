"""Validation of degradation parameters: numbers, ranges and probabilities (torch-free).

Every check returns the cleaned value or raises :class:`~face2scene_cli.errors.ConfigError`
naming the parameter and the bad value, so a bad YAML key or CLI flag reads as such.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from face2scene_cli.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "MAX_BLUR_SIGMA",
    "MAX_DOWNSCALE",
    "MAX_KERNEL_SIZE",
    "MAX_MOTION_PX",
    "MAX_NOISE_SIGMA",
    "MAX_POISSON_SCALE",
    "SEED_MASK",
    "choice",
    "flag",
    "integer",
    "integer_range",
    "odd_kernel_size",
    "positive",
    "probabilities",
    "real",
    "settings_block",
    "value_range",
]

#: Largest Gaussian blur sigma in px (the Gaussian kernel is 2*ceil(3*sigma)+1 <= 61 wide).
MAX_BLUR_SIGMA = 10.0
#: Largest noise sigma, /255 units.
MAX_NOISE_SIGMA = 255.0
#: Largest Poisson (shot) noise scale: sigma ~ 16 * sqrt(level), 255/255 at level 254.
MAX_POISSON_SCALE = 16.0
#: Largest downscale factor.
MAX_DOWNSCALE = 64.0
#: Largest blur kernel side.
MAX_KERNEL_SIZE = 63
#: Longest motion-blur segment in px (kernels of at most 21 px, as Real-ESRGAN's largest).
MAX_MOTION_PX = 21.0
#: Seeds are 63-bit non-negative integers.
SEED_MASK = (1 << 63) - 1


def real(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] (or (lo, hi]); ConfigError naming the bad value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    bad_lo = v <= lo if lo_open else v < lo
    if not math.isfinite(v) or bad_lo or v > hi:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{name} must be in {bracket}{lo:g}, {hi:g}], got {value!r}")
    return v


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``; ConfigError naming them otherwise."""
    if not isinstance(value, str) or value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (true or false in YAML); ConfigError naming anything else."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def integer(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi] (an integral float is accepted)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return int(value)


def odd_kernel_size(value: Any, name: str = "kernel_size") -> int:
    """An odd kernel side in [3, :data:`MAX_KERNEL_SIZE`]."""
    k = integer(name, value, 3, MAX_KERNEL_SIZE)
    if k % 2 == 0:
        raise ConfigError(f"{name} must be odd, got {value!r}")
    return k


def value_range(
    name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False
) -> tuple[float, float]:
    """A ``[low, high]`` pair of numbers within [lo, hi], low <= high."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{name} must be a [low, high] pair, got {value!r}")
    a = real(f"{name}[0]", value[0], lo, hi, lo_open=lo_open)
    b = real(f"{name}[1]", value[1], lo, hi, lo_open=lo_open)
    if a > b:
        raise ConfigError(f"{name} must have low <= high, got {value!r}")
    return (a, b)


def integer_range(name: str, value: Any, lo: int, hi: int) -> tuple[int, int]:
    """A ``[low, high]`` pair of integers within [lo, hi], low <= high."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{name} must be a [low, high] pair, got {value!r}")
    a = integer(f"{name}[0]", value[0], lo, hi)
    b = integer(f"{name}[1]", value[1], lo, hi)
    if a > b:
        raise ConfigError(f"{name} must have low <= high, got {value!r}")
    return (a, b)


def probabilities(name: str, value: Any, n: int) -> tuple[float, ...]:
    """``n`` probabilities summing to 1."""
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise ConfigError(f"{name} must be a list of {n} probabilities, got {value!r}")
    ps = tuple(real(f"{name}[{i}]", p, 0.0, 1.0) for i, p in enumerate(value))
    if abs(sum(ps) - 1.0) > 1e-6:
        raise ConfigError(f"{name} must sum to 1, got {value!r} (sum {sum(ps):g})")
    return ps


def positive(name: str, value: Any) -> float:
    """``value`` as a float > 0 (a bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def settings_block(name: str, value: Any, cls: type[T]) -> T | None:
    """A nested block of settings as ``cls``: None stays None, an instance is kept, a mapping
    (from JSON or YAML) becomes one, its keys the fields."""
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of its settings, got {value!r}")
    try:
        return cls(**value)
    except TypeError as err:
        raise ConfigError(f"{name}: {err}") from err
