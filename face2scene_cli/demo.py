"""``make demo``: run f2s on sample photos that ship inside packages, as a user would.

Makes degraded copies of real photos (``f2s degrade``), reads their degradation off the faces
(``f2s degrade-code``), restores them (``f2s restore``) and prints PSNR/SSIM before and after
against the clean originals; a rerun shows that finished images are skipped. There are no
second photos of the same people offline, so the demo runs without references. Results go to
``demo_out/`` in the current folder.
"""

from __future__ import annotations

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
    _f2s("degrade-code", str(degraded))
    restored = out / "restored"
    res = _f2s("restore", str(degraded), "--out", str(restored))
    if res.returncode != 0:
        return res.returncode
    print("\nPreset 'mixed' (blur 1.0 px, noise 10/255, JPEG q45); against the clean photo:")
    print(f"{'image':<28} {'degraded PSNR/SSIM':>20} {'restored PSNR/SSIM':>20}")
    for path in sorted(clean.iterdir()):
        a = read_image(path).pixels
        b = read_image(degraded / (path.stem + ".png")).pixels
        c = read_image(restored / (path.stem + ".png")).pixels
        print(
            f"{path.name:<28} {psnr(a, b):12.2f} / {ssim(a, b):.3f} "
            f"{psnr(a, c):12.2f} / {ssim(a, c):.3f}"
        )
    print("\nA rerun skips every finished image (resume):")
    _f2s("restore", str(degraded), "--out", str(restored))
    print(f"\nResults: {restored.resolve()} (images, one JSON report each, f2s-summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
