"""``f2s restore`` throughput: 20 photos of ~1 MP with one face each (a script, not a test).

Each photo is a ~1 MP cut of a pinned Debian wallpaper with one face pasted in (the
astronaut, one of the t1 group or Tom Hanks, 180-300 px wide), degraded with the ``mixed``
preset; cached under ``$F2S_DATA_DIR/bench/restore``. ``f2s restore`` runs once over them in
a fresh process, as a user would, so model loading is included and amortised over the batch.
Prints s/photo, images/s, per-stage means and the load average (the machine may be shared);
writes ``benchmarks/results/restore_batch.json``.
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
from PIL import Image

from face2scene_cli.degradations.record import PRESETS
from face2scene_cli.degradations.sampling import apply, image_generator
from face2scene_cli.io.tensors import from_tensor, to_tensor
from face2scene_cli.research import sample_data

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (1152, 864)  # 1.0 MP
# Single faces cut from package-shipped photos: (photo, (left, top, right, bottom)).
FACES = (
    ("skimage/astronaut", (140, 20, 310, 220)),
    ("insightface/t1", (870, 20, 1050, 240)),
    ("insightface/t1", (20, 230, 200, 430)),
    ("insightface/t1", (710, 310, 880, 510)),
    ("insightface/t1", (235, 110, 410, 310)),
    ("insightface/t1", (430, 230, 610, 440)),
    ("insightface/tom_hanks", (0, 0, 112, 112)),
)
BACKGROUNDS = ("mate/aqua", "mate/blinds", "mate/dune", "mate/garden", "mate/storm")


def make_photos(count: int, dest: Path) -> list[Path]:
    """``count`` degraded ~1 MP photos with one face each (made once, then reused)."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = [dest / f"photo{i:03d}.png" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    by_name = {p.name: p.path for p in sample_data.all_photos()}
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        with Image.open(by_name[BACKGROUNDS[i % len(BACKGROUNDS)]]) as bg:
            x = int(rng.integers(0, bg.width - SIZE[0]))
            y = int(rng.integers(0, bg.height - SIZE[1]))
            photo = bg.convert("RGB").crop((x, y, x + SIZE[0], y + SIZE[1]))
        name, box = FACES[i % len(FACES)]
        with Image.open(by_name[name]) as src:
            face = src.convert("RGB").crop(box)
        width = int(rng.integers(180, 300))
        face = face.resize((width, round(width * face.height / face.width)), Image.BICUBIC)
        photo.paste(face, (int(rng.integers(0, SIZE[0] - face.width)), 100))
        lq = apply(to_tensor(np.asarray(photo)), PRESETS["mixed"], image_generator(0, path.name))
        Image.fromarray(from_tensor(lq, np.uint8)).save(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("extra", nargs="*", help="more f2s restore options (after --)")
    args = parser.parse_args()
    photos = sample_data.data_dir() / "bench" / "restore"
    make_photos(args.count, photos)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="f2s-bench-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "face2scene_cli", "restore", str(photos), "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run([*cmd, "--quiet", *args.extra], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"f2s restore failed ({proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads((out / "f2s-summary.json").read_text())
        reports = [json.loads(p.read_text()) for p in sorted(out.glob("photo*.png.json"))]
    load_after = os.getloadavg()
    n = summary["counts"]["done"]
    stages: dict[str, list[float]] = {}
    for rep in reports:
        for stage, seconds in rep["run"]["timings"].items():
            stages.setdefault(stage, []).append(seconds)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "options": args.extra,
        "images": n,
        "faces_per_image": sorted({len(r["faces"]) for r in reports}),
        "megapixels_mean": round(
            statistics.mean(r["input"]["width"] * r["input"]["height"] / 1e6 for r in reports), 3
        ),
        "wall_s": round(wall, 2),
        "engine_s": summary["run"]["timings"]["total"],
        "s_per_photo_wall": round(wall / n, 2),
        "images_per_s_wall": round(n / wall, 3),
        "images_per_s_engine": round(n / summary["run"]["timings"]["total"], 3),
        "stage_mean_s": {k: round(statistics.mean(v), 3) for k, v in sorted(stages.items())},
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "restore.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
