"""Choose the motion deconvolution's strength of a scene model (``scene.json`` ``motion_deblur``).

The motion set of ``benchmarks/motion_reading.py`` (5 / 9 / 13 px in two seeded directions per
photo, + noise 5/255) and the ``ood`` suite's ``motion9-noise5`` items go through ``f2s
restore`` with a copy of the scene model that neither checks, keeps nor deblurs (the network's
output and the reading of each photo); each output is then deconvolved by the motion its
reading states (:class:`~face2scene_cli.restorers.deblur.MotionDeblur`) at every strength of
the grid, and scored against the clean photo (PSNR of the whole photo and of the face region,
as ``benchmarks/restore_suite.py``)::

    f2s data export val runs/val-photos
    python benchmarks/motion_deblur_val.py runs/val-photos --work runs/motion-deblur-val \\
        --out benchmarks/results/motion-deblur/val.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from motion_reading import motion_items  # noqa: E402

from face2scene_cli.config import EvalConfig  # noqa: E402
from face2scene_cli.degradations.estimate import Estimate  # noqa: E402
from face2scene_cli.faces.detect import create_detector  # noqa: E402
from face2scene_cli.io.tensors import from_tensor, to_tensor  # noqa: E402
from face2scene_cli.research.eval.items import degraded_items  # noqa: E402
from face2scene_cli.research.eval.scene import face_mask  # noqa: E402
from face2scene_cli.research.metrics import psnr  # noqa: E402
from face2scene_cli.restorers.deblur import MotionDeblur  # noqa: E402
from face2scene_cli.zoo import find_model, model_location, repin  # noqa: E402

GRID = (0.1, 0.2, 0.3, 0.5, 0.8, 1.2)


def unchecked_copy(name: str, work: Path) -> Path:
    """A copy of scene model ``name`` under ``work`` without its check, clean limits and
    motion deconvolution (re-pinned): the network's output as it is."""
    info = find_model(*model_location(name))
    folder = work / "models" / info.folder.name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(info.folder, folder)
    settings = json.loads((folder / "scene.json").read_text())
    settings.pop("guard", None)
    settings.pop("motion_deblur", None)
    (folder / "scene.json").write_text(json.dumps(settings, indent=2) + "\n")
    repin(folder)
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", type=Path, help="clean photos (f2s data export val|test)")
    ap.add_argument("--scene-model", default="scene-embedded")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    ood = degraded_items([(p.name, p) for p in photos], EvalConfig(suite="ood", second_order=0))
    items = motion_items(photos) + [it for it in ood if it.degradation == "motion9-noise5"]
    inputs = args.work / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    named = {}
    for i, it in enumerate(items):
        name = f"{Path(it.name).stem}__{it.degradation}__{i}.png"
        Image.fromarray(it.lq).save(inputs / name)
        named[name] = it
    model = unchecked_copy(args.scene_model, args.work)
    out_dir = args.work / "out"
    cmd = [sys.executable, "-m", "face2scene_cli", "restore", str(inputs), "-q"]
    subprocess.run([*cmd, "--threads", "2", "--out", str(out_dir), "--scene-model", str(model)])
    detector = create_detector()
    masks: dict[str, np.ndarray | None] = {}
    rows = []
    for name, it in named.items():
        if it.name not in masks:
            masks[it.name] = face_mask(it.clean.shape, detector.detect([it.clean])[0])
        mask = masks[it.name]
        report = json.loads((out_dir / f"{name}.json").read_text())
        estimate = Estimate.from_dict(report["degradation"])
        out = np.asarray(Image.open(out_dir / name).convert("RGB"))
        candidates = {"input": it.lq, "network": out}
        for reg in GRID:
            deblurred = MotionDeblur(reg)(to_tensor(out), estimate)
            candidates[f"{reg:g}"] = from_tensor(deblurred, np.uint8)
        row = {
            "image": it.name,
            "degradation": it.degradation,
            "motion_px": it.truth.motion_px,
            "read_px": estimate.motion_px,
            "deblurred": estimate.motion,
        }
        for key, pixels in candidates.items():
            row[key] = psnr(it.clean, pixels)
            row[f"face_{key}"] = None if mask is None else psnr(it.clean, pixels, mask=mask)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    keys = ["input", "network", *(f"{r:g}" for r in GRID)]
    print(f"| items | {' | '.join(keys)} |\n|---|" + "---|" * len(keys))
    for group in ("motion5", "motion9", "motion13", "motion9-noise5", None):
        rs = [r for r in rows if group is None or r["degradation"] == group]
        cells = " | ".join(f"{np.mean([r[k] for r in rs]):.2f}" for k in keys)
        done = sum(r["deblurred"] for r in rs)
        print(f"| {group or 'all'} ({len(rs)}; {done} deblurred) | {cells} |")
    faces = [r for r in rows if r["face_input"] is not None]
    for key in keys[2:]:
        worse = sum(r[key] < r["network"] - 0.005 for r in rows)
        face_worse = sum(r[f"face_{key}"] < r["face_input"] - 0.005 for r in faces)
        print(
            f"{key}: {worse} photos below the network's output; face regions below their input "
            f"{face_worse} of {len(faces)} (network: "
            f"{sum(r['face_network'] < r['face_input'] - 0.005 for r in faces)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
