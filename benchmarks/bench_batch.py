"""``f2s restore --refs`` on a folder: throughput, memory and time to the first image
(a script, not a test).

Each photo is a ~1 MP cut of a pinned Debian wallpaper with 1-6 faces pasted in (photo i
has ``1 + i % 6``; the astronaut, the five people of t1 and Tom Hanks, 160-260 px wide),
degraded with the ``mixed`` preset; the references are those clean faces, mirrored, and a
smaller copy (``refs/<person>/``): optimistic for quality, fair for cost. Cached under
``$F2S_DATA_DIR/bench/batch``. ``f2s restore`` runs in a fresh process as a user would
(model loading included), once over the first ``--rss-at`` photos and once over all
``--count``, so the peak RSS of the two can be compared (flat memory). Time to the first
image = process start to the first report on disk, and its overhead over the compute that
image's report records. Writes ``benchmarks/results/restore_batch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from face2scene_cli.degradations.record import PRESETS
from face2scene_cli.degradations.sampling import apply, image_generator
from face2scene_cli.doctor import allocator_facts
from face2scene_cli.io.tensors import from_tensor, to_tensor
from face2scene_cli.research import sample_data

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (1152, 864)  # 1.0 MP
# One face of each person, cut from package-shipped photos: (person, photo, box).
FACES = (
    ("astronaut", "skimage/astronaut", (140, 20, 310, 220)),
    ("t1-a", "insightface/t1", (870, 20, 1050, 240)),
    ("t1-b", "insightface/t1", (20, 230, 200, 430)),
    ("t1-c", "insightface/t1", (710, 310, 880, 510)),
    ("t1-d", "insightface/t1", (235, 110, 410, 310)),
    ("t1-e", "insightface/t1", (430, 230, 610, 440)),
    ("hanks", "insightface/tom_hanks", (0, 0, 112, 112)),
)
BACKGROUNDS = ("mate/aqua", "mate/blinds", "mate/dune", "mate/garden", "mate/storm")


def make_photos(count: int, dest: Path) -> tuple[list[Path], Path]:
    """``count`` degraded ~1 MP photos with 1-6 faces each and the references of their
    people (made once, then reused): the photo paths and the refs folder."""
    photos, refs = dest / "photos", dest / "refs"
    paths = [photos / f"photo{i:03d}.png" for i in range(count)]
    if all(p.exists() for p in paths) and refs.is_dir():
        return paths, refs
    photos.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p.path for p in sample_data.all_photos()}
    faces = {}
    for person, name, box in FACES:
        with Image.open(by_name[name]) as src:
            face = faces[person] = src.convert("RGB").crop(box)
        (refs / person).mkdir(parents=True, exist_ok=True)
        ImageOps.mirror(face).save(refs / person / "mirrored.png")
        small = face.resize((96, round(96 * face.height / face.width)), Image.BICUBIC)
        small.save(refs / person / "small.png")
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        with Image.open(by_name[BACKGROUNDS[i % len(BACKGROUNDS)]]) as bg:
            x = int(rng.integers(0, bg.width - SIZE[0]))
            y = int(rng.integers(0, bg.height - SIZE[1]))
            photo = bg.convert("RGB").crop((x, y, x + SIZE[0], y + SIZE[1]))
        people = rng.permutation(len(FACES))[: 1 + i % 6]
        for slot, k in enumerate(people):  # a 3 x 2 grid of slots, one face each
            face = faces[FACES[k][0]]
            width = int(rng.integers(160, 260))
            face = face.resize((width, round(width * face.height / face.width)), Image.BICUBIC)
            left = (slot % 3) * SIZE[0] // 3 + int(rng.integers(0, SIZE[0] // 3 - width))
            top = (slot // 3) * SIZE[1] // 2 + int(rng.integers(0, SIZE[1] // 2 - face.height))
            photo.paste(face, (left, top))
        lq = apply(to_tensor(np.asarray(photo)), PRESETS["mixed"], image_generator(0, path.name))
        Image.fromarray(from_tensor(lq, np.uint8)).save(path)
    return paths, refs


# Runs a command and prints the peak RSS (KiB) of its process tree's largest process.
_RSS_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def run_restore(photos: list[Path], refs: Path, extra: list[str], cache: str) -> dict:
    """``f2s restore`` over ``photos`` in a fresh process with ``cache`` as its
    ``F2S_CACHE_DIR``: wall, time to the first report, peak RSS, the per-image reports and
    the summary."""
    with tempfile.TemporaryDirectory(prefix="f2s-bench-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "face2scene_cli", "restore", *map(str, photos)]
        cmd += ["--refs", str(refs), "--out", str(out), "--quiet", *extra]
        err_path = Path(tmp) / "stderr.txt"
        t0 = time.perf_counter()
        with err_path.open("w") as err:  # a file, not a pipe nobody reads while it runs
            proc = subprocess.Popen(
                [sys.executable, "-c", _RSS_WRAPPER, *cmd],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "F2S_CACHE_DIR": cache},
            )
            first, first_name = None, None
            while proc.poll() is None:
                done = sorted(out.glob("photo*.png.json")) if first is None else []
                if done:
                    first, first_name = time.perf_counter() - t0, done[0].name
                time.sleep(0.02)
        wall = time.perf_counter() - t0
        stderr = err_path.read_text()
        if proc.returncode != 0:
            raise SystemExit(f"f2s restore failed ({proc.returncode}): {stderr[-2000:]}")
        summary = json.loads((out / "f2s-summary.json").read_text())
        reports = [json.loads(p.read_text()) for p in sorted(out.glob("photo*.png.json"))]
        first_name = first_name or sorted(out.glob("photo*.png.json"))[0].name
        first_report = json.loads((out / first_name).read_text())
    peak_kib = int(stderr.strip().splitlines()[-1])
    return {
        "wall": wall,
        "first": first or wall,
        "first_compute": first_report["run"]["timings"]["total"],
        "peak_rss_mib": peak_kib / 1024,
        "summary": summary,
        "reports": reports,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rss-at", type=int, default=10, help="photos of the smaller run")
    parser.add_argument("extra", nargs="*", help="more f2s restore options (after --)")
    args = parser.parse_args()
    paths, refs = make_photos(args.count, sample_data.data_dir() / "bench" / "batch")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="f2s-bench-cache-") as cache:
        # the small run builds the gallery from nothing, the full run reuses it
        small = run_restore(paths[: args.rss_at], refs, args.extra, cache)
        full = run_restore(paths, refs, args.extra, cache)
    load_after = os.getloadavg()
    reports = full["reports"]
    n = full["summary"]["counts"]["done"]
    stages: dict[str, list[float]] = {}
    for rep in reports:
        for stage, seconds in rep["run"]["timings"].items():
            stages.setdefault(stage, []).append(seconds)
    mp = statistics.mean(r["input"]["width"] * r["input"]["height"] / 1e6 for r in reports)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        # what `f2s restore` ran on: the environment the runs inherit decides it
        "allocator": allocator_facts()["batch_commands"],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "options": args.extra,
        "images": n,
        "faces_per_image": sorted({len(r["faces"]) for r in reports}),
        "megapixels_mean": round(mp, 3),
        "wall_s": round(full["wall"], 2),
        "engine_s": full["summary"]["run"]["timings"]["total"],
        "s_per_photo_wall": round(full["wall"] / n, 2),
        "images_per_s_wall": round(n / full["wall"], 3),
        "s_per_mp_compute": round(statistics.mean(stages["total"]) / mp, 3),
        "stage_mean_s": {k: round(statistics.mean(v), 3) for k, v in sorted(stages.items())},
        # the small run builds the references' gallery (cold cache), the full run reuses it
        "first_image_s": {
            "cold_gallery": round(small["first"], 2),
            "warm": round(full["first"], 2),
        },
        "first_image_overhead_s": {
            "cold_gallery": round(small["first"] - small["first_compute"], 2),
            "warm": round(full["first"] - full["first_compute"], 2),
        },
        "peak_rss_mib": {
            str(args.rss_at): round(small["peak_rss_mib"], 1),
            str(n): round(full["peak_rss_mib"], 1),
        },
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "restore_batch.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
