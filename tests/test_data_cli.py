"""``f2s data``: the real photos behind tests, training and evaluation, from the one CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.hashing import file_sha256
from face2scene_cli.research import sample_data as sd
from face2scene_cli.research.sample_data import data_dir

runner = CliRunner()
SPLITS = Path(__file__).resolve().parent.parent / "data" / "splits.yaml"


@pytest.mark.parametrize("split", ["val", "test"])
def test_export_copies_the_split_verified(split: str, tmp_path: Path) -> None:
    manifest = yaml.safe_load(SPLITS.read_text(encoding="utf-8"))["photos"]
    # photos of train-only packages count when `make traindata` fetched them
    cached = {p.name for p in sd.debian_photos()}
    train_tier = {f"debian:{n}" for n, pkg in sd.DEBIAN_PACKAGES.items() if pkg.tier == "train"}
    wanted = {
        e["sha256"]
        for e in manifest
        if e["split"] == split and (e["source"] not in train_tier or e["name"] in cached)
    }
    res = runner.invoke(app, ["data", "export", split, str(tmp_path), "--splits", str(SPLITS)])
    assert res.exit_code == 0, res.output
    copied = sorted(tmp_path.iterdir())
    assert len(copied) == len(wanted) >= 2
    assert {file_sha256(p) for p in copied} == wanted


def test_splits_are_disjoint_whole_photos_with_people_in_test() -> None:
    manifest = yaml.safe_load(SPLITS.read_text(encoding="utf-8"))["photos"]
    names = [e["name"] for e in manifest]
    digests = [e["sha256"] for e in manifest]
    assert len(set(names)) == len(names) and len(set(digests)) == len(digests)
    assert {e["split"] for e in manifest} == {"train", "val", "test"}
    assert sum(e["people"] for e in manifest if e["split"] == "test") >= 2
    # photos added after the licence rule carry their licence
    assert all(e.get("licence") for e in manifest if "wallpapers" in e["source"])


def test_export_refuses_an_unknown_split(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "export", "holdout", str(tmp_path), "--splits", str(SPLITS)])
    assert res.exit_code == 2
    assert "split must be train, val or test" in res.output


def test_dir_and_list() -> None:
    res = runner.invoke(app, ["data", "dir"])
    assert res.exit_code == 0 and res.stdout.strip() == str(data_dir())
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["name", "source", "WxH", "size", "people"]
    assert any(line.startswith("skimage/astronaut") and "512x512" in line for line in lines)
