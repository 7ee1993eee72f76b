"""Restore settings come from the config dataclasses: every field feeds the resume hash, the
config file and environment set the face options too, and reports say what was used."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import reports_in
from PIL import Image
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.config import FacesConfig, RestoreConfig
from face2scene_cli.hashing import json_sha256
from face2scene_cli.pipelines.restore import Face2ScenePipeline
from face2scene_cli.research.sample_data import package_photos
from face2scene_cli.restorers.scene import cpu_has_native_bf16, resolve_precision

runner = CliRunner()

# A changed value per field (each valid for RestoreConfig).
CHANGED = {
    "detector": "dlib",
    "min_face": 21,
    "max_faces": 5,
    "identity": "dlib",
    "refs_k": 4,
    "blind": True,
    "tile": 64,
    "precision": "bf16",
    "scale": 2,
    "device": "cuda",
    "scene_model": "another-scene-model",
    "paste_faces": True,
    "save_faces": True,
    "save_compare": True,
}
# Fields the hash holds as what they resolve to (checked through the gallery / restorer).
DERIVED = {"refs", "face_restorer"}


@pytest.fixture(scope="module")
def pipeline() -> Face2ScenePipeline:
    return Face2ScenePipeline.from_pretrained(detector="mtcnn", face_restorer="blind")


def test_every_config_field_is_in_the_settings_hash(pipeline: Face2ScenePipeline) -> None:
    fields = {f.name for f in dataclasses.fields(RestoreConfig)}
    assert set(pipeline.settings()) == fields | {"scene_crops"}  # the reader's, not a field
    assert set(CHANGED) | DERIVED == fields
    base = json_sha256(pipeline.settings())
    for name, value in CHANGED.items():
        cfg = dataclasses.replace(pipeline.config, **{name: value})
        other = Face2ScenePipeline(cfg, pipeline.finder, pipeline.reader, pipeline.scene, [])
        assert json_sha256(other.settings()) != base, name
    reader = copy.copy(pipeline.reader)
    reader.scene_crops = 0
    other = Face2ScenePipeline(pipeline.config, pipeline.finder, reader, pipeline.scene, [])
    assert json_sha256(other.settings()) != base


def test_derived_settings_are_what_was_resolved(pipeline: Face2ScenePipeline) -> None:
    settings = pipeline.settings()
    assert settings["refs"] is None  # no gallery
    assert settings["face_restorer"] == pipeline.reader.restorer.method


def test_from_pretrained_refuses_a_fadex_the_scene_model_was_not_trained_with() -> None:
    from face2scene_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="trained on the codes of"):
        Face2ScenePipeline.from_pretrained(fadex="another-fadex", detector="mtcnn")


def test_from_pretrained_takes_a_model_folder_verified_by_its_metadata(tmp_path: Path) -> None:
    from face2scene_cli.errors import ModelIntegrityError
    from face2scene_cli.zoo import models_dir

    folder = tmp_path / "runs" / "export"
    shutil.copytree(models_dir() / "scene-embedded", folder)
    pipe = Face2ScenePipeline.from_pretrained(str(folder), detector="mtcnn")
    assert [m["name"] for m in pipe.models()] == ["mtcnn", "fadex-s", "scene-embedded"]
    assert pipe.settings()["scene_model"] == str(folder)
    (folder / "scene.json").write_text("{}")  # the folder's own metadata pins it
    with pytest.raises(ModelIntegrityError):
        Face2ScenePipeline.from_pretrained(str(folder), detector="mtcnn")


@pytest.fixture
def small_face_photo(tmp_path: Path) -> Path:
    path = next(p.path for p in package_photos() if p.name == "skimage/astronaut")
    photo = tmp_path / "in" / "astro.png"
    photo.parent.mkdir()
    small = np.asarray(Image.open(path).convert("RGB").resize((160, 160))).astype(np.float64)
    noise = np.random.default_rng(0).normal(0, 10, small.shape)  # clean, it would be kept
    Image.fromarray(np.clip(small + noise, 0, 255).round().astype(np.uint8)).save(photo)
    return photo


def test_report_records_the_tile_and_precision_used(
    small_face_photo: Path, tmp_path: Path, pipeline: Face2ScenePipeline
) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["restore", str(small_face_photo), "--out", str(out), "--tile", "100"])
    assert res.exit_code == 0, res.output
    (report,) = reports_in(out).values()
    tile, precision = pipeline.scene.run_settings(100, None)
    assert tile < 100 and tile % int(pipeline.scene.net.multiple) == 0  # rounded, not as asked
    scene = report["scene"]
    assert {k: scene[k] for k in ("tile", "precision", "fp32_retries")} == {
        "tile": tile,
        "precision": precision,
        "fp32_retries": 0,
    }
    assert scene["fallback"] == [] and scene["check"]["residual"] < scene["check"]["limit"]
    assert report["settings"]["tile"] == 100  # what was asked stays in the resume key
    auto = tmp_path / "auto"
    assert runner.invoke(app, ["restore", str(small_face_photo), "--out", str(auto)]).exit_code == 0
    (report,) = reports_in(auto).values()
    assert report["settings"]["tile"] is None
    assert report["scene"]["tile"] == pipeline.scene.run_settings(None, None)[0] >= 64


def test_config_file_and_env_set_the_face_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    config = tmp_path / "f2s.yaml"
    config.write_text(
        yaml.safe_dump({"refs_k": 2, "restore": {"refs": str(refs), "identity": "dlib"}})
    )
    monkeypatch.setenv("F2S_MIN_FACE", "33")
    res = runner.invoke(app, ["restore", "x.jpg", "--config", str(config), "--print-config"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.stdout)
    assert (shown["refs"], shown["refs_k"], shown["identity"]) == (str(refs), 2, "dlib")
    assert shown["min_face"] == 33
    assert set(shown) >= {f.name for f in dataclasses.fields(RestoreConfig)}
    res = runner.invoke(app, ["faces", "x.jpg", "--config", str(config), "--print-config"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.stdout)
    assert set(shown) == {f.name for f in dataclasses.fields(FacesConfig)}
    assert (shown["refs_k"], shown["min_face"], shown["refs"]) == (2, 33, None)  # no faces section


def test_refs_from_a_config_file_must_be_a_folder(tmp_path: Path) -> None:
    config = tmp_path / "f2s.yaml"
    config.write_text(yaml.safe_dump({"refs": str(tmp_path / "missing")}))
    res = runner.invoke(app, ["restore", "x.jpg", "--config", str(config), "--print-config"])
    assert res.exit_code == 2
    assert "is not a folder" in res.output


def test_faces_command_runs_from_its_settings(small_face_photo: Path) -> None:
    res = runner.invoke(app, ["faces", str(small_face_photo), "--detector", "mtcnn", "--json"])
    assert res.exit_code == 0, res.output
    assert np.isfinite(yaml.safe_load(res.stdout)["images"][0]["faces"][0]["score"])


def test_cpu_precision_is_bf16_only_where_the_model_and_the_cpu_allow_it(
    pipeline: Face2ScenePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = pipeline.scene
    assert scene.settings.cpu_bf16  # the shipped model's VAL table was measured unchanged in bf16
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert cpu_has_native_bf16() is native
        assert scene.run_settings(None, None)[1] == ("bf16" if native else "fp32")
        assert resolve_precision(None, cpu, cpu_bf16=False) == "fp32"  # e.g. Real-ESRGAN
        assert scene.run_settings(None, "fp32")[1] == "fp32"  # --precision wins
        assert resolve_precision(None, torch.device("mps"), cpu_bf16=True) == "fp32"
