"""``f2s demo`` (``make demo``): run f2s on sample photos from packages, as a user would.

Makes degraded copies of real photos (``f2s degrade``), reads their degradation off the faces
(``f2s degrade-code``), restores them (``f2s restore --refs``) and prints PSNR/SSIM before and
after against the clean originals, and whether any output is worse than its input; a rerun
shows that finished images are skipped. There are no second photos of the same people
offline, so the references are made from the clean photos themselves (mirrored and resized):
an optimistic setting that only shows the plumbing. Results go to ``demo_out/`` in the current
folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageOps

from face2scene_cli.io.images import read_image
from face2scene_cli.research import sample_data
from face2scene_cli.research.metrics import psnr, ssim

#: The demo's photos and what the shipped models saw of them: ``val`` photos were never trained
#: on (they chose steps and designs); ``trained`` ones were in the training split of
#: fadex-s and scene-embedded (see their cards), so their figures are optimistic.
DEMO_PHOTOS = {
    "skimage/astronaut": "val",
    "insightface/t1": "trained",
    "opencv/messi5": "val",
    "mate/greenmeadow": "trained",
}


def _f2s(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "face2scene_cli", *args]
    print("$ f2s " + " ".join(args), flush=True)
    return subprocess.run(cmd, text=True)


def _self_references(clean: Path, refs: Path) -> None:
    """One reference per photo, ``refs/<photo>/mirror.png``: the clean photo mirrored and
    resized to 90 % (there are no second photos of these people offline)."""
    for path in sorted(clean.iterdir()):
        dest = refs / path.stem / "mirror.png"
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            size = (round(im.width * 0.9), round(im.height * 0.9))
            ImageOps.mirror(im.convert("RGB")).resize(size, Image.Resampling.LANCZOS).save(dest)


def run_demo(out: Path = Path("demo_out")) -> int:
    """Run the demo into ``out``; the exit status is 1 when an output is worse than its input."""
    clean = out / "clean"
    clean.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p for p in sample_data.all_photos()}
    for name in DEMO_PHOTOS:
        if name in by_name:
            src = by_name[name].path
            dest = clean / f"{name.replace('/', '_')}{src.suffix}"
            if not dest.exists():
                shutil.copyfile(src, dest)
    refs = out / "refs"
    _self_references(clean, refs)
    _f2s("doctor")
    degraded = out / "degraded"
    res = _f2s("degrade", str(clean), "--out", str(degraded), "--preset", "mixed", "--seed", "0")
    if res.returncode != 0:
        return res.returncode
    _f2s("degrade-code", str(degraded))
    restored = out / "restored"
    restore = ("restore", str(degraded), "--refs", str(refs), "--out", str(restored))
    res = _f2s(*restore, "--save-compare")
    if res.returncode != 0:
        return res.returncode
    print("\nPreset 'mixed' (blur 1.0 px, noise 10/255, JPEG q45); against the clean photo:")
    print(f"{'image':<28} {'photo':<8} {'degraded PSNR/SSIM':>20} {'restored PSNR/SSIM':>20}")
    roles = {f"{n.replace('/', '_')}": role for n, role in DEMO_PHOTOS.items()}
    worse = []
    for path in sorted(clean.iterdir()):
        a = read_image(path).pixels
        b = read_image(degraded / (path.stem + ".png")).pixels
        c = read_image(restored / (path.stem + ".png")).pixels
        before, after = psnr(a, b), psnr(a, c)
        role = roles.get(path.stem, "")
        print(
            f"{path.name:<28} {role:<8} {before:12.2f} / {ssim(a, b):.3f} "
            f"{after:12.2f} / {ssim(a, c):.3f}"
        )
        if after < before:
            worse.append(path.name)
    print(
        "photo: val = never trained on; trained = in the shipped models' training photos "
        "(optimistic figures)"
    )
    if worse:
        print(f"\nPSNR: worse than the degraded input: {', '.join(worse)}")
    else:
        print("\nPSNR: no output is worse than its degraded input")
    print("\nA rerun skips every finished image (resume):")
    _f2s(*restore, "--save-compare")
    print(f"\nResults: {restored.resolve()}")
    print("  <name>.png restored photo, <name>.compare.png degraded | restored side by side,")
    print("  <name>.png.json report (faces, people, degradation, timings), f2s-summary.json")
    print(f"References (made from the clean photos; no second photos offline): {refs.resolve()}")
    return 1 if worse else 0
