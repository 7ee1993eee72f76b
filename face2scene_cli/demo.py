"""``make demo``: run f2s on sample photos that ship inside packages, as a user would.

Until the restoration stages land this demonstrates ``f2s doctor`` and ``f2s degrade``: it
makes degraded copies of real photos, shows the per-image reports and measures PSNR/SSIM of
the degraded copies against the clean originals, then reruns to show that finished images are
skipped. Results go to ``demo_out/`` in the current folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from face2scene_cli import sample_data
from face2scene_cli.imageio import read_image
from face2scene_cli.metrics import psnr, ssim

DEMO_PHOTOS = ("skimage/astronaut", "insightface/t1", "opencv/messi5", "mate/greenmeadow")


def _f2s(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "face2scene_cli", *args]
    print("$ f2s " + " ".join(args), flush=True)
    return subprocess.run(cmd, text=True)


def main() -> int:
    out = Path("demo_out")
    clean = out / "clean"
    clean.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p for p in sample_data.all_photos()}
    for name in DEMO_PHOTOS:
        if name in by_name:
            src = by_name[name].path
            dest = clean / f"{name.replace('/', '_')}{src.suffix}"
            if not dest.exists():
                shutil.copyfile(src, dest)
    _f2s("doctor")
    degraded = out / "degraded"
    res = _f2s("degrade", str(clean), "--out", str(degraded), "--preset", "mixed", "--seed", "0")
    if res.returncode != 0:
        return res.returncode
    print("\nDegraded copies (preset 'mixed': blur 1.0 px, noise 10/255, JPEG q45) vs clean:")
    print(f"{'image':<32} {'PSNR dB':>8} {'SSIM':>6}")
    for path in sorted(clean.iterdir()):
        out_img = degraded / (path.stem + ".png")
        a = read_image(path).pixels
        b = read_image(out_img).pixels
        print(f"{path.name:<32} {psnr(a, b):8.2f} {ssim(a, b):6.3f}")
    report = json.loads((degraded / "insightface_t1.png.json").read_text())
    print("\nOne report (insightface_t1.png.json), abridged:")
    print(
        json.dumps(
            {k: report[k] for k in ("status", "input", "output", "applied_degradation")}, indent=2
        )
    )
    print("\nA rerun skips every finished image (resume):")
    _f2s("degrade", str(clean), "--out", str(degraded), "--preset", "mixed", "--seed", "0")
    print(f"\nResults: {degraded.resolve()} (images, one JSON report each, f2s-summary.json)")
    print(
        "Not in this version yet: 'f2s restore' (face and scene restoration) — the demo will "
        "restore these degraded photos once those stages land."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
