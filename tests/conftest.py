"""Shared fixtures: real photos from installed wheels and from the Debian photo cache.

Nothing here downloads: the Debian photos come from ``make testdata``
(``f2s data fetch``), cached under ``$F2S_DATA_DIR``.
Missing data skips a test locally and fails it in CI (``CI=true``): CI never skips silently.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import missing_data
from PIL import Image

from face2scene_cli.research import sample_data
from face2scene_cli.research.sample_data import Photo

SMALL_PHOTO_MAX_SIDE = 256
SMALL_PHOTO_COUNT = 6
# Preferred picks for small_photo_dir (JPEG and PNG, people and scenes); the last one
# chosen goes into a subfolder. Other available photos fill in when some are absent.
_SMALL_PHOTO_NAMES = (
    "insightface/t1",
    "skimage/astronaut",
    "skimage/coffee",
    "skimage/camera",
    "insightface/tom_hanks",
    "skimage/rocket",
)


@pytest.fixture(scope="session")
def photos() -> list[Photo]:
    """Every real photo: package photos + the cached, verified Debian photos (no fetching)."""
    report = sample_data.check_debian_photos()
    if not report.complete:
        missing_data(
            f"{len(report.missing)} Debian photos missing and {len(report.corrupt)} corrupt "
            f"in {sample_data.data_dir()}: run `make testdata` "
            f"(f2s data fetch)"
        )
    return sample_data.package_photos() + report.ok


@pytest.fixture(scope="session")
def package_photo_paths() -> list[Path]:
    """Paths of the photos shipped inside installed wheels (scikit-image, insightface, ...)."""
    paths = [p.path for p in sample_data.package_photos()]
    if not paths:
        missing_data("no package-shipped photos found: is insightface installed?")
    return paths


@pytest.fixture(scope="session")
def people_photo() -> Path:
    """insightface's ``t1.jpg``: a 1280x886 group photo with 6 frontal faces."""
    for p in sample_data.package_photos():
        if p.name == "insightface/t1":
            return p.path
    missing_data("insightface/t1 not found: is insightface installed?")


def _pick_small_photos() -> list[Photo]:
    by_name = {p.name: p for p in sample_data.package_photos() + sample_data.debian_photos()}
    chosen = [by_name.pop(n) for n in _SMALL_PHOTO_NAMES if n in by_name]
    chosen += list(by_name.values())[: max(0, SMALL_PHOTO_COUNT - len(chosen))]
    return chosen[:SMALL_PHOTO_COUNT]


@pytest.fixture(scope="session")
def _small_photo_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = _pick_small_photos()
    if len(chosen) < 3:
        missing_data(f"only {len(chosen)} real photos available for small_photo_dir")
    root = tmp_path_factory.mktemp("small_photos")
    used: set[str] = set()
    for i, photo in enumerate(chosen):
        basename = photo.path.name
        if basename in used:
            basename = f"{i}_{basename}"
        used.add(basename)
        folder = root / "sub" if i == len(chosen) - 1 else root
        folder.mkdir(exist_ok=True)
        with Image.open(photo.path) as im:
            fmt = im.format
            im.thumbnail((SMALL_PHOTO_MAX_SIDE, SMALL_PHOTO_MAX_SIDE), Image.Resampling.LANCZOS)
            extra = {"quality": 95} if fmt == "JPEG" else {}
            im.save(folder / basename, format=fmt, **extra)
    return root


@pytest.fixture
def small_photo_dir(_small_photo_master: Path, tmp_path: Path) -> Path:
    """A fresh folder of ~6 real photos (JPEG and PNG, one in ``sub/``), at most 256 px."""
    dest = tmp_path / "photos"
    shutil.copytree(_small_photo_master, dest)
    return dest
