"""``f2s data``: the real photos behind tests, training and evaluation, from the one CLI."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.hashing import file_sha256
from face2scene_cli.research.sample_data import data_dir

runner = CliRunner()
SPLITS = Path(__file__).resolve().parent.parent / "data" / "splits.yaml"


def test_export_copies_the_split_verified(tmp_path: Path) -> None:
    manifest = yaml.safe_load(SPLITS.read_text(encoding="utf-8"))["photos"]
    val = {e["sha256"] for e in manifest if e["split"] == "val"}
    res = runner.invoke(app, ["data", "export", "val", str(tmp_path), "--splits", str(SPLITS)])
    assert res.exit_code == 0, res.output
    copied = sorted(tmp_path.iterdir())
    assert len(copied) == len(val) >= 2
    assert {file_sha256(p) for p in copied} == val


def test_export_refuses_an_unknown_split(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "export", "test", str(tmp_path), "--splits", str(SPLITS)])
    assert res.exit_code == 2
    assert "split must be train or val" in res.output


def test_dir_and_list() -> None:
    res = runner.invoke(app, ["data", "dir"])
    assert res.exit_code == 0 and res.stdout.strip() == str(data_dir())
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["name", "source", "WxH", "size", "people"]
    assert any(line.startswith("skimage/astronaut") and "512x512" in line for line in lines)
