"""Where to read the code of a photo without a face: scene-crop choices compared on VAL.

The VAL photos in which no face is detected (6 of 8), long side 512, under eight presets of
the OOD suite. For each choice of windows (all ranked by :func:`scene_crop_boxes`' detail
measure) FaDeX reads the crops, restored by the blind Stage I restorer, and the scene model
restores the photo with that code (no consistency check: the network's output). ``blind`` is
the null code, what ``f2s restore`` did before scene crops. Written: PSNR per preset, items
worse than their input, and FaDeX's noise error where the truth is known::

    f2s data export val runs/val-photos
    python benchmarks/scene_crops_val.py runs/val-photos \
        --out benchmarks/results/scene-crops-val/choices.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.config import EvalConfig  # noqa: E402
from face2scene_cli.io.tensors import to_tensor  # noqa: E402
from face2scene_cli.pipelines import reading  # noqa: E402
from face2scene_cli.research.eval.items import degraded_items  # noqa: E402
from face2scene_cli.research.eval.scene import load_models  # noqa: E402
from face2scene_cli.research.metrics import psnr  # noqa: E402

PRESETS = (
    "clean",
    "camera-jpeg80",
    "jpeg10",
    "jpeg20",
    "noise30",
    "down4",
    "blur3",
    "gray-noise10",
)
NOISE_TRUTH = {"clean": 0.0, "noise30": 30.0, "gray-noise10": 10.0, "blur3": 0.0, "down4": 0.0}
Box = tuple[int, int, int, int]


def _spread(ranked: list[Box], count: int) -> list[Box]:
    n = len(ranked)
    return [ranked[r] for r in sorted({int((k + 0.5) * n / count) for k in range(count)})]


def _by_centre(ranked: list[Box], h: int, w: int) -> list[Box]:
    return sorted(
        ranked, key=lambda b: ((b[0] + b[2]) / 2 - w / 2) ** 2 + ((b[1] + b[3]) / 2 - h / 2) ** 2
    )


CHOICES: dict[str, Callable[[list[Box], int, int], list[Box]]] = {
    "most detailed 4": lambda r, h, w: r[:4],
    "flattest 4": lambda r, h, w: r[::-1][:4],
    "centre 1": lambda r, h, w: _by_centre(r, h, w)[:1],
    "nearest the centre 4": lambda r, h, w: _by_centre(r, h, w)[:4],
    "spread over detail 2": lambda r, h, w: _spread(r, 2),
    "spread over detail 4": lambda r, h, w: _spread(r, 4),
    "spread over detail 8 (chosen)": lambda r, h, w: _spread(r, 8),
    "every window (<= 32)": lambda r, h, w: r[:32],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, help="the VAL photos (f2s data export val)")
    ap.add_argument("--scene-model", default="scene-embedded")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = load_models(args.scene_model, upscaler=None)
    assert models.scene is not None and models.reader is not None and models.detector is not None
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    items = degraded_items([(p.name, p) for p in photos], EvalConfig(suite="ood", presets=PRESETS))
    items = [it for it in items if not models.detector.detect([it.lq])[0]]
    ranked_all = reading.scene_crop_boxes
    rows = []
    for choice, pick in {"blind": None, **CHOICES}.items():
        for it in items:
            h, w = it.lq.shape[:2]
            boxes = pick(ranked_all(it.lq, 96, 10**6), h, w) if pick else []
            reading.scene_crop_boxes = lambda *_a, b=boxes: b  # the reader cuts these windows
            rd = models.reader.read(it.lq, [])
            read = rd.readings
            tokens = None
            if pick is not None:
                tokens = models.scene.tokens_for_crops(
                    [r.z for r in read], [r.weight for r in read]
                )
            y = models.scene.restore(to_tensor(it.lq), tokens, noise=rd.noise_curve)
            out = (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            rows.append(
                {
                    "choice": choice,
                    "image": it.name,
                    "degradation": it.degradation,
                    "crops": len(boxes),
                    "psnr": min(psnr(it.clean, out), 99.0),
                    "input": min(psnr(it.clean, it.lq), 99.0),
                    "noise_read": rd.estimates.noise_sigma if pick and rd.estimates else None,
                }
            )
        reading.scene_crop_boxes = ranked_all
    table = {}
    for choice in ["blind", *CHOICES]:
        mine = [r for r in rows if r["choice"] == choice]
        per = {
            d: float(np.mean([r["psnr"] for r in mine if r["degradation"] == d])) for d in PRESETS
        }
        worse = sum(r["psnr"] < r["input"] for r in mine if r["degradation"] != "clean")
        noise = {
            d: float(np.mean([abs(r["noise_read"] - t) for r in mine if r["degradation"] == d]))
            for d, t in NOISE_TRUTH.items()
            if choice != "blind"
        }
        table[choice] = {"psnr": per, "worse_than_input": worse, "noise_error": noise}
        cells = " | ".join(f"{per[d]:.2f}" for d in PRESETS)
        print(f"| {choice} | {cells} | {worse} | {noise.get('noise30', float('nan')):.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    photos_used = sorted({r["image"] for r in rows})
    args.out.write_text(json.dumps({"photos": photos_used, "table": table, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
