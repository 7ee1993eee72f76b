"""The GPU-lease carry: photos copied by ``scripts/build_carry.py`` stand in for the photo
packages on the device (``scripts/device_train.py``), still verified by the split manifest."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

import face2scene_cli.research.splits as splits
from face2scene_cli.research.train.scene_config import load_scene_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import build_carry  # noqa: E402
import device_train  # noqa: E402


def test_carried_photos_verify_and_replace_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = splits.load_splits(REPO / "data" / "splits.yaml")["train"]
    entries = build_carry.copy_photos(tmp_path / "photos")
    assert [e["name"] for e in entries] == [p.name for p in here]
    assert (tmp_path / "photos" / "t1.jpg").is_file()
    monkeypatch.setattr(splits, "all_photos", splits.all_photos)  # restored after the test
    device_train.use_carried_photos(tmp_path)
    carried = splits.load_splits(REPO / "data" / "splits.yaml")  # verifies every sha256
    assert [p.name for p in carried["train"]] == [p.name for p in here]
    assert all(p.path.parent == tmp_path / "photos" for p in carried["train"])
    assert carried["val"] == [] and carried["test"] == []
    # a changed byte no longer verifies
    victim = tmp_path / "photos" / entries[0]["file"]
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(Exception, match="sha256"):
        splits.load_splits(REPO / "data" / "splits.yaml")


def test_runs_share_a_cache_only_with_equal_data() -> None:
    cfg = load_scene_config(REPO / "configs" / "scene-wide.yaml")
    other_net = dataclasses.replace(
        cfg, network=dataclasses.replace(cfg.network, overrides={"refine_channels": 0})
    )
    assert device_train.data_key(cfg) == device_train.data_key(other_net)
    other_data = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, samples=7))
    assert device_train.data_key(cfg) != device_train.data_key(other_data)
    moved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_from="/x"))
    assert device_train.data_key(cfg) == device_train.data_key(moved)


def test_shrink_leaves_the_dropped_files_behind_and_unshrink_restores_the_index(
    tmp_path: Path,
) -> None:
    for rel, size in {"models/big/w.bin": 4000, "keep.txt": 10, "res/a/grid.png": 3000}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * size)
    build_carry._git(tmp_path, "init", "-q")
    build_carry._git(tmp_path, "add", ".")
    build_carry._git(
        tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"
    )
    exclude = tmp_path / ".git" / "info" / "exclude"
    before = exclude.read_text()
    assert build_carry.working_tree_bytes(tmp_path) == 7010

    dropped = build_carry.shrink(tmp_path, ("models/big", "res/*/grid*.png"))
    assert sorted(dropped) == ["models/big/w.bin", "res/a/grid.png"]
    assert build_carry.working_tree_bytes(tmp_path) == 10  # what the device tool would send
    assert (tmp_path / "models/big/w.bin").stat().st_size == 4000  # the files stay on disk
    with pytest.raises(SystemExit, match="unshrink"):
        build_carry.shrink(tmp_path, ("keep.txt",))

    assert sorted(build_carry.unshrink(tmp_path)) == ["models/big/w.bin", "res/a/grid.png"]
    assert build_carry.working_tree_bytes(tmp_path) == 7010
    assert build_carry._git(tmp_path, "status", "--porcelain") == ""
    assert exclude.read_text() == before
