"""The FaDeX training config: ``configs/fadex.yaml`` as frozen dataclasses.

BasicSR-style sections ``data`` / ``network`` / ``train`` / ``val`` / ``logging``
(:class:`FaDeXTrainConfig`); :func:`load_train_config` reads the YAML and applies
``section.key`` overrides (``f2s train fadex --set``) before the checks, so an override is
validated as if it were in the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from face2scene_cli.errors import ConfigError
from face2scene_cli.research.train.data import DataConfig, config_section, read_training_yaml

__all__ = [
    "FaDeXTrainConfig",
    "LoggingConfig",
    "NetworkConfig",
    "TrainSettings",
    "ValConfig",
    "load_train_config",
]


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


def load_train_config(path: Path, overrides: Mapping[str, Any] | None = None) -> FaDeXTrainConfig:
    """Read a FaDeX training YAML (safe_load) with ``overrides`` (``{"train.steps": 10}``)
    applied; unknown sections or keys are refused, naming them."""
    sections = {
        "data": DataConfig,
        "network": NetworkConfig,
        "train": TrainSettings,
        "val": ValConfig,
        "logging": LoggingConfig,
    }
    doc = read_training_yaml(path, sections, overrides)
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
