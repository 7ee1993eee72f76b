r"""Fixed directional spectral statistics that tell a linear motion blur from an isotropic one.

A motion blur along a segment of :math:`L` px multiplies the spectrum by
:math:`\mathrm{sinc}^2(L\,f\cos\varphi)`, :math:`\varphi` the angle between the frequency and
the motion: frequencies along the motion lose their power beyond :math:`1/L`, those across
it keep it. A Gaussian blur takes the same power off every direction, so the face pair's
blur measures (edge widths, multi-scale sharpness) read a motion blur's sharp direction and
call the crop sharp. :func:`directional_spectrum` keeps the direction: log power per
(radial band, angle sector), each band relative to its mean over the sectors, the sectors
rolled so that the direction that lost most power comes first (a crop and its rotation give
the same statistics up to the sector grid).

FaDeX's motion head reads them (:class:`~face2scene_cli.archs.fadex.FaDeX` with
``motion_head``) and adds the motion blur it finds to the blur estimate;
:func:`motion_direction` reads the direction the power was lost along, finer than the sector
grid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from face2scene_cli.archs.resampling import luma, mean_per_cell, power_spectrum

__all__ = [
    "NUM_ANGLES",
    "NUM_BANDS",
    "NUM_MOTION",
    "directional_spectrum",
    "motion_direction",
    "motion_features",
]

#: Angle sectors over [0, pi) (a real image's spectrum is point-symmetric).
NUM_ANGLES = 8
#: Radial bands, log-spaced over [0.04, 1/2] cycles per pixel.
NUM_BANDS = 12
#: Width of :func:`motion_features`.
NUM_MOTION = NUM_BANDS + NUM_BANDS * NUM_ANGLES + 2 * NUM_BANDS

_LOWEST = 0.04
_EPS = 1e-7


def directional_spectrum(y: Tensor) -> Tensor:
    r"""Log10 power per radial band and angle sector.

    Args:
        y: :math:`(B, H, W)` luma, mean removed inside (Hann-windowed; power floored at 1e-7).

    Returns:
        :math:`(B, N_{bands}, N_{angles})`: bands log-spaced from 0.04 to 1/2 cycles per pixel,
        innermost first; sectors of :math:`\pi / N_{angles}` from the
        horizontal frequency axis.
    """
    power, fy, fx = power_spectrum(y)
    radius = (fy.square() + fx.square()).sqrt()
    edges = torch.logspace(
        math.log10(_LOWEST), math.log10(0.5), NUM_BANDS + 1, dtype=y.dtype, device=y.device
    )
    band = torch.bucketize(radius, edges) - 1
    angle = (torch.atan2(fy, fx) % math.pi) * (NUM_ANGLES / math.pi)
    sector = angle.long().clamp(max=NUM_ANGLES - 1)
    inside = ((band >= 0) & (band < NUM_BANDS)).flatten()
    index = (band * NUM_ANGLES + sector).flatten()[inside]
    means = mean_per_cell(power[:, inside], index, NUM_BANDS * NUM_ANGLES)
    return means.clamp(min=_EPS).log10().view(-1, NUM_BANDS, NUM_ANGLES)


def _isotropic_and_deviations(x: Tensor) -> tuple[Tensor, Tensor]:
    """:math:`(B, N_{bands})` band means over the sectors and :math:`(B, N_{bands},
    N_{angles})` each sector's deviation from its band's mean, of :math:`(B, C, H, W)` in
    [0, 1]."""
    spectrum = directional_spectrum(luma(x)[:, 0])
    iso = spectrum.mean(2)
    return iso, spectrum - iso[:, :, None]


def motion_direction(x: Tensor) -> Tensor:
    r"""The direction along which a crop lost most power: a linear motion blur's direction.

    The sector deviations summed over the bands above the lowest, as a function of the
    sector's angle :math:`\theta_k`, are fitted by their first harmonic in :math:`2\theta`
    (power at :math:`\theta` and :math:`\theta + \pi` is the same); its minimum is the
    direction. A motion blur takes power off the frequencies along its segment, so that is the
    segment's direction. A crop's own strongly oriented content (streaks, building edges) pulls
    it too, so a photo's reading averages it over crops
    (:meth:`~face2scene_cli.degradations.estimate.Estimate.mean`): on the VAL photos 9 px
    motion blurs read within 6.5 degrees (median; ``benchmarks/results/motion-reading``).

    Args:
        x: :math:`(B, C, H, W)` in [0, 1], C in {1, 3}, H and W >= 16.

    Returns:
        :math:`(B,)` degrees in [0, 180), as
        :attr:`~face2scene_cli.degradations.record.Degradation.motion_angle_deg`: 0 =
        horizontal, 90 = vertical, image rows growing downwards. Meaningless without a motion
        blur.
    """
    _, dev = _isotropic_and_deviations(x)
    loss = dev[:, 1:].sum(1)
    theta = (torch.arange(NUM_ANGLES, dtype=loss.dtype, device=loss.device) + 0.5) * (
        2.0 * math.pi / NUM_ANGLES
    )
    cos = (loss * theta.cos()).sum(1)
    sin = (loss * theta.sin()).sum(1)
    return torch.rad2deg(0.5 * torch.atan2(-sin, -cos)) % 180.0


def motion_features(x: Tensor) -> Tensor:
    r"""The :data:`NUM_MOTION` statistics FaDeX's motion head reads.

    Args:
        x: :math:`(B, C, H, W)` in [0, 1], C in {1, 3}, H and W >= 16.

    Returns:
        :math:`(B, N_{motion})`: the band means over the sectors relative to the lowest band
        (the isotropic part: a Gaussian blur, noise), each band's deviations per sector rolled
        so the sector that lost most power over the bands above the lowest comes first, and
        per band the deviations' standard deviation and range.
    """
    iso, dev = _isotropic_and_deviations(x)
    first = dev[:, 1:].sum(1).argmin(1)
    order = (torch.arange(NUM_ANGLES, device=x.device)[None] + first[:, None]) % NUM_ANGLES
    rolled = torch.gather(dev, 2, order[:, None].expand(-1, NUM_BANDS, -1))
    spread = dev.amax(2) - dev.amin(2)
    return torch.cat(
        [iso - iso[:, :1], rolled.flatten(1), dev.std(2, unbiased=False), spread], dim=1
    )
