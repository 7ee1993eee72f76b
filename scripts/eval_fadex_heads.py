"""FaDeX's VAL table and issue 15's range check for several heads, on the same VAL crops.

    python scripts/eval_fadex_heads.py [--split test] OUT.json NAME=MODEL_FOLDER [...]

e.g. ``stage4=models/fadex-s motion=runs/fadex-heads-motion/heads-1796410004``; the crops and
range levels come from ``configs/fadex-motion.yaml`` (its VAL settings are fadex-wide's).
``--split test`` scores a release once on the TEST photos instead of the VAL photos.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.archs.fadex import FaDeX  # noqa: E402
from face2scene_cli.research.splits import load_splits  # noqa: E402
from face2scene_cli.research.train.fadex_config import load_train_config  # noqa: E402
from face2scene_cli.research.train.fadex_eval import (  # noqa: E402
    build_val_set,
    downscale_by_kernel,
    downscale_without_resampling,
    evaluate_fadex,
    evaluate_ranges,
)


def main(argv: list[str]) -> int:
    split = "val"
    if argv[:1] == ["--split"] and len(argv) > 1:
        split, argv = argv[1], argv[2:]
    if split not in ("val", "test") or len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__)
        return 2
    torch.set_num_threads(2)
    cfg = load_train_config(ROOT / "configs/fadex-motion.yaml")
    photos = load_splits(Path(cfg.data.splits))[split]
    t0 = time.monotonic()
    val = build_val_set(cfg, photos)
    out: dict = {"split": split, "val_build_s": round(time.monotonic() - t0, 1)}
    for arg in argv[1:]:
        name, path = arg.split("=", 1)
        model = FaDeX.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False).eval()
        t = time.monotonic()
        table = evaluate_fadex(model, val)
        table.pop("crop_sources")
        ranges = evaluate_ranges(model, cfg, photos)
        false_reads = downscale_without_resampling(model, cfg, photos)
        by_kernel = downscale_by_kernel(model, cfg, photos)
        out[name] = {
            "encoder_sha256": model.encoder_sha256(),
            "table": table,
            "ranges": ranges,
            "downscale_without_resampling": false_reads,
            "downscale_by_kernel": by_kernel,
            "eval_s": round(time.monotonic() - t, 1),
        }
        print(name, json.dumps(table["summary"]), json.dumps(ranges["met"]), flush=True)
        print(" downscale", {k: round(v["mean"], 2) for k, v in ranges["downscale"].items()})
        print(" without resampling", {k: round(v["mean"], 2) for k, v in false_reads.items()})
        for kernel, rows in by_kernel.items():
            print(f" downscale, {kernel}", {k: round(v["mean"], 2) for k, v in rows.items()})
    Path(argv[0]).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
