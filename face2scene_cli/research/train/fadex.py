"""Training and validation of FaDeX (``f2s train fadex --config configs/fadex.yaml``).

The config is BasicSR-style YAML with sections ``data`` / ``network`` / ``train`` / ``val`` /
``logging`` (:class:`FaDeXTrainConfig`). Batches are ``ops_per_batch`` groups (one
degradation operator each) x ``crops_per_op`` crops of different content, sub-cropped to a
random size per step. Losses: supervised contrastive (SupCon, Khosla et al. 2020) on the
unit codes with the operator as label, plus regression of the parametric operators' values
(noise, blur, downscale, JPEG quality where JPEG is present, JPEG presence).

Run folder (``logging.run_dir``): ``config.yaml`` (resolved), ``data_manifest.json``,
``log.jsonl`` (losses), ``val.jsonl`` (validation tables), ``checkpoint/`` (latest training
state: ``model.safetensors``, ``optimizer.safetensors``, ``state.json`` with step, wall time
and RNG states; no pickle), ``best/`` (best-validation weights, ``save_pretrained`` format)
and ``result.json``.

The held-out photos are used for one thing only: choosing which step's weights are kept
(:func:`val_score`). :func:`export_fadex` releases them into the model zoo with a card.
Command line: ``python -m face2scene_cli.research.train.fadex`` (:func:`main`) or ``f2s train fadex``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing as mp
import queue as queue_mod
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor

from face2scene_cli.archs.fadex import BLUR_SCALE, JPEG_SCALE, NOISE_SCALE, FaDeX, create_fadex
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.errors import ConfigError
from face2scene_cli.research.train.data import (
    DataConfig,
    Group,
    PhotoBank,
    config_section,
    group_worker,
    load_splits,
)
from face2scene_cli.restorers.face.base import FaceRestorer
from face2scene_cli.restorers.face.blind import BlindFaceRestorer

__all__ = [
    "FIG3_OPERATORS",
    "FaDeXTrainConfig",
    "LoggingConfig",
    "NetworkConfig",
    "TrainResult",
    "TrainSettings",
    "ValConfig",
    "ValSet",
    "build_val_set",
    "evaluate_fadex",
    "load_train_config",
    "supcon_loss",
    "train_fadex",
    "val_score",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class NetworkConfig:
    """``network``: a FaDeX variant name, constructor overrides, and optional warm start.

    ``init_from``: a ``model.safetensors`` (a training checkpoint's weights) to start from;
    head input layers that grew (e.g. ``stat_features`` switched on) keep the old columns
    and get zeros for the new inputs, so the warm-started model starts exactly as it was.
    """

    variant: str = "fadex-s"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None


@dataclass(frozen=True)
class TrainSettings:
    """``train``: optimisation settings.

    Attributes:
        steps: total optimisation steps (``--steps`` overrides).
        ops_per_batch / crops_per_op: K operators x M crops per batch.
        sizes: training crop sides, one drawn per step (<= data.crop, multiples of 8).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay to 5%.
        temperature: SupCon temperature.
        reg_weight: weight of the regression losses (sum of five terms).
        grad_clip: max gradient norm.
        seed: seeds the trainer's RNGs and (offset) each worker.
        threads: torch threads of the trainer.
        min_pool / pool_size: groups needed before the first step / kept in the ring buffer.
        new_groups_per_step: fresh groups taken from the workers per step (each group is then
            used ~ ops_per_batch / new_groups_per_step times on average).
        device: ``cpu`` or ``cuda`` (``--device`` overrides).
    """

    steps: int = 4000
    ops_per_batch: int = 8
    crops_per_op: int = 4
    sizes: tuple[int, ...] = (64, 80, 96, 112, 128)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    temperature: float = 0.1
    reg_weight: float = 1.0
    grad_clip: float = 5.0
    seed: int = 0
    threads: int = 2
    min_pool: int = 48
    pool_size: int = 512
    new_groups_per_step: int = 2
    device: str = "cpu"


@dataclass(frozen=True)
class ValConfig:
    """``val``: validation cadence and set size.

    Attributes:
        every_steps: evaluate every this many steps (and at the end).
        crops: held-out crops per operator.
        crop: their side (px).
        seed: fixes crops, offsets and noise (the same val set for every evaluation).
    """

    every_steps: int = 500
    crops: int = 12
    crop: int = 128
    seed: int = 1234


@dataclass(frozen=True)
class LoggingConfig:
    """``logging``: run folder and cadences (seconds / steps)."""

    run_dir: str = "runs/fadex-s"
    checkpoint_every_s: float = 240.0
    log_every: int = 20


@dataclass(frozen=True)
class FaDeXTrainConfig:
    """The whole ``configs/fadex.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    val: ValConfig = field(default_factory=ValConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, section: str, **changes: Any) -> FaDeXTrainConfig:
        """A copy with fields of one section changed (``cfg.replace("train", steps=10)``)."""
        return dataclasses.replace(
            self, **{section: dataclasses.replace(getattr(self, section), **changes)}
        )


def load_train_config(path: Path) -> FaDeXTrainConfig:
    """Read a FaDeX training YAML (safe_load); unknown sections or keys are refused."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    sections = {
        "data": DataConfig,
        "network": NetworkConfig,
        "train": TrainSettings,
        "val": ValConfig,
        "logging": LoggingConfig,
    }
    unknown = sorted(set(doc) - set(sections) - {"name"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}")
    net = doc.get("network") or {}
    if "overrides" in net and isinstance(net["overrides"], dict):
        net = dict(net, overrides=dict(net["overrides"]))
        doc["network"] = net
    parts = {k: config_section(cls, doc.get(k), k) for k, cls in sections.items()}
    if isinstance(parts["network"].overrides, tuple):
        raise ConfigError("network.overrides must be a mapping")
    cfg = FaDeXTrainConfig(**parts)
    if max(cfg.train.sizes) > cfg.data.crop or any(s % 8 for s in cfg.train.sizes):
        raise ConfigError(
            f"train.sizes must be multiples of 8 <= data.crop ({cfg.data.crop}), "
            f"got {list(cfg.train.sizes)}"
        )
    if cfg.train.crops_per_op > cfg.data.crops_per_group:
        raise ConfigError(
            f"train.crops_per_op ({cfg.train.crops_per_op}) exceeds data.crops_per_group "
            f"({cfg.data.crops_per_group})"
        )
    return cfg


# ------------------------------------------------------------------------------------------
# losses


def supcon_loss(codes: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020, :math:`L^{sup}_{out}`).

    Args:
        codes: :math:`(N, D)` unit-norm codes.
        labels: :math:`(N,)` integer labels; samples with the same label are positives.
        temperature: :math:`\tau`.

    Returns:
        scalar: mean over anchors that have at least one positive.
    """
    if codes.ndim != 2 or labels.shape != (codes.shape[0],):
        raise ValueError(
            f"codes must be (N, D) and labels (N,), got {tuple(codes.shape)}, {tuple(labels.shape)}"
        )
    n = codes.shape[0]
    sim = codes @ codes.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=codes.device)
    sim = sim.masked_fill(eye, -1e9)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    count = pos.sum(1)
    keep = count > 0
    mean_log_pos = (log_prob * pos).sum(1)[keep] / count[keep]
    return -mean_log_pos.mean()


#: Gaussian sigma (px) that best matches a bicubic down-then-up resampling by factor s, per
#: unit of s (least-squares fit on two real photos, s = 1.25-4: 0.49 at 1.25, 1.56 at 4).
DOWNSCALE_SIGMA_PER_FACTOR = 0.39


def effective_blur(blur: Tensor, downscale: Tensor) -> Tensor:
    """The blur the crop shows: the sigma of the one Gaussian equivalent to the optical blur
    followed by the resolution loss, ``sqrt(blur^2 + (0.39 s)^2)`` (s > 1; else ``blur``).
    The two are nearly indistinguishable in a crop, so the blur head learns their sum and the
    downscale head the factor."""
    ds = torch.where(downscale > 1.0, DOWNSCALE_SIGMA_PER_FACTOR * downscale, 0.0)
    return (blur.square() + ds.square()).sqrt()


def regression_loss(out: Any, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Sum of the five regression terms on labelled (parametric) samples.

    ``labels``: :math:`(N, 6)` as :func:`~face2scene_cli.research.train.data.degradation_labels`.
    Units are scaled so each term is O(1): noise /10, blur px (the :func:`effective_blur`),
    downscale, JPEG quality /25 (where JPEG is present), BCE.
    """
    has = labels[:, 5] > 0.5
    if not bool(has.any()):
        zero = out.noise_sigma.sum() * 0.0
        return zero, {}
    lab = labels[has]
    terms = {
        "noise": F.smooth_l1_loss(
            out.noise_sigma[has] / NOISE_SCALE, lab[:, 0] / NOISE_SCALE, beta=0.05
        ),
        "blur": F.smooth_l1_loss(
            out.blur_sigma_px[has] / BLUR_SCALE,
            effective_blur(lab[:, 1], lab[:, 2]) / BLUR_SCALE,
            beta=0.05,
        ),
        "downscale": F.smooth_l1_loss(out.downscale[has], lab[:, 2], beta=0.05),
        "jpeg_p": F.binary_cross_entropy_with_logits(out.jpeg_logit[has], lab[:, 4]),
    }
    jp = lab[:, 4] > 0.5
    if bool(jp.any()):
        terms["jpeg_q"] = F.smooth_l1_loss(
            out.jpeg_quality[has][jp] / JPEG_SCALE, lab[jp, 3] / JPEG_SCALE, beta=0.05
        )
    total = sum(terms.values())
    return total, {k: float(v.detach()) for k, v in terms.items()}


# ------------------------------------------------------------------------------------------
# validation


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


def build_val_set(
    cfg: FaDeXTrainConfig, photos: list[Any], restorer: FaceRestorer | None = None
) -> ValSet:
    """Degrade fixed held-out regions with the Fig. 3 operators and the grids, crop them at a
    fixed random offset (random JPEG grid phase) and restore them with ``restorer``
    (default :class:`BlindFaceRestorer`): the HQ input is always the restored crop here."""
    restorer = restorer or BlindFaceRestorer()
    regions, names = _val_regions(cfg, photos)
    s, m = cfg.val.crop, cfg.data.margin
    rng = np.random.default_rng(cfg.val.seed + 1)
    offsets = [(int(rng.integers(0, m)), int(rng.integers(0, m))) for _ in regions]

    def run(op: Degradation, salt: int) -> tuple[Tensor, Tensor]:
        lqs = []
        for i, region in enumerate(regions):
            x = torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)[None]
            gen = torch.Generator().manual_seed(cfg.val.seed * 1000 + salt * 100 + i)
            y = apply(x, op, gen)
            oy, ox = offsets[i]
            lq = (y[..., oy : oy + s, ox : ox + s] * 255).round().to(torch.uint8)
            lqs.append(lq.expand(1, 3, s, s) if lq.shape[1] == 1 else lq)
        lq = torch.cat(lqs)
        hq = (restorer.restore(lq.float() / 255).hq * 255).round().to(torch.uint8)
        return lq, hq

    fig3 = {name: run(op, i) for i, (name, op) in enumerate(FIG3_OPERATORS.items())}
    grid: dict[str, dict[str, tuple[Tensor, Tensor]]] = {"noise": {}, "blur": {}, "jpeg": {}}
    for v in GRID_NOISE:
        grid["noise"][f"{v:g}"] = run(_op(noise_sigma=v), 10 + int(v))
    for v in GRID_BLUR:
        grid["blur"][f"{v:g}"] = run(_op(blur_sigma_px=v), 50 + int(v * 10))
    for q in GRID_JPEG:
        grid["jpeg"]["none" if q is None else str(q)] = run(_op(jpeg_quality=q), 90 + (q or 0))
    return ValSet(fig3=fig3, grid=grid, sources=names, restorer=restorer.method)


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
# training


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_fadex` returns."""

    run_dir: Path
    steps: int
    wall_s: float
    best_step: int
    best_score: float
    best_table: dict[str, Any] | None


class _Pool:
    """Ring buffer of groups fed by worker processes."""

    def __init__(self, cfg: FaDeXTrainConfig, photos: list[Any]) -> None:
        ctx = mp.get_context("spawn")
        self.queue = ctx.Queue(maxsize=cfg.data.queue_size)
        self.stop = ctx.Event()
        self.procs = []
        base_seed = cfg.train.seed * 7919 + int(time.time()) % 100000
        for i in range(cfg.data.workers):
            p = ctx.Process(
                target=group_worker,
                args=(cfg.data, photos, base_seed + i, self.queue, self.stop),
                daemon=True,
            )
            p.start()
            self.procs.append(p)
        self.groups: list[Group] = []
        self.size = cfg.train.pool_size
        self.next = 0
        self.received = 0

    def drain(self, block_until: int = 0, timeout_s: float = 600.0, max_new: int = 0) -> None:
        """Move groups from the queue into the ring; wait until it holds ``block_until``;
        take at most ``max_new`` (0 = all waiting) so that the workers block (and leave the
        CPU to training) once the queue is full."""
        deadline = time.monotonic() + timeout_s
        taken = 0
        while not (max_new and taken >= max_new and len(self.groups) >= block_until):
            try:
                g = self.queue.get(timeout=0.5 if len(self.groups) < block_until else 0.001)
            except queue_mod.Empty:
                if len(self.groups) >= block_until:
                    return
                if time.monotonic() > deadline or not any(p.is_alive() for p in self.procs):
                    raise RuntimeError("data workers produced no groups in time") from None
                continue
            self.received += 1
            taken += 1
            if len(self.groups) < self.size:
                self.groups.append(g)
            else:
                self.groups[self.next] = g
                self.next = (self.next + 1) % self.size

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def _batch(pool: _Pool, cfg: FaDeXTrainConfig, rng: np.random.Generator) -> tuple[Tensor, ...]:
    k, m = cfg.train.ops_per_batch, cfg.train.crops_per_op
    size = int(rng.choice(cfg.train.sizes))
    idx = rng.choice(len(pool.groups), size=k, replace=False)
    lqs, hqs, labels, ids = [], [], [], []
    for j, gi in enumerate(idx):
        g = pool.groups[int(gi)]
        sel = rng.choice(g.lq.shape[0], size=m, replace=False)
        for si in sel:
            full = g.lq.shape[-1]
            oy, ox = (int(v) for v in rng.integers(0, full - size + 1, size=2))
            lq = g.lq[int(si), :, oy : oy + size, ox : ox + size]
            hq = g.hq[int(si), :, oy : oy + size, ox : ox + size]
            rot, flip = int(rng.integers(4)), bool(rng.integers(2))
            lq, hq = torch.rot90(lq, rot, (1, 2)), torch.rot90(hq, rot, (1, 2))
            if flip:
                lq, hq = lq.flip(-1), hq.flip(-1)
            lqs.append(lq)
            hqs.append(hq)
            labels.append(g.labels)
            ids.append(j)
    return (
        torch.stack(lqs).float() / 255,
        torch.stack(hqs).float() / 255,
        torch.stack(labels),
        torch.tensor(ids),
    )


def _lr(cfg: TrainSettings, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 5% over ``progress`` in
    [0, 1] (the larger of step / steps and elapsed / wall limit)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_checkpoint(
    folder: Path, model: FaDeX, opt: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Training state without pickle: weights + optimizer tensors in safetensors, the rest
    (step, wall time, param-group settings, RNG states) in JSON."""
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
        str(tmp / "model.safetensors"),
    )
    osd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in osd["state"].items():
        for key, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"{pid}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = val
    tensors["torch_rng"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = dict(state)
    meta["optimizer"] = {"param_groups": osd["param_groups"], "scalars": scalars}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        if old.exists():
            for p in old.iterdir():
                p.unlink()
            old.rmdir()
        folder.rename(old)
        tmp.rename(folder)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        tmp.rename(folder)


def _load_checkpoint(folder: Path, model: FaDeX, opt: torch.optim.Optimizer) -> dict[str, Any]:
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    for key, val in meta["optimizer"]["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta


def warm_start(model: FaDeX, path: Path) -> None:
    """Load weights from ``path`` (safetensors) into ``model``; first layers of the heads
    that have more inputs now are padded with zero columns; ``code_center`` may be absent."""
    state = load_file(str(path))
    own = model.state_dict()
    for key, val in list(state.items()):
        if key in own and own[key].shape != val.shape:
            new = own[key]
            grows = val.ndim == 2 and new.shape[0] == val.shape[0] and new.shape[1] > val.shape[1]
            if not grows:
                raise ConfigError(
                    f"{path}: {key} has shape {tuple(val.shape)}, the model needs "
                    f"{tuple(new.shape)}"
                )
            padded = torch.zeros_like(new)
            padded[:, : val.shape[1]] = val
            state[key] = padded
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"code_center"}:
        raise ConfigError(f"{path}: missing {missing}, unexpected {unexpected}")


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def train_fadex(
    config: FaDeXTrainConfig,
    resume: bool = False,
    *,
    wall_limit_s: float | None = None,
) -> TrainResult:
    """Train FaDeX as configured; resumable from ``<run_dir>/checkpoint``.

    Args:
        config: the training configuration.
        resume: continue from the run folder's checkpoint (step, optimizer, RNG states,
            best score); the data workers start with fresh seeds.
        wall_limit_s: stop (with a final checkpoint and validation) after this much wall time
            in this call, even before ``train.steps``.

    Returns:
        :class:`TrainResult`; the best-validation weights are in ``<run_dir>/best``.
    """
    t_start = time.monotonic()
    tc = config.train
    torch.set_num_threads(tc.threads)
    device = torch.device(tc.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but CUDA is not available")
    run = Path(config.logging.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(_plain(config.to_dict())), encoding="utf-8")
    splits = load_splits(Path(config.data.splits))
    manifest = {
        s: [{"name": p.name, "source": p.source, "file": p.path.name} for p in photos]
        for s, photos in splits.items()
    }
    (run / "data_manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")

    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    model = create_fadex(config.network.variant, **config.network.overrides)
    if device.type != "cpu":
        # nn.Module.to: diffusers' ModelMixin.to imports optional hook modules (peft).
        torch.nn.Module.to(model, device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    step, wall_before, best_score, best_step, best_table = 0, 0.0, math.inf, -1, None
    if config.network.init_from and not resume:
        warm_start(model, Path(config.network.init_from))
    ckpt = run / "checkpoint"
    if resume:
        if not (ckpt / "state.json").is_file():
            raise ConfigError(f"--resume: no checkpoint in {ckpt}")
        meta = _load_checkpoint(ckpt, model, opt)
        step, wall_before = int(meta["step"]), float(meta["wall_s"])
        best_score, best_step = float(meta["best_score"]), int(meta["best_step"])
        rng = np.random.default_rng(meta["np_rng_seed"] + step)
        logger.info("resumed from step %d", step)

    val = build_val_set(config, splits["val"])
    pool = _Pool(config, splits["train"])
    last_ckpt = time.monotonic()
    log_path = run / "log.jsonl"
    try:
        pool.drain(block_until=max(tc.min_pool, tc.ops_per_batch))
        t_loop = time.monotonic()
        while step < tc.steps:
            if wall_limit_s is not None and time.monotonic() - t_start > wall_limit_s:
                break
            pool.drain(max_new=tc.new_groups_per_step)
            model.train()
            elapsed = wall_before + time.monotonic() - t_start
            progress = step / tc.steps
            if wall_limit_s is not None:
                progress = max(progress, elapsed / (wall_before + wall_limit_s))
            lr = _lr(tc, step, progress)
            for g in opt.param_groups:
                g["lr"] = lr
            lq, hq, labels, ids = _batch(pool, config, rng)
            lq, hq, labels, ids = (t.to(device) for t in (lq, hq, labels, ids))
            out = model(lq, hq, read_jpeg_trace=False)
            l_con = supcon_loss(out.q, ids, tc.temperature)
            l_reg, parts = regression_loss(out, labels)
            loss = l_con + tc.reg_weight * l_reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            step += 1
            if step % config.logging.log_every == 0 or step == 1:
                _append(
                    log_path,
                    {
                        "step": step,
                        "loss": float(loss),
                        "supcon": float(l_con),
                        **parts,
                        "lr": lr,
                        "pool": len(pool.groups),
                        "groups_received": pool.received,
                        "steps_per_s": step / max(1e-6, time.monotonic() - t_loop)
                        if not resume
                        else None,
                        "wall_s": wall_before + time.monotonic() - t_start,
                    },
                )
            end = step >= tc.steps or (
                wall_limit_s is not None and time.monotonic() - t_start > wall_limit_s
            )
            if step % config.val.every_steps == 0 or end:
                table = evaluate_fadex(model, val)
                score = val_score(table)
                _append(run / "val.jsonl", {"step": step, "score": score, **table["summary"]})
                if score < best_score:
                    best_score, best_step, best_table = score, step, table
                    model.save_pretrained(str(run / "best"), safe_serialization=True)
                    (run / "best" / "val_table.json").write_text(
                        json.dumps({"step": step, "score": score, **table}, indent=1),
                        encoding="utf-8",
                    )
            if time.monotonic() - last_ckpt > config.logging.checkpoint_every_s or end:
                _save_checkpoint(
                    ckpt,
                    model,
                    opt,
                    {
                        "step": step,
                        "wall_s": wall_before + time.monotonic() - t_start,
                        "best_score": best_score,
                        "best_step": best_step,
                        "np_rng_seed": tc.seed,
                        "variant": config.network.variant,
                    },
                )
                last_ckpt = time.monotonic()
    finally:
        pool.close()
    wall = wall_before + time.monotonic() - t_start
    _save_checkpoint(
        ckpt,
        model,
        opt,
        {
            "step": step,
            "wall_s": wall,
            "best_score": best_score,
            "best_step": best_step,
            "np_rng_seed": tc.seed,
            "variant": config.network.variant,
        },
    )
    if best_table is None and (run / "best" / "val_table.json").is_file():
        best_table = json.loads((run / "best" / "val_table.json").read_text(encoding="utf-8"))
    result = TrainResult(run, step, wall, best_step, best_score, best_table)
    (run / "result.json").write_text(
        json.dumps(
            {
                "steps": step,
                "wall_s": wall,
                "best_step": best_step,
                "best_score": best_score,
                "groups_received": pool.received,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    return result


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    """``python -m face2scene_cli.research.train.fadex --config configs/fadex.yaml [--resume] ...``
    (the same as ``f2s train fadex``; used for background runs)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m face2scene_cli.research.train.fadex")
    ap.add_argument("--config", type=Path, default=Path("configs/fadex.yaml"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument("--run-dir")
    ap.add_argument("--val-every", type=int)
    ap.add_argument("--wall-limit-s", type=float)
    ap.add_argument("--init-from", help="warm-start weights (safetensors)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_train_config(args.config)
    if args.steps:
        cfg = cfg.replace("train", steps=args.steps)
    if args.device:
        cfg = cfg.replace("train", device=args.device)
    if args.run_dir:
        cfg = cfg.replace("logging", run_dir=args.run_dir)
    if args.init_from:
        cfg = cfg.replace("network", init_from=args.init_from)
    if args.val_every:
        cfg = cfg.replace("val", every_steps=args.val_every)
    result = train_fadex(cfg, resume=args.resume, wall_limit_s=args.wall_limit_s)
    logger.info(
        "done: %d steps, %.0f s, best step %d (score %.3f)",
        result.steps,
        result.wall_s,
        result.best_step,
        result.best_score,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ------------------------------------------------------------------------------------------
# release


def _fmt_table(table: dict[str, Any]) -> str:
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


def load_run_weights(folder: Path) -> FaDeX:
    """A FaDeX from a ``save_pretrained`` folder of a run, tolerating a missing
    ``code_center`` buffer (weights saved before centring existed; it stays zero)."""
    folder = Path(folder)
    model = FaDeX.from_config(FaDeX.load_config(str(folder)))
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"code_center"}:
        raise ConfigError(
            f"{folder}: weights do not match FaDeX (missing {missing}, unexpected {unexpected})"
        )
    return model.eval()


@torch.inference_mode()
def estimate_code_center(
    model: FaDeX, cfg: FaDeXTrainConfig, photos: list[Any], groups: int = 48, seed: int = 99
) -> Tensor:
    """Mean unit projection ``q`` over ``groups`` x ``crops_per_group`` TRAINING crops under
    operators drawn from the training distribution (HQ as in training)."""
    from face2scene_cli.research.train.data import make_group

    rng = np.random.default_rng(seed)
    bank = PhotoBank(photos, cfg.data.base_long_side, cfg.data.crop + cfg.data.margin)
    restorer = BlindFaceRestorer()
    qs = []
    for _ in range(groups):
        g = make_group(bank, cfg.data.degradation.sample(rng), cfg.data, rng, restorer)
        qs.append(model(g.lq.float() / 255, g.hq.float() / 255).q)
    return torch.cat(qs).mean(0)


def export_fadex(
    run_dir: Path,
    dest: Path,
    *,
    command: str,
    hardware: str,
    notes: str = "",
    center_groups: int = 48,
    prior: dict[str, Any] | None = None,
) -> Path:
    """Release a run's best-validation weights into the model zoo folder ``dest``.

    The code centre is estimated on training crops (:func:`estimate_code_center`), then the
    held-out table is computed once for the released model (and once without the centre, for
    the card). Writes ``config.json`` + ``diffusion_pytorch_model.safetensors``
    (``save_pretrained``), ``metadata.json`` (:func:`face2scene_cli.zoo.write_metadata`),
    ``val_table.json`` and a ``README.md`` model card (architecture, parameters, command,
    data, steps, wall time, hardware, the validation table with the targets met or missed).
    ``prior``: an earlier training stage this run was warm-started from,
    ``{"steps", "wall_s", "description"}``; the card and metadata sum the steps and time.
    """
    from face2scene_cli.zoo import write_metadata

    run_dir, dest = Path(run_dir), Path(dest)
    best = run_dir / "best"
    best_table = json.loads((best / "val_table.json").read_text(encoding="utf-8"))
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    cfg_doc = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    tmp_cfg = run_dir / "config.export.yaml"
    tmp_cfg.write_text(yaml.safe_dump(cfg_doc), encoding="utf-8")
    tcfg = load_train_config(tmp_cfg)
    cfg = cfg_doc
    manifest = json.loads((run_dir / "data_manifest.json").read_text(encoding="utf-8"))
    model = load_run_weights(best)
    splits = load_splits(Path(tcfg.data.splits))
    val = build_val_set(tcfg, splits["val"])
    raw_table = evaluate_fadex(model, val)
    table = raw_table
    if center_groups > 0:
        model.set_code_center(estimate_code_center(model, tcfg, splits["train"], center_groups))
        table = evaluate_fadex(model, val)
    table["step"] = best_table["step"]
    if table is not raw_table:
        table["raw_q_summary"] = raw_table["summary"]
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    table_out = {k: v for k, v in table.items() if k != "crop_sources"}
    (dest / "val_table.json").write_text(json.dumps(table_out, indent=1) + "\n", encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    meta = {
        "name": dest.name,
        "version": "1",
        "task": "degradation-estimation",
        "licence": "Apache-2.0",
        "source": "trained here",
        "trained_with": {"face_restorer": table.get("hq_from", "blind-nlm/1")},
        "input": {
            "pair": "LQ face crop + HQ (restored) crop, RGB (gray replicated), float [0, 1]",
            "crop": "native resolution: axis-aligned, unrotated, unresampled; sides multiple "
            "of 8 (others cropped), trained on 64-112 px, validated at 128 px",
            "outputs": "code (unit, 128-d), Z (96 x H/8 x W/8), noise_sigma (/255), "
            "blur_sigma_px, downscale (>=1), jpeg_quality, jpeg_probability",
        },
        "architecture": "FaDeX",
        "variant": "fadex-s",
        "parameters": n_params,
        "training": {
            "steps": result["steps"] + (prior or {}).get("steps", 0),
            "best_step": table["step"],
            "wall_s": round(result["wall_s"] + (prior or {}).get("wall_s", 0.0), 1),
            "stages": ([prior] if prior else [])
            + [{"steps": result["steps"], "wall_s": round(result["wall_s"], 1)}],
        },
        "validation": table["summary"],
    }
    total_steps = result["steps"] + (prior or {}).get("steps", 0)
    total_wall = result["wall_s"] + (prior or {}).get("wall_s", 0.0)
    stages_text = f"{total_steps} in total, {total_wall / 60:.1f} min wall time" + (
        f" (stage 1: {prior['steps']} steps, {prior['wall_s'] / 60:.1f} min: "
        f"{prior['description']}; stage 2: {result['steps']} steps, "
        f"{result['wall_s'] / 60:.1f} min, best validation at stage-2 step {table['step']})"
        if prior
        else f" (best validation at step {table['step']})"
    )
    raw = raw_table["summary"]
    if center_groups > 0:
        notes = (
            f"Code centring: the released code is `normalize(q - c)`, `c` = mean of `q` over "
            f"{center_groups * tcfg.data.crops_per_group} training crops (training photos and "
            f"operators only). Without it (raw `q`): same degradation "
            f"{raw['same_degradation_cos']:.3f}, same content |cos| "
            f"{raw['same_content_abs_cos']:.3f}. The estimates do not depend on it.\n\n" + notes
        )
    files = ["config.json", "diffusion_pytorch_model.safetensors", "val_table.json"]
    train_names = ", ".join(f"`{p['name']}`" for p in manifest["train"])
    val_names = ", ".join(f"`{p['name']}`" for p in manifest["val"])
    card = f"""# fadex-s — facial degradation extractor (FaDeX-S)

Reads a degraded face crop and its restored version and returns a content-independent
degradation code (for MapNet / the scene restorer) plus estimates in physical units:
Gaussian noise sigma (/255), Gaussian blur sigma (px), resolution loss (down-then-up factor),
JPEG quality and the probability that the crop was JPEG-compressed.

## Architecture
`face2scene_cli.archs.fadex.FaDeX` ({n_params:,} parameters): (LQ, HQ, LQ-HQ) -> pixel
unshuffle x2 -> 3x3 conv -> three stages (widths {", ".join(map(str, model.config.channels))};
one residual block each, stride-2 convs between stages, LeakyReLU, no normalisation) -> Z at
1/8 resolution -> [GAP, spatial std] -> projection MLP (128-d unit code, SupCon) and a
regression MLP (five outputs).

## Input
Native-resolution, axis-aligned crops (no rotation or resampling: that would change the
noise and blur statistics and break the 8x8 JPEG grid); both crops the same size, sides
multiples of 8. The HQ crop was `{table.get("hq_from")}` (the blind baseline
`BlindFaceRestorer`) in 75% of the training pairs and the clean crop in 25%; validation
always uses the blind restorer's output.

## Training
Command: `{command}`

- Loss: supervised contrastive (temperature {cfg["train"]["temperature"]}; positives = same
  operator, {cfg["train"]["ops_per_batch"]} operators x {cfg["train"]["crops_per_op"]} crops per
  batch) + regression on parametric operators (noise, blur, downscale, JPEG quality when
  present, JPEG presence).
- Operators: blur -> downscale (down then up) -> noise -> JPEG, each present with its own
  probability, noise 0.5-30/255, blur 0.3-3 px, downscale 1.25-4, JPEG 20-95; 20% are
  Real-ESRGAN second-order samples (contrastive loss only). Applied to a region 16 px larger
  than the crop, which is then cut at a random offset (random JPEG grid phase).
- Data (`data/splits.yaml`, whole photos, sha256-pinned): training photos {train_names};
  held out (never used to train or tune): {val_names}.
- Steps: {stages_text}; hardware: {hardware}.

## Evaluation (held-out photos, {table["fig3"]["crops"]} crops of 128 px per operator)
Degraded region -> crop at an offset off the 8x8 grid -> HQ from the blind restorer ->
FaDeX. Face detection is not in this loop (the crops are face-centred regions of the held-out
people photos and regions of the held-out scenes).

{_fmt_table(table)}

{notes}

## Licence
Apache-2.0; trained here from package-registry photos only (see `data/splits.yaml`).
"""
    (dest / "README.md").write_text(card, encoding="utf-8")
    write_metadata(dest, meta, files)
    return dest


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
