"""Face detectors on real photos: recall, false faces and speed (a script, not a test).

Ground truth was counted by hand (boxes drawn on each photo and looked at) on the package
photos with people; every other photo (Debian nature / objects, scikit-image coffee, the
cat, the mandrill, ...) has no face, so anything found there is a false face.

Matching: a detection is correct when its box centre lies inside a ground-truth box that no
higher-scoring detection took already (box conventions differ between backends: dlib's box
is tight around eyes-to-mouth, MTCNN's includes the forehead, so IoU would punish styles,
not mistakes). A second detection of the same face is a false face. Detections whose centre
falls in an "ignore" region (the blurred crowd behind Messi, a portrait painting on the
wall in t1) count neither way. Ground-truth faces smaller than ``--min-face`` are ignored too.

Photos are evaluated at their own size, downscaled to at most 1.3 MP, clean and as degraded
copies (:data:`DEGRADATIONS`: the ``f2s degrade`` presets, fixed seed, and a half-size
copy), since users' photos are degraded. Speed: every photo
resized to ~1 MP (1155x866), median of ``--repeats`` runs per photo, torch on 1 and on 2
threads (``--threads``; dlib is single-threaded, timed once); plus detection + landmarks on
the astronaut scaled to 1024x1024 (one face, 1 MP). Results: markdown tables on stdout and
``benchmarks/results/faces.json``.

    python benchmarks/bench_faces.py                      # mtcnn, dlib (+ insightface if present)
    python benchmarks/bench_faces.py --backends mtcnn,dlib,dlib-cnn
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli import sample_data  # noqa: E402
from face2scene_cli.degradations.record import PRESETS, Degradation  # noqa: E402
from face2scene_cli.degradations.sampling import apply, image_generator  # noqa: E402
from face2scene_cli.faces.backends.dlib import DlibDetector  # noqa: E402
from face2scene_cli.faces.backends.insightface import InsightFaceDetector  # noqa: E402
from face2scene_cli.faces.backends.mtcnn import MTCNNDetector  # noqa: E402
from face2scene_cli.faces.base import DetectedFace, FaceDetector  # noqa: E402
from face2scene_cli.faces.detect import (  # noqa: E402
    insightface_detector_file,
)
from face2scene_cli.io.tensors import from_tensor, to_tensor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TIMING_KEYS = ("ms_per_1mp_median", "ms_per_1mp_p90", "ms_one_face_1mp_median")
TIMING_HEADERS = (
    "ms / 1 MP photo, median: wall (CPU)",
    "90th percentile",
    "1 MP photo with 1 face: wall (CPU)",
)
EVAL_MAX_PIXELS = 1.3e6
TIMING_SIZE = (1155, 866)  # 1.0 MP, 4:3

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Truth:
    """Hand-labelled faces (x0, y0, x1, y1 in the photo's own pixels) and ignore regions."""

    faces: tuple[Box, ...]
    ignore: tuple[Box, ...] = ()
    note: str = ""


# Counted by hand on each photo (boxes from forehead to chin, ear to ear of the visible face).
GROUND_TRUTH: dict[str, Truth] = {
    "skimage/astronaut": Truth(((172, 62, 270, 175),), note="1 frontal face"),
    "skimage/camera": Truth(((195, 115, 262, 195),), note="1 face, partly behind the camera"),
    "insightface/t1": Truth(
        (
            (55, 262, 175, 397),  # woman left, head tilted
            (266, 150, 376, 272),  # woman behind, turned
            (448, 262, 570, 406),  # man centre-left
            (722, 346, 845, 476),  # man laughing
            (868, 62, 1014, 202),  # man standing, turned
            (1116, 276, 1230, 395),  # woman right
        ),
        ignore=((298, 55, 364, 106),),  # portrait painting on the wall
        note="6 faces; a small portrait painting ignored",
    ),
    "insightface/tom_hanks": Truth(((0, 0, 112, 112),), note="1 aligned face filling the crop"),
    "opencv/messi5": Truth(
        ((215, 85, 262, 135),),
        ignore=((0, 0, 548, 262),),  # blurred crowd: 10-15 px faces
        note="1 turned face; the blurred crowd (faces < 16 px) ignored",
    ),
    "opencv/basketball1": Truth(
        ((62, 88, 108, 140), (505, 62, 556, 124)),
        note="2 faces: one frontal, one turned away (cheek and ear only)",
    ),
}


@dataclass
class Score:
    """Counts for one backend at one threshold."""

    found: int = 0
    truth: int = 0
    false_people: int = 0  # false faces on the photos with people
    false_empty: int = 0  # false faces on the photos without people
    photos_with_false: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found / max(self.truth, 1)


def _centre_in(face: DetectedFace, box: Box) -> bool:
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def match(faces: list[DetectedFace], truth: Truth, scale: float, min_face: int) -> dict:
    """Greedy one-to-one matching by descending score; see the module docstring."""
    gts = [tuple(v * scale for v in b) for b in truth.faces]
    big = [min(b[2] - b[0], b[3] - b[1]) >= min_face for b in gts]
    ignore = [tuple(v * scale for v in b) for b in truth.ignore]
    taken = [False] * len(gts)
    tp = fp = 0
    for face in sorted(faces, key=lambda f: -f.score):
        hit = next((i for i, b in enumerate(gts) if not taken[i] and _centre_in(face, b)), None)
        if hit is not None:
            taken[hit] = True
            tp += big[hit]
        elif not any(_centre_in(face, b) for b in ignore):
            fp += 1
    missed = [i for i in range(len(gts)) if big[i] and not taken[i]]
    return {"tp": tp, "fp": fp, "truth": sum(big), "missed": missed}


def load(path: Path, max_pixels: float | None = None, size: tuple[int, int] | None = None):
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = 1.0
        if size is not None:
            im = im.resize(size, Image.Resampling.BICUBIC)
        elif max_pixels and im.width * im.height > max_pixels:
            scale = (max_pixels / (im.width * im.height)) ** 0.5
            im = im.resize(
                (round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC
            )
        return np.asarray(im), scale


def build(name: str, min_face: int) -> tuple[FaceDetector, list[float], float]:
    """A backend at its lowest threshold, the thresholds to report, and its default."""
    if name == "mtcnn":
        return MTCNNDetector(min_face, score_threshold=0.7), [0.7, 0.8, 0.9, 0.95, 0.98], 0.95
    if name == "dlib":
        det = DlibDetector(min_face, threshold=-0.5)
        return det, [-0.5, -0.25, 0.0, 0.15, 0.3, 0.5], 0.3
    if name == "dlib-cnn":
        det = DlibDetector(min_face, model="cnn", upsample=0, threshold=-0.5)
        return det, [-0.5, 0.0, 0.5], 0.0
    if name == "insightface":
        return InsightFaceDetector(min_face, score_threshold=0.3), [0.3, 0.5, 0.7], 0.5
    raise SystemExit(f"unknown backend {name}")


def to_score_scale(name: str, threshold: float) -> float:
    """Backend threshold -> the [0, 1] DetectedFace.score it corresponds to."""
    if name.startswith("dlib"):
        return 1.0 / (1.0 + np.exp(-2.0 * threshold))
    return threshold


# Degraded copies (face2scene_cli.degradations, fixed seeds): what users' photos look like.
DEGRADATIONS: dict[str, Degradation | None] = {
    "clean": None,
    "noise15": PRESETS["noise15"],
    "blur-noise": PRESETS["blur-noise"],
    "mixed": PRESETS["mixed"],
    "mixed-x2": Degradation(
        "parametric", blur_sigma_px=1.0, noise_sigma=10.0, jpeg_quality=45, downscale=2.0
    ),
}


def degraded(img: np.ndarray, params: Degradation | None, key: str) -> np.ndarray:
    if params is None:
        return img
    gen = image_generator(0, key)
    out = apply(to_tensor(img), params, gen)
    return from_tensor(out, np.uint8)


def detect_all(det: FaceDetector, photos, variant: str) -> dict:
    """photo name -> (faces, scale from the photo's own pixels to the detector's input)."""
    params = DEGRADATIONS[variant]
    found = {}
    for photo in photos:
        img, scale = load(photo.path, EVAL_MAX_PIXELS)
        img = degraded(img, params, photo.name)
        found[photo.name] = (det.detect([img])[0], scale / (params.scale if params else 1.0))
    return found


def score(name: str, found: dict, photos, threshold: float, min_face: int) -> Score:
    cut = to_score_scale(name, threshold) - 1e-9
    s = Score()
    for photo in photos:
        faces, scale = found[photo.name]
        faces = [f for f in faces if f.score >= cut]
        truth = GROUND_TRUTH.get(photo.name, Truth(()))
        m = match(faces, truth, scale, min_face)
        s.found += m["tp"]
        s.truth += m["truth"]
        s.missed += [f"{photo.name}#{i}" for i in m["missed"]]
        if photo.name in GROUND_TRUTH:
            s.false_people += m["fp"]
        else:
            s.false_empty += m["fp"]
        if m["fp"]:
            s.photos_with_false.append(f"{photo.name}({m['fp']})")
    return s


def timing(det: FaceDetector, photos, repeats: int) -> dict:
    def runs(img: np.ndarray, n: int) -> tuple[float, float, int]:
        wall, cpu = [], []
        for _ in range(n):
            t, c = time.perf_counter(), time.process_time()
            faces = det.detect([img])[0]
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        return statistics.median(wall), statistics.median(cpu), len(faces)

    wall, cpu = [], []
    for photo in photos:
        img, _ = load(photo.path, size=TIMING_SIZE)
        det.detect([img])  # warm-up (first-call allocations)
        w, c, _ = runs(img, repeats)
        wall.append(w)
        cpu.append(c)
    astro = next(p for p in photos if p.name == "skimage/astronaut")
    img, _ = load(astro.path, size=(1024, 1024))
    one_wall, one_cpu, found = runs(img, max(repeats, 5))
    return {
        "ms_per_1mp_median": 1000 * statistics.median(wall),
        "ms_per_1mp_p90": 1000 * float(np.percentile(wall, 90)),
        "cpu_ms_per_1mp_p90": 1000 * float(np.percentile(cpu, 90)),
        "cpu_ms_per_1mp_median": 1000 * statistics.median(cpu),
        "ms_one_face_1mp_median": 1000 * one_wall,
        "cpu_ms_one_face_1mp_median": 1000 * one_cpu,
        "one_face_found": found,
    }


def landmark_agreement(a: dict, b: dict) -> dict:
    """Mean / max distance between two backends' 5 landmarks on the same faces, in units of
    the inter-ocular distance (faces paired by box centre)."""
    errs = []
    for name, (faces_a, _) in a.items():
        for fa in faces_a:
            for fb in b.get(name, ([], 1))[0]:
                if _centre_in(fb, tuple(fa.box)) and _centre_in(fa, tuple(fb.box)):
                    iod = max(fb.interocular, 1e-6)
                    errs.append(np.linalg.norm(fa.landmarks - fb.landmarks, axis=1) / iod)
    if not errs:
        return {}
    e = np.stack(errs)
    return {
        "faces": len(e),
        "mean_nme": float(e.mean()),
        "per_point_mean": [round(float(v), 4) for v in e.mean(0)],
        "max": float(e.max()),
    }


def _ms(times: dict, key: str) -> str:
    """``wall (cpu)`` milliseconds."""
    return f"{times[key]:.0f} ({times['cpu_' + key]:.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=None, help="comma list (default: all available)")
    parser.add_argument("--min-face", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="torch thread counts to time with")
    parser.add_argument(
        "--no-degraded", dest="degraded", action="store_false", help="clean photos only"
    )
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    names = (
        args.backends.split(",")
        if args.backends
        else ["mtcnn", "dlib"] + (["insightface"] if insightface_detector_file() else [])
    )
    photos = sample_data.all_photos()
    missing_gt = [n for n in GROUND_TRUTH if n not in {p.name for p in photos}]
    if missing_gt:
        raise SystemExit(f"photos missing: {missing_gt} (run `make testdata`)")
    n_people = sum(p.name in GROUND_TRUTH for p in photos)
    n_empty = len(photos) - n_people

    variants = list(DEGRADATIONS) if args.degraded else ["clean"]
    results, rows, time_rows, raw = {}, [], [], {}
    for name in names:
        det, thresholds, default = build(name, args.min_face)
        found = {v: detect_all(det, photos, v) for v in variants}
        raw[name] = found["clean"]
        scores = {
            v: {t: score(name, found[v], photos, t, args.min_face) for t in thresholds}
            for v in variants
        }
        times = {}
        counts = {"dlib": thread_counts[:1], "dlib-cnn": []}.get(name, thread_counts)
        for n in counts:
            torch.set_num_threads(n)
            times[n] = timing(det, photos, args.repeats)
            label = "-" if name.startswith("dlib") else str(n)
            time_rows.append((name, label, *(_ms(times[n], k) for k in TIMING_KEYS)))
        results[name] = {
            "default_threshold": default,
            "variants": {
                v: {
                    str(t): {
                        "recall": s.recall,
                        "found": s.found,
                        "truth": s.truth,
                        "false_on_people_photos": s.false_people,
                        "false_on_empty_photos": s.false_empty,
                        "photos_with_false": s.photos_with_false,
                        "missed": s.missed,
                    }
                    for t, s in per_t.items()
                }
                for v, per_t in scores.items()
            },
            "timing": times,
        }
        for t in thresholds:
            clean = scores["clean"][t]
            rows.append(
                (
                    name + (" (default)" if t == default else ""),
                    f"{t:g}",
                    f"{clean.found}/{clean.truth}",
                    f"{clean.false_people} + {clean.false_empty}",
                    *(
                        f"{scores[v][t].found}/{scores[v][t].truth}, "
                        f"{scores[v][t].false_people + scores[v][t].false_empty}"
                        for v in variants[1:]
                    ),
                )
            )
        print(f"{name}: done", file=sys.stderr)
    agreement = (
        landmark_agreement(raw["mtcnn"], raw["dlib"]) if {"mtcnn", "dlib"} <= set(raw) else {}
    )

    header = (
        "backend",
        "threshold",
        "faces found",
        "false faces (people + no-people photos)",
        *(f"{v}: found, false" for v in variants[1:]),
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    header = ("backend", "torch threads", *TIMING_HEADERS)
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in time_rows]
    markdown = "\n".join(lines)
    described = "; ".join(
        f"{v} = {DEGRADATIONS[v].to_dict()}" for v in variants[1:] if DEGRADATIONS[v]
    )
    setup = (
        f"{len(photos)} photos ({n_people} with people: "
        f"{sum(len(t.faces) for t in GROUND_TRUTH.values())} hand-counted faces; {n_empty} "
        f"without); min face {args.min_face} px; correct = box centre inside a hand-drawn "
        f"face box. Degraded copies (face2scene_cli.degradations, seed 0): {described or 'none'}. "
        f"Times: median over the {len(photos)} photos of the median of {args.repeats} runs at "
        f"1155x866, {platform.machine()}, {os.cpu_count()} "
        f"cores visible, shared with other jobs (CPU = process time). dlib threshold = HOG "
        f"margin (0 = dlib's default); mtcnn threshold = O-Net probability (0.7 = "
        f"facenet-pytorch's last-stage cut)."
    )
    print(markdown)
    print()
    print(setup)
    if agreement:
        print(f"\nmtcnn vs dlib-68 landmarks (units of inter-ocular distance): {agreement}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "markdown": markdown,
        "setup": setup,
        "backends": results,
        "landmarks_mtcnn_vs_dlib68": agreement,
        "ground_truth": {k: {"faces": v.faces, "ignore": v.ignore, "note": v.note}
                         for k, v in GROUND_TRUTH.items()},
        "torch": torch.__version__,
        "python": platform.python_version(),
    }  # fmt: skip
    (RESULTS / "faces.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
