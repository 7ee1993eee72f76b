"""What ``f2s degrade-code`` reads off photos enlarged from smaller copies, as a user makes them.

Each clean photo is shrunk with OpenCV's area filter by 2, 3 and 4 and enlarged back with its
bicubic (another kernel than FaDeX's training, which resamples with torch's bicubic both
ways), the x4 copy also saved as JPEG q75; beside them the clean photo and a 1.5 px Gaussian
blur, which should read as no resolution loss. The command itself reads them (faces, else
scene crops) and the photo's ``downscale`` and ``blur_sigma_px`` are tabulated::

    f2s data export val runs/val-photos
    python benchmarks/downscale_readings.py runs/val-photos --work runs/downscale-readings \\
        --out benchmarks/results/fadex-downscale/readings-val.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

VARIANTS = ("clean", "blur1.5", "x2", "x3", "x4", "x4-q75")


def make_variants(photo: Path, work: Path) -> None:
    """The :data:`VARIANTS` of ``photo`` under ``work`` (``<stem>__<variant>.png|jpg``)."""
    img = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]

    def enlarged(s: int) -> np.ndarray:
        small = cv2.resize(img, (round(w / s), round(h / s)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)

    cv2.imwrite(str(work / f"{photo.stem}__clean.png"), img)
    cv2.imwrite(str(work / f"{photo.stem}__blur1.5.png"), cv2.GaussianBlur(img, (0, 0), 1.5))
    for s in (2, 3, 4):
        cv2.imwrite(str(work / f"{photo.stem}__x{s}.png"), enlarged(s))
    q75 = [cv2.IMWRITE_JPEG_QUALITY, 75]
    cv2.imwrite(str(work / f"{photo.stem}__x4-q75.jpg"), enlarged(4), q75)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", type=Path, help="clean photos (f2s data export val|test)")
    ap.add_argument("--work", type=Path, required=True, help="the enlarged copies")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="fadex-s", help="FaDeX model in the zoo")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for photo in sorted(p for p in args.photos.iterdir() if p.is_file()):
        make_variants(photo, args.work)
    cmd = ["f2s", "degrade-code", str(args.work), "--scene", "--json", "--model", args.model]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 5):
        print(done.stderr, file=sys.stderr)
        return done.returncode
    table: dict[str, dict[str, dict[str, object]]] = defaultdict(dict)
    for item in json.loads(done.stdout)["images"]:
        photo, variant = Path(item["relative_path"]).stem.rsplit("__", 1)
        d = item["degradation"] or {}
        table[variant][photo] = {
            "downscale": d.get("downscale"),
            "blur_sigma_px": d.get("blur_sigma_px"),
            "source": d.get("source"),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print("| variant | mean downscale | per photo (downscale / blur px) |\n|---|---|---|")
    for v in VARIANTS:
        rows = table.get(v, {})
        reads = [r["downscale"] for r in rows.values() if r["downscale"] is not None]
        per = ", ".join(
            f"{p}: {r['downscale']:.2f} / {r['blur_sigma_px']:.2f}"
            for p, r in sorted(rows.items())
            if r["downscale"] is not None
        )
        mean = f"{sum(reads) / len(reads):.2f}" if reads else "-"
        print(f"| {v} | {mean} | {per} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
