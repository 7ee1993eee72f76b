"""Calibrate a scene model's consistency check (``scene.json`` ``guard``) on the VAL photos.

Each VAL photo (area-downscaled to ``--long-side``) goes through every degradation of the
standard and OOD suites (and ``--second-order`` seeded second-order samples, ``f2s eval``'s)
and ``f2s restore``'s path (faces -> code -> scene restorer, no fallback; with
``--scene-crops`` also the photos read off scene crops). For every item it records the
consistency residual of the photo and of each face crop
(:mod:`face2scene_cli.restorers.guard`) and the PSNR gain over the input. The limits are
the largest residual (less the read noise's share) of an item the model improved (gain >= 0,
or >= 40 dB for the clean photo), plus ``--margin``: on VAL the check never undoes a useful
restoration, and the report says which harmful ones it catches. ``--write`` stores the
limits in the model folder's ``scene.json`` and re-pins its ``metadata.json``.

The defaults reproduce the shipped limits (face readings of the two suites). Usage::

    python scripts/calibrate_guard.py scene-embedded [--write] [--out runs/guard.json]
    python scripts/calibrate_guard.py scene-embedded --scene-crops --second-order 1 --out ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from face2scene_cli.io.tensors import from_tensor, to_tensor
from face2scene_cli.pipelines.reading import SCENE_CROPS
from face2scene_cli.pipelines.restore import Face2ScenePipeline
from face2scene_cli.research.eval.items import split_sources
from face2scene_cli.research.eval.suites import SUITES, degrade
from face2scene_cli.research.metrics import psnr
from face2scene_cli.restorers.guard import GuardSettings, consistency_residual
from face2scene_cli.zoo import find_model, model_location, read_model_info, repin


def _fit(img: np.ndarray, long_side: int) -> np.ndarray:
    s = long_side / max(img.shape[:2])
    size = (round(img.shape[1] * s) // 8 * 8, round(img.shape[0] * s) // 8 * 8)
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _gain(lq: np.ndarray, out: np.ndarray, clean: np.ndarray) -> float:
    before, after = psnr(lq, clean), psnr(out, clean)
    return after - 40.0 if not np.isfinite(before) else after - before


def measure(
    model: str, long_side: int, lowpass_sigma: float, second_order: int, scene_crops: bool
) -> list[dict]:
    """One row per (VAL photo, degradation) read off faces (and scene crops if asked)."""
    pipe = Face2ScenePipeline.from_pretrained(model, scene_crops=SCENE_CROPS if scene_crops else 0)
    samples = tuple(f"second-order-{k}" for k in range(second_order))
    rows = []
    for name, path in split_sources("val"):
        img = _fit(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), long_side)
        for deg in (*SUITES["standard"], *SUITES["ood"], *samples):
            item = degrade(img, deg, name, 0)
            _, readings, _ = pipe.read_degradations([item.lq])
            reading = readings[0]
            read = reading.readings
            if not read or reading.estimates is None:
                continue
            tokens = pipe.scene.tokens_for_crops([f.z for f in read], [f.weight for f in read])
            lq = to_tensor(item.lq)
            out = pipe.scene.restore(lq, tokens, noise=reading.noise_curve)
            out8 = from_tensor(out, np.uint8)
            res = consistency_residual(lq, out, reading.estimates, lowpass_sigma)
            faces = []
            for f in reading.faces:
                x0, y0, x1, y1 = f.crop_box
                faces.append(
                    {
                        "residual": float(res[..., y0:y1, x0:x1].pow(2).mean().sqrt()),
                        "gain": _gain(
                            item.lq[y0:y1, x0:x1], out8[y0:y1, x0:x1], item.clean[y0:y1, x0:x1]
                        ),
                    }
                )
            rows.append(
                {
                    "photo": name,
                    "degradation": deg,
                    "source": reading.source,
                    "noise_sigma": reading.estimates.noise_sigma,
                    "residual": float(res.pow(2).mean().sqrt()),
                    "gain": _gain(item.lq, out8, item.clean),
                    "faces": faces,
                }
            )
    return rows


def calibrate(rows: list[dict], lowpass_sigma: float, margin: float) -> dict:
    """The limits, and what they catch on these rows."""
    share = GuardSettings(1.0, 1.0, lowpass_sigma).noise_share

    def excess(r: dict, sigma: float) -> float:
        return r["residual"] - share * sigma

    good = [excess(r, r["noise_sigma"]) for r in rows if r["gain"] >= 0]
    good_faces = [excess(f, r["noise_sigma"]) for r in rows for f in r["faces"] if f["gain"] >= 0]
    settings = GuardSettings(
        round(max(good) + margin, 3), round(max(good_faces) + margin, 3), lowpass_sigma
    )
    harmful = [
        (
            f"{r['photo']} {r['degradation']} ({r['source']}): photo {r['gain']:+.2f} dB",
            excess(r, r["noise_sigma"]) > settings.base,
        )
        for r in rows
        if r["gain"] < 0
    ] + [
        (
            f"{r['photo']} {r['degradation']}: face {f['gain']:+.2f} dB",
            excess(f, r["noise_sigma"]) > settings.face_base,
        )
        for r in rows
        for f in r["faces"]
        if f["gain"] < 0
    ]
    return {
        "guard": {
            "base": settings.base,
            "face_base": settings.face_base,
            "lowpass_sigma": lowpass_sigma,
        },
        "items": len(rows),
        "harmful_caught": [what for what, over in harmful if over],
        "harmful_missed": [what for what, over in harmful if not over],
    }


def write_guard(model: str, guard: dict) -> Path:
    """Store ``guard`` in the model folder's ``scene.json`` and re-pin its metadata."""
    folder = find_model(*model_location(model)).folder
    scene_json = folder / "scene.json"
    settings = json.loads(scene_json.read_text(encoding="utf-8"))
    settings["guard"] = guard
    scene_json.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    repin(folder)
    read_model_info(folder)  # the re-pinned folder still reads back
    return scene_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="zoo name or model folder")
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--lowpass-sigma", type=float, default=1.5)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--second-order", type=int, default=0, help="seeded samples per photo")
    parser.add_argument(
        "--scene-crops", action="store_true", help="also the photos read off scene crops"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the rows and the result (JSON)")
    parser.add_argument("--write", action="store_true", help="store the limits in scene.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(
        args.model, args.long_side, args.lowpass_sigma, args.second_order, args.scene_crops
    )
    result = calibrate(rows, args.lowpass_sigma, args.margin)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**result, "rows": rows}, indent=1) + "\n")
    if args.write:
        print(f"wrote {write_guard(args.model, result['guard'])}")


if __name__ == "__main__":
    main()
