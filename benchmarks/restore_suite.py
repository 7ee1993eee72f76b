"""What users get: an eval suite's degraded photos through ``f2s restore`` itself.

Unlike ``f2s eval``'s ``code`` column (the network's output), this runs the command, with its
consistency check and fallbacks (``f2s eval``'s ``restore`` variant measures the same in
process), once as is and once with ``--blind``, and scores both against
the clean photos, with each item's reading (for ``benchmarks/clean_limits_val.py``). Per
preset: mean PSNR, items worse than their input (the whole photo, and the face region of the
photos with a face: the faces detected on the clean photo, as ``f2s eval``), photos that fell
back (or were kept as they are)::

    f2s data export val runs/val-photos
    python benchmarks/restore_suite.py runs/val-photos --suite ood --work runs/restore-suite-val \\
        --out benchmarks/results/clean-limits-val/restore-val-ood.json

``--without-clean-limits`` runs a copy of the scene model without its ``guard.clean`` limits
(every photo restored), the input of ``benchmarks/clean_limits_val.py`` (which reads only the
``code`` run: ``--no-blind`` skips the other).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.config import EvalConfig  # noqa: E402
from face2scene_cli.faces.detect import create_detector  # noqa: E402
from face2scene_cli.research.eval.items import degraded_items  # noqa: E402
from face2scene_cli.research.eval.scene import face_mask  # noqa: E402
from face2scene_cli.research.metrics import psnr  # noqa: E402
from face2scene_cli.zoo import find_model, model_location, repin  # noqa: E402

MODES = {"code": [], "blind": ["--blind"]}
READING = ("noise_sigma", "blur_sigma_px", "jpeg_quality", "jpeg_probability", "downscale")


def edited_copy(name: str, work: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    """A copy of scene model ``name`` (zoo name or model folder) under ``work`` whose
    ``scene.json`` settings ``edit`` changed in place (re-pinned)."""
    info = find_model(*model_location(name))
    folder = work / "models" / info.folder.name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(info.folder, folder)
    settings = json.loads((folder / "scene.json").read_text())
    edit(settings)
    (folder / "scene.json").write_text(json.dumps(settings, indent=2) + "\n")
    repin(folder)
    return folder


def without_clean_limits(name: str, work: Path) -> Path:
    """A copy of scene model ``name`` under ``work`` without ``guard.clean``."""
    return edited_copy(name, work, lambda s: s.get("guard", {}).pop("clean", None))


def scores(
    clean: np.ndarray, out: np.ndarray, mask: np.ndarray | None
) -> tuple[float, float | None]:
    """PSNR of ``out`` on the whole photo and on the face region (None without a face), dB,
    99 for identical pixels."""
    whole = min(psnr(clean, out), 99.0)
    return whole, None if mask is None else min(psnr(clean, out, mask=mask), 99.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, help="clean photos (f2s data export val|test)")
    ap.add_argument("--suite", default="ood", choices=("standard", "ood", "mild"))
    ap.add_argument("--second-order", type=int, default=1, help="seeded second-order samples")
    ap.add_argument("--scene-model", default="scene-embedded")
    ap.add_argument("--work", type=Path, required=True, help="degraded inputs and outputs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--without-clean-limits", action="store_true", help="restore every photo")
    ap.add_argument("--no-blind", action="store_true", help="skip the --blind run")
    args = ap.parse_args()
    model = args.scene_model
    if args.without_clean_limits:
        model = str(without_clean_limits(model, args.work))
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    items = degraded_items(
        [(p.name, p) for p in photos], EvalConfig(suite=args.suite, second_order=args.second_order)
    )
    inputs = args.work / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    named = {}
    for it in items:
        name = f"{Path(it.name).stem}__{it.degradation}.png"
        Image.fromarray(it.lq).save(inputs / name)
        named[name] = it
    f2s = [sys.executable, "-m", "face2scene_cli", "restore", str(inputs), "-q", "--threads", "2"]
    modes = {m: extra for m, extra in MODES.items() if m != "blind" or not args.no_blind}
    for mode, extra in modes.items():
        out = args.work / mode
        cmd = [*f2s, "--out", str(out), "--scene-model", model, *extra]
        subprocess.run(cmd, check=False)  # exit 1 when a photo failed: its report says why
    detector = create_detector()
    masks = {}  # the face region, as f2s eval's: the faces detected on the clean photo
    rows = []
    for name, it in named.items():
        if it.name not in masks:
            masks[it.name] = face_mask(it.clean.shape, detector.detect([it.clean])[0])
        mask = masks[it.name]
        row = {"image": it.name, "degradation": it.degradation}
        row["input"], row["face_input"] = scores(it.clean, it.lq, mask)
        for mode in modes:
            out = np.asarray(Image.open(args.work / mode / name).convert("RGB"))
            report = json.loads((args.work / mode / f"{name}.json").read_text())
            row[mode], row[f"face_{mode}"] = scores(it.clean, out, mask)
            fallbacks = report["scene"]["fallback"]
            row[f"{mode}_fallback"] = [f["region"] for f in fallbacks]
            row[f"{mode}_kept"] = any(
                f["reason"].startswith("nothing to restore") for f in fallbacks
            )
            row[f"{mode}_source"] = report["degradation"]["source"]
        deg = json.loads((args.work / "code" / f"{name}.json").read_text())["degradation"]
        row["reading"] = {k: deg[k] for k in READING} | {
            "noise_curve_read": (deg["noise_curve"] or {}).get("read")
        }
        rows.append(row)
    by = defaultdict(list)
    for row in rows:
        by[row["degradation"]].append(row)
    table = {}
    variants = ("input", *reversed(modes))
    print(
        f"| preset (items; scene) | {' | '.join(variants)} | worse: {' / '.join(variants[1:])} "
        "| face region worse: code | fallbacks | kept |"
    )
    print("|---|" + "---|" * (len(variants) + 4))
    for deg, rs in by.items():
        mean = {k: float(np.mean([r[k] for r in rs])) for k in variants}
        worse = {k: sum(r[k] < r["input"] - 0.005 for r in rs) for k in variants[1:]}
        fell = sum(bool(r["code_fallback"]) for r in rs)
        kept = sum(r["code_kept"] for r in rs)
        scene = sum(r["code_source"] == "scene" for r in rs)
        with_face = [r for r in rs if r["face_input"] is not None]
        face_worse = sum(r["face_code"] < r["face_input"] - 0.005 for r in with_face)
        table[deg] = {"psnr": mean, "worse_than_input": worse, "fallbacks": fell, "scene": scene}
        table[deg] |= {"kept": kept, "face_region_worse": face_worse, "with_face": len(with_face)}
        cells = " | ".join(f"{mean[k]:.2f}" for k in variants)
        w = " / ".join(str(worse[k]) for k in variants[1:])
        f = f"{face_worse} of {len(with_face)}"
        print(f"| {deg} ({len(rs)}; {scene}) | {cells} | {w} | {f} | {fell} | {kept} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"table": table, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
