"""FaDeX's held-out evaluation: the Fig. 3 check and the per-type regression table.

:func:`build_val_set` degrades fixed held-out regions with the Fig. 3 operators
(:data:`FIG3_OPERATORS`) and the regression grids; :func:`evaluate_fadex` turns a model's
codes and estimates on them into the table (:func:`val_score` ranks checkpoints by it);
:func:`table_markdown` and :func:`plot_fig3` show it (model card, ``f2s models analyze``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from face2scene_cli.archs.fadex import FaDeX
from face2scene_cli.degradations.record import RESIZE_MODES, Degradation, equivalent_blur
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.research.train.data import PhotoBank
from face2scene_cli.research.train.fadex_config import FaDeXTrainConfig
from face2scene_cli.restorers.face.base import FaceRestorer
from face2scene_cli.restorers.face.blind import BlindFaceRestorer

__all__ = [
    "DOWNSCALE_FREE_OPERATORS",
    "FIG3_OPERATORS",
    "RANGE_LEVELS",
    "TARGETS",
    "ValSet",
    "build_val_set",
    "downscale_by_kernel",
    "downscale_without_resampling",
    "evaluate_fadex",
    "evaluate_ranges",
    "plot_fig3",
    "range_target",
    "table_markdown",
    "val_score",
]

logger = logging.getLogger(__name__)


def _op(**values: Any) -> Degradation:
    """A parametric operator (downscales are resized back, as in training)."""
    return Degradation("parametric", resize_back=True, **values)


#: The Fig. 3 operator set: clearly different degradations (name -> operator).
FIG3_OPERATORS: dict[str, Degradation] = {
    "noise5": _op(noise_sigma=5.0),
    "noise15": _op(noise_sigma=15.0),
    "noise30": _op(noise_sigma=30.0),
    "blur1": _op(blur_sigma_px=1.0),
    "blur2.5": _op(blur_sigma_px=2.5),
    "jpeg20": _op(jpeg_quality=20),
    "jpeg50": _op(jpeg_quality=50),
    "mix": _op(blur_sigma_px=1.5, noise_sigma=10.0, jpeg_quality=40),
}
#: The per-type regression grids.
GRID_NOISE = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)
GRID_BLUR = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
GRID_JPEG: tuple[int | None, ...] = (20, 30, 40, 50, 60, 70, 80, 90, 95, None)
#: Targets of the issue (model card).
TARGETS = {
    "same_degradation_cos": (">=", 0.85),
    "same_content_abs_cos": ("<=", 0.15),
    "noise_mae": ("<=", 2.0),
    "jpeg_quality_mae": ("<=", 8.0),
    "blur_mae": ("<=", 0.4),
}


@dataclass
class ValSet:
    """Held-out (LQ, HQ) pairs: ``fig3[name]`` and ``grid[type][value]`` -> (lq, hq) uint8
    :math:`(N, 3, S, S)`; ``sources`` names each crop's photo."""

    fig3: dict[str, tuple[Tensor, Tensor]]
    grid: dict[str, dict[str, tuple[Tensor, Tensor]]]
    sources: list[str]
    restorer: str


def _val_regions(cfg: FaDeXTrainConfig, photos: list[Any]) -> tuple[list[np.ndarray], list[str]]:
    s = cfg.val.crop + cfg.data.margin
    bank = PhotoBank(photos, cfg.data.base_long_side, s)
    rng = np.random.default_rng(cfg.val.seed)
    regions, names = [], []
    # one face-centred region per base with faces first, then random regions
    for b in bank.bases:
        if b.faces and len(regions) < cfg.val.crops // 2:
            cx, cy, _ = b.faces[0]
            h, w = b.image.shape[:2]
            x0 = min(max(int(cx - s / 2), 0), w - s)
            y0 = min(max(int(cy - s / 2), 0), h - s)
            regions.append(b.image[y0 : y0 + s, x0 : x0 + s])
            names.append(b.name + "#face")
    while len(regions) < cfg.val.crops:
        regions.append(bank.region(rng, s, 0.0))
        names.append("region")
    return regions, names


class _PairMaker:
    """Degrades the held-out regions with one operator -> (LQ, HQ) uint8 crops (fixed random
    offsets, i.e. random JPEG grid phases; HQ restored by ``restorer``)."""

    def __init__(self, cfg: FaDeXTrainConfig, regions: list[np.ndarray], restorer: FaceRestorer):
        self.cfg, self.regions, self.restorer = cfg, regions, restorer
        m = cfg.data.margin
        rng = np.random.default_rng(cfg.val.seed + 1)
        self.offsets = [(int(rng.integers(0, m)), int(rng.integers(0, m))) for _ in regions]

    def __call__(
        self, op: Degradation | Callable[[Tensor, torch.Generator], Tensor], salt: int
    ) -> tuple[Tensor, Tensor]:
        s, lqs = self.cfg.val.crop, []
        for i, region in enumerate(self.regions):
            x = torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)[None]
            gen = torch.Generator().manual_seed(self.cfg.val.seed * 1000 + salt * 100 + i)
            y = apply(x, op, gen) if isinstance(op, Degradation) else op(x, gen)
            oy, ox = self.offsets[i]
            lq = (y[..., oy : oy + s, ox : ox + s] * 255).round().to(torch.uint8)
            lqs.append(lq.expand(1, 3, s, s) if lq.shape[1] == 1 else lq)
        lq = torch.cat(lqs)
        hq = (self.restorer.restore(lq.float() / 255).hq * 255).round().to(torch.uint8)
        return lq, hq


def _pair_maker(
    cfg: FaDeXTrainConfig, photos: list[Any], restorer: FaceRestorer
) -> tuple[_PairMaker, list[str]]:
    regions, names = _val_regions(cfg, photos)
    return _PairMaker(cfg, regions, restorer), names


def build_val_set(
    cfg: FaDeXTrainConfig, photos: list[Any], restorer: FaceRestorer | None = None
) -> ValSet:
    """Degrade fixed held-out regions with the Fig. 3 operators and the grids, crop them at a
    fixed random offset (random JPEG grid phase) and restore them with ``restorer``
    (default :class:`BlindFaceRestorer`): the HQ input is always the restored crop here."""
    run, names = _pair_maker(cfg, photos, restorer or BlindFaceRestorer())
    fig3 = {name: run(op, i) for i, (name, op) in enumerate(FIG3_OPERATORS.items())}
    grid: dict[str, dict[str, tuple[Tensor, Tensor]]] = {"noise": {}, "blur": {}, "jpeg": {}}
    for v in GRID_NOISE:
        grid["noise"][f"{v:g}"] = run(_op(noise_sigma=v), 10 + int(v))
    for v in GRID_BLUR:
        grid["blur"][f"{v:g}"] = run(_op(blur_sigma_px=v), 50 + int(v * 10))
    for q in GRID_JPEG:
        grid["jpeg"]["none" if q is None else str(q)] = run(_op(jpeg_quality=q), 90 + (q or 0))
    return ValSet(fig3=fig3, grid=grid, sources=names, restorer=run.restorer.method)


@torch.inference_mode()
def _run_model(model: FaDeX, lq: Tensor, hq: Tensor, batch: int = 32) -> Any:
    device = next(model.parameters()).device
    outs = []
    for i in range(0, lq.shape[0], batch):
        a = lq[i : i + batch].to(device).float() / 255
        b = hq[i : i + batch].to(device).float() / 255
        outs.append(model(a, b))
    keys = ("code", "noise_sigma", "blur_sigma_px", "downscale", "jpeg_quality", "jpeg_probability")
    return {k: torch.cat([getattr(o, k) for o in outs]).cpu() for k in keys}


def evaluate_fadex(model: FaDeX, val: ValSet) -> dict[str, Any]:
    """The validation table: the Fig. 3 check and per-type regression errors.

    Returns a JSON-serialisable dict:

    * ``fig3.same_degradation_cos``: mean cosine between codes of the same operator on
      different crops (all pairs, all operators); ``fig3.same_content_abs_cos``: mean
      absolute cosine between codes of the same crop under different operators;
      ``fig3.matrix``: operator x operator mean cosine (diagonal without self-pairs).
    * ``noise``/``blur``/``jpeg``: per grid value the mean estimate and absolute error, and
      the MAE over the grid (noise in /255, blur in px, JPEG quality over the compressed
      levels, ``jpeg_probability`` mean for ``none`` and the detection accuracy at 0.5).
    """
    model.eval()
    codes = {name: _run_model(model, *pair)["code"] for name, pair in val.fig3.items()}
    names = list(codes)
    n = next(iter(codes.values())).shape[0]
    matrix: dict[str, dict[str, float]] = {}
    same_deg = []
    for a in names:
        matrix[a] = {}
        for b in names:
            c = codes[a] @ codes[b].T
            if a == b:
                off = c[~torch.eye(n, dtype=torch.bool)]
                matrix[a][b] = float(off.mean())
                same_deg.append(off)
            else:
                matrix[a][b] = float(c.mean())
    cross = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            cross.append((codes[a] * codes[b]).sum(1).abs())
    table: dict[str, Any] = {
        "fig3": {
            "operators": {k: op.to_dict() for k, op in FIG3_OPERATORS.items()},
            "same_degradation_cos": float(torch.cat(same_deg).mean()),
            "same_content_abs_cos": float(torch.cat(cross).mean()),
            "matrix": matrix,
            "crops": n,
        }
    }
    for kind, key, unit in (("noise", "noise_sigma", "/255"), ("blur", "blur_sigma_px", "px")):
        rows, errs = {}, []
        for v, pair in val.grid[kind].items():
            est = _run_model(model, *pair)[key]
            err = (est - float(v)).abs()
            errs.append(err)
            rows[v] = {"mean": float(est.mean()), "mae": float(err.mean())}
        table[kind] = {"unit": unit, "mae": float(torch.cat(errs).mean()), "levels": rows}
    rows, errs, prob_none, acc = {}, [], 0.0, []
    for v, pair in val.grid["jpeg"].items():
        o = _run_model(model, *pair)
        if v == "none":
            prob_none = float(o["jpeg_probability"].mean())
            acc.append(o["jpeg_probability"] < 0.5)
            rows[v] = {"jpeg_probability": prob_none}
            continue
        err = (o["jpeg_quality"] - float(v)).abs()
        errs.append(err)
        acc.append(o["jpeg_probability"] >= 0.5)
        rows[v] = {
            "mean": float(o["jpeg_quality"].mean()),
            "mae": float(err.mean()),
            "jpeg_probability": float(o["jpeg_probability"].mean()),
        }
    table["jpeg"] = {
        "unit": "quality",
        "mae": float(torch.cat(errs).mean()),
        "none_jpeg_probability": prob_none,
        "detection_accuracy": float(torch.cat(acc).float().mean()),
        "levels": rows,
    }
    table["summary"] = {
        "same_degradation_cos": table["fig3"]["same_degradation_cos"],
        "same_content_abs_cos": table["fig3"]["same_content_abs_cos"],
        "noise_mae": table["noise"]["mae"],
        "blur_mae": table["blur"]["mae"],
        "jpeg_quality_mae": table["jpeg"]["mae"],
        "jpeg_detection_accuracy": table["jpeg"]["detection_accuracy"],
    }
    table["targets_met"] = {
        k: (table["summary"][k] >= t if op == ">=" else table["summary"][k] <= t)
        for k, (op, t) in TARGETS.items()
    }
    table["hq_from"] = val.restorer
    table["crop_sources"] = val.sources
    return table


#: The estimate each range kind is read by (the record field of the same name degrades it,
#: except motion: ``motion_px``).
_RANGE_FIELD = {
    "noise": "noise_sigma",
    "blur": "blur_sigma_px",
    "jpeg": "jpeg_quality",
    "downscale": "downscale",
    "motion": "blur_sigma_px",
}
#: Issue 15's ranges, each level read by its head within a tolerance: noise within 15% (/255),
#: blur within 0.5 px, JPEG quality within 5, downscale factor within 20%, and motion blur
#: (segment length, px, a random direction per crop) read as blur within 0.5 px of its
#: :func:`~face2scene_cli.degradations.record.equivalent_blur` (5 / 9 / 13 px -> 1.44 / 2.60 /
#: 3.75 px; 13 px is the longest odd length inside the 4 px blur range, 15 px would be 4.33).
RANGE_LEVELS: dict[str, tuple[float, ...]] = {
    "noise": (10.0, 20.0, 30.0, 40.0, 50.0),
    "blur": (1.0, 2.0, 3.0, 4.0),
    "jpeg": (10.0, 15.0, 20.0, 30.0, 50.0),
    "downscale": (1.5, 2.0, 3.0, 4.0),
    "motion": (5.0, 9.0, 13.0),
}


def _range_op(kind: str, v: float) -> Degradation | Callable[[Tensor, torch.Generator], Tensor]:
    """The operator of level ``v`` of ``kind``; motion: a record per crop whose direction is
    drawn from the crop's generator."""
    if kind == "motion":

        def op(x: Tensor, gen: torch.Generator) -> Tensor:
            angle = float(torch.rand((), generator=gen, dtype=torch.float64)) * 180.0
            return apply(x, _op(motion_px=v, motion_angle_deg=angle))

        return op
    return _op(**{_RANGE_FIELD[kind]: int(v) if kind == "jpeg" else v})


def range_target(kind: str, v: float) -> float:
    """The estimate level ``v`` of ``kind`` should read: ``v``, or for motion its
    :func:`~face2scene_cli.degradations.record.equivalent_blur` ``v / sqrt(12)``."""
    return equivalent_blur(0.0, v) if kind == "motion" else v


def evaluate_ranges(
    model: FaDeX,
    cfg: FaDeXTrainConfig,
    photos: list[Any],
    restorer: FaceRestorer | None = None,
    levels: dict[str, tuple[float, ...]] | None = None,
) -> dict[str, Any]:
    """How FaDeX's heads read each level of ``levels`` (default :data:`RANGE_LEVELS`) on
    held-out crops of ``photos`` (the regions and offsets of :func:`build_val_set`).

    Returns ``{kind: {level: {"mean", "within"}}, "met": {kind: bool}}``: the mean estimate
    over the crops and the fraction of crops read within the tolerance; a kind is met when
    every level's mean estimate is within its tolerance of :func:`range_target`.
    """
    run, _ = _pair_maker(cfg, photos, restorer or BlindFaceRestorer())
    table: dict[str, Any] = {"met": {}}
    for ki, (kind, values) in enumerate((levels or RANGE_LEVELS).items()):
        rows, means_ok = {}, []
        for li, v in enumerate(values):
            pair = run(_range_op(kind, v), 200 + 10 * ki + li)
            est = _run_model(model, *pair)[_RANGE_FIELD[kind]]
            within = _read_within(kind, est, v)
            rows[f"{v:g}"] = {"mean": float(est.mean()), "within": float(within.float().mean())}
            means_ok.append(bool(_read_within(kind, est.mean(), v)))
        table[kind] = rows
        table["met"][kind] = all(means_ok)
    return table


#: Degradations without a resolution loss, each of which should read as downscale 1.
DOWNSCALE_FREE_OPERATORS: dict[str, Degradation] = {
    "clean": _op(),
    "blur1": _op(blur_sigma_px=1.0),
    "blur2": _op(blur_sigma_px=2.0),
    "blur4": _op(blur_sigma_px=4.0),
    "motion9": _op(motion_px=9.0, motion_angle_deg=30.0),
    "noise10": _op(noise_sigma=10.0),
    "noise50": _op(noise_sigma=50.0),
    "jpeg20": _op(jpeg_quality=20),
    "jpeg50": _op(jpeg_quality=50),
    "mix": FIG3_OPERATORS["mix"],
}


def downscale_without_resampling(
    model: FaDeX, cfg: FaDeXTrainConfig, photos: list[Any], restorer: FaceRestorer | None = None
) -> dict[str, dict[str, float]]:
    """The downscale factor read off degradations with no resolution loss
    (:data:`DOWNSCALE_FREE_OPERATORS`, on the crops of :func:`evaluate_ranges`): per operator,
    the mean reading and the fraction of crops read under 1.2 (within :data:`RANGE_LEVELS`'
    20 % of 1)."""
    run, _ = _pair_maker(cfg, photos, restorer or BlindFaceRestorer())
    out = {}
    for i, (name, op) in enumerate(DOWNSCALE_FREE_OPERATORS.items()):
        est = _run_model(model, *run(op, 300 + i))["downscale"]
        out[name] = {"mean": float(est.mean()), "within": float((est < 1.2).float().mean())}
    return out


def downscale_by_kernel(
    model: FaDeX, cfg: FaDeXTrainConfig, photos: list[Any], restorer: FaceRestorer | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """The downscale factor read off each :data:`RANGE_LEVELS` factor for each downscale
    filter (:data:`~face2scene_cli.degradations.record.RESIZE_MODES`; resized back bicubic),
    on the crops of :func:`evaluate_ranges`: ``{kernel: {factor: {"mean", "within"}}}``, the
    mean reading and the fraction of crops within 20 %."""
    run, _ = _pair_maker(cfg, photos, restorer or BlindFaceRestorer())
    out: dict[str, dict[str, dict[str, float]]] = {}
    for ki, kernel in enumerate(RESIZE_MODES):
        for li, v in enumerate(RANGE_LEVELS["downscale"]):
            op = _op(downscale=v, downscale_kernel=kernel)
            est = _run_model(model, *run(op, 400 + 10 * ki + li))["downscale"]
            within = _read_within("downscale", est, v).float().mean()
            out.setdefault(kernel, {})[f"{v:g}"] = {
                "mean": float(est.mean()),
                "within": float(within),
            }
    return out


def _read_within(kind: str, est: Tensor, v: float) -> Tensor:
    """Whether estimates ``est`` of level ``v`` are within :data:`RANGE_LEVELS`' tolerance."""
    tol = {"noise": 0.15 * v, "blur": 0.5, "jpeg": 5.0, "downscale": 0.2 * v, "motion": 0.5}[kind]
    return (est - range_target(kind, v)).abs() <= tol


def val_score(table: dict[str, Any]) -> float:
    """One number to pick the best checkpoint (lower is better): the mean of each target
    metric divided by its target (cosines as ``(1 - cos) / 0.15`` and ``|cos| / 0.15``)."""
    s = table["summary"]
    parts = [
        (1.0 - s["same_degradation_cos"]) / 0.15,
        s["same_content_abs_cos"] / 0.15,
        s["noise_mae"] / 2.0,
        s["jpeg_quality_mae"] / 8.0,
        s["blur_mae"] / 0.4,
    ]
    return float(np.mean(parts))


# ------------------------------------------------------------------------------------------
# reports


def table_markdown(table: dict[str, Any]) -> str:
    """The held-out table of :func:`evaluate_fadex` as Markdown (the model card's): targets met
    or missed, the per-level estimates and the Fig. 3 matrix."""
    s, met = table["summary"], table["targets_met"]
    ok = {True: "met", False: "**missed**"}
    lines = [
        "| metric | value | target | status |",
        "|---|---|---|---|",
        f"| same degradation / different content: mean cosine | {s['same_degradation_cos']:.3f}"
        f" | >= 0.85 | {ok[met['same_degradation_cos']]} |",
        f"| same content / different degradation: mean abs cosine | "
        f"{s['same_content_abs_cos']:.3f} | <= 0.15 | {ok[met['same_content_abs_cos']]} |",
        f"| noise sigma MAE (/255), grid 0-30 | {s['noise_mae']:.2f} | <= 2 | "
        f"{ok[met['noise_mae']]} |",
        f"| blur sigma MAE (px), grid 0.5-3 | {s['blur_mae']:.3f} | <= 0.4 | "
        f"{ok[met['blur_mae']]} |",
        f"| JPEG quality MAE, grid 20-95 | {s['jpeg_quality_mae']:.2f} | <= 8 | "
        f"{ok[met['jpeg_quality_mae']]} |",
        f"| JPEG present/absent accuracy (p >= 0.5) | {s['jpeg_detection_accuracy']:.3f} | - | - |",
    ]
    per = [
        "",
        "Per level (mean estimate, MAE):",
        "",
        "| type | level | mean estimate | MAE |",
        "|---|---|---|---|",
    ]
    for kind in ("noise", "blur", "jpeg"):
        for level, row in table[kind]["levels"].items():
            if "mean" in row:
                per.append(f"| {kind} | {level} | {row['mean']:.2f} | {row['mae']:.2f} |")
            else:
                p = row["jpeg_probability"]
                per.append(f"| {kind} | none | jpeg_probability {p:.2f} | - |")
    names = list(table["fig3"]["matrix"])
    fig = [
        "",
        "Fig. 3 matrix (mean cosine between operators; diagonal = different crops):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for a in names:
        fig.append(
            f"| {a} | " + " | ".join(f"{table['fig3']['matrix'][a][b]:.2f}" for b in names) + " |"
        )
    return "\n".join(lines + per + fig)


def plot_fig3(table: dict[str, Any], path: Path, cell: int = 56) -> Path:
    """Draw the Fig. 3 check as a PNG (PIL only): the operator x operator cosine matrix as a
    heat map (red = 1, white = 0, blue = -1) with the two summary numbers underneath."""
    from PIL import Image, ImageDraw

    matrix = table["fig3"]["matrix"]
    names = list(matrix)
    n = len(names)
    left, top = 90, 90
    w, h = left + n * cell + 20, top + n * cell + 70
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for i, a in enumerate(names):
        draw.text((8, top + i * cell + cell // 2 - 5), a, fill="black")
        draw.text((left + i * cell + 4, top - 18 - 12 * (i % 2)), a, fill="black")
        for j, b in enumerate(names):
            v = max(-1.0, min(1.0, float(matrix[a][b])))
            c = (
                (255, int(255 * (1 - v)), int(255 * (1 - v)))
                if v >= 0
                else (int(255 * (1 + v)), int(255 * (1 + v)), 255)
            )
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=c)
            draw.text((x0 + 10, y0 + cell // 2 - 6), f"{v:.2f}", fill="black")
    s = table["fig3"]
    draw.text(
        (8, 10), "FaDeX codes: mean cosine (diagonal: same operator, different crops)", fill="black"
    )
    draw.text(
        (8, top + n * cell + 12),
        f"same degradation / different content: {s['same_degradation_cos']:.3f} (target >= 0.85)",
        fill="black",
    )
    draw.text(
        (8, top + n * cell + 32),
        f"same content / different degradation |cos|: {s['same_content_abs_cos']:.3f} "
        f"(target <= 0.15)",
        fill="black",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
