"""`f2s degrade-code` as a user runs it: a degraded real photo reads back its parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_f2s
from PIL import Image
from skimage import data as skdata


def test_degraded_astronaut_reads_back_noise_and_jpeg(tmp_path: Path) -> None:
    clean = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(clean)
    noisy, jpeg = tmp_path / "noisy", tmp_path / "jpeg"
    assert run_f2s("degrade", clean, "--out", noisy, "--noise-sigma", "15", "-q").returncode == 0
    assert run_f2s("degrade", clean, "--out", jpeg, "--jpeg-quality", "35", "-q").returncode == 0
    res = run_f2s("degrade-code", noisy / "astronaut.png", jpeg / "astronaut.png", "--json")
    assert res.returncode == 0, res.stderr
    images = {Path(i["input"]).parent.name: i for i in json.loads(res.stdout)["images"]}
    n, j = images["noisy"]["degradation"], images["jpeg"]["degradation"]
    assert len(images["noisy"]["faces"]) == 1 and images["noisy"]["restorer"] == "blind-nlm/1"
    assert abs(n["noise_sigma"] - 15) <= 3 and n["jpeg_quality"] is None
    assert j["jpeg_quality"] is not None and abs(j["jpeg_quality"] - 35) <= 3
    assert j["noise_sigma"] < 5
    assert "noise" in n["summary"] and "JPEG q~" in j["summary"]
    curve = images["noisy"]["noise_curve"]  # the whole photo, band by band
    assert curve["read"] == pytest.approx(15, rel=0.15) and curve["shot"] < 0.1
    known = [s for s in curve["sigma"] if s is not None]
    assert len(known) >= 4 and all(abs(s - 15) < 3 for s in known)


def test_camera_noise_reads_as_rising_with_brightness(tmp_path: Path) -> None:
    import torch

    from face2scene_cli.degradations.ops import add_gaussian_noise, add_poisson_noise

    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)[None].float() / 255
    y = add_gaussian_noise(add_poisson_noise(x, 1.0, g), 2.0, g)
    noisy = tmp_path / "camera.png"
    Image.fromarray((y[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(noisy)
    res = run_f2s("degrade-code", noisy)
    assert res.returncode == 0, res.stderr
    assert "noise by brightness" in res.stdout
    res = run_f2s("degrade-code", noisy, "--json")
    curve = json.loads(res.stdout)["images"][0]["noise_curve"]
    assert curve["shot"] == pytest.approx(1.0, rel=0.2)  # Poisson scale 1
    known = [s for s in curve["sigma"] if s is not None]
    assert known[-1] > 2 * known[0]


def test_no_face_exits_5_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "wall.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 96, 3)) * 40 + 100).astype(np.uint8)).save(path)
    res = run_f2s("degrade-code", path)
    assert res.returncode == 5
    assert "no usable face" in res.stderr + res.stdout


def test_scene_reads_a_photo_without_a_face_off_scene_crops(tmp_path: Path) -> None:
    """The coffee photo (no face) with noise 15/255: faces-only it cannot be read (exit 5);
    with --scene its 8 scene crops read the noise back, as f2s restore reads it."""
    clean = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()).save(clean)
    noisy = tmp_path / "noisy"
    assert run_f2s("degrade", clean, "--out", noisy, "--noise-sigma", "15", "-q").returncode == 0
    assert run_f2s("degrade-code", noisy / "coffee.png").returncode == 5
    res = run_f2s("degrade-code", noisy / "coffee.png", "--scene", "--json")
    assert res.returncode == 0, res.stderr
    [image] = json.loads(res.stdout)["images"]
    deg = image["degradation"]
    assert image["faces"] == [] and image["restorer"] == "blind-nlm/1"
    assert deg["source"] == "scene" and len(deg["scene_crops"]) == 8
    assert abs(deg["noise_sigma"] - 15) <= 4 and deg["jpeg_quality"] is None
    text = run_f2s("degrade-code", noisy / "coffee.png", "--scene")
    assert text.returncode == 0 and "[8 scene crop(s), restorer blind-nlm/1]" in text.stdout
