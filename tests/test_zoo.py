"""Zoo integrity: every file a model loads is pinned, weights load strictly, verify needs a zoo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from face2scene_cli.archs.fadex import fadex_tiny
from face2scene_cli.archs.mapnet import mapnet_tiny
from face2scene_cli.archs.scene_net import scene_tiny
from face2scene_cli.cli.app import app
from face2scene_cli.errors import ExitCode, ModelIntegrityError
from face2scene_cli.faces.backends.mtcnn import MTCNNDetector
from face2scene_cli.restorers.loading import load_fadex
from face2scene_cli.restorers.scene import RestoreSettings, SceneRestorer, load_scene_restorer
from face2scene_cli.zoo import (
    METADATA_NAME,
    models_dir,
    read_model_info,
    require_model,
    write_metadata,
)

runner = CliRunner()
NET_CONFIG = "net/config.json"
_META = {
    "version": "0",
    "task": "test",
    "licence": "Apache-2.0",
    "source": "made by the test",
    "input": {},
    "trained_with": {},
}


@pytest.fixture
def zoo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped zoo, copied and pointed at by F2S_MODELS_DIR."""
    zoo = tmp_path / "zoo"
    shutil.copytree(models_dir(), zoo)
    monkeypatch.setenv("F2S_MODELS_DIR", str(zoo))
    return zoo


def _flip_refine_film(zoo: Path) -> None:
    path = zoo / "scene-embedded" / NET_CONFIG
    text = path.read_text(encoding="utf-8")
    assert text.count('"refine_film": true') == 1
    path.write_text(text.replace('"refine_film": true', '"refine_film": false'), encoding="utf-8")


def _problems(verify_json: str, name: str) -> list[str]:
    return next(m for m in json.loads(verify_json)["models"] if m["name"] == name)["problems"]


def test_shipped_zoo_verifies_and_pins_every_loadable_file() -> None:
    res = runner.invoke(app, ["models", "verify", "--json"])
    assert res.exit_code == 0, res.output
    for model in json.loads(res.output)["models"]:
        assert model["verified"] is True, model
        folder = models_dir() / model["name"]
        pinned = {f["path"] for f in model["files"]}
        on_disk = {
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.name not in (METADATA_NAME, "README.md")
        }
        assert on_disk <= pinned, (model["name"], sorted(on_disk - pinned))


def test_edited_scene_config_is_refused_by_verify_load_and_restore(
    zoo_copy: Path, tmp_path: Path
) -> None:
    _flip_refine_film(zoo_copy)
    res = runner.invoke(app, ["models", "verify", "--json"])
    assert res.exit_code == ExitCode.MODEL_INTEGRITY
    (problem,) = _problems(res.stdout, "scene-embedded")
    assert problem.startswith(f"{NET_CONFIG}: ")
    with pytest.raises(ModelIntegrityError, match=NET_CONFIG):
        load_scene_restorer("scene-embedded")

    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    res = runner.invoke(app, ["restore", str(photo), "--out", str(tmp_path / "out")])
    assert res.exit_code == ExitCode.MODEL_INTEGRITY, res.output
    assert NET_CONFIG in res.output
    assert not list((tmp_path / "out").glob("photo*"))


def test_a_file_edited_after_verification_is_refused(zoo_copy: Path) -> None:
    """Loaders re-check each file's sha256 on the bytes they read, not only at require_model."""
    info = require_model("scene-embedded")
    _flip_refine_film(zoo_copy)
    with pytest.raises(ModelIntegrityError, match=r"net/config\.json: sha256"):
        SceneRestorer.from_pretrained(info.folder, files=info.files_reader())
    with pytest.raises(ModelIntegrityError, match=r"net/config\.json: sha256"):
        SceneRestorer.from_pretrained(info.folder)  # a folder with a metadata.json: pinned


def test_unpinned_config_is_refused(zoo_copy: Path) -> None:
    """A metadata.json that does not pin a config the loader reads (the old scene-embedded)."""
    meta_path = zoo_copy / "scene-embedded" / METADATA_NAME
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["files"].pop("mapnet/config.json", None)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    res = runner.invoke(app, ["models", "verify", "--json"])
    assert res.exit_code == ExitCode.MODEL_INTEGRITY
    assert _problems(res.stdout, "scene-embedded") == [
        "mapnet/config.json: not pinned in metadata.json"
    ]
    with pytest.raises(ModelIntegrityError, match=r"mapnet/config\.json"):
        load_scene_restorer("scene-embedded")


@pytest.mark.parametrize("zoo", ["/nonexistent/f2s-zoo", "empty"])
def test_verify_fails_without_a_zoo(
    zoo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if zoo == "empty":
        zoo = str(tmp_path / "empty")
        Path(zoo).mkdir()
    monkeypatch.setenv("F2S_MODELS_DIR", zoo)
    res = runner.invoke(app, ["models", "verify"])
    assert res.exit_code == ExitCode.MODEL_INTEGRITY, res.output
    assert zoo in res.output.replace("\n", "")
    res = runner.invoke(app, ["models", "verify", "--json"])
    assert res.exit_code == ExitCode.MODEL_INTEGRITY
    assert json.loads(res.stdout)["problems"]


# ------------------------------------------------------------------------------------------
# state dicts that do not fit their network


def _tamper(path: Path, how: str) -> None:
    state = load_file(str(path))
    if how == "extra":
        state["not_a_layer.weight"] = torch.zeros(2)
    elif how == "missing":
        state.pop(sorted(state)[-1])
    else:  # a tensor of another shape
        key = next(k for k, v in sorted(state.items()) if v.ndim >= 1)
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    save_file(state, str(path), metadata={"format": "pt"})


def _pin(folder: Path, name: str) -> None:
    files = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (METADATA_NAME, "README.md")
    ]
    (folder / "README.md").write_text(f"# {name}\n", encoding="utf-8")
    write_metadata(folder, {"name": name, **_META}, files)
    assert read_model_info(folder).files  # a well-formed, self-consistent zoo entry


HOWS = ["extra", "missing", "shape"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("part", ["net", "mapnet"])
def test_scene_weights_that_do_not_fit_are_refused(tmp_path: Path, part: str, how: str) -> None:
    folder = tmp_path / "scene-tiny"
    torch.manual_seed(0)
    restorer = SceneRestorer(
        scene_tiny(), RestoreSettings(fadex="fadex-tiny"), mapnet_tiny(cross_attention_dim=16)
    )
    restorer.save_pretrained(folder)
    _pin(folder, "scene-tiny")
    load_scene_restorer("scene-tiny", root=tmp_path)  # loads as saved
    weights = f"{part}/diffusion_pytorch_model.safetensors"
    _tamper(folder / weights, how)
    _pin(folder, "scene-tiny")
    with pytest.raises(ModelIntegrityError, match=weights):
        load_scene_restorer("scene-tiny", root=tmp_path)


@pytest.mark.parametrize("how", HOWS)
def test_fadex_weights_that_do_not_fit_are_refused(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "fadex-tiny"
    fadex_tiny().save_pretrained(str(folder), safe_serialization=True)
    _pin(folder, "fadex-tiny")
    load_fadex("fadex-tiny", root=tmp_path)
    _tamper(folder / "diffusion_pytorch_model.safetensors", how)
    _pin(folder, "fadex-tiny")
    with pytest.raises(ModelIntegrityError, match=r"diffusion_pytorch_model\.safetensors"):
        load_fadex("fadex-tiny", root=tmp_path)


@pytest.mark.parametrize("how", HOWS)
def test_mtcnn_weights_that_do_not_fit_are_refused(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "mtcnn"
    shutil.copytree(models_dir() / "mtcnn", folder)
    _tamper(folder / "onet.safetensors", how)
    meta = json.loads((folder / METADATA_NAME).read_text(encoding="utf-8"))
    write_metadata(folder, meta, list(meta["files"]))
    with pytest.raises(ModelIntegrityError, match=r"onet\.safetensors"):
        MTCNNDetector(models_root=tmp_path)


def test_fadex_config_with_unknown_key_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "fadex-tiny"
    fadex_tiny().save_pretrained(str(folder), safe_serialization=True)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg["chanels"] = [8, 12, 16]  # a typo: would be ignored with a warning
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    _pin(folder, "fadex-tiny")
    with pytest.raises(ModelIntegrityError, match="chanels"):
        load_fadex("fadex-tiny", root=tmp_path)
