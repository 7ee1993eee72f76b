"""Choose a scene model's deconvolutions (``scene.json`` ``deblur``) on VAL.

Items: the motion set of ``benchmarks/motion_reading.py`` (5 / 9 / 13 px in two seeded
directions per photo, + noise 5/255) and the ``standard`` and ``ood`` suites (one second-order
sample). They go through ``f2s restore`` with a copy of the scene model that neither checks,
keeps nor deconvolves (the network's output and each photo's reading); each output is then
deconvolved offline (:class:`~face2scene_cli.restorers.deblur.Deblur`) at every setting of the
grids and scored against the clean photo (PSNR of the whole photo and of the face region, as
``benchmarks/restore_suite.py``):

* ``motion``: the Laplacian weight, on the items whose reading states a motion;
* ``gaussian``: the fraction of the read optical blur taken off and the Laplacian weight, for
  each resolution-loss gate (``max_downscale``) and motion gate (``max_motion_px``: the raw
  length the motion head reads, which the report does not hold under 4.5 px, so each photo is
  also read in process as ``f2s restore`` reads it), on the items without a stated motion whose
  optical blur reads at least ``min_px`` (1.2)::

    f2s data export val runs/val-photos
    python benchmarks/deblur_val.py runs/val-photos --work runs/deblur-val \\
        --out benchmarks/results/motion-deblur/val.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from motion_reading import degradation_reader, motion_items  # noqa: E402
from restore_suite import edited_copy, scores  # noqa: E402

from face2scene_cli.config import EvalConfig  # noqa: E402
from face2scene_cli.degradations.estimate import Estimate  # noqa: E402
from face2scene_cli.faces.detect import create_detector  # noqa: E402
from face2scene_cli.io.tensors import from_tensor, to_tensor  # noqa: E402
from face2scene_cli.research.eval.items import degraded_items  # noqa: E402
from face2scene_cli.research.eval.scene import face_mask  # noqa: E402
from face2scene_cli.restorers.deblur import Deblur, GaussianDeblur  # noqa: E402

MOTION = (0.1, 0.2, 0.3, 0.5, 0.8, 1.2)
FRACTIONS = (0.4, 0.5, 0.6, 0.7)
WEIGHTS = (0.01, 0.03, 0.1)
GATES = (1.5, 99.0)
MOTION_GATES = (1.0, 2.0, 99.0)
MIN_PX = 1.2


def unchecked(settings: dict[str, Any]) -> None:
    """A scene model's settings without its check, clean limits and deconvolution: the
    network's output as it is."""
    settings.pop("guard", None)
    settings.pop("deblur", None)


def candidates(estimate: Estimate) -> dict[str, Deblur]:
    """Every setting of the grids that acts on this reading, by its label."""
    if estimate.motion:
        return {f"motion {w:g}": Deblur(motion=w) for w in MOTION}
    out = {}
    for gate in GATES:
        for motion in MOTION_GATES:
            for f in FRACTIONS:
                for w in WEIGHTS:
                    g = GaussianDeblur(f, w, MIN_PX, max_downscale=gate, max_motion_px=motion)
                    if g.sigma(estimate) is not None:
                        label = f"gaussian {f:g} {w:g} <x{gate:g} motion<{motion:g}"
                        out[label] = Deblur(gaussian=g)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", type=Path, help="clean photos (f2s data export val|test)")
    ap.add_argument("--scene-model", default="scene-embedded")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    items = motion_items(photos)
    for suite in ("standard", "ood"):
        cfg = EvalConfig(suite=suite, second_order=1)
        items += [
            it
            for it in degraded_items([(p.name, p) for p in photos], cfg)
            if it.degradation != "clean" and (suite == "ood" or it.degradation != "second-order-0")
        ]
    inputs = args.work / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    named = {}
    for i, it in enumerate(items):
        name = f"{Path(it.name).stem}__{it.degradation}__{i}.png"
        Image.fromarray(it.lq).save(inputs / name)
        named[name] = it
    model = edited_copy(args.scene_model, args.work, unchecked)
    out_dir = args.work / "out"
    cmd = [sys.executable, "-m", "face2scene_cli", "restore", str(inputs), "-q"]
    subprocess.run([*cmd, "--threads", "2", "--out", str(out_dir), "--scene-model", str(model)])
    reader = degradation_reader("fadex-s")
    detector = create_detector()
    masks: dict[str, np.ndarray | None] = {}
    rows = []
    for name, it in named.items():
        if it.name not in masks:
            masks[it.name] = face_mask(it.clean.shape, detector.detect([it.clean])[0])
        mask = masks[it.name]
        estimate = reader.read_degradations([it.lq])[1][0].estimates
        if estimate is None:
            continue
        out = np.asarray(Image.open(out_dir / name).convert("RGB"))
        row = {"image": it.name, "degradation": it.degradation, "scores": {}}
        for label, pixels in [("input", it.lq), ("network", out)] + [
            (label, from_tensor(d(to_tensor(out), estimate)[0], np.uint8))
            for label, d in candidates(estimate).items()
        ]:
            row["scores"][label] = list(scores(it.clean, pixels, mask))
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    for part in ("motion", "gaussian"):
        labels = sorted({k for r in rows for k in r["scores"] if k.startswith(part)})
        acted = [r for r in rows if any(k.startswith(part) for k in r["scores"])]
        print(
            f"\n{part}: {len(acted)} items it can act on (network mean over them "
            f"{np.mean([r['scores']['network'][0] for r in acted]):.2f} dB)"
        )
        print(
            "| setting | items it acts on | mean gain over the network (those items: all "
            "acted-on items) | below the network | face regions below the input |"
        )
        print("|---|---|---|---|---|")
        for label in labels:
            gains, below, faces = [], 0, 0
            for r in acted:
                s = r["scores"]
                mine = s.get(label, s["network"])
                gains.append(mine[0] - s["network"][0])
                below += mine[0] < s["network"][0] - 0.005
                faces += mine[1] is not None and mine[1] < s["input"][1] - 0.005
            n = sum(label in r["scores"] for r in acted)
            print(f"| {label} | {n} | {np.mean(gains):+.3f} | {below} | {faces} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
