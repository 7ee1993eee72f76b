"""Build the git-ignored ``carry/`` folder for a GPU lease, and unpack what comes back.

The device machine (the device tool's README) has Python 3.12 and torch 2.11 but no
diffusers, no package registry and none of the photo packages; one call carries <= 64 MiB
(the working tree plus the carried paths) and returns <= 8 files of <= 16 MiB.

``build`` (here, with PyPI reachable):

* ``carry/wheels/``: py3.12 wheels of what the device lacks (diffusers and the few packages
  f2s needs that its image does not hold), ``pip download --no-deps`` of the local versions;
* ``carry/photos/``: the train split's photo files, byte for byte (the split manifest's
  sha256 still verifies them there), ``manifest.json`` naming each (``scripts/device_train.py``
  loads the splits from them), and ``t1.jpg`` for the benchmark;
* ``carry/manifest.json``: sizes, and the total with the working tree, against the limit.

The working tree alone is ~77 MiB (Real-ESRGAN's weights 32, dlib's identity network 22), so
it exceeds the limit by itself. ``shrink`` untracks, for the lease call only, what training
never reads (:data:`LEASE_DROPS`: ``git rm --cached``, and the files listed in
``.git/info/exclude`` between two marker lines) and prints what is left; ``unshrink`` puts
them back in the index from HEAD and removes the marker block. Lease 3 fitted this way by
hand (61.7 MiB with two carried warm-start models).

``unpack DIR`` (here, after the lease): extracts the returned ``<run>.tar`` files (each a
trained model folder, see ``scripts/device_train.sh``) into ``runs/gpu/<run>`` and the
benchmark / log archive into ``runs/gpu/logs``.

Usage::

    python scripts/build_carry.py build
    python scripts/build_carry.py shrink      # just before the lease call ...
    python scripts/build_carry.py unshrink    # ... and right after it
    python scripts/build_carry.py unpack /work/.device/<files_at> [--to runs/gpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LIMIT_MIB = 64.0
#: What the device image lacks for training and the benchmarks (dlib-bin: the trainers centre
#: face regions on its detections; without it p_face silently does nothing).
WHEELS = (
    "diffusers",
    "dlib-bin",
    "importlib_metadata",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: What training never reads (git pathspecs), left behind by ``shrink`` for a lease call.
LEASE_DROPS = (
    "models/realesrgan-x4plus",
    "models/dlib-resnet-v1",
    "benchmarks/results/eval-*/grid*.png",
)
EXCLUDE_BEGIN = "# build_carry.py shrink: untracked for a lease call (unshrink undoes it)"
EXCLUDE_END = "# build_carry.py shrink: end"


def _mib(n: int) -> float:
    return n / 2**20


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True).stdout.decode()


def working_tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what the device tool sends besides ``carry``: tracked + untracked files that
    git does not ignore."""
    out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sum((root / p).stat().st_size for p in out.split("\0") if p and (root / p).is_file())


def _exclude_file(root: Path) -> Path:
    return root / _git(root, "rev-parse", "--git-path", "info/exclude").strip()


def _split_exclude(text: str) -> tuple[list[str], list[str]]:
    """(the lines outside the shrink block, the paths inside it)."""
    kept: list[str] = []
    block: list[str] = []
    inside = False
    for line in text.splitlines():
        if line in (EXCLUDE_BEGIN, EXCLUDE_END):
            inside = line == EXCLUDE_BEGIN
        elif inside:
            block.append(line.lstrip("/"))
        else:
            kept.append(line)
    return kept, block


def shrink(root: Path = ROOT, pathspecs: tuple[str, ...] = LEASE_DROPS) -> list[str]:
    """Untrack the tracked files matching ``pathspecs`` and list them in the exclude file, so
    the device tool leaves them behind; returns them. Refused while a shrink is in place."""
    exclude = _exclude_file(root)
    text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    if EXCLUDE_BEGIN in text:
        raise SystemExit(f"{exclude} already holds a shrink block: run unshrink first")
    files = [f for f in _git(root, "ls-files", "-z", "--", *pathspecs).split("\0") if f]
    if not files:
        return []
    _git(root, "rm", "-r", "-q", "--cached", "--", *files)
    block = [EXCLUDE_BEGIN, *(f"/{f}" for f in files), EXCLUDE_END]
    exclude.parent.mkdir(parents=True, exist_ok=True)
    exclude.write_text("\n".join([*text.splitlines(), *block]) + "\n", encoding="utf-8")
    return files


def unshrink(root: Path = ROOT) -> list[str]:
    """Undo :func:`shrink`: the files go back into the index from HEAD (the files on disk
    are untouched) and the marker block leaves the exclude file; returns them."""
    exclude = _exclude_file(root)
    if not exclude.exists():
        return []
    kept, files = _split_exclude(exclude.read_text(encoding="utf-8"))
    if files:
        _git(root, "reset", "-q", "HEAD", "--", *files)
    exclude.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    return files


def download_wheels(dest: Path) -> list[Path]:
    """``pip download`` the local versions of :data:`WHEELS` as py3.12 wheels (no deps)."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + specs, check=True)
    return sorted(dest.glob("*.whl"))


def copy_photos(dest: Path) -> list[dict]:
    """Copy the train split's photos (and the benchmark's t1.jpg) into ``dest``."""
    from face2scene_cli.hashing import file_sha256
    from face2scene_cli.research.sample_data import package_photos
    from face2scene_cli.research.splits import load_splits

    dest.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, p in enumerate(load_splits(ROOT / "data/splits.yaml")["train"]):
        name = f"{i:03d}{Path(p.path).suffix.lower()}"
        shutil.copy(p.path, dest / name)
        digest = p.sha256 or file_sha256(p.path)
        entries.append(
            {"name": p.name, "file": name, "source": p.source, "people": p.people, "sha256": digest}
        )
    (dest / "manifest.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
    t1 = next(p.path for p in package_photos() if p.name == "insightface/t1")
    shutil.copy(t1, dest / "t1.jpg")
    return entries


def build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    wheels = download_wheels(out / "wheels")
    photos = copy_photos(out / "photos")
    carried = _folder_bytes(out)
    tree = working_tree_bytes()
    manifest = {
        "working_tree_mib": round(_mib(tree), 2),
        "carry_mib": round(_mib(carried), 2),
        "total_mib": round(_mib(tree + carried), 2),
        "limit_mib": LIMIT_MIB,
        "wheels": [w.name for w in wheels],
        "photos": len(photos),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    print(json.dumps(manifest, indent=1))
    return 0 if _mib(tree + carried) < LIMIT_MIB else 1


def unpack(args: argparse.Namespace) -> int:
    """Extract every returned ``*.tar`` into ``--to/<its stem>``."""
    src, dest = Path(args.src), Path(args.to)
    for archive in sorted(src.glob("*.tar")):
        target = dest / archive.stem
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        print(f"{archive.name} -> {target}")
    return 0


def shrink_command(args: argparse.Namespace) -> int:
    files = shrink(ROOT, tuple(args.drop) if args.drop else LEASE_DROPS)
    carry = Path(args.carry)
    total = _mib(working_tree_bytes() + _folder_bytes(carry))
    print(f"untracked {len(files)} files; tree + {carry.name}: {total:.1f} MiB (limit {LIMIT_MIB})")
    return 0 if total < LIMIT_MIB else 1


def unshrink_command(args: argparse.Namespace) -> int:
    print(f"back in the index: {len(unshrink(ROOT))} files")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build carry/ for a GPU lease")
    b.add_argument("--out", default=str(ROOT / "carry"))
    u = sub.add_parser("unpack", help="extract the archives a lease returned")
    u.add_argument("src")
    u.add_argument("--to", default=str(ROOT / "runs/gpu"))
    s = sub.add_parser("shrink", help="untrack what training never reads, for a lease call")
    s.add_argument("--drop", nargs="+", help=f"git pathspecs (default: {' '.join(LEASE_DROPS)})")
    s.add_argument("--carry", default=str(ROOT / "carry"), help="counted in the total")
    sub.add_parser("unshrink", help="undo shrink")
    args = ap.parse_args()
    commands = {
        "build": build,
        "unpack": unpack,
        "shrink": shrink_command,
        "unshrink": unshrink_command,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
