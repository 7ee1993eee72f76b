"""The resampling statistics FaDeX's heads read: a down-then-up resampling leaves a periodic
curvature at the low-resolution grid and a spectral cliff that an optical blur does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.archs.resampling import (
    NUM_PERIODICITY,
    NUM_RADIAL,
    NUM_RESAMPLING,
    curvature_periodicity,
    radial_spectrum,
    resampling_features,
)
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import apply

OPERATORS = {
    "clean": {},
    "down2": {"downscale": 2.0},
    "down3": {"downscale": 3.0},
    "down4": {"downscale": 4.0},
    # blurs as wide as the resamplings (effective blur 0.39 s px) and wider
    "blur0.8": {"blur_sigma_px": 0.8},
    "blur1.2": {"blur_sigma_px": 1.2},
    "blur1.6": {"blur_sigma_px": 1.6},
}


@pytest.fixture(scope="module")
def luma() -> dict[str, torch.Tensor]:
    """(1, H, W) luma of a real 256 px region of the astronaut, degraded by each operator as a
    288 px region, cut off the low-resolution grid and rounded to 8 bits."""
    img = skdata.astronaut()[0:288, 100:388]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    out = {}
    for name, op in OPERATORS.items():
        y = apply(x, Degradation("parametric", resize_back=True, **op))
        y = (y.clamp(0, 1) * 255).round()[..., 13:269, 11:267] / 255
        out[name] = 0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]
    return out


@pytest.mark.parametrize("factor", [3, 4])
def test_curvature_is_periodic_at_the_low_resolution_grid(
    luma: dict[str, torch.Tensor], factor: int
) -> None:
    """Downscaled by 3 or 4 and resized back, the curvature peaks at 1/3 or 1/4 cycles per
    pixel, a tenfold (1 log10 unit) above the clean photo and every blur there."""
    per = {k: curvature_periodicity(v)[0] for k, v in luma.items()}
    assert per["clean"].shape == (NUM_PERIODICITY,)
    b = int(2 * NUM_PERIODICITY / factor - 1e-6)
    others = [float(p[b]) for k, p in per.items() if not k.startswith("down")]
    assert float(per[f"down{factor}"][b]) > max(others) + 0.6, (per[f"down{factor}"][b], others)


def test_resampling_leaves_a_spectral_cliff_that_blur_does_not(
    luma: dict[str, torch.Tensor],
) -> None:
    """x2 interpolates every pixel alike (no periodicity), but its spectrum drops at the low
    resolution's Nyquist frequency and rises again above it (the interpolation's images); the
    blurs' spectra only fall."""
    rad = {k: radial_spectrum(v)[0] for k, v in luma.items()}
    assert rad["clean"].shape == (NUM_RADIAL,)

    def rise(r: torch.Tensor) -> float:  # top bands over the trough below them
        return float(r[-4:].max() - r[12:19].min())

    assert rise(rad["down2"]) > 0.4, rad["down2"]
    for k in ("clean", "blur0.8", "blur1.2", "blur1.6"):
        assert rise(rad[k]) < 0.15, (k, rad[k])


def test_features_shape_and_edge_cases() -> None:
    g = torch.Generator().manual_seed(0)
    assert resampling_features(torch.rand(3, 3, 64, 40, generator=g)).shape == (3, NUM_RESAMPLING)
    flat = resampling_features(torch.full((2, 1, 16, 16), 0.5))
    assert torch.isfinite(flat).all() and flat.shape == (2, NUM_RESAMPLING)
