"""``f2s restore`` end to end on real photos with the shipped models."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.degradations.record import PRESETS, Degradation
from face2scene_cli.degradations.sampling import apply, image_generator
from face2scene_cli.io.tensors import from_tensor, to_tensor
from face2scene_cli.research.eval.suites import degrade
from face2scene_cli.research.metrics import psnr
from face2scene_cli.research.sample_data import package_photos

runner = CliRunner()


def _photo(name: str) -> np.ndarray:
    path = next(p.path for p in package_photos() if p.name == name)
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def noisy_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The astronaut at 256 px (one face) with noise15, and a face-less photo (coffee), clean
    and with Gaussian noise σ 8/255."""
    root = tmp_path_factory.mktemp("restore")
    clean = np.asarray(Image.fromarray(_photo("skimage/astronaut")).resize((256, 256)))
    noisy = apply(to_tensor(clean), PRESETS["noise15"], image_generator(0, "a"))
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(from_tensor(noisy, np.uint8)).save(photos / "astronaut.png")
    coffee = np.asarray(Image.fromarray(_photo("skimage/coffee")).resize((200, 134)))
    Image.fromarray(coffee).save(photos / "coffee.png")
    noise = np.random.default_rng(8).normal(0, 8, coffee.shape)
    noisy_coffee = np.clip(coffee + noise, 0, 255).round().astype(np.uint8)
    Image.fromarray(noisy_coffee).save(photos / "coffee-noisy.png")
    return photos, clean


def test_restore_reads_faces_and_improves_the_photo(noisy_case, tmp_path: Path) -> None:
    photos, clean = noisy_case
    out = tmp_path / "out"
    res = runner.invoke(app, ["restore", str(photos), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "astronaut.png.json").read_text())
    assert report["status"] == "done"
    assert len(report["faces"]) == 1
    deg = report["degradation"]
    assert deg["source"] == "face"
    assert 8 <= deg["noise_sigma"] <= 25  # the truth is 15/255
    # the whole photo's noise per brightness band: flat (Gaussian), near the truth
    assert deg["noise_curve"]["read"] == pytest.approx(15, rel=0.15)
    assert deg["noise_curve"]["shot"] < 0.1
    assert {m["name"] for m in report["models"]} >= {"fadex-s", "scene-embedded"}
    restored = np.asarray(Image.open(out / "astronaut.png"))
    noisy = np.asarray(Image.open(photos / "astronaut.png"))
    assert restored.shape == noisy.shape
    assert psnr(clean, restored) > psnr(clean, noisy) + 1.0
    # the clean coffee photo has no face: its code is read off scene crops, which say there is
    # nothing to restore, and the photo is kept as it is (restored it was altered: 45-54 dB)
    coffee = json.loads((out / "coffee.png.json").read_text())
    deg = coffee["degradation"]
    assert coffee["faces"] == [] and deg["source"] == "scene" and len(deg["scene_crops"]) == 2
    assert deg["noise_sigma"] < 2 and deg["blur_sigma_px"] < 1 and deg["noise_curve"]["read"] < 2
    [kept] = coffee["scene"]["fallback"]
    assert (kept["region"], kept["to"]) == ("photo", "input") and coffee["scene"]["check"] is None
    assert kept["reason"].startswith("nothing to restore: the reading (noise σ")
    original = np.asarray(Image.open(photos / "coffee.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "coffee.png")), original)
    # with noise σ 8 the scene crops read it, and the code restores far better than the null
    # code (--blind: 31.4 dB at 2026-12-05) does: 34.0 dB against 30.3 for the input
    noisy = json.loads((out / "coffee-noisy.png.json").read_text())
    assert noisy["degradation"]["source"] == "scene" and noisy["scene"]["fallback"] == []
    assert 6 <= noisy["degradation"]["noise_sigma"] <= 11
    lq = np.asarray(Image.open(photos / "coffee-noisy.png"))
    assert psnr(original, np.asarray(Image.open(out / "coffee-noisy.png"))) > psnr(original, lq) + 3


def test_a_kept_photo_gets_no_pasted_face(tmp_path: Path) -> None:
    """--paste-faces leaves a photo read as clean as it is: its face is read (the reading
    keeps it), and the Stage I face is not blended in (it would alter the photo)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    face = Image.fromarray(_photo("insightface/t1")).crop((820, 0, 1100, 280))
    face.resize((112, 112), Image.Resampling.LANCZOS).save(photos / "t1.png")
    out = tmp_path / "out"
    res = runner.invoke(app, ["restore", str(photos), "--out", str(out), "--paste-faces", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "t1.png.json").read_text())
    assert len(report["faces"]) == 1 and report["degradation"]["source"] == "face"
    [kept] = report["scene"]["fallback"]
    assert kept["reason"].startswith("nothing to restore")
    original = np.asarray(Image.open(photos / "t1.png"))
    assert np.array_equal(np.asarray(Image.open(out / "t1.png")), original)
    assert any("no Stage I face pasted" in w for w in report["warnings"]), report["warnings"]


def test_restore_blind_flag_and_determinism(noisy_case, tmp_path: Path) -> None:
    photos, _ = noisy_case
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        res = runner.invoke(
            app, ["restore", str(photos / "astronaut.png"), "--out", str(out), "--blind", "-q"]
        )
        assert res.exit_code == 0, res.output
    assert (a / "astronaut.png").read_bytes() == (b / "astronaut.png").read_bytes()
    assert json.loads((a / "astronaut.png.json").read_text())["degradation"]["source"] == "blind"


def test_a_scene_crop_code_that_fails_the_check_is_restored_blind(tmp_path: Path) -> None:
    """The coffee photo (no face) under f2s eval's second-order sample: the code read off its
    scene crops fails the consistency check, so the photo is restored with the null code, as
    --blind restores it (better than the input), not handed back as the input."""
    coffee = _photo("skimage/coffee")
    clean = cv2.resize(coffee, (320, 208), interpolation=cv2.INTER_AREA)
    photos = tmp_path / "photos"
    photos.mkdir()
    lq = degrade(clean, "second-order-0", "coffee", 0).lq
    Image.fromarray(lq).save(photos / "coffee.png")
    outs = {}
    for mode, extra in (("code", []), ("blind", ["--blind"])):
        out = tmp_path / mode
        res = runner.invoke(app, ["restore", str(photos), "--out", str(out), "-q", *extra])
        assert res.exit_code == 0, res.output
        outs[mode] = np.asarray(Image.open(out / "coffee.png"))
    report = json.loads((tmp_path / "code" / "coffee.png.json").read_text())
    assert report["degradation"]["source"] == "scene"
    assert report["scene"]["check"]["residual"] > report["scene"]["check"]["limit"]
    [fallback] = report["scene"]["fallback"]
    assert (fallback["region"], fallback["to"]) == ("photo", "blind")
    assert "restored blind" in report["warnings"][0]
    assert np.array_equal(outs["code"], outs["blind"])
    assert psnr(clean, outs["code"]) > psnr(clean, lq) + 0.5


def test_restore_refuses_a_missing_device(noisy_case, tmp_path: Path) -> None:
    photos, _ = noisy_case
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the missing-device error cannot be shown")
    res = runner.invoke(
        app, ["restore", str(photos), "--out", str(tmp_path / "o"), "--device", "cuda"]
    )
    assert res.exit_code == 2
    assert "CUDA is not available" in res.output


def test_restore_takes_a_read_camera_shake_off(tmp_path: Path) -> None:
    """A 9 px camera shake (+ noise 5/255) on the astronaut: the reading states it, the report
    records the deconvolution, and the photo and its face come back > 1.5 dB closer to the
    clean photo than the input (the network alone never saw motion blur: it leaves the
    shake)."""
    clean = _photo("skimage/astronaut")
    deg = Degradation("parametric", motion_px=9.0, motion_angle_deg=30.0, noise_sigma=5.0)
    lq = from_tensor(apply(to_tensor(clean), deg, torch.Generator().manual_seed(0)), np.uint8)
    photos, out = tmp_path / "in", tmp_path / "out"
    photos.mkdir()
    Image.fromarray(lq).save(photos / "shaken.png")
    res = runner.invoke(app, ["restore", str(photos), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "shaken.png.json").read_text())
    done = report["scene"]["deblur"]
    assert done is not None and done["kernel"] == "motion" and report["scene"]["fallback"] == []
    assert abs((done["motion_angle_deg"] - 30.0 + 90.0) % 180.0 - 90.0) < 10.0
    restored = np.asarray(Image.open(out / "shaken.png").convert("RGB"))
    assert psnr(clean, restored) > psnr(clean, lq) + 1.5
    x0, y0, x1, y1 = (round(v) for v in report["faces"][0]["box"])
    face = (slice(y0, y1), slice(x0, x1))
    assert psnr(clean[face], restored[face]) > psnr(clean[face], lq[face]) + 1.5
