"""What users get: an eval suite's degraded photos through ``f2s restore`` itself.

Unlike ``f2s eval``'s ``code`` column (the network's output), this runs the command, with its
consistency check and fallbacks, once as is and once with ``--blind``, and scores both against
the clean photos. ``before scene crops`` is what ``f2s restore`` gave before 2026-12-05: the
face-code output where the code was read off faces, the ``--blind`` output where it was read
off scene crops (such photos were restored blind, unchecked). Per preset: mean PSNR, items
worse than their input, photos that fell back::

    f2s data export val runs/val-photos
    python benchmarks/restore_suite.py runs/val-photos --suite ood --work runs/restore-suite-val \\
        --out benchmarks/results/scene-crops-val/restore-val-ood.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.config import EvalConfig  # noqa: E402
from face2scene_cli.research.eval.items import degraded_items  # noqa: E402
from face2scene_cli.research.metrics import psnr  # noqa: E402

MODES = {"code": [], "blind": ["--blind"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, help="clean photos (f2s data export val|test)")
    ap.add_argument("--suite", default="ood", choices=("standard", "ood"))
    ap.add_argument("--scene-model", default="scene-embedded")
    ap.add_argument("--work", type=Path, required=True, help="degraded inputs and outputs")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    items = degraded_items([(p.name, p) for p in photos], EvalConfig(suite=args.suite))
    inputs = args.work / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    named = {}
    for it in items:
        name = f"{Path(it.name).stem}__{it.degradation}.png"
        Image.fromarray(it.lq).save(inputs / name)
        named[name] = it
    f2s = [sys.executable, "-m", "face2scene_cli", "restore", str(inputs), "-q", "--threads", "2"]
    for mode, extra in MODES.items():
        out = args.work / mode
        cmd = [*f2s, "--out", str(out), "--scene-model", args.scene_model, *extra]
        subprocess.run(cmd, check=False)  # exit 1 when a photo failed: its report says why
    rows = []
    for name, it in named.items():
        row = {"image": it.name, "degradation": it.degradation}
        row["input"] = min(psnr(it.clean, it.lq), 99.0)
        for mode in MODES:
            out = np.asarray(Image.open(args.work / mode / name).convert("RGB"))
            report = json.loads((args.work / mode / f"{name}.json").read_text())
            row[mode] = min(psnr(it.clean, out), 99.0)
            row[f"{mode}_fallback"] = [f["region"] for f in report["scene"]["fallback"]]
            row[f"{mode}_source"] = report["degradation"]["source"]
        row["before scene crops"] = row["blind"] if row["code_source"] == "scene" else row["code"]
        rows.append(row)
    by = defaultdict(list)
    for row in rows:
        by[row["degradation"]].append(row)
    table = {}
    print("| preset (items; scene) | input | blind | before scene crops | code", end="")
    print(" | worse | fallbacks |")
    print("|---|---|---|---|---|---|---|")
    for deg, rs in by.items():
        variants = ("input", "blind", "before scene crops", "code")
        mean = {k: float(np.mean([r[k] for r in rs])) for k in variants}
        worse = {k: sum(r[k] < r["input"] - 0.005 for r in rs) for k in variants[1:]}
        fell = sum(bool(r["code_fallback"]) for r in rs)
        scene = sum(r["code_source"] == "scene" for r in rs)
        table[deg] = {"psnr": mean, "worse_than_input": worse, "fallbacks": fell, "scene": scene}
        cells = " | ".join(f"{mean[k]:.2f}" for k in variants)
        w = " / ".join(str(worse[k]) for k in variants[1:])
        print(f"| {deg} ({len(rs)}; {scene}) | {cells} | {w} | {fell} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"table": table, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
