"""How FaDeX reads motion blur (and Gaussian blur) on VAL crops of several sizes.

    python scripts/motion_crop_sizes.py OUT.json NAME=MODEL_FOLDER [...]

Faces are read at their native size (64-160 px), so a motion head trained on 128 px crops
alone misses small faces. Per crop side (64, 96, 128 px): the mean blur reading of the range
check's motion levels (5 / 9 / 13 px, a random direction per crop: should read L / sqrt 12)
and of Gaussian blur 1 and 2 px (``fadex_eval.evaluate_ranges`` with ``configs/fadex-motion.yaml``,
its ``val.crop`` changed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.archs.fadex import FaDeX  # noqa: E402
from face2scene_cli.research.splits import load_splits  # noqa: E402
from face2scene_cli.research.train.fadex_config import load_train_config  # noqa: E402
from face2scene_cli.research.train.fadex_eval import RANGE_LEVELS, evaluate_ranges  # noqa: E402

SIDES = (64, 96, 128)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__)
        return 2
    torch.set_num_threads(2)
    photos = load_splits(ROOT / "data/splits.yaml")["val"]
    levels = {"motion": RANGE_LEVELS["motion"], "blur": (1.0, 2.0)}
    out: dict = {}
    for arg in argv[1:]:
        name, path = arg.split("=", 1)
        model = FaDeX.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False).eval()
        out[name] = {}
        for side in SIDES:
            cfg = load_train_config(ROOT / "configs/fadex-motion.yaml").replace("val", crop=side)
            table = evaluate_ranges(model, cfg, photos, levels=levels)
            out[name][str(side)] = {k: {v: r["mean"] for v, r in table[k].items()} for k in levels}
            print(
                name,
                side,
                {k: [round(r, 2) for r in v.values()] for k, v in out[name][str(side)].items()},
                flush=True,
            )
    Path(argv[0]).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
