"""`f2s degrade-code` as a user runs it: a degraded real photo reads back its parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def test_no_face_exits_5_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "wall.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 96, 3)) * 40 + 100).astype(np.uint8)).save(path)
    res = run_f2s("degrade-code", path)
    assert res.returncode == 5
    assert "no usable face" in res.stderr + res.stdout
