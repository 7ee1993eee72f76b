"""Build the git-ignored ``carry/`` folder for a GPU training lease, and merge what comes back.

The device machine (see DEVELOPERS.md / the device tool's README) has Python 3.12 and torch
2.11 but no diffusers and no package registry; one call carries <= 64 MiB (the working tree,
``models/`` included, plus the carried paths) and returns <= 8 files of <= 16 MiB.

``build`` (here, with network access to PyPI):

* ``carry/wheels/``: py3.12 wheels of what the device lacks (diffusers, importlib_metadata and
  the command line's typer / click / rich / pydantic, ``pip download --no-deps``);
* ``carry/shard/``: a slice of a training cache (pre-degraded uint8 regions, their face-sized
  LQ / blind-restored crops, degradation records and cached FaDeX maps when present), sized
  so the whole call stays under the limit (``--shard-index`` picks another slice for the
  next lease);
* ``carry/manifest.json``: sizes and sha256 of everything carried, and the budget.

The device script (``scripts/device_train.sh``) installs the wheels with
``pip --no-index --target``, warm-starts from ``models/scene-embedded`` (it travels with the
working tree), trains to a wall-clock deadline and writes the weights to ``$OUT`` split in
parts of <= 15 MiB.

``bench`` (here): ``carry/wheels/`` as above and ``carry/photos/`` (the benchmark's group
photo), for ``scripts/device_bench.sh`` (the restore benchmark and the CUDA correctness
check).

``merge DIR`` (here, after the lease) reassembles those parts into a model folder
(``runs/scene-gpu/export`` by default) that ``f2s models analyze`` can score before it replaces the
shipped weights.

Usage::

    python scripts/build_carry.py build --cache runs/scene-blind/cache [--shard-index 0]
    python scripts/build_carry.py bench
    python scripts/build_carry.py merge /work/.device/<files_at> [--to runs/scene-gpu/export]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 64.0
PART_MIB = 15.0
#: What the device lacks: diffusers, and the f2s command line (``python3 -m face2scene_cli``).
WHEELS = (
    "diffusers",
    "importlib_metadata",
    "typer",
    "click",
    "rich",
    "markdown_it_py",
    "mdurl",
    "pygments",
    "shellingham",
    "annotated_doc",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def _mib(n: int) -> float:
    return n / 2**20


def working_tree_bytes() -> int:
    """Bytes of what the device tool sends besides ``carry``: tracked + untracked files that
    git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sum((ROOT / p).stat().st_size for p in out.split("\0") if p and (ROOT / p).is_file())


def download_wheels(dest: Path) -> list[Path]:
    """``pip download`` the pinned local versions as py3.12 wheels (no dependencies)."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "-d",
        str(dest),
    ]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + specs, check=True)
    return sorted(dest.glob("*.whl"))


def write_shard(cache: Path, dest: Path, budget: int, index: int) -> dict:
    """Slice ``index`` of the cache whose tensors fit ``budget`` bytes."""
    tensors = load_file(str(cache / "samples.safetensors"))
    degs = json.loads((cache / "degradations.json").read_text())
    codes = {p.name: load_file(str(p))["z"] for p in cache.glob("codes-*.safetensors")}
    n = tensors["lq"].shape[0]
    per = sum(t[0].numel() * t.element_size() for t in tensors.values())
    per += sum(z[0].numel() * z.element_size() for z in codes.values())
    count = min(n, max(1, budget // per))
    start = (index * count) % n
    idx = [(start + i) % n for i in range(count)]
    dest.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v[idx].contiguous() for k, v in tensors.items()}, str(dest / "samples.safetensors")
    )
    (dest / "degradations.json").write_text(json.dumps([degs[i] for i in idx]))
    for name, z in codes.items():
        save_file({"z": z[idx].contiguous()}, str(dest / name))
    return {"samples": count, "of": n, "first": start, "bytes_per_sample": per}


def build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    tree = working_tree_bytes()
    wheels = download_wheels(out / "wheels")
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    budget = int((LIMIT_MIB - args.margin_mib) * 2**20) - tree - wheel_bytes
    if budget <= 0:
        print(
            f"no room for a shard: working tree {_mib(tree):.1f} MiB + wheels "
            f"{_mib(wheel_bytes):.1f} MiB >= {LIMIT_MIB - args.margin_mib} MiB",
            file=sys.stderr,
        )
        return 1
    shard = write_shard(Path(args.cache), out / "shard", budget, args.shard_index)
    (out / "condition").write_text(args.condition + "\n")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    manifest = {
        "working_tree_mib": round(_mib(tree), 2),
        "carry_mib": round(_mib(total), 2),
        "limit_mib": LIMIT_MIB,
        "shard": shard,
        "condition": args.condition,
        "files": {str(p.relative_to(out)): p.stat().st_size for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=1))
    return 0


def bench(args: argparse.Namespace) -> int:
    """``carry/`` for ``scripts/device_bench.sh``: wheels and the benchmark photo."""
    import shutil

    from face2scene_cli.research.sample_data import package_photos

    out = Path(args.out)
    wheels = download_wheels(out / "wheels")
    photo = next(p.path for p in package_photos() if p.name == "insightface/t1")
    (out / "photos").mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, out / "photos" / "t1.jpg")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files) + working_tree_bytes()
    print(f"carry/ ready: {len(wheels)} wheels; with the working tree {_mib(total):.1f} MiB")
    return 0 if _mib(total) < LIMIT_MIB else 1


def merge(args: argparse.Namespace) -> int:
    """Reassemble ``net-*.safetensors`` / ``mapnet.safetensors`` + configs into a model folder."""
    src, dest = Path(args.src), Path(args.to)
    for sub, prefix in (("net", "net-"), ("mapnet", "mapnet")):
        state: dict = {}
        for part in sorted(src.glob(f"{prefix}*.safetensors")):
            state.update(load_file(str(part)))
        (dest / sub).mkdir(parents=True, exist_ok=True)
        save_file(state, str(dest / sub / "diffusion_pytorch_model.safetensors"))
        (dest / sub / "config.json").write_text((src / f"{sub}_config.json").read_text())
    for name in ("scene.json", "training.json"):
        (dest / name).write_text((src / name).read_text())
    print(f"model folder written to {dest}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build carry/ for a GPU lease")
    b.add_argument("--out", default=str(ROOT / "carry"))
    b.add_argument("--cache", default=str(ROOT / "runs/scene-blind/cache"))
    b.add_argument("--shard-index", type=int, default=0)
    b.add_argument("--condition", choices=("blind", "code"), default="code")
    b.add_argument("--margin-mib", type=float, default=2.0)
    c = sub.add_parser("bench", help="build carry/ for scripts/device_bench.sh")
    c.add_argument("--out", default=str(ROOT / "carry"))
    m = sub.add_parser("merge", help="rebuild a model folder from the files a lease returned")
    m.add_argument("src")
    m.add_argument("--to", default=str(ROOT / "runs/scene-gpu/export"))
    args = ap.parse_args()
    return {"build": build, "bench": bench, "merge": merge}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
