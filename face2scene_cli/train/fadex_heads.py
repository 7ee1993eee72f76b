"""Retrain FaDeX's heads on its frozen encoder.

The spatial map Z (what MapNet and the scene restorer read) comes from the encoder only, so
retraining the projection and regression heads leaves Z, and every scene model trained on
it, bit-identical. Because the encoder is frozen, each crop's pooled descriptor
(:meth:`FaDeX.features`) is computed once and cached; the heads then train for many epochs
on the cached descriptors in minutes instead of hours.

Loss on the projection: supervised contrastive (positives = the same operator on other
content) plus ``orth_weight`` x the mean squared cosine between codes of different operators
in the batch. SupCon alone stops pushing a negative away once it is far below the positives
(at temperature 0.1, a cosine of 0.5 already weighs e^-5), which left clearly different
operators (blur 1 vs 2.5 px, JPEG 20 vs 50) at cosines of 0.6-0.85; the squared-cosine term
asks for orthogonal codes, the paper's Fig. 3. Regression: :func:`regression_loss`.

``python -m face2scene_cli.train.fadex_heads --config configs/fadex.yaml --from models/fadex-s
--run-dir runs/fadex-heads`` (``f2s train fadex --heads-only``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from face2scene_cli.stages.face_restore import BlindFaceRestorer
from face2scene_cli.stages.fadex import FaDeX
from face2scene_cli.train.data import PhotoBank, load_splits, make_group, sample_operator
from face2scene_cli.train.fadex import (
    FaDeXTrainConfig,
    build_val_set,
    evaluate_fadex,
    regression_loss,
    supcon_loss,
    val_score,
)

__all__ = [
    "FeatureSet",
    "HeadsConfig",
    "build_features",
    "build_groups",
    "heads_loss",
    "train_heads",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadsConfig:
    """Settings of a heads-only run (the data settings come from the FaDeX YAML's ``data``).

    Attributes:
        groups: operator groups made from the training photos (``data.crops_per_group``
            crops each).
        views: random sub-crops (size, rotation, flip) per crop whose descriptors are cached.
        sizes: sub-crop sides drawn per view.
        steps, ops_per_batch, crops_per_op: optimisation steps and the batch layout
            (operators x crops of each).
        lr, weight_decay: AdamW; the learning rate decays to 5% with a cosine.
        temperature: SupCon temperature.
        orth_weight: weight of the squared-cosine term between different operators.
        reg_weight: weight of the regression loss.
        dev_groups: the last groups, held out of training to report the dev loss.
        seed: drives the operators, the crops and the batches.
    """

    groups: int = 1200
    views: int = 2
    sizes: tuple[int, ...] = (96, 112, 128)
    steps: int = 6000
    ops_per_batch: int = 16
    crops_per_op: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    orth_weight: float = 1.0
    reg_weight: float = 1.0
    dev_groups: int = 100
    seed: int = 0


@dataclass
class FeatureSet:
    """Cached head inputs: ``features`` :math:`(N, F)`, ``group`` :math:`(N,)` operator group
    index, ``labels`` :math:`(N, 6)` as :meth:`Operator.labels`."""

    features: Tensor
    group: Tensor
    labels: Tensor


def build_groups(
    cfg: FaDeXTrainConfig, photos: list[Any], n: int, seed: int, out: Path, shard: int = 100
) -> list[Path]:
    """Make ``n`` operator groups from ``photos`` (as the trainer's workers do) into
    safetensors shards of ``shard`` groups under ``out``; shards already there are kept, so
    an interrupted run continues. Returns the shard paths."""
    out.mkdir(parents=True, exist_ok=True)
    restorer = BlindFaceRestorer()
    bank = PhotoBank(photos, cfg.data.base_long_side, cfg.data.crop + cfg.data.margin)
    paths = []
    for k in range(0, n, shard):
        path = out / f"groups-{k // shard:04d}.safetensors"
        paths.append(path)
        if path.is_file():
            continue
        rng = np.random.default_rng([seed, k])
        lq, hq, labels = [], [], []
        for _ in range(min(shard, n - k)):
            g = make_group(bank, sample_operator(rng, cfg.data), cfg.data, rng, restorer)
            lq.append(g.lq)
            hq.append(g.hq)
            labels.append(g.labels)
        tmp = path.with_suffix(".tmp")
        save_file(
            {"lq": torch.stack(lq), "hq": torch.stack(hq), "labels": torch.stack(labels)},
            str(tmp),
        )
        tmp.replace(path)
        logger.info("groups %d-%d written", k, k + len(lq) - 1)
    return paths


@torch.inference_mode()
def build_features(
    model: FaDeX, shards: list[Path], hc: HeadsConfig, batch: int = 64
) -> FeatureSet:
    """The pooled descriptor of ``hc.views`` random views of every crop in ``shards``."""
    rng = np.random.default_rng(hc.seed + 1)
    feats, groups, labels = [], [], []
    gid = 0
    for path in shards:
        d = load_file(str(path))
        g, m = d["lq"].shape[:2]
        for _ in range(hc.views):
            size = int(rng.choice(hc.sizes))
            full = d["lq"].shape[-1]
            lqs, hqs = [], []
            for gi in range(g):
                for ci in range(m):
                    oy, ox = (int(v) for v in rng.integers(0, full - size + 1, size=2))
                    rot, flip = int(rng.integers(4)), bool(rng.integers(2))
                    pair = [
                        t[gi, ci, :, oy : oy + size, ox : ox + size] for t in (d["lq"], d["hq"])
                    ]
                    pair = [torch.rot90(t, rot, (1, 2)) for t in pair]
                    if flip:
                        pair = [t.flip(-1) for t in pair]
                    lqs.append(pair[0])
                    hqs.append(pair[1])
            lq, hq = torch.stack(lqs).float() / 255, torch.stack(hqs).float() / 255
            for i in range(0, lq.shape[0], batch):
                feats.append(model.features(lq[i : i + batch], hq[i : i + batch])[1])
            groups.append(torch.arange(gid, gid + g).repeat_interleave(m))
            labels.append(d["labels"].repeat_interleave(m, dim=0))
        gid += g
    return FeatureSet(torch.cat(feats), torch.cat(groups), torch.cat(labels))


def heads_loss(
    model: FaDeX, feats: Tensor, group: Tensor, labels: Tensor, hc: HeadsConfig
) -> tuple[Tensor, dict[str, float]]:
    """SupCon + ``orth_weight`` x mean squared cosine across operators + regression."""
    out = model.heads(feats)
    q = out.q
    sim = q @ q.T
    neg = group[:, None] != group[None, :]
    orth = (sim[neg] ** 2).mean()
    sup = supcon_loss(q, group, hc.temperature)
    reg, parts = regression_loss(out, labels)
    total = sup + hc.orth_weight * orth + hc.reg_weight * reg
    return total, {"supcon": float(sup), "orth": float(orth), "reg": float(reg), **parts}


def _batches(fs: FeatureSet, groups: Tensor, hc: HeadsConfig, rng: np.random.Generator):
    by_group = {int(g): torch.nonzero(fs.group == g).flatten() for g in groups}
    keys = list(by_group)
    while True:
        pick = rng.choice(len(keys), size=min(hc.ops_per_batch, len(keys)), replace=False)
        idx = []
        for p in pick:
            members = by_group[keys[int(p)]]
            sel = rng.choice(len(members), size=min(hc.crops_per_op, len(members)), replace=False)
            idx.append(members[torch.from_numpy(sel)])
        yield torch.cat(idx)


def train_heads(model: FaDeX, fs: FeatureSet, hc: HeadsConfig) -> list[dict[str, float]]:
    """Retrain ``model.proj`` and ``model.reg`` in place on cached descriptors (the encoder
    is untouched); returns the log rows (train and dev loss)."""
    torch.manual_seed(hc.seed)
    for mod in (model.proj, model.reg):
        for layer in mod:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    params = [*model.proj.parameters(), *model.reg.parameters()]
    opt = torch.optim.AdamW(params, lr=hc.lr, weight_decay=hc.weight_decay)
    n_groups = int(fs.group.max()) + 1
    train_g = torch.arange(0, n_groups - hc.dev_groups)
    dev_g = torch.arange(n_groups - hc.dev_groups, n_groups)
    rng = np.random.default_rng(hc.seed + 2)
    train_it, dev_it = _batches(fs, train_g, hc, rng), _batches(fs, dev_g, hc, rng)
    log = []
    model.train()
    for step in range(hc.steps):
        lr = hc.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / hc.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = next(train_it)
        loss, parts = heads_loss(model, fs.features[idx], fs.group[idx], fs.labels[idx], hc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == hc.steps - 1:
            with torch.no_grad():
                dl = [
                    heads_loss(model, fs.features[i], fs.group[i], fs.labels[i], hc)[1]
                    for i in (next(dev_it) for _ in range(8))
                ]
            row = {
                "step": step,
                "loss": float(loss),
                **parts,
                **{f"dev_{k}": float(np.mean([d[k] for d in dl if k in d])) for k in dl[0]},
            }
            log.append(row)
            logger.info("%s", json.dumps(row))
    model.eval()
    return log


def load_or_build_features(
    model: FaDeX, shards: list[Path], hc: HeadsConfig, run_dir: Path
) -> FeatureSet:
    """:func:`build_features`, cached in ``run_dir`` under the encoder's hash, the views and
    the seed (the heads do not change the descriptors)."""
    key = f"{model.encoder_sha256()[:16]}-{len(shards)}x-v{hc.views}-s{hc.seed}"
    path = run_dir / f"features-{key}.safetensors"
    if path.is_file():
        d = load_file(str(path))
        return FeatureSet(d["features"], d["group"], d["labels"])
    fs = build_features(model, shards, hc)
    save_file({"features": fs.features, "group": fs.group, "labels": fs.labels}, str(path))
    return fs


def run_heads(
    config: Path, source: Path, run_dir: Path, hc: HeadsConfig, threads: int = 2
) -> dict[str, Any]:
    """Groups -> cached descriptors -> heads, for the FaDeX in ``source``; the retrained model
    goes to ``run_dir/heads-<time>`` with ``result.json`` (its table on crops of TRAINING
    photos, so the held-out photos stay untouched until the release)."""
    from face2scene_cli.train.fadex import load_train_config

    torch.set_num_threads(threads)
    cfg = load_train_config(config)
    splits = load_splits(Path(cfg.data.splits))
    t0 = time.monotonic()
    shards = build_groups(cfg, splits["train"], hc.groups, hc.seed, run_dir / "groups")
    model = FaDeX.from_pretrained(str(source), use_safetensors=True, low_cpu_mem_usage=False)
    model.eval().requires_grad_(False)
    fs = load_or_build_features(model, shards, hc, run_dir)
    t_data = time.monotonic() - t0
    model.proj.requires_grad_(True)
    model.reg.requires_grad_(True)
    t1 = time.monotonic()
    log = train_heads(model, fs, hc)
    t_train = time.monotonic() - t1
    dev_cfg = cfg.replace("val", seed=cfg.val.seed + 7)
    dev = evaluate_fadex(model, build_val_set(dev_cfg, splits["train"]))
    result = {
        "source": str(source),
        "encoder_sha256": model.encoder_sha256(),
        "heads": asdict(hc),
        "wall_s": {"data": round(t_data, 1), "train": round(t_train, 1)},
        "descriptors": int(fs.features.shape[0]),
        "dev_summary": dev["summary"],
        "dev_score": val_score(dev),
        "log": log,
    }
    out = run_dir / f"heads-{int(time.time())}"
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return {"out": str(out), "dev": dev["summary"], "wall_s": result["wall_s"]}


def main(argv: list[str] | None = None) -> int:
    """``python -m face2scene_cli.train.fadex_heads --config configs/fadex.yaml
    --from models/fadex-s --run-dir runs/fadex-heads [--set key=value]``."""
    import argparse

    import yaml

    ap = argparse.ArgumentParser(prog="python -m face2scene_cli.train.fadex_heads")
    ap.add_argument("--config", type=Path, default=Path("configs/fadex.yaml"))
    ap.add_argument("--from", dest="src", type=Path, default=Path("models/fadex-s"))
    ap.add_argument("--run-dir", type=Path, default=Path("runs/fadex-heads"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="HeadsConfig key=YAML value")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hc = HeadsConfig(**{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    print(json.dumps(run_heads(args.config, args.src, args.run_dir, hc, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
