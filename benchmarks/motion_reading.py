"""How well the reading states a motion blur: its length, its direction, and false reads.

The photos of a split go through the eval suites (``mild``, ``standard``, ``ood`` with one
second-order sample) and a motion set (motion blur of 5, 9 and 13 px in two seeded directions
per photo, with Gaussian noise 5/255); each degraded photo is read as ``f2s degrade-code
--scene`` reads it (the same pipeline call, in process, to see the raw motion length under
the reporting threshold). Printed: per motion length the length read, how many report a
motion and the direction's error where one is reported; over the items without motion the raw
length read; per threshold the false reads and the motion items reported::

    f2s data export val runs/val-photos
    python benchmarks/motion_reading.py runs/val-photos \\
        --out benchmarks/results/motion-reading/val.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.config import EvalConfig  # noqa: E402
from face2scene_cli.degradations.estimate import MOTION_READ_PX  # noqa: E402
from face2scene_cli.degradations.record import Degradation  # noqa: E402
from face2scene_cli.degradations.sampling import apply  # noqa: E402
from face2scene_cli.io.tensors import from_tensor  # noqa: E402
from face2scene_cli.pipelines.reading import SCENE_CROPS  # noqa: E402
from face2scene_cli.pipelines.restore import Face2ScenePipeline  # noqa: E402
from face2scene_cli.research.eval.items import EvalItem, degraded_items  # noqa: E402

LENGTHS = (5.0, 9.0, 13.0)
THRESHOLDS = (3.0, 3.5, 4.0, 4.5, 5.0)


def motion_items(photos: list[Path], seed: int = 0) -> list[EvalItem]:
    """Each photo of the ``mild`` suite's size under :data:`LENGTHS` px of motion blur in two
    directions drawn from ``seed``, then Gaussian noise 5/255."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    clean = degraded_items([(p.name, p) for p in photos], EvalConfig(suite="mild", second_order=0))
    for it in (i for i in clean if i.degradation == "clean"):
        x = torch.from_numpy(it.clean.copy()).permute(2, 0, 1)[None].float() / 255.0
        for length in LENGTHS:
            for _ in range(2):
                angle = float(torch.rand(1, generator=gen)) * 180.0
                deg = Degradation(
                    "parametric", motion_px=length, motion_angle_deg=angle, noise_sigma=5.0
                )
                y = apply(x, deg, torch.Generator().manual_seed(len(items)))
                lq = from_tensor(y, np.uint8)
                items.append(EvalItem(it.name, f"motion{length:.0f}", it.clean, lq, deg))
    return items


def degradation_reader(fadex: str) -> Face2ScenePipeline:
    """The reading ``f2s degrade-code --scene`` makes (faces with the blind restorer, else
    scene crops), whose estimates keep the raw motion length."""
    return Face2ScenePipeline.from_pretrained(
        None, fadex=fadex, face_restorer="blind", scene_crops=SCENE_CROPS, batch_size=8
    )


def angle_error(read: float, true: float) -> float:
    """Degrees between two axial directions (0..90)."""
    return abs((read - true + 90.0) % 180.0 - 90.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", type=Path, help="clean photos (f2s data export val|test)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="fadex-s", help="FaDeX model in the zoo")
    args = ap.parse_args()
    torch.set_num_threads(2)
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    items = motion_items(photos)
    for suite in ("mild", "standard", "ood"):
        cfg = EvalConfig(suite=suite, second_order=0 if suite == "mild" else 1)
        items += degraded_items([(p.name, p) for p in photos], cfg)
    pipe = degradation_reader(args.model)
    rows = []
    for it in items:
        reading = pipe.read_degradations([it.lq])[1][0]
        if reading.estimates is None:
            continue
        e = reading.estimates
        second = it.truth is None or it.truth.mode == "second-order"
        rows.append(
            {
                "image": it.name,
                "degradation": it.degradation,
                "true_px": None if second else it.truth.motion_px,
                "true_angle": None if second else it.truth.motion_angle_deg,
                "read_px": e.motion_px,
                "read_angle": e.motion_angle_deg,
                "source": "face" if reading.faces else "scene",
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(f"reporting threshold MOTION_READ_PX = {MOTION_READ_PX:g} px\n")
    print(
        "| true length | items | length read (median, min-max) | reported | direction error "
        "of those reported (median / max) |\n|---|---|---|---|---|"
    )
    for length in LENGTHS:
        rs = [r for r in rows if r["true_px"] == length]
        px = np.array([r["read_px"] for r in rs])
        err = [
            angle_error(r["read_angle"], r["true_angle"])
            for r in rs
            if r["read_px"] >= MOTION_READ_PX
        ]
        direction = f"{np.median(err):.1f} / {max(err):.1f} deg" if err else "-"
        spread = f"{np.median(px):.1f} ({px.min():.1f}-{px.max():.1f})"
        print(f"| {length:.0f} px | {len(rs)} | {spread} | {len(err)} of {len(rs)} | {direction} |")
    rest = [r for r in rows if r["true_px"] == 0.0]
    px = np.array([r["read_px"] for r in rest])
    print(
        f"\nwithout motion: {len(rest)} items, length read median {np.median(px):.2f}, p95 "
        f"{np.percentile(px, 95):.2f}, max {px.max():.2f} px"
    )
    worst = sorted(rest, key=lambda r: -r["read_px"])[:3]
    print(
        "highest:", ", ".join(f"{r['image']} {r['degradation']} {r['read_px']:.2f}" for r in worst)
    )
    moving = [r for r in rows if r["true_px"]]
    print("\n| threshold | false reads (no motion) | motion items reported |\n|---|---|---|")
    for t in THRESHOLDS:
        false = sum(r["read_px"] >= t for r in rest)
        found = sum(r["read_px"] >= t for r in moving)
        print(f"| {t:g} px | {false} of {len(rest)} | {found} of {len(moving)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
