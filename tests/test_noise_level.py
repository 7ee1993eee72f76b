"""The noise-per-brightness reading on real photos: camera noise rises with the level,
Gaussian noise does not, clean photos read near zero."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.degradations.noise_level import estimate_noise_curve
from face2scene_cli.degradations.ops import add_gaussian_noise, add_poisson_noise

PHOTOS = {"astronaut": skdata.astronaut, "coffee": skdata.coffee, "chelsea": skdata.chelsea}


def _photo(name: str) -> torch.Tensor:
    return torch.from_numpy(PHOTOS[name]()).permute(2, 0, 1)[None].float() / 255


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def test_pure_gaussian_noise_reads_its_sigma_flat() -> None:
    g = torch.Generator().manual_seed(0)
    for sigma in (3.0, 10.0, 25.0):
        flat = torch.full((1, 3, 512, 512), 0.45)  # level 115: one band
        curve = estimate_noise_curve(_u8(add_gaussian_noise(flat, sigma, g))[0])
        known = [s for s in curve.sigma if s is not None]
        assert len(known) == 1
        assert known[0] == pytest.approx(math.sqrt(sigma**2 + 1 / 12), rel=0.05)
        assert curve.read == pytest.approx(known[0]) and curve.shot == 0.0


@pytest.mark.parametrize("name", list(PHOTOS))
def test_camera_noise_reads_as_rising_with_brightness(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    noisy = _u8(add_gaussian_noise(add_poisson_noise(_photo(name), 1.0, g), 2.0, g))
    curve = estimate_noise_curve(noisy[0])
    known = [(lv, s) for lv, s in zip(curve.levels, curve.sigma, strict=True) if s is not None]
    assert len(known) >= 5
    for level, sigma in known:  # Poisson scale 1: variance 0.996 x level, + read noise 2^2
        assert sigma == pytest.approx(math.sqrt(0.996 * level + 4), rel=0.15), level
    assert known[-1][1] > 1.5 * known[0][1]  # one global sigma would fail this
    assert curve.shot == pytest.approx(1.0, rel=0.2)
    assert curve.at(200.0) == pytest.approx(math.sqrt(0.996 * 200 + 4), rel=0.1)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_gaussian_noise_on_a_photo_reads_flat_and_clean_photos_read_low(name: str) -> None:
    clean = estimate_noise_curve(_photo(name)[0])
    assert all(s is None or s < 3.0 for s in clean.sigma)
    g = torch.Generator().manual_seed(2)
    curve = estimate_noise_curve(_u8(add_gaussian_noise(_photo(name), 20.0, g))[0])
    assert curve.read == pytest.approx(20.0, rel=0.1)
    assert curve.at(230.0) < 1.15 * curve.at(25.0)


def test_a_gray_photo_and_bad_shapes() -> None:
    g = torch.Generator().manual_seed(3)
    gray = torch.from_numpy(skdata.camera())[None, None].float() / 255
    curve = estimate_noise_curve(_u8(add_gaussian_noise(gray, 8.0, g))[0])
    assert curve.read == pytest.approx(8.0, rel=0.1)
    with pytest.raises(ValueError):
        estimate_noise_curve(torch.rand(3, 8, 8))


def test_decoded_pixels_read_like_their_tensor() -> None:
    """(H, W, C) uint8 pixels (read in place, even read-only) and uint16 ones read as the
    (C, H, W) tensor of the same values."""
    g = torch.Generator().manual_seed(4)
    noisy = _u8(add_poisson_noise(_photo("coffee"), 0.5, g))[0]
    u8 = (noisy * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    u8.setflags(write=False)
    want = estimate_noise_curve(noisy)
    for pixels in (u8, u8.astype(np.uint16) * 257):
        got = estimate_noise_curve(pixels)
        assert got.sigma == pytest.approx(want.sigma, abs=1e-3)
        assert got.read == pytest.approx(want.read, abs=1e-3)
        assert got.shot == pytest.approx(want.shot, abs=1e-4)
    with pytest.raises(ValueError):
        estimate_noise_curve(u8.astype(np.float32))
