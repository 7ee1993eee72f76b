"""PSNR / SSIM against independent implementations (scikit-image) and hand-computed cases."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from face2scene_cli.research.metrics import psnr, psnr_torch, rgb_to_y, ssim, ssim_torch


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A real photo crop and a noisy copy (uint8, 96x128x3)."""
    img = skdata.astronaut()[100:196, 150:278]
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), noisy


def _sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    return structural_similarity(
        a.astype(np.float64),
        b.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        channel_axis=2 if a.ndim == 3 else None,
    )


def test_psnr_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    ref = peak_signal_noise_ratio(a, b, data_range=255)
    assert psnr(a, b) == pytest.approx(ref, rel=1e-9)
    assert psnr(a[..., 0], b[..., 0]) == pytest.approx(
        peak_signal_noise_ratio(a[..., 0], b[..., 0], data_range=255), rel=1e-9
    )


def test_psnr_identical_is_inf_and_dtypes(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0)
    # uint16 / float data with their own data range give the same numbers
    a16, b16 = a.astype(np.uint16) * 257, b.astype(np.uint16) * 257
    assert psnr(a16, b16, data_range=65535) == pytest.approx(psnr(a, b), rel=1e-9)
    assert ssim(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(ssim(a, b), rel=1e-9)


def test_ssim_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert ssim(a, b) == pytest.approx(_sk_ssim(a, b), rel=1e-3)
    assert ssim(a[..., 1], b[..., 1]) == pytest.approx(_sk_ssim(a[..., 1], b[..., 1]), rel=1e-3)
    # a different degradation: blur-like (shifted average)
    c = ((a.astype(np.float64) + np.roll(a, 1, axis=1)) / 2).astype(np.uint8)
    assert ssim(a, c) == pytest.approx(_sk_ssim(a, c), rel=1e-3)


def test_synthetic_gradient_ssim() -> None:
    yy, xx = np.mgrid[0:40, 0:50]
    a = (xx * 5 + yy * 2).astype(np.float64)
    b = a + np.sin(xx / 3.0) * 10
    assert ssim(a, b) == pytest.approx(_sk_ssim(a, b), rel=1e-3)
    assert 0 < ssim(a, b) < 1


def test_y_channel_known_values() -> None:
    white = np.full((12, 12, 3), 255, np.uint8)
    black = np.zeros((12, 12, 3), np.uint8)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert rgb_to_y(white)[0, 0] == pytest.approx(235.0)
    assert rgb_to_y(black)[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(red)[0, 0] == pytest.approx(16.0 + 65.481)
    assert psnr(white, black, y_channel=True) == pytest.approx(20 * math.log10(255 / 219))
    assert psnr(white, black) == pytest.approx(0.0)
    # the Y channel of 16-bit data is put on the 0..255 scale first
    w16 = white.astype(np.uint16) * 257
    assert rgb_to_y(w16, data_range=65535)[0, 0] == pytest.approx(235.0)


def test_y_channel_matches_manual(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    ya = 16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0
    yb = 16 + (65.481 * b[..., 0] + 128.553 * b[..., 1] + 24.966 * b[..., 2]) / 255.0
    assert psnr(a, b, y_channel=True) == pytest.approx(
        peak_signal_noise_ratio(ya, yb, data_range=255), rel=1e-9
    )
    assert ssim(a, b, y_channel=True) == pytest.approx(_sk_ssim(ya, yb), rel=1e-3)
    # gray images are used as they are
    assert psnr(a[..., 0], b[..., 0], y_channel=True) == psnr(a[..., 0], b[..., 0])


def test_masked_psnr_equals_subset(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    mask = np.zeros(a.shape[:2], bool)
    mask[10:50, 20:90] = True
    ref = peak_signal_noise_ratio(a[10:50, 20:90], b[10:50, 20:90], data_range=255)
    assert psnr(a, b, mask=mask) == pytest.approx(ref, rel=1e-9)
    # complement: the noisy part differs, the clean part is identical -> inf
    c = a.copy()
    c[mask] = b[mask]
    assert psnr(a, c, mask=~mask) == math.inf
    assert psnr(a, c, mask=mask) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="no pixel"):
        psnr(a, b, mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="mask must have shape"):
        psnr(a, b, mask=mask[:5])


def test_masked_ssim(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    full = np.ones(a.shape[:2], bool)
    assert ssim(a, b, mask=full) == pytest.approx(ssim(a, b), rel=1e-12)
    # a rectangle mask averages the map over the rectangle (in valid-region coordinates)
    mask = np.zeros(a.shape[:2], bool)
    mask[20:60, 30:100] = True
    from face2scene_cli.research.metrics import ssim_map

    smap = ssim_map(a, b)
    assert ssim(a, b, mask=mask) == pytest.approx(smap[15:55, 25:95].mean(), rel=1e-12)
    # only the region that is degraded scores below 1
    c = a.copy()
    c[mask] = b[mask]
    outside = np.zeros_like(mask)
    outside[70:, :] = True
    assert ssim(a, c, mask=outside) == pytest.approx(1.0)
    assert ssim(a, c, mask=mask) < 0.95


def test_torch_versions_match_numpy(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(np.stack([b, b])).permute(0, 3, 1, 2).float() / 255
    p = psnr_torch(x, y)
    assert p.shape == (2,)
    assert p[0].item() == pytest.approx(psnr(a, b), rel=1e-5)
    assert p[1].item() == math.inf
    s = ssim_torch(x, y)
    assert s[0].item() == pytest.approx(ssim(a, b), rel=1e-4)
    assert s[1].item() == pytest.approx(1.0)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((4, 4)), np.ones((4, 4)), data_range=0)


def test_perceptual_scores_and_sharpness_ratio_on_a_real_photo() -> None:
    from face2scene_cli.research.metrics import perceptual_scores, sharpness_ratio

    clean = cv2.resize(skdata.astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
    same = perceptual_scores(clean, clean)
    assert same["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert same["haarpsi"] == pytest.approx(1.0, abs=1e-5)
    assert same["gmsd"] == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
    soft = cv2.GaussianBlur(clean, (0, 0), 2)
    for bad in (noisy, soft):
        got = perceptual_scores(bad, clean)
        assert got["ms_ssim"] < 0.99 and got["haarpsi"] < 0.95 and got["gmsd"] > 0.02
    # noise adds gradient energy, blur removes it
    assert sharpness_ratio(clean, clean) == pytest.approx(1.0)
    assert sharpness_ratio(noisy, clean) > 1.02 and sharpness_ratio(soft, clean) < 0.7
    assert perceptual_scores(clean[:150], clean[:150])["ms_ssim"] is None  # < 161 px
