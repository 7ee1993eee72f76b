"""The FaDeX training loop and its losses (``f2s train fadex --config configs/fadex.yaml``).

The config (:mod:`~face2scene_cli.research.train.fadex_config`) is BasicSR-style YAML with
sections ``data`` / ``network`` / ``train`` / ``val`` / ``logging``. Batches are
``ops_per_batch`` groups (one degradation operator each) x ``crops_per_op`` crops of different
content, sub-cropped to a random size per step. Losses: supervised contrastive (SupCon, Khosla
et al. 2020) on the unit codes with the operator as label, plus regression of the parametric
operators' values (noise, blur, downscale, JPEG quality where JPEG is present, JPEG presence).

Run folder (``logging.run_dir``): ``config.yaml`` (resolved), ``data_manifest.json``,
``log.jsonl`` (losses), ``val.jsonl`` (validation tables), ``checkpoint/`` (latest training
state, :mod:`~face2scene_cli.research.train.checkpoint`), ``best/`` (best-validation weights,
``save_pretrained`` format) and ``result.json``.

The held-out photos are used for one thing only: choosing which step's weights are kept
(:func:`~face2scene_cli.research.train.fadex_eval.val_score`).
:func:`~face2scene_cli.research.train.fadex_export.export_fadex` releases them into the model
zoo with a card.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import queue as queue_mod
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import Tensor

from face2scene_cli.archs.fadex import BLUR_SCALE, JPEG_SCALE, NOISE_SCALE, FaDeX, create_fadex
from face2scene_cli.degradations.record import DOWNSCALE_SIGMA_PER_FACTOR
from face2scene_cli.errors import ConfigError
from face2scene_cli.research.splits import load_splits
from face2scene_cli.research.train.checkpoint import load_checkpoint, save_checkpoint
from face2scene_cli.research.train.data import Group, group_worker
from face2scene_cli.research.train.fadex_config import FaDeXTrainConfig, TrainSettings
from face2scene_cli.research.train.fadex_eval import build_val_set, evaluate_fadex, val_score

__all__ = [
    "TrainResult",
    "effective_blur",
    "regression_loss",
    "supcon_loss",
    "train_fadex",
    "warm_start",
]

logger = logging.getLogger(__name__)


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
        meta = load_checkpoint(ckpt, model, opt)
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
                save_checkpoint(
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
    save_checkpoint(
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
