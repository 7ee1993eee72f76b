"""Score learned upscalers (``EmbeddedSceneNet(upscale=s)``) against what ``--scale s`` ran
before them and against Real-ESRGAN x4plus, on one split's photos.

Each photo (area-downscaled to ``--long-side``, cut to a multiple of s) is degraded by the
Real-ESRGAN second-order pipeline ending at 1/s (``--seeds``, one item per seed), exactly as
the scene trainer's validation does (:func:`build_val_items`); then, per item:

* ``bicubic``: bicubic x s;
* ``x1``: the zoo's ``scene-embedded`` after bicubic x s (what ``f2s restore --scale s`` ran
  before a learned upscaler existed), blind;
* ``realesrgan``: Real-ESRGAN x4plus (area-resized to x s when s = 2);
* ``<model> blind`` and ``<model> code`` (face-code tokens from FaDeX on the face crop).

Reports PSNR / SSIM (RGB, 8-bit) and the sharpness ratio (gradient energy over the truth's)
per method (the scene trainer's :func:`evaluate_items`), mean over items, and seconds per
item, as JSON (``--out``) and a Markdown table on stdout. Choose on ``--split val``; score a
release once on ``--split test``.

    python scripts/eval_upscale.py runs/gpu/scene-gpu-x4 --scale 4 --split val --out x4.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.io.images import atomic_write_bytes  # noqa: E402
from face2scene_cli.research.splits import load_splits  # noqa: E402
from face2scene_cli.research.train.scene_config import ValSection  # noqa: E402
from face2scene_cli.research.train.scene_data import build_val_items, evaluate_items  # noqa: E402
from face2scene_cli.restorers.face.blind import BlindFaceRestorer  # noqa: E402
from face2scene_cli.restorers.loading import load_fadex  # noqa: E402
from face2scene_cli.restorers.scene import SceneRestorer, load_scene_restorer  # noqa: E402
from face2scene_cli.restorers.upscaler import load_upscale_restorer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="upscaler model folders")
    ap.add_argument("--scale", type=int, choices=(2, 4), required=True)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--long-side", type=int, default=512)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--no-realesrgan", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = args.scale
    photos = load_splits(ROOT / "data/splits.yaml")[args.split]
    val = ValSection(long_side=args.long_side, presets=(), second_order_seeds=tuple(args.seeds))
    items = build_val_items(photos, val, BlindFaceRestorer(), s)
    fadex = load_fadex()
    with torch.inference_mode():
        for it in items:
            it.z = fadex.encode_pair(it.face_lq, it.face_hq)
    # name -> (restorer or None for bicubic, evaluate_items mode)
    methods: dict[str, tuple[object, str]] = {
        "bicubic": (None, "input"),
        "x1": (load_scene_restorer("scene-embedded"), "blind"),
    }
    if not args.no_realesrgan:
        methods["realesrgan"] = (load_upscale_restorer(), "blind")
    for folder in args.models:
        model = SceneRestorer.from_pretrained(folder)
        if model.upscale != s:
            raise SystemExit(f"{folder}: upscales x{model.upscale}, not x{s}")
        methods[f"{folder.name} blind"] = (model, "blind")
        methods[f"{folder.name} code"] = (model, "code")
    rows, means = [], {}
    for name, (restorer, mode) in methods.items():
        t = time.perf_counter()
        with torch.inference_mode():
            table = evaluate_items(restorer, items, mode, scale=s, sharpness=True)
        seconds = (time.perf_counter() - t) / len(items)
        rows += [{**r, "method": name} for r in table["rows"]]
        means[name] = {
            k: float(np.mean([r[k] for r in table["rows"] if r[k] is not None]))
            for k in ("psnr", "ssim", "sharpness")
        } | {"seconds": seconds}
    result = {
        "scale": s,
        "split": args.split,
        "long_side": args.long_side,
        "seeds": args.seeds,
        "photos": [p.name for p in photos],
        "items": len(items),
        "means": means,
        "rows": rows,
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"x{s} on {args.split} ({len(items)} items, long side {args.long_side})")
    print("| method | PSNR | SSIM | sharpness | s/item |")
    print("|---|---|---|---|---|")
    for name, m in means.items():
        print(
            f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['sharpness']:.2f} | "
            f"{m['seconds']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
