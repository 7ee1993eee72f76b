"""``f2s faces`` on real photos: listing, matching against a gallery, crops, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.research.sample_data import package_photos

runner = CliRunner()


def _photo(name: str) -> Path:
    return next(p.path for p in package_photos() if p.name == name)


@pytest.fixture
def gallery_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Photos: astronaut + the t1 group; refs: a mirrored, resized astronaut and a mirrored
    crop of one t1 face (self-derived references: an optimistic setting)."""
    monkeypatch.setenv("F2S_CACHE_DIR", str(tmp_path / "cache"))
    photos, refs = tmp_path / "photos", tmp_path / "refs"
    (refs / "eileen").mkdir(parents=True)
    (refs / "man").mkdir()
    photos.mkdir()
    astro = Image.open(_photo("skimage/astronaut")).convert("RGB")
    group = Image.open(_photo("insightface/t1")).convert("RGB")
    ImageOps.mirror(astro).resize((400, 400)).save(refs / "eileen" / "flip.png")
    ImageOps.mirror(group.crop((200, 80, 450, 340))).save(refs / "man" / "crop.jpg")
    astro.save(photos / "astronaut.png")
    group.save(photos / "t1.jpg")
    Image.open(_photo("skimage/coffee")).save(photos / "coffee.png")
    return photos, refs


def test_faces_json_matches_gallery(gallery_case: tuple[Path, Path], tmp_path: Path) -> None:
    photos, refs = gallery_case
    crops = tmp_path / "crops"
    res = runner.invoke(
        app, ["faces", str(photos), "--refs", str(refs), "--json", "--save-crops", str(crops)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    by_name = {Path(e["input"]).name: e for e in data["images"]}
    assert [f["person"] for f in by_name["astronaut.png"]["faces"]] == ["eileen"]
    assert by_name["astronaut.png"]["faces"][0]["references"] == ["eileen/flip.png"]
    t1_people = [f["person"] for f in by_name["t1.jpg"]["faces"]]
    assert len(t1_people) == 6
    assert t1_people.count("man") == 1 and t1_people.count(None) == 5
    assert "eileen" not in t1_people
    assert by_name["coffee.png"]["faces"] == []
    assert data["gallery"]["people"] == {"eileen": 1, "man": 1}
    assert len(list(crops.glob("t1_face*.png"))) == 6
    with Image.open(crops / "astronaut_face0.png") as im:
        assert im.size == (512, 512)


def test_faces_without_any_face_exits_5(tmp_path: Path) -> None:
    Image.open(_photo("skimage/coffee")).save(tmp_path / "coffee.png")
    res = runner.invoke(app, ["faces", str(tmp_path / "coffee.png")])
    assert res.exit_code == 5
    assert "no face" in res.output


def test_faces_min_face_filters_small_faces(tmp_path: Path) -> None:
    small = Image.open(_photo("skimage/astronaut")).resize((128, 128))
    small.save(tmp_path / "small.png")  # the face is ~25 px wide now
    res = runner.invoke(app, ["faces", str(tmp_path / "small.png"), "--json", "--min-face", "60"])
    assert res.exit_code == 5
    res = runner.invoke(app, ["faces", str(tmp_path / "small.png"), "--json", "--min-face", "12"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["images"][0]["faces"]) == 1
