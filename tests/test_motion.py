"""The directional spectrum that tells a motion blur from a Gaussian blur, on a real photo
(the motion head's wiring is checked in ``test_fadex_heads``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.archs.motion import (
    NUM_ANGLES,
    NUM_BANDS,
    directional_spectrum,
    motion_direction,
    motion_features,
)
from face2scene_cli.archs.resampling import luma
from face2scene_cli.degradations.record import Degradation, equivalent_blur
from face2scene_cli.degradations.sampling import apply

ANGLES = (0.0, 45.0, 90.0, 135.0)


@pytest.fixture(scope="module")
def crops() -> dict[str, torch.Tensor]:
    """A real 256 px region of the astronaut, degraded as a 288 px region and rounded to 8
    bits: clean, a 9 px motion blur in four directions, and the Gaussian blur of the same
    spread (2.6 px)."""
    img = skdata.astronaut()[0:288, 100:388]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    ops = {"clean": {}, "gauss": {"blur_sigma_px": equivalent_blur(0.0, 9.0)}}
    ops |= {f"motion{a:g}": {"motion_px": 9.0, "motion_angle_deg": a} for a in ANGLES}
    out = {}
    for name, op in ops.items():
        y = apply(x, Degradation("parametric", **op))
        out[name] = (y.clamp(0, 1) * 255).round()[..., 16:272, 16:272] / 255
    return out


def test_motion_blur_leaves_one_direction_without_power(crops: dict[str, torch.Tensor]) -> None:
    """Above 1/9 cycles per pixel a 9 px motion blur takes the power off its own direction and
    leaves the others: the spread of a band's log power over the sectors is several times a
    Gaussian blur's and the clean photo's."""
    spread = {k: motion_features(v)[0, -NUM_BANDS:][4:].mean().item() for k, v in crops.items()}
    for angle in ANGLES:
        moved = spread[f"motion{angle:g}"]
        assert moved > 2 * spread["clean"] and moved > 3 * spread["gauss"], spread


def test_the_direction_that_lost_power_is_the_motion(crops: dict[str, torch.Tensor]) -> None:
    """The sector the statistics are rolled to start from is the motion's direction (within
    one sector of 22.5 degrees), so a motion blur in any direction gives the head the same
    picture."""
    for angle in ANGLES:
        spectrum = directional_spectrum(luma(crops[f"motion{angle:g}"])[:, 0])[0]
        dev = spectrum - spectrum.mean(1, keepdim=True)
        first = int(dev[1:].sum(0).argmin())
        expected = angle / (180.0 / NUM_ANGLES)
        off = abs(first + 0.5 - expected) % NUM_ANGLES
        assert min(off, NUM_ANGLES - off) <= 1.5, (angle, first)


@pytest.mark.parametrize("angle", [0.0, 30.0, 60.0, 90.0, 120.0, 150.0])
def test_motion_direction_reads_the_segment_direction(angle: float) -> None:
    """The first harmonic over the sectors reads the direction finer than the 22.5-degree
    grid, in the record's convention (rows growing downwards: 30 and 150 differ)."""
    img = skdata.astronaut()[0:288, 100:388]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    y = apply(x, Degradation("parametric", motion_px=9.0, motion_angle_deg=angle))
    crop = (y.clamp(0, 1) * 255).round()[..., 16:272, 16:272] / 255
    read = float(motion_direction(crop))
    assert 0.0 <= read < 180.0
    assert abs((read - angle + 90.0) % 180.0 - 90.0) < 8.0, (angle, read)
