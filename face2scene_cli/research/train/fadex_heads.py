"""Retrain FaDeX's heads on its frozen encoder.

The spatial map Z (what MapNet and the scene restorer read) comes from the encoder only, so
retraining the projection and regression heads leaves Z, and every scene model trained on
it, bit-identical (:meth:`FaDeX.encoder_sha256` proves it). Because the encoder is frozen,
each crop's pooled descriptor (:meth:`FaDeX.features`) is computed once and cached; the heads
then train for many epochs on the cached descriptors in a minute instead of hours.

What changes against the first release of ``fadex-s``:

* Loss on the projection: supervised contrastive (positives = the same operator on other
  content) + ``orth_weight`` x the mean squared cosine between codes of different operators
  + ``align_weight`` x the mean ``(1 - cos)^2`` between codes of the same operator. SupCon
  alone stops pushing a negative once it is far below the positives (at temperature 0.1, a
  cosine of 0.5 already weighs e^-5), which left clearly different operators (blur 1 vs
  2.5 px, JPEG 20 vs 50) at cosines of 0.6-0.85; the squared-cosine term asks for orthogonal
  codes, the paper's Fig. 3.
* Head inputs: the edge widths (:func:`~face2scene_cli.archs.fadex.edge_widths`) and what
  the JPEG quantisation trace found.
* The blur head learns the :func:`~face2scene_cli.research.train.fadex.effective_blur` (optical blur
  and resolution loss as one Gaussian sigma), which a crop can show, instead of the optical
  blur alone, which it cannot tell from a down-then-up resampling.

``f2s train fadex-heads --from models/fadex-s --run-dir runs/fadex-heads [--set key=value]``;
:func:`export_heads` releases the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from face2scene_cli.archs.fadex import FaDeX
from face2scene_cli.archs.motion import motion_features
from face2scene_cli.archs.resampling import resampling_features
from face2scene_cli.degradations.checks import flag
from face2scene_cli.degradations.record import Degradation, equivalent_blur
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.errors import ConfigError
from face2scene_cli.research.splits import load_splits
from face2scene_cli.research.train.data import (
    PhotoBank,
    make_group,
    quantize_u8,
)
from face2scene_cli.research.train.fadex import regression_loss, supcon_loss
from face2scene_cli.research.train.fadex_config import FaDeXTrainConfig, load_train_config
from face2scene_cli.research.train.fadex_eval import (
    RANGE_LEVELS,
    build_val_set,
    downscale_without_resampling,
    evaluate_fadex,
    evaluate_ranges,
    val_score,
)
from face2scene_cli.restorers.face.blind import BlindFaceRestorer

__all__ = [
    "STATISTICS_HEADS",
    "FeatureSet",
    "HeadsConfig",
    "StatisticsHead",
    "build_features",
    "build_groups",
    "build_statistics_features",
    "export_heads",
    "heads_loss",
    "load_or_build_features",
    "load_or_build_statistics_features",
    "run_heads",
    "train_heads",
    "trained_heads",
    "with_new_heads",
    "with_statistics_head",
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
        align_weight: weight of ``(1 - cos)^2`` between crops of the same operator.
        reg_weight: weight of the regression loss.
        edge_features, trace_features: the heads' extra inputs (see :class:`FaDeX`).
        downscale_head: instead of new code and regression heads, keep the source's and add
            a downscale head (see :class:`FaDeX`), trained alone on the downscale factor from
            LQ crops only (:func:`build_statistics_features`): the code and every other
            estimate stay bit-identical.
        motion_head: likewise a motion head, trained alone on the motion blur's equivalent
            Gaussian sigma; the code and every estimate but the blur stay bit-identical. A
            run trains one of the two.
        dev_groups: the last groups (at most a fifth), held out of training to report the
            dev loss.
        seed: drives the operators, the crops and the batches.
    """

    groups: int = 2000
    views: int = 2
    sizes: tuple[int, ...] = (96, 112, 128)
    steps: int = 12000
    ops_per_batch: int = 16
    crops_per_op: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    orth_weight: float = 3.0
    align_weight: float = 2.0
    reg_weight: float = 1.0
    dev_groups: int = 100
    edge_features: bool = True
    trace_features: bool = True
    downscale_head: bool = False
    motion_head: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("edge_features", "trace_features", *STATISTICS_HEADS):
            flag(name, getattr(self, name))
        if self.downscale_head and self.motion_head:
            raise ConfigError("a run trains downscale_head or motion_head, not both")

    @property
    def statistics_head(self) -> str | None:
        """The :data:`STATISTICS_HEADS` key of the head this run trains alone, if any."""
        return next((name for name in STATISTICS_HEADS if getattr(self, name)), None)


@dataclass(frozen=True)
class StatisticsHead:
    """A FaDeX head on fixed statistics of the LQ crop alone, trained after the others.

    Attributes:
        module: the head's attribute of :class:`FaDeX`.
        features: LQ crops :math:`(B, C, H, W)` in [0, 1] -> the statistics it reads.
        target: what it learns to read of an operator.
        read: the model's reading of the statistics (its ``read_*`` method).
        loss: (reading, target) -> the training loss.
        range_kind: the :data:`RANGE_LEVELS` kind its dev summary checks.
        description: for the release's training stages.
    """

    module: str
    features: Callable[[Tensor], Tensor]
    target: Callable[[Degradation], float]
    read: Callable[[FaDeX, Tensor], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    range_kind: str
    description: str


def _motion_loss(est: Tensor, target: Tensor) -> Tensor:
    """Smooth L1 of the motion blur's equivalent sigma; crops without motion weigh twice (a
    false reading adds blur to every estimate of a sharp photo)."""
    per_crop = F.smooth_l1_loss(est, target, beta=0.1, reduction="none")
    return (per_crop * torch.where(target > 0, 1.0, 2.0)).mean()


#: The statistics heads by their FaDeX config flag. The downscale head learns the log factor
#: (a relative error: x1.5 read as 1.2 costs what x4 read as 3.2 does), the motion head the
#: motion blur's equivalent sigma (0 for none; :func:`_motion_loss`).
STATISTICS_HEADS: dict[str, StatisticsHead] = {
    "downscale_head": StatisticsHead(
        module="downscale_reg",
        features=resampling_features,
        target=lambda op: op.downscale,
        read=lambda model, feats: model.read_downscale(feats),
        loss=lambda est, y: F.smooth_l1_loss(est.log(), y.log(), beta=0.02),
        range_kind="downscale",
        description="a downscale head on the resampling statistics",
    ),
    "motion_head": StatisticsHead(
        module="motion_reg",
        features=motion_features,
        target=lambda op: equivalent_blur(0.0, op.motion_px),
        read=lambda model, feats: model.read_motion(feats),
        loss=_motion_loss,
        range_kind="motion",
        description="a motion head on the directional spectrum",
    ),
}


@dataclass
class FeatureSet:
    """Cached head inputs: ``features`` :math:`(N, F)`, ``group`` :math:`(N,)` operator group
    index, ``labels`` :math:`(N, 6)` as
    :func:`~face2scene_cli.research.train.data.degradation_labels` (for a statistics head
    :math:`(N, 1)`, its :attr:`StatisticsHead.target`)."""

    features: Tensor
    group: Tensor
    labels: Tensor


def with_new_heads(source: FaDeX, **config: Any) -> FaDeX:
    """A FaDeX with ``source``'s encoder (copied) and freshly initialised code and regression
    heads, its config changed by ``config`` (head inputs and widths only; Z stays the same);
    ``source``'s statistics heads are copied too (they read none of their inputs)."""
    # (diffusers' private keys, e.g. _use_default_values, would reset the new options)
    base = {k: v for k, v in source.config.items() if not k.startswith("_")}
    model = FaDeX.from_config({**base, **config})
    kept = source.encoder_state_dict()
    for name, head in STATISTICS_HEADS.items():
        if model.config[name] and source.config.get(name, False):
            prefix = f"{head.module}."
            kept |= {k: v for k, v in source.state_dict().items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if unexpected or set(missing) & set(model.encoder_state_dict()):
        raise ValueError(
            f"encoder does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model


def with_statistics_head(source: FaDeX, name: str) -> FaDeX:
    """A FaDeX with all of ``source`` (encoder, code, regression and other statistics heads)
    and a freshly initialised statistics head ``name`` (a :data:`STATISTICS_HEADS` key),
    which alone differs in its output."""
    base = {k: v for k, v in source.config.items() if not k.startswith("_")}
    model = FaDeX.from_config({**base, name: True})
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    prefix = f"{STATISTICS_HEADS[name].module}."
    if unexpected or any(not k.startswith(prefix) for k in missing):
        raise ValueError(f"source does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def trained_heads(model: FaDeX, hc: HeadsConfig) -> list[torch.nn.Module]:
    """The heads a run trains: a statistics head alone, or the code and regression heads."""
    name = hc.statistics_head
    return [getattr(model, STATISTICS_HEADS[name].module)] if name else [model.proj, model.reg]


@torch.inference_mode()
def build_statistics_features(
    cfg: FaDeXTrainConfig, photos: list[Any], hc: HeadsConfig
) -> FeatureSet:
    """What ``hc``'s statistics head reads, its features of LQ crops, and its target:
    ``hc.views`` random views (size, rotation, flip) of ``data.crops_per_group`` crops for
    each of ``hc.groups`` parametric operators of the data's distribution, made as the
    trainer's workers make LQ crops. No restored crop and no descriptor are needed, so many
    more operators fit in the time :func:`build_groups` takes."""
    head = _statistics_head(hc)
    dist = dataclasses.replace(cfg.data.degradation, mix=(0.0, 1.0, 0.0))
    s, m = cfg.data.crop, cfg.data.margin
    bank = PhotoBank(photos, cfg.data.base_long_side, s + m)
    rng = np.random.default_rng([hc.seed, 1])
    feats, labels = [], []
    for _ in range(hc.groups):
        op = dist.sample(rng)
        labels.append(torch.tensor([head.target(op)], dtype=torch.float32))
        views = []
        for _ in range(cfg.data.crops_per_group):
            x = torch.from_numpy(bank.region(rng, s + m, cfg.data.p_face))
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            y = quantize_u8(apply(x.permute(2, 0, 1)[None].contiguous(), op, gen)).float() / 255
            for _ in range(hc.views):
                size = int(rng.choice(hc.sizes))
                oy, ox = (int(v) for v in rng.integers(0, s + m - size + 1, size=2))
                v = torch.rot90(
                    y[..., oy : oy + size, ox : ox + size], int(rng.integers(4)), (2, 3)
                )
                views.append(head.features(v.flip(-1) if rng.integers(2) else v))
        feats.append(torch.cat(views))
    per = cfg.data.crops_per_group * hc.views
    group = torch.arange(hc.groups).repeat_interleave(per)
    return FeatureSet(torch.cat(feats), group, torch.stack(labels).repeat_interleave(per, dim=0))


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
            g = make_group(bank, cfg.data.degradation.sample(rng), cfg.data, rng, restorer)
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
    """SupCon + ``orth_weight`` x mean squared cosine across operators + ``align_weight`` x
    mean (1 - cos)^2 within an operator + regression; with a statistics head (``feats`` from
    :func:`build_statistics_features`), its :attr:`StatisticsHead.loss`."""
    if hc.statistics_head is not None:
        head = STATISTICS_HEADS[hc.statistics_head]
        loss = head.loss(head.read(model, feats), labels[:, 0])
        return loss, {f"{head.range_kind}_loss": loss.item()}
    out = model.heads(feats)
    q = out.q
    sim = q @ q.T
    neg = group[:, None] != group[None, :]
    pos = ~neg & ~torch.eye(len(group), dtype=torch.bool, device=group.device)
    orth = (sim[neg] ** 2).mean()
    align = ((1 - sim[pos]) ** 2).mean()
    sup = supcon_loss(q, group, hc.temperature)
    reg, parts = regression_loss(out, labels)
    total = sup + hc.orth_weight * orth + hc.align_weight * align + hc.reg_weight * reg
    return total, {
        "supcon": sup.item(),
        "orth": orth.item(),
        "align": align.item(),
        "reg": reg.item(),
        **parts,
    }


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
    """Retrain :func:`trained_heads` in place on cached descriptors (the encoder and the
    other heads are untouched); returns the log rows (train and dev loss)."""
    torch.manual_seed(hc.seed)
    heads = trained_heads(model, hc)
    for mod in heads:
        for layer in mod:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    params = [p for mod in heads for p in mod.parameters()]
    opt = torch.optim.AdamW(params, lr=hc.lr, weight_decay=hc.weight_decay)
    n_groups = int(fs.group.max()) + 1
    if n_groups < 5:
        raise ValueError(f"need at least 5 operator groups, got {n_groups}")
    n_dev = max(1, min(hc.dev_groups, n_groups // 5))
    train_g = torch.arange(0, n_groups - n_dev)
    dev_g = torch.arange(n_groups - n_dev, n_groups)
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
                "loss": loss.item(),
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
    """:func:`build_features`, cached in ``run_dir`` under the encoder's hash, the head
    inputs, the views, their sizes and the seed (the heads do not change the descriptors)."""
    c = model.config
    inputs = (
        f"st{int(c.stat_features)}e{int(c.edge_features)}t{int(c.trace_features)}"
        f"d{int(c.downscale_head)}m{int(c.motion_head)}"
    )
    views = f"v{hc.views}x{'-'.join(map(str, hc.sizes))}"
    key = f"{model.encoder_sha256()[:16]}-{inputs}-{len(shards)}x-{views}-s{hc.seed}"
    return _cached(
        run_dir / f"features-{key}.safetensors", lambda: build_features(model, shards, hc)
    )


def load_or_build_statistics_features(
    cfg: FaDeXTrainConfig, photos: list[Any], hc: HeadsConfig, run_dir: Path
) -> FeatureSet:
    """:func:`build_statistics_features`, cached in ``run_dir`` under the head, the data
    settings, the photos, the groups, the views, their sizes and the seed."""
    head = _statistics_head(hc)
    what = json.dumps(
        [asdict(cfg.data), [p.name for p in photos], list(hc.sizes)], sort_keys=True, default=str
    )
    key = f"{hashlib.sha256(what.encode()).hexdigest()[:16]}-g{hc.groups}-v{hc.views}-s{hc.seed}"
    return _cached(
        run_dir / f"{head.module}-{key}.safetensors",
        lambda: build_statistics_features(cfg, photos, hc),
    )


def _statistics_head(hc: HeadsConfig) -> StatisticsHead:
    if hc.statistics_head is None:
        raise ValueError("the heads settings name no statistics head")
    return STATISTICS_HEADS[hc.statistics_head]


def _cached(path: Path, build: Callable[[], FeatureSet]) -> FeatureSet:
    if path.is_file():
        d = load_file(str(path))
        return FeatureSet(d["features"], d["group"], d["labels"])
    fs = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": fs.features, "group": fs.group, "labels": fs.labels}, str(path))
    return fs


def run_heads(
    config: Path, source: Path, run_dir: Path, hc: HeadsConfig, threads: int = 1
) -> dict[str, Any]:
    """Groups -> cached descriptors -> heads, for the FaDeX in ``source`` (with a statistics
    head: LQ crops -> cached statistics -> that head); the retrained model goes to
    ``run_dir/heads-<time>`` with ``result.json`` (its table, or its head's range check, on
    crops of TRAINING photos, so the held-out photos stay untouched until the release)."""
    torch.set_num_threads(threads)
    cfg = load_train_config(config)
    splits = load_splits(Path(cfg.data.splits))
    t0 = time.monotonic()
    src = FaDeX.from_pretrained(str(source), use_safetensors=True, low_cpu_mem_usage=False)
    head = STATISTICS_HEADS[hc.statistics_head] if hc.statistics_head else None
    if head is not None:
        model = with_statistics_head(src, hc.statistics_head)
        fs = load_or_build_statistics_features(cfg, splits["train"], hc, run_dir)
    else:
        shards = build_groups(cfg, splits["train"], hc.groups, hc.seed, run_dir / "groups")
        model = with_new_heads(
            src, edge_features=hc.edge_features, trace_features=hc.trace_features
        )
        fs = load_or_build_features(model, shards, hc, run_dir)
    model.eval().requires_grad_(False)
    t_data = time.monotonic() - t0
    for mod in trained_heads(model, hc):
        mod.requires_grad_(True)
    t1 = time.monotonic()
    log = train_heads(model, fs, hc)
    t_train = time.monotonic() - t1
    dev_cfg = cfg.replace("val", seed=cfg.val.seed + 7)
    if head is not None:
        # the motion head adds to the blur estimate: check the Gaussian blur's reading too
        kinds = ("motion", "blur") if head.range_kind == "motion" else (head.range_kind,)
        levels = {kind: RANGE_LEVELS[kind] for kind in kinds}
        ranges = evaluate_ranges(model, dev_cfg, splits["train"], levels=levels)
        dev = {
            "summary": {f"{kind}_{k}": v["mean"] for kind in kinds for k, v in ranges[kind].items()}
        }
        if head.range_kind == "downscale":
            free = downscale_without_resampling(model, dev_cfg, splits["train"])
            dev["summary"] |= {f"downscale_at_{k}": v["mean"] for k, v in free.items()}
    else:
        dev = evaluate_fadex(model, build_val_set(dev_cfg, splits["train"]))
    result = {
        "source": str(source),
        "encoder_sha256": model.encoder_sha256(),
        "heads": asdict(hc),
        "wall_s": {"data": round(t_data, 1), "train": round(t_train, 1)},
        "descriptors": int(fs.features.shape[0]),
        "dev_summary": dev["summary"],
        "dev_score": None if head else val_score(dev),
        "log": log,
    }
    out = run_dir / f"heads-{int(time.time())}"
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return {"out": str(out), "dev": dev["summary"], "wall_s": result["wall_s"]}


def export_heads(trained: Path, dest: Path, config: Path) -> dict[str, Any]:
    """Release heads retrained by :func:`run_heads` (``trained``: its ``heads-*`` folder) into
    the zoo folder ``dest`` of the FaDeX they were trained on.

    Refuses unless the encoder is bit-identical to ``dest``'s (so Z, and every scene model
    trained on it, stay valid). Computes the held-out table once (the held-out photos were not
    used before this point), writes the weights, ``val_table.json`` and ``metadata.json``
    (training stages extended with this one, ``encoder_sha256``); the model card's text is
    edited by hand from the returned table.
    """
    from face2scene_cli.zoo import write_metadata

    model = FaDeX.from_pretrained(str(trained), use_safetensors=True, low_cpu_mem_usage=False)
    old = FaDeX.from_pretrained(str(dest), use_safetensors=True, low_cpu_mem_usage=False)
    if model.encoder_sha256() != old.encoder_sha256():
        raise ValueError(f"{trained}: encoder differs from {dest}'s; this is not a heads update")
    result = json.loads((trained / "result.json").read_text(encoding="utf-8"))
    cfg = load_train_config(config)
    val = build_val_set(cfg, load_splits(Path(cfg.data.splits))["val"])
    table = evaluate_fadex(model.eval(), val)
    model.save_pretrained(str(dest), safe_serialization=True)
    table_out = {k: v for k, v in table.items() if k != "crop_sources"}
    (dest / "val_table.json").write_text(json.dumps(table_out, indent=1) + "\n", encoding="utf-8")
    meta = json.loads((dest / "metadata.json").read_text(encoding="utf-8"))
    meta.pop("files", None)
    wall = float(sum(result["wall_s"].values()))
    hc = result["heads"]
    head = next((h for n, h in STATISTICS_HEADS.items() if hc.get(n)), None)
    what = (
        f"{head.description}, code and other heads kept"
        if head
        else f"orth_weight {hc['orth_weight']}, align_weight {hc['align_weight']}, "
        f"edge_features {hc['edge_features']}, trace_features {hc['trace_features']}"
    )
    stage = {
        "description": f"heads only on the frozen encoder (fadex_heads): {hc['groups']} groups, "
        f"{result['descriptors']} cached descriptors, {what}",
        "steps": hc["steps"],
        "wall_s": round(wall, 1),
    }
    training = meta["training"]
    training["stages"] = [*training["stages"], stage]
    training["steps"] = sum(st["steps"] for st in training["stages"])
    training["wall_s"] = round(sum(st["wall_s"] for st in training["stages"]), 1)
    meta.update(
        version=str(int(meta.get("version", "1")) + 1),
        parameters=sum(p.numel() for p in model.parameters()),
        validation=table["summary"],
        encoder_sha256=model.encoder_sha256(),
    )
    write_metadata(
        dest, meta, ["config.json", "diffusion_pytorch_model.safetensors", "val_table.json"]
    )
    return table
