"""Real-ESRGAN x4plus as a blind scene restorer (``f2s restore --scene-model``).

Fast tests run a tiny random RRDBNet (its own zoo folder) through the same restorer and
CLI; the shipped x4plus runs in the slow ones (about 45 s per output MP on 2 CPU cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from face2scene_cli.archs.rrdbnet import rrdbnet_tiny, upscale_image
from face2scene_cli.cli.app import app
from face2scene_cli.errors import ConfigError
from face2scene_cli.io.tensors import to_tensor
from face2scene_cli.research.metrics import psnr
from face2scene_cli.research.sample_data import package_photos
from face2scene_cli.restorers.upscaler import (
    UPSCALER_TASK,
    UpscaleRestorer,
    load_upscale_restorer,
)
from face2scene_cli.zoo import write_metadata
from tests.helpers import reports_in

runner = CliRunner()


def _photo(name: str) -> np.ndarray:
    path = next(p.path for p in package_photos() if p.name == name)
    return np.asarray(Image.open(path).convert("RGB"))


def _tiny_restorer() -> UpscaleRestorer:
    torch.manual_seed(0)
    return UpscaleRestorer(rrdbnet_tiny(), "tiny-sr")


def _psnr_t(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    """A 40x48 crop of the astronaut's face, (1, 3, 40, 48) in [0, 1]."""
    return to_tensor(np.ascontiguousarray(_photo("skimage/astronaut")[70:110, 180:228]))


def test_one_tile_is_upscale_image_and_tiles_blend(crop: torch.Tensor) -> None:
    r = _tiny_restorer()
    whole = upscale_image(r.net, crop)
    assert torch.equal(r.restore(crop, scale=4), whole)  # the image fits one automatic tile
    tiled = r.restore(crop, tile=32, scale=4)
    assert tiled.shape == whole.shape == (1, 3, 160, 192)
    assert _psnr_t(tiled, whole) >= 40.0


def test_scales_gray_and_tokens(crop: torch.Tensor) -> None:
    r = _tiny_restorer()
    x4 = r.restore(crop, scale=4)
    for s in (1, 2):
        out = r.restore(crop, scale=s)
        assert out.shape == (1, 3, 40 * s, 48 * s)
        assert torch.allclose(out, F.avg_pool2d(x4, 4 // s), atol=1e-6)  # area resize
    assert r.restore(crop[:, :1], scale=2).shape == (1, 1, 80, 96)
    with pytest.raises(ConfigError, match="no degradation code"):
        r.restore(crop, tokens=torch.zeros(1, 21, 8))
    with pytest.raises(ConfigError, match="no degradation code"):
        r.tokens_for_crops([torch.zeros(1, 96, 8, 8)])
    assert r.code_fadex is None


def test_settings_fp32_on_cpu() -> None:
    r = _tiny_restorer()
    assert r.run_settings(None, None)[1] == "fp32"
    assert r.run_settings(64, "fp16") == (64, "fp16")
    assert 32 <= r.run_settings()[0] <= UpscaleRestorer.MAX_TILE
    with pytest.raises(ConfigError):
        r.run_settings(64, "fp8")


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo folder ``tiny-sr`` holding a tiny random RRDBNet with the upscaler task."""
    folder = tmp_path_factory.mktemp("zoo") / "tiny-sr"
    _tiny_restorer().net.save_pretrained(folder)
    meta = {
        "name": "tiny-sr",
        "version": "test",
        "task": UPSCALER_TASK,
        "licence": "Apache-2.0",
        "input": {},
        "trained_with": {},
        "source": "random (test)",
    }
    write_metadata(folder, meta)
    (folder / "README.md").write_text("# tiny-sr\n\nA random tiny RRDBNet for tests.\n")
    return folder


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The astronaut at 128 px (one face)."""
    photos = tmp_path_factory.mktemp("sr-photos")
    Image.fromarray(_photo("skimage/astronaut")).resize((128, 128)).save(photos / "a.png")
    return photos / "a.png"


def _restore(photo: Path, out: Path, *args: str) -> dict:
    res = runner.invoke(app, ["restore", str(photo), "--out", str(out), "-q", *args])
    assert res.exit_code == 0, res.output
    (report,) = reports_in(out).values()
    return report


def test_cli_runs_the_upscaler_blind(tiny_zoo: Path, small_photo: Path, tmp_path: Path) -> None:
    for scale in (1, 2):
        out = tmp_path / f"x{scale}"
        report = _restore(small_photo, out, "--scene-model", str(tiny_zoo), "--scale", str(scale))
        img = np.asarray(Image.open(out / "a.png"))
        assert img.shape == (128 * scale, 128 * scale, 3)
        assert report["status"] == "done"
        assert len(report["faces"]) == 1  # the faces are still read ...
        deg = report["degradation"]
        assert deg["source"] == "blind" and deg["noise_sigma"] is not None  # ... not used
        assert any("tiny-sr takes no degradation code" in w for w in report["warnings"])
        assert {m["name"] for m in report["models"]} >= {"fadex-s", "tiny-sr"}
        assert report["scene"]["precision"] == "fp32"
    again = tmp_path / "again"
    _restore(small_photo, again, "--scene-model", str(tiny_zoo), "--scale", "2")
    assert (again / "a.png").read_bytes() == (tmp_path / "x2" / "a.png").read_bytes()
    pasted = tmp_path / "pasted"
    _restore(small_photo, pasted, "--scene-model", str(tiny_zoo), "--scale", "2", "--paste-faces")
    assert (pasted / "a.png").read_bytes() != (tmp_path / "x2" / "a.png").read_bytes()


def test_models_list_has_realesrgan() -> None:
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    tasks = {m["name"]: m["task"] for m in json.loads(res.output)["models"]}
    assert tasks["realesrgan-x4plus"] == UPSCALER_TASK


@pytest.mark.slow
def test_realesrgan_cli_end_to_end(tmp_path: Path) -> None:
    """The shipped x4plus on a 64 px face crop: sizes, blind report, determinism."""
    photo = tmp_path / "face.png"
    clean = _photo("skimage/astronaut")[60:124, 170:234]
    Image.fromarray(np.ascontiguousarray(clean)).save(photo)
    outs = {}
    for scale in (1, 2, 1):
        out = tmp_path / f"x{scale}-{len(outs)}"
        report = _restore(photo, out, "--scene-model", "realesrgan-x4plus", "--scale", str(scale))
        assert report["degradation"]["source"] == "blind"
        assert any("realesrgan-x4plus takes no degradation code" in w for w in report["warnings"])
        assert "realesrgan-x4plus" in {m["name"] for m in report["models"]}
        outs[out.name] = np.asarray(Image.open(out / "face.png"))
        assert outs[out.name].shape == (64 * scale, 64 * scale, 3)
    assert np.array_equal(outs["x1-0"], outs["x1-2"])  # deterministic
    assert not np.array_equal(outs["x1-0"], clean)
    assert psnr(clean, outs["x1-0"]) > 25.0  # restores, does not replace, the photo


@pytest.mark.slow
def test_realesrgan_tiled_matches_whole() -> None:
    r = load_upscale_restorer()
    x = to_tensor(np.ascontiguousarray(_photo("skimage/astronaut")[60:124, 170:234]))
    assert _psnr_t(r.restore(x, tile=32, scale=4), upscale_image(r.net, x)) >= 40.0
