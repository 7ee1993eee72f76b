"""The directional spectrum that tells a motion blur from a Gaussian blur, on a real photo, and
FaDeX's motion head: it adds to the blur estimate and changes nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.archs.fadex import fadex_tiny
from face2scene_cli.archs.motion import (
    NUM_ANGLES,
    NUM_BANDS,
    NUM_MOTION,
    directional_spectrum,
    motion_features,
)
from face2scene_cli.archs.resampling import luma
from face2scene_cli.degradations.record import Degradation, equivalent_blur
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.research.train.fadex_heads import with_statistics_head

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


def test_a_motion_head_adds_to_the_blur_estimate_only() -> None:
    """``motion_head`` appends the directional statistics to the descriptor for a head of its
    own: added to a model with a downscale head, Z, the code and every estimate but the blur
    stay bit-identical, and the blur is the old one and the motion's sigma in quadrature."""
    torch.manual_seed(0)
    plain = with_statistics_head(fadex_tiny(stat_features=True), "downscale_head").eval()
    added = with_statistics_head(plain, "motion_head").eval()
    g = torch.Generator().manual_seed(1)
    lq, hq = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    with torch.inference_mode():
        a, b = plain(lq, hq), added(lq, hq)
        pooled = (plain.features(lq, hq)[1], added.features(lq, hq)[1])
        motion = added.read_motion(motion_features(lq))
    assert pooled[1].shape[1] == pooled[0].shape[1] + NUM_MOTION
    assert torch.equal(pooled[1][:, : pooled[0].shape[1]], pooled[0])
    for field in ("z", "code", "noise_sigma", "downscale", "jpeg_quality", "jpeg_probability"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert bool((motion > 0).all())
    torch.testing.assert_close(b.blur_sigma_px, torch.hypot(a.blur_sigma_px, motion))
