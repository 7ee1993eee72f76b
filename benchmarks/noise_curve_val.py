"""How the noise-per-brightness reading (``degradations.noise_level``) reads the VAL photos.

Each VAL photo (area-downscaled to a long side of at most 1024 px) is read clean, with camera
noise (Poisson scale 1 + Gaussian 2/255, the OOD suite's ``camera-jpeg80`` before its JPEG),
with that camera noise saved at JPEG q80, and with Gaussian noise 30/255::

    python benchmarks/noise_curve_val.py --out benchmarks/results/noise_curve_val.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.degradations.jpeg import jpeg_compress  # noqa: E402
from face2scene_cli.degradations.noise_level import estimate_noise_curve  # noqa: E402
from face2scene_cli.degradations.ops import add_gaussian_noise, add_poisson_noise  # noqa: E402
from face2scene_cli.io.tensors import to_tensor  # noqa: E402
from face2scene_cli.research.splits import load_splits  # noqa: E402


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    for photo in load_splits(ROOT / "data/splits.yaml")["val"]:
        img = cv2.cvtColor(cv2.imread(str(photo.path)), cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        f = 1024 / max(h, w)
        if f < 1:
            img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        x = to_tensor(img)
        g = torch.Generator().manual_seed(1)
        camera = _u8(add_gaussian_noise(add_poisson_noise(x, 1.0, g), 2.0, g))
        cases = {
            "clean": x,
            "camera": camera,
            "camera-q80": jpeg_compress(camera, 80),
            "gaussian30": _u8(add_gaussian_noise(x, 30.0, g)),
        }
        row = {"photo": photo.name, "size": list(img.shape[:2])}
        for name, y in cases.items():
            row[name] = estimate_noise_curve(y[0]).to_report()
        row["camera_truth"] = [
            round(math.sqrt(0.996 * lv + 4), 2) for lv in row["camera"]["levels"]
        ]
        rows.append(row)
        bands = {k: row[k]["sigma"] for k in cases}
        print(photo.name, json.dumps(bands | {"truth": row["camera_truth"]}), flush=True)
    args.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
