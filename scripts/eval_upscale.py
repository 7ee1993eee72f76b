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
per method, mean over items, as JSON (``--out``) and a Markdown table on stdout. Choose on
``--split val``; score a release once on ``--split test``.

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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.io.images import atomic_write_bytes  # noqa: E402
from face2scene_cli.research.metrics import psnr_torch, sharpness_ratio, ssim_torch  # noqa: E402
from face2scene_cli.research.splits import load_splits  # noqa: E402
from face2scene_cli.research.train.scene_config import ValSection  # noqa: E402
from face2scene_cli.research.train.scene_data import build_val_items  # noqa: E402
from face2scene_cli.restorers.face.blind import BlindFaceRestorer  # noqa: E402
from face2scene_cli.restorers.loading import load_fadex  # noqa: E402
from face2scene_cli.restorers.scene import SceneRestorer, load_scene_restorer  # noqa: E402
from face2scene_cli.restorers.upscaler import load_upscale_restorer  # noqa: E402


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


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
            it.z = fadex(it.face_lq, it.face_hq).z
    methods: dict[str, object] = {"bicubic": None, "x1": load_scene_restorer("scene-embedded")}
    if not args.no_realesrgan:
        methods["realesrgan"] = load_upscale_restorer()
    for folder in args.models:
        model = SceneRestorer.from_pretrained(folder)
        if model.upscale != s:
            raise SystemExit(f"{folder}: upscales x{model.upscale}, not x{s}")
        methods[f"{folder.name} blind"] = model
        methods[f"{folder.name} code"] = model
    rows = []
    for it in items:
        for name, restorer in methods.items():
            t = time.perf_counter()
            with torch.inference_mode():
                if restorer is None:
                    out = F.interpolate(it.lq, scale_factor=s, mode="bicubic", align_corners=False)
                else:
                    tokens = None
                    if name.endswith(" code"):
                        tokens = restorer.mapnet(it.z.float()).tokens
                    out = restorer.restore(it.lq, tokens, scale=s)
            q = (out.clamp(0, 1) * 255).round() / 255
            rows.append(
                {
                    "image": it.name,
                    "degradation": it.degradation,
                    "method": name,
                    "psnr": float(psnr_torch(q, it.clean)[0]),
                    "ssim": float(ssim_torch(q, it.clean)[0]),
                    "sharpness": sharpness_ratio(_u8(q), _u8(it.clean)),
                    "seconds": time.perf_counter() - t,
                }
            )
    means = {}
    for name in methods:
        sel = [r for r in rows if r["method"] == name]
        means[name] = {
            k: float(np.mean([r[k] for r in sel if r[k] is not None]))
            for k in ("psnr", "ssim", "sharpness", "seconds")
        }
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
