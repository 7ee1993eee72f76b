"""The do-no-harm check: a restoration must explain its input, else that region falls back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import missing_data
from PIL import Image
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.noise_level import NoiseCurve
from face2scene_cli.degradations.ops import gaussian_blur
from face2scene_cli.degradations.record import DOWNSCALE_SIGMA_PER_FACTOR, Degradation
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.errors import ConfigError
from face2scene_cli.io.tensors import to_tensor
from face2scene_cli.research.sample_data import package_photos
from face2scene_cli.restorers.guard import (
    CleanLimits,
    Fallback,
    GuardSettings,
    apply_fallbacks,
    check_restoration,
    noise_outside_training,
    nothing_to_restore,
    outside_training,
    trained_envelope,
)
from face2scene_cli.restorers.scene import SceneRestorer, load_scene_restorer

SETTINGS = GuardSettings(base=2.5, face_base=3.4)
FACE = (0, (96, 40, 160, 120))  # astronaut's face at 256 px, (x0, y0, x1, y1)


def _astronaut(size: int = 256) -> torch.Tensor:
    path = next((p.path for p in package_photos() if p.name == "skimage/astronaut"), None)
    if path is None:
        missing_data("scikit-image astronaut not available")
    with Image.open(path) as im:
        return to_tensor(np.asarray(im.convert("RGB").resize((size, size), Image.LANCZOS)))


def _estimate(noise: float = 0.0, blur: float = 0.0, down: float = 1.0) -> Estimate:
    return Estimate(noise, blur, down, 100.0, 0.0)


def _wrinkles(x: torch.Tensor, box: tuple[int, int, int, int], amp: float) -> torch.Tensor:
    """``x`` with invented creases (a 16 px period grating, coarser than the read blur
    explains) inside ``box``."""
    x0, y0, x1, y1 = box
    out = x.clone()
    ys = torch.arange(y1 - y0, dtype=torch.float32)[:, None]
    xs = torch.arange(x1 - x0, dtype=torch.float32)[None, :]
    out[..., y0:y1, x0:x1] += amp * torch.sin(2 * math.pi * (xs + 0.5 * ys) / 16)
    return out.clamp(0, 1)


def test_a_faithful_restoration_passes_and_invented_structure_falls_back() -> None:
    clean = _astronaut()
    lq = gaussian_blur(clean, 2.0)
    check, fallbacks = check_restoration(lq, clean, _estimate(blur=2.0), [FACE], SETTINGS)
    assert fallbacks == [] and check.residual < 1.0 and check.faces[0]["residual"] < 1.5
    # the same photo with a face full of invented streaks: that face falls back
    fake = _wrinkles(clean, FACE[1], 0.06)
    check, fallbacks = check_restoration(lq, fake, _estimate(blur=2.0), [FACE], SETTINGS)
    assert [f.region for f in fallbacks] == ["face"] and fallbacks[0].face == 0
    assert check.faces[0]["residual"] > SETTINGS.face_base
    # streaks over the whole photo: the photo falls back
    fake = _wrinkles(clean, (0, 0, 256, 256), 0.06)
    _, fallbacks = check_restoration(lq, fake, _estimate(blur=2.0), [FACE], SETTINGS)
    assert [f.region for f in fallbacks] == ["photo"] and "does not explain" in fallbacks[0].reason


def test_the_read_noise_is_allowed_for_and_a_missed_blur_is_not() -> None:
    clean = _astronaut()
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 20 / 255
    lq = clean + noise  # unclipped, so the residual is exactly the low-passed noise
    check, fallbacks = check_restoration(lq, clean, _estimate(noise=20.0), [FACE], SETTINGS)
    expected = 20.0 * SETTINGS.noise_share  # white noise's share after the low-pass
    assert check.residual == pytest.approx(expected, rel=0.1) and expected > SETTINGS.base
    assert fallbacks == []
    # read as noise-free, the same residual is more than the output may differ
    _, fallbacks = check_restoration(lq, clean, _estimate(noise=0.0), [FACE], SETTINGS)
    assert [f.region for f in fallbacks] == ["photo"]


@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_a_resolution_loss_is_explained_by_its_factor(factor: float) -> None:
    """Read as FaDeX reads it (the factor, and a blur that holds the resolution loss's share
    0.39 s), a downscaled photo is explained by its clean version: re-degraded with the factor
    and the optical blur left, not the read blur on top of the resampling, nor the blur alone."""
    clean = _astronaut()
    lq = apply(clean, Degradation("parametric", downscale=factor, resize_back=True))
    read = _estimate(blur=DOWNSCALE_SIGMA_PER_FACTOR * factor, down=factor)
    check, fallbacks = check_restoration(lq, clean, read, [FACE], SETTINGS)
    blur_only, _ = check_restoration(lq, clean, _estimate(blur=read.blur_sigma_px), [], SETTINGS)
    assert fallbacks == [] and check.residual < 1.3, check.residual
    assert check.residual < 0.5 * blur_only.residual, (check.residual, blur_only.residual)


def test_fallbacks_give_the_input_back_in_their_region_only() -> None:
    lq = _astronaut(128)
    out = torch.zeros(1, 3, 256, 256)  # a x2 output
    face = Fallback("face", 0, "test")
    mixed = apply_fallbacks(out, lq, [face], {0: (48, 20, 80, 60)})
    up = torch.nn.functional.interpolate(lq, size=(256, 256), mode="bicubic").clamp(0, 1)
    inside = (..., slice(40, 120), slice(96, 160))
    assert torch.allclose(mixed[inside], up[inside], atol=1e-5)
    assert torch.equal(mixed[..., 150:, :], out[..., 150:, :])  # far from the face
    assert torch.allclose(
        apply_fallbacks(out, lq, [Fallback("photo", None, "t")], {}), up, atol=1e-5
    )
    assert apply_fallbacks(out, lq, [], {}) is out


def test_a_reading_under_the_clean_limits_keeps_the_photo() -> None:
    limits = CleanLimits(noise=2.0, blur=1.6, jpeg_quality=60)
    clean = Estimate(0.1, 0.3, 1.0, 0.0, 0.0)
    kept = nothing_to_restore(clean, None, limits)
    assert kept is not None and (kept.region, kept.face, kept.to) == ("photo", None, "input")
    assert kept.reason.startswith("nothing to restore: the reading (noise σ 0.1, blur σ 0.3 px")
    assert nothing_to_restore(Estimate(0.1, 0.3, 1.0, 90.0, 0.9), None, limits) is not None
    assert nothing_to_restore(Estimate(0.1, 0.3, 1.0, 40.0, 0.9), None, limits) is None  # JPEG
    assert nothing_to_restore(Estimate(0.1, 0.3, 1.0, 40.0, 0.2), None, limits) is not None
    assert nothing_to_restore(Estimate(4.0, 0.3, 1.0, 0.0, 0.0), None, limits) is None  # noise
    assert nothing_to_restore(Estimate(0.1, 2.0, 1.0, 0.0, 0.0), None, limits) is None  # blur
    # FaDeX reads light noise low; the noise curve's read noise decides too
    light = NoiseCurve((64.0, 128.0, 192.0), (3.1, 3.2, 3.0), 3.1, 0.0)
    assert nothing_to_restore(clean, light, limits) is None
    quiet = NoiseCurve((64.0, 128.0, 192.0), (0.5, 0.6, 0.5), 0.5, 0.0)
    assert nothing_to_restore(clean, quiet, limits) is not None
    from_json = GuardSettings(2.5, 3.4, clean={"noise": 2, "blur": 1.6, "jpeg_quality": 60})
    assert from_json.clean == limits and SETTINGS.clean is None
    with pytest.raises(ConfigError, match=r"guard\.clean\.blur must be a number > 0"):
        GuardSettings(2.5, 3.4, clean={"noise": 2, "blur": 0, "jpeg_quality": 60})
    with pytest.raises(ConfigError, match=r"guard\.clean"):
        GuardSettings(2.5, 3.4, clean={"noise": 2})
    with pytest.raises(ConfigError, match=r"guard\.clean must be a mapping"):
        GuardSettings(2.5, 3.4, clean=2.0)  # type: ignore[arg-type]


def test_the_trained_envelope_of_a_release_and_readings_beyond_it() -> None:
    training = json.loads(Path("models/scene-embedded/training.json").read_text())
    env = trained_envelope(training)  # a flat data block (before data.degradation)
    assert env == {
        "noise_sigma": 30.0,  # parametric 0-30 and second-order 1-30
        "blur_sigma_px": 3.0,  # second-order's Gaussian sigma up to 3
        "downscale": pytest.approx(1 / 0.15),  # second-order's first resize down to 0.15
        "jpeg_quality": 25,  # parametric q25-95
    }
    assert outside_training(_estimate(noise=33.0, blur=2.9), env) == []  # within the margins
    beyond = outside_training(Estimate(38.0, 3.6, 1.0, 12.0, 0.9), env)
    assert beyond == ["noise σ 38 > 30", "blur σ 3.6 px > 3.0", "JPEG q12 < q25"]
    wide = {
        "config": {"data": {"degradation": {"mix": {"parametric": 1.0}, "noise_range": [0, 50]}}}
    }
    assert trained_envelope(wide)["noise_sigma"] == 50.0
    assert trained_envelope({"config": {}}) is None
    # camera noise: the highlights beyond the trained sigma, the mean not
    camera = NoiseCurve((48.0, 112.0, 176.0, 240.0), (9.0, 21.0, 37.0, None), 3.0, 5.0)
    assert noise_outside_training(camera, env) == "noise σ 37 at level 176 > 30"
    assert noise_outside_training(camera, {**env, "noise_sigma": 50.0}) is None


def test_restore_reports_the_check_and_falls_back_from_a_hallucinating_restorer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if load_scene_restorer("scene-embedded").guard is None:
        pytest.fail("the shipped scene-embedded has no calibrated guard in scene.json")
    photos = tmp_path / "photos"
    photos.mkdir()
    x = _astronaut()
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 15 / 255
    img = (noisy.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(img).save(photos / "astro.png")
    runner = CliRunner()
    res = runner.invoke(app, ["restore", str(photos), "--out", str(tmp_path / "ok"), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ok" / "astro.png.json").read_text())
    check = report["scene"]["check"]
    assert report["scene"]["fallback"] == [] and check["residual"] < check["limit"]
    assert len(check["faces"]) == 1 and check["faces"][0]["face"] == 0
    assert not any("beyond what" in w for w in report["warnings"])
    big = _astronaut(512)  # enough unclipped blocks under this noise for the noise curve
    heavy = big + torch.randn(big.shape, generator=torch.Generator().manual_seed(2)) * 60 / 255
    img60 = (heavy.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(img60).save(photos / "astro.png")
    res = runner.invoke(app, ["restore", str(photos), "--out", str(tmp_path / "heavy"), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "heavy" / "astro.png.json").read_text())
    assert any(
        "beyond what scene-embedded was trained on (noise σ" in w for w in report["warnings"]
    )
    assert any("the photo's noise goes beyond" in w for w in report["warnings"])
    Image.fromarray(img).save(photos / "astro.png")

    real = SceneRestorer.restore

    def hallucinating(self, image, *args, **kwargs):  # streaks over the whole photo
        out = real(self, image, *args, **kwargs)
        return _wrinkles(out, (0, 0, out.shape[-1], out.shape[-2]), 0.08)

    monkeypatch.setattr(SceneRestorer, "restore", hallucinating)
    res = runner.invoke(app, ["restore", str(photos), "--out", str(tmp_path / "bad"), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "bad" / "astro.png.json").read_text())
    assert [f["region"] for f in report["scene"]["fallback"]] == ["photo"]
    assert any("fell back to the input" in w for w in report["warnings"])
    out = np.asarray(Image.open(tmp_path / "bad" / "astro.png"))
    assert np.array_equal(out, img)  # the input, not the invented streaks
