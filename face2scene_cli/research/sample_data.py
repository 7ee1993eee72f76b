"""Where the real photos used by tests, ``make demo``, ``make bench`` and training come from.

Two kinds of source, both allowed by ``data/ASSETS.md`` (package registries only):

* photos shipped inside installed Python wheels (scikit-image, insightface, scikit-learn),
  located on disk without importing those packages;
* photos inside Debian packages, fetched with ``apt-get download`` into a temporary
  folder, pinned by sha256 in :data:`DEBIAN_PHOTOS` and cached under :func:`data_dir`
  (``$F2S_DATA_DIR``, default ``~/.cache/face2scene/data``) as
  ``debian/<package>/<cache_name>``.

Each Debian package has a tier (:attr:`DebianPackage.tier`). ``"test"`` packages
(``mate-backgrounds``, ``opencv-doc``, ``lomiri-wallpapers-16.04``) hold the photos the
tests, ``make demo``, ``make bench`` and ``make eval`` need: ``f2s data fetch``
(``make testdata``) fetches only those. ``"train"`` packages (``plasma-workspace-wallpapers``,
``lomiri-wallpapers-20.04``) only add train and val photos: ``f2s data fetch --all``
(``make traindata``) fetches them too. A train photo whose package was not fetched is left
out of :func:`load_splits <face2scene_cli.research.splits.load_splits>` with a warning that
names the package and ``make traindata``.

Third-party photos are never committed to the repository; only their names and hashes are.

Command line: ``f2s data fetch [--all]`` (download + verify the Debian photos), ``f2s data list``
(name, source, WxH, size, people flag), ``f2s data dir`` (the data folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from face2scene_cli.errors import ExitCode, F2SError
from face2scene_cli.hashing import file_sha256

__all__ = [
    "DEBIAN_PACKAGES",
    "DEBIAN_PHOTOS",
    "PACKAGE_PHOTOS",
    "TIERS",
    "CacheReport",
    "DebianPackage",
    "DebianPhoto",
    "PackagePhoto",
    "Photo",
    "SampleDataError",
    "SampleDataUnavailableError",
    "all_photos",
    "check_debian_photos",
    "data_dir",
    "debian_photos",
    "fetch_debian_photos",
    "fetch_hint",
    "lfw_subset_path",
    "package_photos",
    "package_tier",
]

DATA_DIR_ENV = "F2S_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/face2scene/data")

_APT_TIMEOUT_S = 1800  # the largest package (plasma-workspace-wallpapers) is ~94 MB

#: Package tiers: "test" packages are fetched by ``f2s data fetch`` (``make testdata``),
#: "train" packages (train/val photos only) by ``f2s data fetch --all`` (``make traindata``).
TIERS: tuple[str, ...] = ("test", "train")
_DPKG_TIMEOUT_S = 600


class SampleDataError(F2SError):
    """Real photos could not be fetched or verified (download, extraction or sha256 failure)."""


class SampleDataUnavailableError(SampleDataError):
    """This system cannot fetch Debian photos (no ``apt-get``/``dpkg-deb``, e.g. macOS)."""

    exit_code = ExitCode.NOT_AVAILABLE


@dataclass(frozen=True)
class Photo:
    """One real photo on disk.

    ``source`` is ``"pypi:<distribution>"`` or ``"debian:<package>"``; ``sha256`` is the pinned
    hash (Debian photos, verified) or ``None`` (files of installed wheels, which pip verifies).
    """

    name: str
    path: Path
    source: str
    people: bool
    sha256: str | None


@dataclass(frozen=True)
class PackagePhoto:
    """A photo shipped in a Python distribution: ``<module dir>/<relpath>``."""

    name: str
    distribution: str  # the PyPI name, used in Photo.source
    module: str  # the top-level import name, located without importing it
    relpath: str  # POSIX path inside the module's folder
    people: bool = False


@dataclass(frozen=True)
class DebianPackage:
    """A Debian package that photos are taken from, with the version the hashes were pinned on.

    ``tier`` is ``"test"`` (fetched by ``f2s data fetch``, ``make testdata``: the tests need
    it) or ``"train"`` (only train/val photos; fetched by ``f2s data fetch --all``,
    ``make traindata``).
    """

    name: str
    version: str
    tier: str = "test"


@dataclass(frozen=True)
class DebianPhoto:
    """A photo inside a Debian package, pinned by the sha256 of its bytes."""

    name: str
    package: str
    path: str  # POSIX path inside the package, relative (no leading "/" or "./")
    sha256: str
    people: bool = False
    filename: str | None = None  # cache file name when the basename is not unique

    @property
    def basename(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def cache_name(self) -> str:
        """The file name in ``debian/<package>/``: ``filename``, else the basename."""
        return self.filename or self.basename


@dataclass(frozen=True)
class CacheReport:
    """The state of the Debian photo cache: verified photos, and names missing or corrupt."""

    ok: list[Photo] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.corrupt


# --------------------------------------------------------------------------- manifests

_SK = "scikit-image"
PACKAGE_PHOTOS: tuple[PackagePhoto, ...] = (
    PackagePhoto("skimage/astronaut", _SK, "skimage", "data/astronaut.png", people=True),
    PackagePhoto("skimage/camera", _SK, "skimage", "data/camera.png", people=True),
    PackagePhoto("skimage/coffee", _SK, "skimage", "data/coffee.png"),
    PackagePhoto("skimage/chelsea", _SK, "skimage", "data/chelsea.png"),
    PackagePhoto("skimage/rocket", _SK, "skimage", "data/rocket.jpg"),
    PackagePhoto("skimage/motorcycle_left", _SK, "skimage", "data/motorcycle_left.png"),
    PackagePhoto("skimage/coins", _SK, "skimage", "data/coins.png"),
    PackagePhoto("skimage/moon", _SK, "skimage", "data/moon.png"),
    PackagePhoto("skimage/brick", _SK, "skimage", "data/brick.png"),
    PackagePhoto("skimage/grass", _SK, "skimage", "data/grass.png"),
    PackagePhoto("skimage/gravel", _SK, "skimage", "data/gravel.png"),
    PackagePhoto("insightface/t1", "insightface", "insightface", "data/images/t1.jpg", True),
    PackagePhoto(
        "insightface/tom_hanks",
        "insightface",
        "insightface",
        "data/images/Tom_Hanks_54745.png",
        people=True,
    ),
    # Only present when scikit-learn is installed (it is not a dependency of f2s).
    PackagePhoto("sklearn/china", "scikit-learn", "sklearn", "datasets/images/china.jpg"),
    PackagePhoto("sklearn/flower", "scikit-learn", "sklearn", "datasets/images/flower.jpg"),
)

DEBIAN_PACKAGES: dict[str, DebianPackage] = {
    "mate-backgrounds": DebianPackage("mate-backgrounds", "1.26.0-1"),
    "opencv-doc": DebianPackage("opencv-doc", "4.6.0+dfsg-12"),
    "lomiri-wallpapers-16.04": DebianPackage("lomiri-wallpapers-16.04", "20.04.0-2"),
    # train tier: train/val photos only, fetched by `f2s data fetch --all` (make traindata)
    "plasma-workspace-wallpapers": DebianPackage(
        "plasma-workspace-wallpapers", "4:5.27.5-2", tier="train"
    ),
    "lomiri-wallpapers-20.04": DebianPackage("lomiri-wallpapers-20.04", "20.04.0-2", tier="train"),
}

_MATE = "usr/share/backgrounds/mate/nature/"
_OCV = "usr/share/doc/opencv-doc/examples/data/"


def _mate(stem: str, sha256: str) -> DebianPhoto:
    return DebianPhoto(f"mate/{stem.lower()}", "mate-backgrounds", f"{_MATE}{stem}.jpg", sha256)


def _lomiri(stem: str, basename: str, sha256: str) -> DebianPhoto:
    return DebianPhoto(
        f"lomiri/{stem}", "lomiri-wallpapers-16.04", f"usr/share/backgrounds/{basename}", sha256
    )


def _plasma(folder: str, size: str, sha256: str) -> DebianPhoto:
    """A KDE Plasma wallpaper: every one is ``<folder>/contents/images/<WxH>.jpg``."""
    return DebianPhoto(
        f"plasma/{folder.lower()}",
        "plasma-workspace-wallpapers",
        f"usr/share/wallpapers/{folder}/contents/images/{size}.jpg",
        sha256,
        filename=f"{folder}-{size}.jpg",
    )


def _ocv(basename: str, sha256: str, people: bool = False) -> DebianPhoto:
    stem = PurePosixPath(basename).stem.lower()
    return DebianPhoto(f"opencv/{stem}", "opencv-doc", f"{_OCV}{basename}", sha256, people)


# Natural photographs only: no renders, charts, logos, text, calibration boards, stereo twins.
DEBIAN_PHOTOS: tuple[DebianPhoto, ...] = (
    _mate("Aqua", "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    _mate("Blinds", "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
    _mate("Dune", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    _mate("FreshFlower", "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
    _mate("Garden", "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    _mate("GreenMeadow", "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
    _mate("LadyBird", "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    _mate("RainDrops", "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
    _mate("Storm", "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
    _mate("TwoWings", "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    _mate("Wood", "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
    _mate("YellowFlower", "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
    _ocv("messi5.jpg", "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9", True),
    _ocv(
        "basketball1.png",
        "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6",
        people=True,
    ),
    _ocv("baboon.jpg", "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f"),
    _ocv("fruits.jpg", "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1"),
    _ocv("apple.jpg", "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd"),
    _ocv("orange.jpg", "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079"),
    _ocv("butterfly.jpg", "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8"),
    _ocv("building.jpg", "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07"),
    _ocv("home.jpg", "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2"),
    _ocv("leuvenA.jpg", "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f"),
    _ocv("aero1.jpg", "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef"),
    _ocv("aero3.jpg", "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4"),
    _ocv("aloeL.jpg", "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee"),
    _ocv("board.jpg", "4c9a24ba67138ad5486d550f586cc5dd1161be112f1c1bea336d6c550cdf255f"),
    _ocv("box_in_scene.png", "8b0225ff76244a42bd1400c0904f8b7afea7d97b7d8115495e42e98ad347bd51"),
    _ocv("chicky_512.png", "4d2cf040de084fd3f34d5e3f96f1251faaa4787c1ac3b548fec5809a0d01854e"),
    _ocv("ela_original.jpg", "b55798b35e2dcb24675f0865a2442d0e4887eeb6aff322ecb1968d936cc23e7f"),
    _ocv("squirrel_cls.jpg", "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b"),
    _ocv("stuff.jpg", "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5"),
    # lomiri-wallpapers-16.04: licences per file in data/splits.yaml
    _lomiri(
        "life",
        "life_by_Aitzol_Berasategi.jpg",
        "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05",
    ),
    _lomiri(
        "picosdeeuropa",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a",
    ),
    _lomiri(
        "aitzgorri",
        "aitzgorri_by_Aitzol_Berasategi.jpg",
        "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36",
    ),
    _lomiri(
        "sunset",
        "sunset_by_Aitzol_Berasategi.jpg",
        "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18",
    ),
    _lomiri(
        "friends",
        "friends_by_Aitzol_Berasategi.jpg",
        "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d",
    ),
    _lomiri(
        "fig",
        "Picture_0B_by_freespace.jpg",
        "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad",
    ),
    _lomiri(
        "brushes",
        "Picture_1A_by_freespace.jpg",
        "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b",
    ),
    _lomiri(
        "dragonfly",
        "Dragonfly_by_Bolly.jpg",
        "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3",
    ),
    _lomiri(
        "seeding",
        "seeding_by_Clements_Engelhardt.jpg",
        "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f",
    ),
    _lomiri(
        "bridge",
        "Bridge_by_Sander_Klootwijk.jpg",
        "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050",
    ),
    _ocv("rubberwhale1.png", "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796"),
    _ocv("left.jpg", "fb314330c3eb0a81651c682803e73b348898157267fbc37c4c2c07d1b3a8e321"),
    _ocv("graf1.png", "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5"),
    # train tier (make traindata); licences per file in data/splits.yaml, selection in
    # data/ASSETS.md (photographs only: renders, vector art and heavy edits were dropped)
    DebianPhoto(
        "lomiri20/kleiber",
        "lomiri-wallpapers-20.04",
        "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
        "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7",
    ),
    _plasma(
        "ColdRipple",
        "2560x1600",
        "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f",
    ),
    _plasma(
        "ColorfulCups",
        "2560x1600",
        "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d",
    ),
    _plasma(
        "DarkestHour",
        "2560x1600",
        "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce",
    ),
    _plasma(
        "EveningGlow",
        "2560x1600",
        "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a",
    ),
    _plasma(
        "FallenLeaf",
        "2560x1600",
        "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de",
    ),
    _plasma(
        "Grey", "2560x1600", "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"
    ),
    _plasma(
        "OneStandsOut",
        "2560x1600",
        "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd",
    ),
    _plasma(
        "Path", "2560x1600", "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"
    ),
    _plasma(
        "summer_1am",
        "2560x1600",
        "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8",
    ),
)


# --------------------------------------------------------------------------- locations


def data_dir() -> Path:
    """The data cache: ``$F2S_DATA_DIR`` if set and non-empty, else ``~/.cache/face2scene/data``."""
    raw = os.environ.get(DATA_DIR_ENV, "").strip()
    return (Path(raw) if raw else DEFAULT_DATA_DIR).expanduser().absolute()


def _module_dirs(module: str) -> list[Path]:
    """Folders of a top-level package, found without importing it (empty when absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _package_file(module: str, relpath: str) -> Path | None:
    for root in _module_dirs(module):
        candidate = root.joinpath(*PurePosixPath(relpath).parts)
        if candidate.is_file():
            return candidate
    return None


def package_photos() -> list[Photo]:
    """The photos of :data:`PACKAGE_PHOTOS` present in the installed wheels, in manifest order.

    Packages that are not installed (e.g. scikit-learn, or scikit-image outside the dev
    environment) are skipped silently; nothing is imported.
    """
    photos = []
    for entry in PACKAGE_PHOTOS:
        path = _package_file(entry.module, entry.relpath)
        if path is not None:
            photos.append(Photo(entry.name, path, f"pypi:{entry.distribution}", entry.people, None))
    return photos


def lfw_subset_path() -> Path | None:
    """scikit-image's ``lfw_subset.npy`` (200 grey 25x25 faces, float64 in [0, 1]), or None.

    Load it with ``numpy.load``; it is not a photo file, so it is not in :func:`package_photos`.
    """
    return _package_file("skimage", "data/lfw_subset.npy")


# --------------------------------------------------------------------------- Debian cache


def _cache_path(dest: Path, entry: DebianPhoto) -> Path:
    return dest / "debian" / entry.package / entry.cache_name


def _photo(dest: Path, entry: DebianPhoto) -> Photo:
    return Photo(
        entry.name, _cache_path(dest, entry), f"debian:{entry.package}", entry.people, entry.sha256
    )


def package_tier(package: str) -> str:
    """The tier of a Debian package of :data:`DEBIAN_PACKAGES` ("test" when unknown)."""
    pkg = DEBIAN_PACKAGES.get(package)
    return "test" if pkg is None else pkg.tier


def _in_scope(entry: DebianPhoto, include_train: bool) -> bool:
    """Whether ``entry``'s package is fetched by ``f2s data fetch`` (``--all`` when
    ``include_train``)."""
    return include_train or package_tier(entry.package) == "test"


def fetch_hint(package: str) -> str:
    """How to fetch the photos of ``package``: ``make testdata`` or ``make traindata``."""
    if package_tier(package) == "train":
        return "run `make traindata` (f2s data fetch --all)"
    return "run `make testdata` (f2s data fetch)"


def check_debian_photos(dest: Path | None = None, *, include_train: bool = False) -> CacheReport:
    """Hash the cached Debian photos against :data:`DEBIAN_PHOTOS` (no network).

    By default only the photos of "test"-tier packages (what ``f2s data fetch`` fetches) are
    checked; ``include_train`` checks every entry. Returns the verified photos and the names
    of the missing and the corrupt ones.
    """
    dest = data_dir() if dest is None else Path(dest)
    report = CacheReport()
    for entry in DEBIAN_PHOTOS:
        if not _in_scope(entry, include_train):
            continue
        path = _cache_path(dest, entry)
        if not path.is_file():
            report.missing.append(entry.name)
            continue
        try:
            digest = file_sha256(path)
        except OSError:
            report.corrupt.append(entry.name)
            continue
        if digest == entry.sha256:
            report.ok.append(_photo(dest, entry))
        else:
            report.corrupt.append(entry.name)
    return report


def debian_photos(dest: Path | None = None) -> list[Photo]:
    """The Debian photos already cached in ``dest`` (default :func:`data_dir`) whose sha256
    matches, of every tier; missing or corrupt files are left out. No network."""
    return check_debian_photos(dest, include_train=True).ok


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _require_tools() -> None:
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise SampleDataUnavailableError(
            f"Debian photos need apt-get and dpkg-deb (Debian/Ubuntu); not found: "
            f"{', '.join(missing)}. On this system only the photos shipped in Python packages "
            f"are available."
        )


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SampleDataError(f"`{' '.join(cmd)}` timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise SampleDataError(f"cannot run `{' '.join(cmd)}`: {exc}") from exc


def _apt_download(pkg: DebianPackage, workdir: Path) -> Path:
    """``apt-get download`` the pinned version, else whatever version apt offers."""
    errors = []
    for spec in (f"{pkg.name}={pkg.version}", pkg.name):
        proc = _run(["apt-get", "download", spec], workdir, _APT_TIMEOUT_S)
        debs = sorted(workdir.glob(f"{pkg.name}_*.deb"))
        if proc.returncode == 0 and debs:
            return debs[-1]
        errors.append(f"`apt-get download {spec}` (exit {proc.returncode}):\n{_tail(proc.stderr)}")
    hint = (
        "apt's package lists may be missing or stale (run `apt-get update` as root), "
        "or the package registry is unreachable"
    )
    raise SampleDataError(f"cannot download {pkg.name}: {hint}\n" + "\n".join(errors))


def _deb_version(deb: Path) -> str:
    proc = _run(["dpkg-deb", "--field", str(deb), "Version"], deb.parent, _DPKG_TIMEOUT_S)
    if proc.returncode != 0:
        raise SampleDataError(f"`dpkg-deb --field {deb.name}` failed:\n{_tail(proc.stderr)}")
    return proc.stdout.strip()


def _member_key(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        part.write_bytes(data)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _extract(
    deb: Path, version: str, entries: Sequence[DebianPhoto], dest: Path
) -> tuple[list[DebianPhoto], list[str]]:
    """Stream the data tarball of ``deb``; write each wanted file whose sha256 matches.

    Returns (written entries, error messages). Only the listed files reach ``dest``.
    """
    wanted = {entry.path: entry for entry in entries}
    pinned = DEBIAN_PACKAGES[entries[0].package].version
    written: list[DebianPhoto] = []
    errors: list[str] = []
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=err
            )
        except OSError as exc:
            raise SampleDataError(f"cannot run dpkg-deb: {exc}") from exc
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    entry = wanted.pop(_member_key(member.name), None)
                    if entry is None:
                        continue
                    fh = tar.extractfile(member) if member.isfile() else None
                    if fh is None:
                        errors.append(f"{entry.name}: {entry.path} is not a regular file")
                    else:
                        data = fh.read()
                        digest = hashlib.sha256(data).hexdigest()
                        if digest == entry.sha256:
                            try:
                                _write_atomic(_cache_path(dest, entry), data)
                            except OSError as exc:
                                errors.append(f"{entry.name}: cannot write the cache: {exc}")
                            else:
                                written.append(entry)
                        else:
                            errors.append(
                                f"{entry.name}: {entry.package} {version} gave {entry.path} "
                                f"with sha256 {digest}, expected {entry.sha256} "
                                f"(pinned from {entry.package} {pinned})"
                            )
                    if not wanted:
                        break
        except tarfile.TarError as exc:
            errors.append(f"cannot read the data of {deb.name}: {exc}")
        finally:
            proc.stdout.close()
            if wanted:  # read to the end: dpkg-deb must have succeeded
                rc = proc.wait(timeout=_DPKG_TIMEOUT_S)
            else:  # stopped early on purpose; dpkg-deb may die of SIGPIPE
                proc.kill()
                proc.wait(timeout=_DPKG_TIMEOUT_S)
                rc = 0
        if rc != 0:
            err.seek(0)
            msg = _tail(err.read().decode(errors="replace"))
            errors.append(f"`dpkg-deb --fsys-tarfile {deb.name}` failed (exit {rc}):\n{msg}")
    errors.extend(
        f"{entry.name}: {entry.path} is not in {entry.package} {version}"
        for entry in wanted.values()
    )
    return written, errors


def fetch_debian_photos(
    dest: Path | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    include_train: bool = False,
) -> list[Photo]:
    """Make the photos of the "test"-tier packages of :data:`DEBIAN_PHOTOS` (every tier when
    ``include_train``) present and verified in ``dest``; returns those photos.

    ``dest`` defaults to :func:`data_dir`. Photos already cached and verified are kept; when
    all are, nothing is downloaded. Otherwise each package with missing or corrupt photos is
    fetched with ``apt-get download`` into a temporary folder (deleted afterwards), and only
    the listed files are extracted into ``dest/debian/<package>/``, each checked against its
    pinned sha256 before it is written. ``progress`` receives one-line status messages.

    Raises SampleDataUnavailableError when apt-get/dpkg-deb are missing, SampleDataError
    when a download, an extraction or a hash check fails (photos that did verify are kept).
    """
    dest = data_dir() if dest is None else Path(dest)
    report = check_debian_photos(dest, include_train=include_train)
    if report.complete:
        return report.ok
    todo = set(report.missing) | set(report.corrupt)
    _require_tools()
    say = progress or (lambda _msg: None)
    errors: list[str] = []
    for pkg in DEBIAN_PACKAGES.values():
        entries = [e for e in DEBIAN_PHOTOS if e.package == pkg.name and e.name in todo]
        if not entries:
            continue
        say(f"downloading {pkg.name} (pinned {pkg.version}) for {len(entries)} photos ...")
        with tempfile.TemporaryDirectory(prefix="f2s-deb-") as tmp:
            try:
                deb = _apt_download(pkg, Path(tmp))
                version = _deb_version(deb)
                if version != pkg.version:
                    say(f"{pkg.name}: apt offered {version}, not the pinned {pkg.version}")
                say(f"extracting {len(entries)} photos from {deb.name}")
                written, errs = _extract(deb, version, entries, dest)
            except SampleDataError as exc:
                errors.append(str(exc))
                continue
        errors.extend(errs)
        say(f"{pkg.name}: {len(written)}/{len(entries)} photos written and verified")
    if errors:
        raise SampleDataError("Debian photos failed:\n" + "\n".join(errors))
    final = check_debian_photos(dest, include_train=include_train)
    if not final.complete:  # e.g. a concurrent writer; should not happen
        bad = final.missing + final.corrupt
        raise SampleDataError(f"Debian photos not verified after fetching: {', '.join(bad)}")
    return final.ok


def all_photos(fetch: bool = False) -> list[Photo]:
    """Package photos, then the cached Debian photos of every tier (the "test"-tier ones
    fetched first when ``fetch``)."""
    if fetch:
        fetch_debian_photos()
    return package_photos() + debian_photos()
