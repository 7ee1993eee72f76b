"""Scene models scored by the scene trainer's own validation, on one training config's VAL items.

The trainer validates its EMA weights every ``val.every_s``; this scores finished models (zoo
names or model folders) on the same items (``build_val_items``: the VAL photos at
``val.long_side`` under ``val``'s presets, parametric items and second-order seeds, each code
read as ``f2s restore`` reads it), in fp32 on CPU as the trainer does, so a run's curve can
be compared with the model it started from::

    python benchmarks/trainer_val.py configs/scene-gentle.yaml scene-embedded \\
        checkpoints/scene-gentle --out benchmarks/results/scene-gentle-val/compare.json

The score is the trainer's (:func:`~face2scene_cli.research.train.scene.validation_score`).
``--without-noise-curve`` also scores each model that reads the noise curve with the curve
withheld (``NAME (no curve)``), the path of the trainer's ``train.noise_dropout`` samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from face2scene_cli.research.splits import load_splits
from face2scene_cli.research.train.scene import validation_score
from face2scene_cli.research.train.scene_config import load_scene_config
from face2scene_cli.research.train.scene_data import build_val_items, evaluate_items
from face2scene_cli.restorers.face.blind import BlindFaceRestorer
from face2scene_cli.restorers.loading import load_fadex
from face2scene_cli.restorers.scene import RestoreSettings, SceneRestorer, load_scene_restorer
from face2scene_cli.zoo import model_location


class _WithoutCurve:
    """``restorer`` with every call's noise curve withheld."""

    def __init__(self, restorer: SceneRestorer) -> None:
        self._restorer = restorer

    def __getattr__(self, name: str) -> object:
        return getattr(self._restorer, name)

    def restore(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self._restorer.restore(*args, **{**kwargs, "noise": None})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="a scene training config (its data and val)")
    ap.add_argument("models", nargs="+", help="zoo names or model folders")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--without-noise-curve",
        action="store_true",
        help="also score models that read the noise curve without it",
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_scene_config(args.config)
    splits = load_splits(Path(cfg.data.splits))
    items = build_val_items(splits["val"], cfg.val, BlindFaceRestorer())
    fadex = load_fadex(cfg.network.fadex)
    with torch.inference_mode():
        for it in items:
            it.z = fadex.encode_pair(it.face_lq, it.face_hq)
    out = {}
    for name in args.models:
        model, root = model_location(name)
        loaded = load_scene_restorer(model, root=root)
        fp32 = SceneRestorer(loaded.net, RestoreSettings(color_fix="none"), loaded.mapnet, "cpu")
        runs = [(name, fp32)]
        if args.without_noise_curve and fp32.takes_noise:
            runs.append((f"{name} (no curve)", _WithoutCurve(fp32)))
        for label, restorer in runs:
            with torch.inference_mode():
                table = evaluate_items(restorer, items, "code")
            means = {k: round(v["psnr"], 3) for k, v in table["means"].items()}
            out[label] = {"score": round(validation_score(table), 3), "means": means}
            print(label, out[label]["score"], means, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
