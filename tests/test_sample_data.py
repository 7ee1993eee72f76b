"""face2scene_cli.research.sample_data: manifests, package photos, cache verification, f2s data."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.errors import ExitCode, F2SError
from face2scene_cli.research import sample_data as sd

runner = CliRunner()

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _fake_entries(count: int = 3) -> tuple[sd.DebianPhoto, ...]:
    """Synthetic manifest entries for package ``f2s-fake`` whose hashes match known bytes."""
    return tuple(
        sd.DebianPhoto(
            name=f"fake/p{i}",
            package="f2s-fake",
            path=f"usr/share/f2s-fake/p{i}.jpg",
            sha256=hashlib.sha256(f"photo {i}".encode()).hexdigest(),
            people=i == 0,
        )
        for i in range(count)
    )


@pytest.fixture
def fake_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[sd.DebianPhoto, ...]:
    entries = _fake_entries()
    monkeypatch.setattr(sd, "DEBIAN_PHOTOS", entries)
    monkeypatch.setattr(sd, "DEBIAN_PACKAGES", {"f2s-fake": sd.DebianPackage("f2s-fake", "1.0-1")})
    return entries


def _write_cache(dest: Path, entries: tuple[sd.DebianPhoto, ...]) -> None:
    for i, entry in enumerate(entries):
        path = dest / "debian" / entry.package / PurePosixPath(entry.path).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"photo {i}".encode())


# --------------------------------------------------------------------------- manifests


def test_manifest_names_unique_and_well_formed() -> None:
    names = [p.name for p in sd.PACKAGE_PHOTOS] + [p.name for p in sd.DEBIAN_PHOTOS]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z0-9_]+/[a-z0-9_]+", name), name


@pytest.mark.parametrize("entry", sd.DEBIAN_PHOTOS, ids=lambda e: e.name)
def test_debian_manifest_entry(entry: sd.DebianPhoto) -> None:
    assert SHA256.match(entry.sha256)
    path = PurePosixPath(entry.path)
    assert not path.is_absolute() and not entry.path.startswith("./")
    assert ".." not in path.parts
    assert path.suffix.lower() in {".jpg", ".png"}
    assert entry.package in sd.DEBIAN_PACKAGES


def test_debian_manifest_cache_names_unique() -> None:
    cache_names = [(e.package, e.cache_name) for e in sd.DEBIAN_PHOTOS]
    assert len(cache_names) == len(set(cache_names))
    hashes = [e.sha256 for e in sd.DEBIAN_PHOTOS]
    assert len(hashes) == len(set(hashes))
    assert {e.name for e in sd.DEBIAN_PHOTOS if e.people} >= {"opencv/messi5"}


def test_package_tiers() -> None:
    """`f2s data fetch` (make testdata) fetches only what the tests need; the rest is train."""
    tiers = {name: pkg.tier for name, pkg in sd.DEBIAN_PACKAGES.items()}
    assert set(tiers.values()) <= set(sd.TIERS)
    assert {n for n, t in tiers.items() if t == "test"} == {
        "mate-backgrounds",
        "opencv-doc",
        "lomiri-wallpapers-16.04",
    }
    assert all(name == pkg.name for name, pkg in sd.DEBIAN_PACKAGES.items())
    assert "make traindata" in sd.fetch_hint("plasma-workspace-wallpapers")
    assert "make testdata" in sd.fetch_hint("opencv-doc")


def test_debian_manifest_matches_the_split_manifest() -> None:
    """Every Debian photo is in data/splits.yaml with the same sha256; wallpaper photos carry
    their licence; train-tier photos are never TEST photos (make eval needs only testdata)."""
    import yaml

    splits = Path(__file__).resolve().parent.parent / "data" / "splits.yaml"
    manifest = {e["name"]: e for e in yaml.safe_load(splits.read_text(encoding="utf-8"))["photos"]}
    for entry in sd.DEBIAN_PHOTOS:
        e = manifest.get(entry.name)
        assert e is not None, f"{entry.name} is not in data/splits.yaml"
        assert e["sha256"] == entry.sha256, entry.name
        assert e["source"] == f"debian:{entry.package}", entry.name
        assert e["file"] == entry.cache_name, entry.name
        assert bool(e["people"]) == entry.people, entry.name
        if "wallpapers" in entry.package:
            assert e.get("licence"), f"{entry.name}: no licence"
        if sd.DEBIAN_PACKAGES[entry.package].tier == "train":
            assert e["split"] in {"train", "val"}, entry.name


def test_fetch_leaves_out_train_packages_unless_all(
    fake_manifest: tuple[sd.DebianPhoto, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = sd.DebianPhoto(
        "fakex/t0", "f2s-fake-train", "usr/share/t0.jpg", hashlib.sha256(b"train 0").hexdigest()
    )
    monkeypatch.setattr(sd, "DEBIAN_PHOTOS", (*fake_manifest, extra))
    monkeypatch.setitem(
        sd.DEBIAN_PACKAGES, "f2s-fake-train", sd.DebianPackage("f2s-fake-train", "1", "train")
    )
    _write_cache(tmp_path, fake_manifest)
    downloaded: list[str] = []

    def fake_download(pkg: sd.DebianPackage, workdir: Path) -> Path:
        downloaded.append(pkg.name)
        raise sd.SampleDataError(f"no network for {pkg.name}")

    monkeypatch.setattr(sd, "_apt_download", fake_download)
    monkeypatch.setattr(sd, "_require_tools", lambda: None)
    # without --all: the test tier is complete, nothing is downloaded
    photos = sd.fetch_debian_photos(tmp_path)
    assert [p.name for p in photos] == [e.name for e in fake_manifest] and not downloaded
    assert sd.check_debian_photos(tmp_path).complete
    assert sd.check_debian_photos(tmp_path, include_train=True).missing == ["fakex/t0"]
    res = runner.invoke(app, ["data", "fetch", "--dest", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert not downloaded
    # with --all: the train package is fetched too
    res = runner.invoke(app, ["data", "fetch", "--all", "--dest", str(tmp_path)])
    assert res.exit_code != 0 and downloaded == ["f2s-fake-train"]
    assert "no network for f2s-fake-train" in res.stderr
    # a cached train photo is used once it is there
    (tmp_path / "debian" / "f2s-fake-train").mkdir(parents=True)
    (tmp_path / "debian" / "f2s-fake-train" / "t0.jpg").write_bytes(b"train 0")
    assert [p.name for p in sd.debian_photos(tmp_path)][-1] == "fakex/t0"
    assert len(sd.fetch_debian_photos(tmp_path, include_train=True)) == 4


def test_load_splits_names_the_package_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A train photo whose package was not fetched is skipped with a clear warning."""
    from face2scene_cli.research.splits import load_splits

    monkeypatch.setenv("F2S_DATA_DIR", str(tmp_path))  # empty cache: nothing Debian fetched
    splits = Path(__file__).resolve().parent.parent / "data" / "splits.yaml"
    with caplog.at_level("WARNING", logger="face2scene_cli.research.splits"):
        out = load_splits(splits, verify=False)
    assert not any(p.source.startswith("debian:") for ps in out.values() for p in ps)
    text = caplog.text
    assert "plasma-workspace-wallpapers" in text and "make traindata" in text
    assert "opencv-doc" in text and "make testdata" in text


def test_package_manifest_paths_relative() -> None:
    for entry in sd.PACKAGE_PHOTOS:
        path = PurePosixPath(entry.relpath)
        assert not path.is_absolute() and ".." not in path.parts, entry
        assert "." not in entry.module and "/" not in entry.module


# --------------------------------------------------------------------------- package photos


def test_package_photos_exist_and_decode() -> None:
    photos = sd.package_photos()
    names = {p.name for p in photos}
    assert {"insightface/t1", "insightface/tom_hanks"} <= names
    for photo in photos:
        assert photo.path.is_file(), photo
        assert photo.source.startswith("pypi:")
        assert photo.sha256 is None
        with Image.open(photo.path) as im:
            im.load()
            assert min(im.size) >= 100, (photo.name, im.size)
    people = {p.name for p in photos if p.people}
    assert "insightface/t1" in people


def test_package_photos_do_not_import_their_packages() -> None:
    code = (
        "import sys; import face2scene_cli.research.sample_data as s; assert s.package_photos(); "
        "s.lfw_subset_path(); "
        "heavy = {'skimage', 'insightface', 'sklearn', 'torch', 'cv2', 'numpy'} & set(sys.modules)"
        "; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="needs scikit-image")
def test_skimage_photos_and_lfw_subset() -> None:
    names = {p.name for p in sd.package_photos()}
    assert {"skimage/astronaut", "skimage/camera", "skimage/coffee"} <= names
    path = sd.lfw_subset_path()
    assert path is not None
    import numpy as np

    faces = np.load(path)
    assert faces.shape == (200, 25, 25)


def test_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("F2S_DATA_DIR", str(tmp_path))
    assert sd.data_dir() == tmp_path
    monkeypatch.setenv("F2S_DATA_DIR", "")
    assert sd.data_dir() == Path.home() / ".cache" / "face2scene" / "data"
    monkeypatch.delenv("F2S_DATA_DIR")
    assert sd.data_dir() == Path.home() / ".cache" / "face2scene" / "data"


# --------------------------------------------------------------------------- Debian cache


def test_cache_verification_synthetic(
    fake_manifest: tuple[sd.DebianPhoto, ...], tmp_path: Path
) -> None:
    _write_cache(tmp_path, fake_manifest)
    (tmp_path / "debian" / "f2s-fake" / "p1.jpg").write_bytes(b"photo X")  # corrupt
    (tmp_path / "debian" / "f2s-fake" / "p2.jpg").unlink()  # missing
    report = sd.check_debian_photos(tmp_path)
    assert [p.name for p in report.ok] == ["fake/p0"]
    assert report.corrupt == ["fake/p1"]
    assert report.missing == ["fake/p2"]
    assert not report.complete
    (ok,) = sd.debian_photos(tmp_path)
    assert ok == sd.Photo(
        "fake/p0",
        tmp_path / "debian" / "f2s-fake" / "p0.jpg",
        "debian:f2s-fake",
        True,
        fake_manifest[0].sha256,
    )


def test_cache_verification_real_files(photos: list[sd.Photo], tmp_path: Path) -> None:
    cached = [p for p in photos if p.source.startswith("debian:")]
    intact, broken = cached[0], cached[-1]
    for photo in (intact, broken):
        package = photo.source.removeprefix("debian:")
        dst = tmp_path / "debian" / package / photo.path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo.path, dst)
        if photo is broken:
            data = bytearray(dst.read_bytes())
            data[len(data) // 2] ^= 0x01
            dst.write_bytes(bytes(data))
    report = sd.check_debian_photos(tmp_path)
    assert [p.name for p in report.ok] == [intact.name]
    assert report.corrupt == [broken.name]
    test_tier = [e for e in sd.DEBIAN_PHOTOS if sd.DEBIAN_PACKAGES[e.package].tier == "test"]
    assert len(report.missing) == len(test_tier) - 2
    assert [p.name for p in sd.debian_photos(tmp_path)] == [intact.name]


def test_fetch_is_a_noop_when_cache_complete(
    fake_manifest: tuple[sd.DebianPhoto, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_cache(tmp_path, fake_manifest)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("no download expected")

    monkeypatch.setattr(sd, "_apt_download", boom)
    monkeypatch.setattr(sd.shutil, "which", boom)
    photos = sd.fetch_debian_photos(tmp_path)
    assert [p.name for p in photos] == [e.name for e in fake_manifest]


def test_fetch_without_apt_is_a_clear_error(
    fake_manifest: tuple[sd.DebianPhoto, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sd.shutil, "which", lambda _name: None)
    with pytest.raises(sd.SampleDataUnavailableError, match="apt-get") as info:
        sd.fetch_debian_photos(tmp_path)
    assert isinstance(info.value, sd.SampleDataError)
    assert isinstance(info.value, F2SError)
    assert info.value.exit_code == ExitCode.NOT_AVAILABLE


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_fetch_extracts_and_verifies_from_a_deb(
    fake_manifest: tuple[sd.DebianPhoto, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline: build a tiny .deb, let 'apt-get download' return it, check extraction."""
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: f2s-fake\nVersion: 2.0-1\nArchitecture: all\n"
        "Maintainer: f2s <f2s@example.invalid>\nDescription: test\n"
    )
    photo_dir = tree / "usr" / "share" / "f2s-fake"
    photo_dir.mkdir(parents=True)
    (photo_dir / "p0.jpg").write_bytes(b"photo 0")
    (photo_dir / "p1.jpg").write_bytes(b"photo 1, but another version")
    (photo_dir / "p2.jpg").write_bytes(b"photo 2")
    (photo_dir / "unlisted.jpg").write_bytes(b"not in the manifest")
    deb = tmp_path / "f2s-fake_2.0-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )

    def fake_download(pkg: sd.DebianPackage, workdir: Path) -> Path:
        return Path(shutil.copy(deb, workdir))

    monkeypatch.setattr(sd, "_apt_download", fake_download)
    monkeypatch.setattr(sd, "_require_tools", lambda: None)
    dest = tmp_path / "data"
    with pytest.raises(sd.SampleDataError) as info:
        sd.fetch_debian_photos(dest)
    msg = str(info.value)
    assert "fake/p1" in msg and "f2s-fake 2.0-1 gave" in msg and "pinned from f2s-fake 1.0-1" in msg
    cached = sorted(p.name for p in (dest / "debian" / "f2s-fake").iterdir())
    assert cached == ["p0.jpg", "p2.jpg"]  # only listed files that verified
    report = sd.check_debian_photos(dest)
    assert report.missing == ["fake/p1"] and not report.corrupt

    # The next version fixes p1: only the missing photo is fetched, the rest is kept.
    (photo_dir / "p1.jpg").write_bytes(b"photo 1")
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    photos = sd.fetch_debian_photos(dest)
    assert [p.name for p in photos] == ["fake/p0", "fake/p1", "fake/p2"]


# --------------------------------------------------------------------------- CLI


def test_cli_list_and_dir(fake_manifest: tuple[sd.DebianPhoto, ...], tmp_path: Path) -> None:
    _write_cache(tmp_path, fake_manifest[:1])
    res = runner.invoke(app, ["data", "list", "--dest", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "insightface/t1" in res.stdout and "1280x886" in res.stdout
    assert "fake/p0" in res.stdout and "debian:f2s-fake" in res.stdout
    assert "2 Debian photos missing" in res.stderr
    res = runner.invoke(app, ["data", "dir", "--dest", str(tmp_path)])
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path)


def test_cli_fetch_failure_exits_nonzero(
    fake_manifest: tuple[sd.DebianPhoto, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sd.shutil, "which", lambda _name: None)
    for ci, note in (("true", False), ("", True)):
        monkeypatch.setenv("CI", ci)
        res = runner.invoke(app, ["data", "fetch", "--dest", str(tmp_path)])
        assert res.exit_code == ExitCode.NOT_AVAILABLE
        assert "error: Debian photos need apt-get" in res.stderr
        assert ("tests that need them are skipped" in res.stderr) == note


def test_f2s_data_in_a_fresh_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "face2scene_cli", "data", "list", "--dest", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "insightface/t1" in proc.stdout


# --------------------------------------------------------------------------- fixtures


def test_small_photo_dir(small_photo_dir: Path) -> None:
    files = sorted(p for p in small_photo_dir.rglob("*") if p.is_file())
    assert 3 <= len(files) <= 6
    assert any(p.parent != small_photo_dir for p in files)
    formats = set()
    for path in files:
        with Image.open(path) as im:
            im.load()
            formats.add(im.format)
            assert max(im.size) <= 256
            assert {".jpg": "JPEG", ".png": "PNG"}[path.suffix.lower()] == im.format
    assert formats == {"JPEG", "PNG"}


def test_people_photo(people_photo: Path, package_photo_paths: list[Path]) -> None:
    assert people_photo in package_photo_paths
    with Image.open(people_photo) as im:
        assert im.size == (1280, 886)


def test_photos_fixture(photos: list[sd.Photo]) -> None:
    assert len({p.name for p in photos}) == len(photos)
    debian = [p for p in photos if p.source.startswith("debian:")]
    test_tier = [e for e in sd.DEBIAN_PHOTOS if sd.DEBIAN_PACKAGES[e.package].tier == "test"]
    assert len(debian) == len(test_tier)
    assert all(p.sha256 and p.path.is_file() for p in debian)


# --------------------------------------------------------------------------- network


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (Debian/Ubuntu)")
def test_real_fetch(tmp_path: Path) -> None:
    photos = sd.fetch_debian_photos(tmp_path)
    test_tier = [e for e in sd.DEBIAN_PHOTOS if sd.DEBIAN_PACKAGES[e.package].tier == "test"]
    assert [p.name for p in photos] == [e.name for e in test_tier]
    assert sd.check_debian_photos(tmp_path).complete
    for photo in photos:
        with Image.open(photo.path) as im:
            assert min(im.size) >= 100
    again = sd.fetch_debian_photos(tmp_path)  # idempotent, no download
    assert again == photos


def test_dataclasses_frozen() -> None:
    photo = sd.package_photos()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        photo.name = "x"  # type: ignore[misc]
