"""Choose a scene model's ``guard.clean`` limits on VAL: below which readings a photo is kept.

Reads ``benchmarks/restore_suite.py`` results (``f2s restore`` itself on the standard, OOD
and mild suites, with each item's reading) and, for every limit on a grid, gives each item
whose reading is under it back as its input. Scored per grid point over the degraded items
(the clean photo apart: kept, it is exact): the mean PSNR gain over the input and the items
worse than their input. The choice keeps every clean photo and maximises the mean gain (ties:
fewer items worse, then the tighter limits)::

    R=benchmarks/results/clean-limits-val
    python benchmarks/restore_suite.py runs/val-photos --suite mild --second-order 0 \\
        --without-clean-limits --work runs/cl-val-mild-base --out $R/restore-val-mild-unkept.json
    # the same for --suite ood and --suite standard (--second-order 1)
    python benchmarks/clean_limits_val.py $R/restore-val-{mild,ood,standard}-unkept.json \\
        --out $R/choice.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.noise_level import NoiseCurve
from face2scene_cli.restorers.guard import CleanLimits, nothing_to_restore

NOISE = (1.0, 1.5, 2.0, 2.5, 3.0)
BLUR = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6)
JPEG = (50.0, 60.0, 70.0, 80.0, 85.0, 90.0, 95.0, 101.0)  # 101: a JPEG read is never kept


def kept(reading: dict, limits: CleanLimits) -> bool:
    """Whether ``f2s restore`` keeps a photo of this reading (``restore_suite.py``'s record)."""
    curve = NoiseCurve((), (), reading["noise_curve_read"] or 0.0, 0.0)
    return nothing_to_restore(Estimate.from_dict(reading), curve, limits) is not None


def score(rows: list[dict], limits: tuple[float, float, float] | None) -> dict:
    """Mean gain (dB) and items worse than the input over the degraded rows, and the rows
    kept (all rows), for ``limits`` (None: none kept)."""
    gains, worse, n_kept, lost, saved, clean = [], 0, 0, 0, 0, 0
    for r in rows:
        keep = limits is not None and kept(r["reading"], CleanLimits(*limits))
        n_kept += keep
        if r["degradation"] == "clean":
            clean += keep
            continue
        gain = 0.0 if keep else r["code"] - r["input"]
        raw = r["code"] - r["input"]
        if keep:
            lost += raw > 0.005
            saved += raw < -0.005
        gains.append(gain)
        worse += gain < -0.005
    return {
        "mean_gain": sum(gains) / len(gains),
        "worse": worse,
        "kept": n_kept,
        "clean_kept": clean,
        "gains_given_up": lost,
        "harms_avoided": saved,
    }


def choose(rows: list[dict]) -> dict:
    """The grid point that keeps every clean photo of ``rows`` with the best mean gain (ties:
    fewer items worse, then the tighter limits), with its scores."""
    n_clean = sum(r["degradation"] == "clean" for r in rows)
    grid = []
    for limits in itertools.product(NOISE, BLUR, JPEG):
        grid.append({"noise": limits[0], "blur": limits[1], "jpeg_quality": limits[2]})
        grid[-1] |= score(rows, limits)
    best = max(
        (g for g in grid if g["clean_kept"] == n_clean),
        key=lambda g: (
            round(g["mean_gain"], 4),
            -g["worse"],
            -g["noise"],
            -g["blur"],
            g["jpeg_quality"],
        ),
    )
    return best | {"grid": grid}


def leave_one_photo_out(rows: list[dict]) -> list[dict]:
    """Per VAL photo: the limits chosen on the others, and what they do to its own items."""
    out = []
    for photo in sorted({r["image"] for r in rows}):
        held = [r for r in rows if r["image"] == photo]
        best = choose([r for r in rows if r["image"] != photo])
        limits = (best["noise"], best["blur"], best["jpeg_quality"])
        out.append(
            {"photo": photo, "limits": limits, "none": score(held, None)}
            | {"chosen": score(held, limits)}
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+", help="restore_suite.py JSON files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    unique = {  # the suites share their second-order samples
        (r["image"], r["degradation"]): r
        for p in args.results
        for r in json.loads(p.read_text())["rows"]
    }
    rows = list(unique.values())
    best = choose(rows)
    grid = best.pop("grid")
    base = score(rows, None)
    print(
        f"{len(rows)} items; none kept: mean gain {base['mean_gain']:+.3f} dB, "
        f"{base['worse']} worse"
    )
    print(f"chosen: {best}")
    loo = leave_one_photo_out(rows)
    for p in loo:
        a, b = p["none"], p["chosen"]
        print(
            f"held out {p['photo']}: limits {p['limits']}: mean gain {a['mean_gain']:+.3f} -> "
            f"{b['mean_gain']:+.3f} dB, worse {a['worse']} -> {b['worse']}"
        )
    n = len(loo)
    print(
        f"leave one photo out, mean over {n}: gain "
        f"{sum(p['none']['mean_gain'] for p in loo) / n:+.3f} -> "
        f"{sum(p['chosen']['mean_gain'] for p in loo) / n:+.3f} dB, worse "
        f"{sum(p['none']['worse'] for p in loo)} -> {sum(p['chosen']['worse'] for p in loo)}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"none": base, "chosen": best, "leave_one_photo_out": loo, "grid": grid}
            | {"items": len(rows)},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
