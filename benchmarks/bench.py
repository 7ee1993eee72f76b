"""``make bench``: throughput of f2s commands on real photos (a script, not a test).

First the start-up of the commands that must feel instant (``f2s --version``, ``--help``,
``restore --help``, ``doctor --help``: wall time and peak RSS of fresh processes). Then it
builds a set of ~1 MP photos from the pinned Debian photos (crops and resizes, cached under
``$F2S_DATA_DIR/bench``), runs ``f2s degrade`` in parametric mode as a user would (a fresh
process), and prints images/s with the per-stage times from the reports. Results are also
written to ``benchmarks/results/degrade.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from face2scene_cli.research import sample_data

RESULTS = Path(__file__).resolve().parent / "results"


def make_photos(count: int, megapixels: float, dest: Path) -> list[Path]:
    """``count`` JPEG photos of about ``megapixels`` MP cut from the pinned real photos."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob("*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    sources = [p for p in sample_data.all_photos() if p.path.suffix.lower() in (".jpg", ".png")]
    big = [p for p in sources if _pixels(p.path) >= megapixels * 1e6 * 0.8] or sources
    side_w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    side_h = int(side_w * 3 / 4)
    paths = []
    for i in range(count):
        with Image.open(big[i % len(big)].path) as im:
            im = im.convert("RGB")
            scale = max(side_w / im.width, side_h / im.height) * (1 + 0.15 * (i // len(big) % 3))
            im = im.resize(
                (max(side_w, round(im.width * scale)), max(side_h, round(im.height * scale))),
                Image.Resampling.BICUBIC,
            )
            x = (i * 37) % (im.width - side_w + 1)
            y = (i * 23) % (im.height - side_h + 1)
            path = dest / f"photo{i:03d}.jpg"
            im.crop((x, y, x + side_w, y + side_h)).save(path, quality=92)
            paths.append(path)
    return paths


def _pixels(path: Path) -> int:
    with Image.open(path) as im:
        return im.width * im.height


STARTUP_COMMANDS = (("--version",), ("--help",), ("restore", "--help"), ("doctor", "--help"))


def bench_startup(repeats: int = 5) -> list[dict]:
    """Median wall time and peak RSS of ``f2s <argv>`` in fresh processes, as a user runs it."""
    f2s = Path(sys.executable).with_name("f2s")
    launcher = [str(f2s)] if f2s.exists() else [sys.executable, "-m", "face2scene_cli"]
    rows = []
    for argv in STARTUP_COMMANDS:
        walls, rss = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            proc = subprocess.Popen([*launcher, *argv], stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            walls.append(time.perf_counter() - t0)
            rss.append(usage.ru_maxrss / 1024)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"f2s {' '.join(argv)} failed")
        rows.append(
            {
                "command": "f2s " + " ".join(argv),
                "median_s": round(statistics.median(walls), 3),
                "peak_rss_mib": round(max(rss), 1),
            }
        )
    return rows


def bench_degrade(photos: Path, args: list[str], label: str) -> dict:
    """Run ``f2s degrade`` once over ``photos``; wall time and per-stage means from reports."""
    with tempfile.TemporaryDirectory(prefix="f2s-bench-") as tmp:
        out = Path(tmp) / "out"
        cmd = [
            sys.executable,
            "-m",
            "face2scene_cli",
            "degrade",
            str(photos),
            "--out",
            str(out),
            "--quiet",
            *args,
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"f2s degrade failed ({proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads((out / "f2s-summary.json").read_text())
        reports = [json.loads(p.read_text()) for p in out.glob("*.png.json")]
    n = summary["counts"]["done"]
    engine = summary["run"]["timings"]["total"]
    stages: dict[str, list[float]] = {}
    for rep in reports:
        for stage, seconds in rep["run"]["timings"].items():
            stages.setdefault(stage, []).append(seconds)
    mp = statistics.mean(r["input"]["width"] * r["input"]["height"] / 1e6 for r in reports)
    return {
        "label": label,
        "args": args,
        "images": n,
        "megapixels_mean": round(mp, 3),
        "wall_s": round(wall, 2),
        "engine_s": round(engine, 2),
        "images_per_s_engine": round(n / engine, 2),
        "images_per_s_wall": round(n / wall, 2),
        "stage_mean_ms": {
            k: round(1000 * statistics.mean(v), 1) for k, v in sorted(stages.items())
        },
        "peak_rss_mib_children": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        ),
    }


def bench_faces(repeats: int = 5) -> dict:
    """Detection + landmarks + identity embedding on a 1 MP photo with one face (in-process,
    torch threads as f2s sets them: cores minus I/O workers)."""
    import numpy as np
    import torch

    from face2scene_cli.config import BatchConfig
    from face2scene_cli.faces.detect import create_detector
    from face2scene_cli.faces.identity import create_identity_encoder

    torch.set_num_threads(BatchConfig().torch_threads)
    path = next(p.path for p in sample_data.package_photos() if p.name == "skimage/astronaut")
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB").resize((1024, 1024), Image.Resampling.BICUBIC))
    detector, encoder = create_detector("auto"), create_identity_encoder("auto")
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        faces = detector.detect([rgb])[0]
        encoder.embed(rgb, faces)
        times.append(time.perf_counter() - t0)
    return {
        "label": f"faces: {detector.name} + {encoder.name} on 1.05 MP, 1 face",
        "faces": len(faces),
        "median_s": round(statistics.median(times[1:]), 3),
        "torch_threads": torch.get_num_threads(),
    }


def bench_ray(photos: Path) -> list[dict]:
    """``f2s degrade`` (second-order) on the Ray engine with 1 and 2 workers of one torch thread
    each, beside the local engine with one torch thread; [] without Ray. Each run starts its
    own local Ray, so images/s (incl. start-up) counts Ray's start; the engine's rate counts
    the workers' start (model loading), not Ray's."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return []
    common = ["--seed", "0", "--threads", "1"]
    runs = [bench_degrade(photos, common, "degrade second-order, local, 1 thread")]
    for workers in (1, 2):
        args = [*common, "--engine", "ray", "--workers", str(workers)]
        runs.append(bench_degrade(photos, args, f"degrade second-order, ray, {workers} worker(s)"))
    return runs


def print_ray(runs: list[dict]) -> None:
    """One line per Ray run, with the speed-up over the first (local) run."""
    base = runs[0]["images_per_s_engine"]
    for r in runs:
        print(
            f"{r['label']}: {r['images_per_s_engine']} images/s (engine, x"
            f"{r['images_per_s_engine'] / base:.2f}), {r['images_per_s_wall']} incl. start-up"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--megapixels", type=float, default=1.0)
    parser.add_argument("--ray-only", action="store_true", help="only the Ray engine section")
    parser.add_argument("--startup-only", action="store_true", help="only the start-up section")
    args = parser.parse_args()
    startup = bench_startup()
    print("| command | wall s (median of 5) | peak RSS MiB |\n|---|---|---|")
    for row in startup:
        print(f"| {row['command']} | {row['median_s']} | {row['peak_rss_mib']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "commands": startup}, indent=2) + "\n"
    )
    if args.startup_only:
        return
    photos_dir = sample_data.data_dir() / "bench" / f"{args.count}x{args.megapixels}mp"
    make_photos(args.count, args.megapixels, photos_dir)
    ray_runs = bench_ray(photos_dir)
    if ray_runs:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ray.json").write_text(
            json.dumps(
                {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "runs": ray_runs},
                indent=2,
            )
            + "\n"
        )
        print_ray(ray_runs)
    if args.ray_only:
        return
    runs = [
        bench_degrade(
            photos_dir,
            ["--blur-sigma", "1.0", "--noise-sigma", "5", "--jpeg-quality", "50"],
            "degrade parametric (blur+noise+jpeg)",
        ),
        bench_degrade(photos_dir, ["--preset", "noise15"], "degrade preset noise15"),
        bench_degrade(photos_dir, ["--seed", "0"], "degrade second-order"),
    ]
    faces = bench_faces()
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
        "faces": faces,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "degrade.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| run | images | MP | images/s (engine) | images/s (incl. start-up) | per-stage ms |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        stages = ", ".join(f"{k} {v}" for k, v in r["stage_mean_ms"].items())
        print(
            f"| {r['label']} | {r['images']} | {r['megapixels_mean']} | "
            f"{r['images_per_s_engine']} | {r['images_per_s_wall']} | {stages} |"
        )
    print(
        f"\n{faces['label']}: {faces['median_s']} s per photo "
        f"(median, {faces['torch_threads']} torch thread(s))"
    )


if __name__ == "__main__":
    main()
