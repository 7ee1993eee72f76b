"""The scene trainer's config: ``configs/scene*.yaml`` as frozen dataclasses.

BasicSR-style sections ``data`` / ``network`` / ``train`` / ``val`` / ``logging``
(:class:`SceneTrainConfig`); :func:`load_scene_config` applies ``section.key`` overrides
(``f2s train scene --set``) before the dataclasses check them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import DegradationDistribution
from face2scene_cli.errors import ConfigError
from face2scene_cli.pipelines.reading import SCENE_CROPS
from face2scene_cli.research.train.data import config_section, read_training_yaml

__all__ = [
    "SCENE_DEGRADATIONS",
    "SCORE_CEILING_DB",
    "DataSection",
    "LoggingSection",
    "NetworkSection",
    "SceneTrainConfig",
    "TrainSection",
    "ValSection",
    "load_scene_config",
]


#: The scene restorer's degradations (``data.degradation`` of ``configs/scene*.yaml``).
SCENE_DEGRADATIONS = DegradationDistribution(
    mix=(0.3, 0.45, 0.25),
    p_noise=0.8,
    noise_range=(0.0, 30.0),
    p_blur=0.5,
    blur_range=(0.3, 2.5),
    p_downscale=0.2,
    downscale_range=(1.2, 3.0),
    resize_back=True,
    p_jpeg=0.5,
    jpeg_range=(25, 95),
)

#: The validation score (mean PSNR over the items) counts each item up to this: a photo
#: restored past it is as good as kept (f2s restore's clean limits keep such photos), and a
#: clean item at 77 dB would otherwise outweigh tenths of a dB on every degraded one.
SCORE_CEILING_DB = 50.0


@dataclass(frozen=True)
class DataSection:
    """``data``: where samples come from and how they are cached; ``degradation`` is the
    shared degradation block (keys it leaves out keep :data:`SCENE_DEGRADATIONS`' values)."""

    splits: str = "data/splits.yaml"
    region: int = 160  # degraded region side (uint8 cache)
    face_crop: int = 96  # FaDeX crop side, cut from the same degraded region
    samples: int = 2400
    p_face: float = 0.5  # face-centred regions in people photos
    degradation: DegradationDistribution = SCENE_DEGRADATIONS
    base_long_side: tuple[int, ...] = (1024, 640)
    seed: int = 0
    cache_from: str | None = None  # a prebuilt cache folder (e.g. a carried shard)
    scale: int = 1  # 2 or 4: a learned upscaler (LQ regions region / scale, see for_scale)

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 4) or self.region % self.scale:
            raise ConfigError(
                f"data.scale must be 1, 2 or 4 and divide data.region, got {self.scale}"
            )
        if not isinstance(self.degradation, DegradationDistribution):
            dist = DegradationDistribution.from_dict(
                self.degradation, "data.degradation", SCENE_DEGRADATIONS
            )
            object.__setattr__(self, "degradation", dist)


@dataclass(frozen=True)
class NetworkSection:
    """``network``: scene variant (+ overrides), MapNet overrides, FaDeX zoo name."""

    variant: str = "scene-embedded"
    overrides: dict[str, Any] = field(default_factory=dict)
    mapnet: dict[str, Any] = field(default_factory=dict)
    fadex: str = "fadex-s"
    color_fix: str = "none"


@dataclass(frozen=True)
class TrainSection:
    """``train``: optimisation and conditioning."""

    condition: str = "blind"  # blind | code
    cond_dropout: float = 0.25
    noise_dropout: float = 0.2  # share of samples without the noise curve (MapNet noise_levels)
    batch: int = 16
    crop: int = 96  # LQ crop side (the clean crop is crop x data.scale)
    lr: float = 3e-4
    lr_schedule: str = "constant"  # constant | cosine (to lr_min over steps or wall time)
    lr_min: float = 1e-5
    warmup_steps: int = 100
    ema: float = 0.995
    steps: int = 100000
    max_minutes: float = 60.0
    deadline_utc: str | None = None  # "HH:MM" today (UTC): stop before it
    w_ssim: float = 0.2
    w_grad: float = 0.1
    w_fft: float = 0.02
    grad_clip: float = 1.0
    w_gan: float = 0.0  # > 0: adversarial term from a critic trained alongside
    critic_channels: int = 64  # the critic's first-level width (discriminator.py)
    critic_lr: float = 1e-4
    amp: str = "none"  # none | bf16: forward passes under bf16 autocast (losses in fp32)
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    init_from: str | None = None  # checkpoint folder to warm-start weights from


@dataclass(frozen=True)
class ValSection:
    """``val``: validation on the VAL photos (long side ``long_side``): each preset, each
    ``parametric`` item (name -> :class:`Degradation` fields, e.g. ``blur3: {blur_sigma_px:
    3.0}``, noise seeded 11) and each second-order seed; the score is the mean PSNR of the
    per-degradation means."""

    enabled: bool = True  # False where the val photos are absent (GPU carry runs)
    every_s: float = 600.0
    long_side: int = 384
    presets: tuple[str, ...] = ("noise15", "blur-noise", "mixed")
    parametric: dict[str, dict[str, Any]] = field(default_factory=dict)
    second_order_seeds: tuple[int, ...] = (7,)
    face_crop: int = 96

    def __post_init__(self) -> None:
        for name, fields in self.parametric.items():
            try:
                Degradation("parametric", seed=11, **fields)
            except (TypeError, ConfigError) as err:
                raise ConfigError(f"val.parametric.{name}: {err}") from err

    def items_key(self) -> dict[str, Any]:
        """What decides the validation items, as plain JSON (a score is comparable only under
        equal keys)."""
        items = {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("enabled", "every_s")
        }
        items["scene_crops"] = SCENE_CROPS  # a photo without a face: its code's crops
        items["score_ceiling_db"] = SCORE_CEILING_DB
        return json.loads(json.dumps(items))


@dataclass(frozen=True)
class LoggingSection:
    """``logging``: run folder, checkpoint cadence, export target."""

    run_dir: str = "runs/scene-embedded"
    checkpoint_every_s: float = 300.0
    log_every: int = 10
    export_to: str | None = "models/scene-embedded"
    export_half: bool = True  # store the exported weights in float16


@dataclass(frozen=True)
class SceneTrainConfig:
    """The whole training config (YAML sections of the same names)."""

    name: str = "scene-embedded"
    data: DataSection = DataSection()
    network: NetworkSection = NetworkSection()
    train: TrainSection = TrainSection()
    val: ValSection = ValSection()
    logging: LoggingSection = LoggingSection()

    def __post_init__(self) -> None:
        t = self.train
        if t.condition not in ("blind", "code"):
            raise ConfigError(f"train.condition must be blind or code, got {t.condition!r}")
        if t.condition == "code" and t.cond_dropout < 0.2:
            raise ConfigError(f"train.cond_dropout must be >= 0.2, got {t.cond_dropout}")
        if not 0.0 <= t.noise_dropout < 1.0:
            raise ConfigError(f"train.noise_dropout must be in [0, 1), got {t.noise_dropout}")
        if t.w_gan < 0:
            raise ConfigError(f"train.w_gan must be >= 0, got {t.w_gan}")
        if t.amp not in ("none", "bf16"):
            raise ConfigError(f"train.amp must be none or bf16, got {t.amp!r}")
        if t.w_gan and (t.crop * self.data.scale) % 8:
            raise ConfigError(
                f"the critic needs clean crops of a multiple of 8 px: train.crop ({t.crop}) x "
                f"data.scale ({self.data.scale}) is not"
            )
        lq_side = self.data.region // self.data.scale
        if t.crop > lq_side:
            raise ConfigError(f"train.crop ({t.crop}) > the LQ region ({lq_side} px)")
        if self.data.face_crop > lq_side or self.data.face_crop % 8:
            raise ConfigError(
                f"data.face_crop must be a multiple of 8 <= the LQ region ({lq_side} px), got "
                f"{self.data.face_crop}"
            )
        up = self.network.overrides.get("upscale", self.data.scale)
        if up != self.data.scale:
            raise ConfigError(
                f"network.overrides.upscale ({up}) must equal data.scale ({self.data.scale})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_scene_config(path: Path, overrides: Mapping[str, Any] | None = None) -> SceneTrainConfig:
    """Read the YAML config (``yaml.safe_load``) with ``overrides`` (``{"train.steps": 10}``)
    applied; unknown sections or keys are refused, naming them."""
    sections = {
        "data": DataSection,
        "network": NetworkSection,
        "train": TrainSection,
        "val": ValSection,
        "logging": LoggingSection,
    }
    doc = read_training_yaml(path, sections, overrides)
    parts = {k: config_section(cls, doc.get(k), k) for k, cls in sections.items()}
    return SceneTrainConfig(name=str(doc.get("name", "scene-embedded")), **parts)
