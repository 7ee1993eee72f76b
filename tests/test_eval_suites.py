"""The evaluation's named degradations (``f2s eval --suite``) on a real photo: each does what
its description says, seeded and replayable."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from helpers import missing_data
from PIL import Image

from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.ops import add_gaussian_noise, blur, motion_kernel2d
from face2scene_cli.degradations.record import PRESETS
from face2scene_cli.degradations.sampling import image_seed
from face2scene_cli.errors import ConfigError
from face2scene_cli.io.tensors import to_tensor
from face2scene_cli.research.eval.scene import estimate_error
from face2scene_cli.research.eval.suites import (
    MILD,
    OOD,
    SUITES,
    degradation_names,
    degrade,
)
from face2scene_cli.research.sample_data import package_photos


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The astronaut, 160x160 RGB uint8."""
    path = next((p.path for p in package_photos() if p.name == "skimage/astronaut"), None)
    if path is None:
        missing_data("scikit-image astronaut not installed")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((160, 160), Image.Resampling.BOX))


def _residual_std(lq: np.ndarray, clean: np.ndarray) -> float:
    return float((lq.astype(np.float64) - clean).std())


def test_suites_name_their_degradations() -> None:
    assert SUITES["standard"] == tuple(PRESETS)
    assert len(SUITES["ood"]) == 11 and set(SUITES["ood"]) == set(OOD)
    assert SUITES["mild"] == ("clean", *MILD) and not set(MILD) & set(OOD)
    assert degradation_names("standard", ("jpeg90", "down1.5")) == ("jpeg90", "down1.5")
    assert degradation_names("ood", ("noise15", "jpeg10")) == ("noise15", "jpeg10")
    with pytest.raises(ConfigError, match="unknown suite"):
        degradation_names("hard")
    with pytest.raises(ConfigError, match="unknown degradation"):
        degradation_names("ood", ("noise31",))


def test_every_ood_degradation_keeps_the_size_and_is_seeded(photo: np.ndarray) -> None:
    for name in OOD:
        a = degrade(photo, name, "astronaut", seed=1)
        b = degrade(photo, name, "astronaut", seed=1)
        assert a.lq.shape == photo.shape and a.lq.dtype == np.uint8
        np.testing.assert_array_equal(a.lq, b.lq)
    # noise draws differ per photo key and per seed
    n1 = degrade(photo, "noise30", "astronaut", seed=1).lq
    assert not np.array_equal(n1, degrade(photo, "noise30", "other", seed=1).lq)
    assert not np.array_equal(n1, degrade(photo, "noise30", "astronaut", seed=2).lq)


def test_ood_noise_blur_and_clean_do_what_they_say(photo: np.ndarray) -> None:
    clean = degrade(photo, "clean", "a", 0)
    np.testing.assert_array_equal(clean.lq, photo)
    assert clean.truth is not None and clean.truth.noise_sigma == 0
    for name, sigma in (("noise30", 30), ("noise50", 50)):
        out = degrade(photo, name, "a", 0)
        # clipping at 0 and 255 takes a little off the nominal sigma
        assert 0.85 * sigma <= _residual_std(out.lq, photo) <= 1.02 * sigma
        assert out.truth.noise_sigma == sigma
    blurred = degrade(photo, "blur3", "a", 0).lq
    ref = cv2.GaussianBlur(photo.astype(np.float32), (19, 19), 3, borderType=cv2.BORDER_REFLECT)
    assert np.abs(blurred.astype(np.float32) - ref).mean() < 1.0


def test_motion_item_is_a_parametric_record_with_the_same_pixels(photo: np.ndarray) -> None:
    """motion9-noise5 is scored against its record (motion 9 px at the seeded angle + noise 5,
    read as blur 9 / sqrt(12) = 2.60 px) and degrades exactly as before the record existed
    (a 9 px kernel at the item generator's first draw, then noise from the same generator),
    so earlier evaluation figures stay valid."""
    out = degrade(photo, "motion9-noise5", "a", 3)
    truth = out.truth
    assert truth is not None and truth.mode == "parametric"
    assert (truth.motion_px, truth.noise_sigma, truth.blur_sigma_px) == (9.0, 5.0, 0.0)
    g = torch.Generator().manual_seed(image_seed(3, "a|motion9-noise5"))
    angle = float(torch.rand((), generator=g)) * math.pi
    assert truth.motion_angle_deg == pytest.approx(math.degrees(angle))
    before = add_gaussian_noise(blur(to_tensor(photo), motion_kernel2d(9, 9, angle)), 5.0, g)
    expected = (before[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(out.lq, expected)
    other = degrade(photo, "motion9-noise5", "b", 3).truth
    assert other is not None and other.motion_angle_deg != truth.motion_angle_deg
    read = Estimate(noise_sigma=5.0, blur_sigma_px=2.6, downscale=1.0, jpeg_quality=90.0,
                    jpeg_probability=0.1)  # fmt: skip
    err = estimate_error(read, truth)
    assert err is not None and err["blur_sigma_px"] < 0.01 and err["noise_sigma"] == 0.0


def test_ood_jpeg_leaves_8px_blocks(photo: np.ndarray) -> None:
    def block_edges(img: np.ndarray) -> float:
        """Mean luma step across 8-px block borders over the mean step inside blocks."""
        y = img.astype(np.float64).mean(axis=2)
        steps = np.abs(np.diff(y, axis=1))
        at_border = steps[:, 7::8].mean()
        inside = np.delete(steps, np.s_[7::8], axis=1).mean()
        return at_border / inside

    assert block_edges(degrade(photo, "jpeg10", "a", 0).lq) > 1.3 * block_edges(photo)
    q10, q20 = (degrade(photo, n, "a", 0).lq for n in ("jpeg10", "jpeg20"))
    assert _residual_std(q10, photo) > _residual_std(q20, photo)


def test_mild_degradations_are_light_and_do_what_they_say(photo: np.ndarray) -> None:
    for name in MILD:
        a, b = (degrade(photo, name, "astronaut", seed=1) for _ in range(2))
        assert a.lq.shape == photo.shape and not np.array_equal(a.lq, photo)
        np.testing.assert_array_equal(a.lq, b.lq)
        assert (a.truth is None) == (name == "camera-jpeg95")
    for name, sigma in (("noise3", 3), ("noise6", 6)):
        out = degrade(photo, name, "a", 0)
        assert 0.85 * sigma <= _residual_std(out.lq, photo) <= 1.02 * sigma
    q90, q70, q50, q20 = (
        _residual_std(degrade(photo, f"jpeg{q}", "a", 0).lq, photo) for q in (90, 70, 50, 20)
    )
    assert 0 < q90 < q70 < q50 < q20
    blurred = degrade(photo, "blur1", "a", 0).lq
    ref = cv2.GaussianBlur(photo.astype(np.float32), (7, 7), 1, borderType=cv2.BORDER_REFLECT)
    assert np.abs(blurred.astype(np.float32) - ref).mean() < 1.0
    soft = _residual_std(degrade(photo, "down1.5", "a", 0).lq, photo)
    assert 0 < soft < _residual_std(degrade(photo, "down4", "a", 0).lq, photo)
    camera = _residual_std(degrade(photo, "camera-jpeg95", "a", 0).lq, photo)
    assert 1 < camera < _residual_std(degrade(photo, "camera-jpeg80", "a", 0).lq, photo)


def test_camera_noise_grows_with_brightness(photo: np.ndarray) -> None:
    flat = np.concatenate(
        [np.full((64, 64, 3), 30, np.uint8), np.full((64, 64, 3), 220, np.uint8)], axis=1
    )
    lq = degrade(flat, "camera-jpeg80", "flat", 0).lq.astype(np.float64)
    dark, bright = lq[8:56, 8:56].std(), lq[8:56, 72:120].std()
    assert bright > 1.5 * dark > 0


def test_camera_items_are_shot_then_read_noise_then_jpeg(photo: np.ndarray) -> None:
    """The camera items are parametric records (Poisson, Gaussian read noise, JPEG, one
    generator seeded by the item), the same pixels as the three steps by hand."""
    from face2scene_cli.degradations.jpeg import jpeg_compress
    from face2scene_cli.degradations.ops import add_gaussian_noise, add_poisson_noise
    from face2scene_cli.degradations.sampling import image_seed
    from face2scene_cli.io.tensors import to_tensor

    for name, scale, read, q in (("camera-jpeg80", 1.0, 2.0, 80), ("camera-jpeg95", 0.25, 1.0, 95)):
        g = torch.Generator().manual_seed(image_seed(0, f"a|{name}"))
        x = add_gaussian_noise(add_poisson_noise(to_tensor(photo), scale, g), read, g)
        by_hand = (jpeg_compress(x, q)[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
        np.testing.assert_array_equal(degrade(photo, name, "a", 0).lq, by_hand.numpy())


def test_gray_item_scores_against_the_gray_photo(photo: np.ndarray) -> None:
    out = degrade(photo, "gray-noise10", "a", 0)
    for img in (out.clean, out.lq):
        np.testing.assert_array_equal(img[..., 0], img[..., 1])
        np.testing.assert_array_equal(img[..., 0], img[..., 2])
    assert 8 <= _residual_std(out.lq, out.clean) <= 10.5
    assert out.truth.noise_sigma == 10


def test_upscaling_items_lose_resolution(photo: np.ndarray) -> None:
    for scale in (2, 4):
        for name in ("noise15", "second-order-0"):
            out = degrade(photo, name, "a", 0, scale=scale)
            assert out.lq.shape == (160 // scale, 160 // scale, 3)
            assert out.clean.shape == photo.shape and out.truth is None
    odd = degrade(photo[:159, :157], "mixed", "a", 0, scale=2)
    assert odd.clean.shape == (158, 156, 3) and odd.lq.shape == (79, 78, 3)
    with pytest.raises(ConfigError, match="scale 1 only"):
        degrade(photo, "down4", "a", 0, scale=2)
    with pytest.raises(ConfigError, match="scale must be"):
        degrade(photo, "noise15", "a", 0, scale=3)
