"""Training of the Stage II scene restorer + MapNet (``f2s train scene --config ...``).

FaDeX is frozen; MapNet and the scene network train jointly. The config is BasicSR-style YAML
(``data`` / ``network`` / ``train`` / ``val`` / ``logging``, :class:`SceneTrainConfig`).

Data (:func:`build_cache`): regions of the TRAIN photos of ``data/splits.yaml`` (the FaDeX
split, reused) degraded once by ``data.degradation`` (a
:class:`~face2scene_cli.degradations.sampling.DegradationDistribution`: a mix of the named
presets, a parametric grid (blur -> downscale and back -> noise -> JPEG with random values)
and Real-ESRGAN's second-order pipeline);
stored as uint8 (so JPEG is never re-encoded per step). From the SAME degraded region a
face-sized crop (centred on a dlib face in people photos) is cut at native resolution and
restored by :class:`BlindFaceRestorer`, as at inference; FaDeX's map Z of that (LQ, HQ) pair is
cached per sample once FaDeX's weights exist (:func:`cache_codes`). Each step draws random
sub-crops (+ flips / 90° turns) of cached regions.

Conditioning: ``train.condition`` is ``blind`` (every sample gets MapNet's null tokens; usable
before FaDeX exists) or ``code`` (MapNet(Z) tokens, replaced by the null tokens with
probability ``train.cond_dropout`` >= 0.2 so the blind mode stays a fair baseline).
``train.init_from`` warm-starts from another run's checkpoint (e.g. the blind phase).

Losses: Charbonnier + ``w_ssim`` (1 - SSIM) + ``w_grad`` L1 of image gradients + ``w_fft``
L1 of FFT amplitudes. An EMA of the weights is what validation and export use.

Run folder: ``config.yaml``, ``data_manifest.json``, ``cache/`` (degraded regions, codes),
``log.jsonl``, ``val.jsonl``, ``checkpoint/`` (weights, EMA, optimizer, step, wall time, RNG
states; safetensors + JSON, no pickle), ``result.json``. The best validation weights are
exported to ``logging.export_to`` (a model folder with metadata and card) whenever the
validation score improves over the previous export.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
import math
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

from face2scene_cli.archs.mapnet import MapNet
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import DegradationDistribution, apply
from face2scene_cli.errors import ConfigError
from face2scene_cli.registry import create
from face2scene_cli.research.metrics import psnr_torch, ssim_torch
from face2scene_cli.research.train.data import (
    PhotoBank,
    _dlib_faces,
    config_section,
    load_splits,
)
from face2scene_cli.restorers.face.blind import BlindFaceRestorer
from face2scene_cli.restorers.scene import RestoreSettings, SceneRestorer

__all__ = [
    "SCENE_DEGRADATIONS",
    "SceneTrainConfig",
    "build_cache",
    "cache_codes",
    "load_scene_config",
    "restoration_loss",
    "train_scene",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# config


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

    def __post_init__(self) -> None:
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
    batch: int = 16
    crop: int = 96
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
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    init_from: str | None = None  # checkpoint folder to warm-start weights from


@dataclass(frozen=True)
class ValSection:
    """``val``: validation on the VAL photos (long side ``long_side``)."""

    enabled: bool = True  # False where the val photos are absent (GPU carry runs)
    every_s: float = 600.0
    long_side: int = 384
    presets: tuple[str, ...] = ("noise15", "blur-noise", "mixed")
    second_order_seeds: tuple[int, ...] = (7,)
    face_crop: int = 96


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
        if t.crop > self.data.region:
            raise ConfigError(f"train.crop ({t.crop}) > data.region ({self.data.region})")
        if self.data.face_crop > self.data.region or self.data.face_crop % 8:
            raise ConfigError(
                f"data.face_crop must be a multiple of 8 <= data.region, got {self.data.face_crop}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_scene_config(path: Path, **overrides: dict[str, Any]) -> SceneTrainConfig:
    """Read the YAML config (``yaml.safe_load``); ``overrides`` = ``{section: {key: value}}``."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror})") from err
    for sec, changes in overrides.items():
        doc.setdefault(sec, {}).update(changes)
    known = {"name", "data", "network", "train", "val", "logging"}
    if set(doc) - known:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(set(doc) - known))}")
    return SceneTrainConfig(
        name=str(doc.get("name", "scene-embedded")),
        data=config_section(DataSection, doc.get("data"), "data"),
        network=config_section(NetworkSection, doc.get("network"), "network"),
        train=config_section(TrainSection, doc.get("train"), "train"),
        val=config_section(ValSection, doc.get("val"), "val"),
        logging=config_section(LoggingSection, doc.get("logging"), "logging"),
    )


# ------------------------------------------------------------------------------------------
# degradations and the sample cache


def _degrade(x: Tensor, degradation: Degradation) -> Tensor:
    r"""``degradation`` applied to :math:`(1, C, H, W)` in [0, 1], quantised to 8-bit levels
    (a decoded photo); same size (the trainers' degradations resize back)."""
    return (apply(x, degradation).clamp(0, 1) * 255).round() / 255


def _u8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _face_box(
    faces: list[tuple[float, float, float]], h: int, w: int, s: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left of an ``s`` crop: on a face when one is inside, else at random."""
    for cx, cy, _ in faces:
        if 0 <= cx < w and 0 <= cy < h:
            y0 = round(min(max(cy - s / 2, 0), h - s))
            x0 = round(min(max(cx - s / 2, 0), w - s))
            return y0, x0
    return int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))


def build_cache(cfg: DataSection, photos: list[Any], restorer: BlindFaceRestorer) -> dict[str, Any]:
    """Degraded training regions and their face-sized (LQ, blind-restored) crops.

    Returns:
        ``{"lq", "clean": (N, 3, R, R) uint8, "face_lq", "face_hq": (N, 3, F, F) uint8,
        "degradations": [Degradation.to_dict()] * N}``; gray photos are replicated to 3 channels.
    """
    rng = np.random.default_rng(cfg.seed)
    bank = PhotoBank(photos, cfg.base_long_side, cfg.region)
    r, f = cfg.region, cfg.face_crop
    lq = torch.empty(cfg.samples, 3, r, r, dtype=torch.uint8)
    clean = torch.empty_like(lq)
    face_lq = torch.empty(cfg.samples, 3, f, f, dtype=torch.uint8)
    face_hq = torch.empty_like(face_lq)
    degs = []
    for i in range(cfg.samples):
        base = bank.bases[int(rng.integers(len(bank.bases)))]
        img = base.image
        h, w = img.shape[:2]
        if base.faces and rng.random() < cfg.p_face:
            cx, cy, _ = base.faces[int(rng.integers(len(base.faces)))]
            y0 = int(min(max(cy - r / 2 + rng.uniform(-0.25, 0.25) * r, 0), h - r))
            x0 = int(min(max(cx - r / 2 + rng.uniform(-0.25, 0.25) * r, 0), w - r))
            faces = [(cx - x0, cy - y0, 0.0)]
        else:
            y0, x0 = int(rng.integers(0, h - r + 1)), int(rng.integers(0, w - r + 1))
            faces = []
        x = torch.from_numpy(np.ascontiguousarray(img[y0 : y0 + r, x0 : x0 + r]))
        x = x.permute(2, 0, 1)[None].float()
        deg = cfg.degradation.sample(rng)
        y = _degrade(x, deg)
        fy, fx = _face_box(faces, r, r, f, rng)
        crop = y[..., fy : fy + f, fx : fx + f]
        hq = restorer.restore(crop).hq
        lq[i], clean[i] = _u8(y[0]).expand(3, r, r), _u8(x[0]).expand(3, r, r)
        face_lq[i], face_hq[i] = _u8(crop[0]).expand(3, f, f), _u8(hq[0]).expand(3, f, f)
        degs.append(deg.to_dict())
        if (i + 1) % 200 == 0:
            logger.info("cache: %d / %d samples", i + 1, cfg.samples)
    return {"lq": lq, "clean": clean, "face_lq": face_lq, "face_hq": face_hq, "degradations": degs}


def save_cache(folder: Path, cache: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: cache[k] for k in ("lq", "clean", "face_lq", "face_hq")},
        str(folder / "samples.safetensors"),
    )
    (folder / "degradations.json").write_text(json.dumps(cache["degradations"]), encoding="utf-8")


def load_cache(folder: Path) -> dict[str, Any]:
    cache: dict[str, Any] = dict(load_file(str(folder / "samples.safetensors")))
    cache["degradations"] = json.loads((folder / "degradations.json").read_text(encoding="utf-8"))
    return cache


@torch.inference_mode()
def cache_codes(
    fadex: torch.nn.Module, face_lq: Tensor, face_hq: Tensor, batch: int = 64
) -> Tensor:
    r"""FaDeX maps Z for cached uint8 face pairs :math:`(N, 3, F, F)` -> :math:`(N, C_z, F/8, F/8)`
    float16 (FaDeX is frozen, so Z is computed once)."""
    out = []
    for i in range(0, face_lq.shape[0], batch):
        a = face_lq[i : i + batch].float() / 255
        b = face_hq[i : i + batch].float() / 255
        out.append(fadex(a, b).z.half())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------
# losses


def _charbonnier(a: Tensor, b: Tensor, eps: float = 1e-3) -> Tensor:
    return torch.sqrt((a - b) ** 2 + eps * eps).mean()


def restoration_loss(
    out: Tensor, target: Tensor, w_ssim: float, w_grad: float, w_fft: float
) -> tuple[Tensor, dict[str, float]]:
    r"""Pixel + structure loss of :math:`(B, 3, H, W)` batches in [0, 1]; returns the total and
    its parts."""
    pix = _charbonnier(out, target)
    ssim = (
        ssim_torch(out.clamp(0, 1).float(), target.float()).mean() if w_ssim else out.new_zeros(())
    )
    dxo, dyo = out[..., :, 1:] - out[..., :, :-1], out[..., 1:, :] - out[..., :-1, :]
    dxt, dyt = target[..., :, 1:] - target[..., :, :-1], target[..., 1:, :] - target[..., :-1, :]
    grad = (dxo - dxt).abs().mean() + (dyo - dyt).abs().mean()
    fft = (torch.fft.rfft2(out).abs() - torch.fft.rfft2(target).abs()).abs().mean() / out.shape[-1]
    total = pix + w_ssim * (1 - ssim) + w_grad * grad + w_fft * fft
    parts = {"pix": pix.item(), "ssim": ssim.item(), "grad": grad.item(), "fft": fft.item()}
    return total, parts


# ------------------------------------------------------------------------------------------
# validation


@dataclass
class ValItem:
    name: str
    degradation: str
    clean: Tensor  # (1, 3, H, W) float
    lq: Tensor
    face_lq: Tensor  # (1, 3, F, F)
    face_hq: Tensor
    face_clean: Tensor
    z: Tensor | None = None


def _long_side(x: Tensor, side: int) -> Tensor:
    h, w = x.shape[-2:]
    if max(h, w) <= side:
        return x
    f = side / max(h, w)
    return F.interpolate(x, size=(round(h * f), round(w * f)), mode="area")


def build_val_items(
    photos: list[Any], cfg: ValSection, restorer: BlindFaceRestorer
) -> list[ValItem]:
    """The VAL photos (area-downscaled to ``long_side``, 8-bit), each under every preset and
    second-order seed, with a face-sized crop (dlib face, else the centre) of the degraded
    image restored blind."""
    from face2scene_cli.research.train.data import _rgb_float

    items = []
    for photo in photos:
        arr = _rgb_float(photo.path)
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
        x = (_long_side(x, cfg.long_side).clamp(0, 1) * 255).round() / 255
        x = x.expand(1, 3, *x.shape[2:]).contiguous()
        h, w = x.shape[-2:]
        s = min(cfg.face_crop, h, w) // 8 * 8
        faces = _dlib_faces(x[0].permute(1, 2, 0).numpy()) if photo.people else []
        degs = [(n, Degradation.from_preset(n, 11)) for n in cfg.presets]
        second_order = DegradationDistribution(mix=(0.0, 0.0, 1.0))
        for seed in cfg.second_order_seeds:
            sample = second_order.sample(torch.Generator().manual_seed(seed))
            degs.append((f"second-order-{seed}", sample))
        for dname, deg in degs:
            y = _degrade(x, deg)
            rng = np.random.default_rng(0)
            fy, fx = (h - s) // 2, (w - s) // 2
            if faces:
                fy, fx = _face_box(faces, h, w, s, rng)
            crop = y[..., fy : fy + s, fx : fx + s]
            hq = restorer.restore(crop).hq
            clean_crop = x[..., fy : fy + s, fx : fx + s]
            items.append(ValItem(photo.name, dname, x, y, crop, hq, clean_crop))
    return items


def evaluate_items(
    restorer: SceneRestorer, items: list[ValItem], mode: str, tile: int | None = None
) -> dict[str, Any]:
    """PSNR/SSIM (RGB, 8-bit, whole image) of ``mode`` (``input``, ``blind`` or ``code``)
    per item, and per degradation means."""
    rows = []
    for it in items:
        if mode == "input":
            out = it.lq
        else:
            tokens = None
            if mode == "code":
                if it.z is None or restorer.mapnet is None:
                    raise ConfigError("code mode needs FaDeX maps and a MapNet")
                tokens = restorer.mapnet(it.z.float()).tokens
            out = restorer.restore(it.lq, tokens, tile=tile)
        q = (out.clamp(0, 1) * 255).round() / 255
        rows.append(
            {
                "image": it.name,
                "degradation": it.degradation,
                "psnr": float(psnr_torch(q, it.clean)[0]),
                "ssim": float(ssim_torch(q, it.clean)[0]),
            }
        )
    means: dict[str, dict[str, float]] = {}
    for d in sorted({r["degradation"] for r in rows}):
        sel = [r for r in rows if r["degradation"] == d]
        means[d] = {k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "ssim")}
    return {"rows": rows, "means": means}


# ------------------------------------------------------------------------------------------
# checkpoints (the FaDeX trainer's no-pickle format, reused)


def _ckpt_modules(net: torch.nn.Module, mapnet: MapNet) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({"net": net, "mapnet": mapnet})


def _load_warm(model: torch.nn.Module, state: dict[str, Tensor], src: Path) -> None:
    """Warm start from ``state``; only the layers of a newly added full-resolution refinement
    or its token modulation (``net.refine*``, zero-initialised) may be missing from it."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    new_layers = [k for k in missing if not k.startswith(("net.refine.", "net.refine_mod."))]
    if new_layers or unexpected:
        raise ConfigError(
            f"train.init_from {src} does not fit the network: missing {new_layers[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def _deadline(tc: TrainSection, start: float) -> float:
    """Monotonic time at which to stop (max_minutes, and the UTC deadline if given)."""
    end = start + tc.max_minutes * 60
    if tc.deadline_utc:
        hh, mm = (int(v) for v in tc.deadline_utc.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        target = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if target < now - dt.timedelta(hours=12):
            target += dt.timedelta(days=1)
        end = min(end, start + (target - now).total_seconds())
    return end


def _lr(tc: TrainSection, step: int, progress: float) -> float:
    """Learning rate after linear warm-up; ``progress`` in [0, 1] drives the cosine decay."""
    warm = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if tc.lr_schedule == "constant":
        return tc.lr * warm
    if tc.lr_schedule != "cosine":
        raise ValueError(f"train.lr_schedule must be constant or cosine, not {tc.lr_schedule!r}")
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return warm * (tc.lr_min + (tc.lr - tc.lr_min) * cos)


def _augment(x: Tensor, k: int, flip: bool) -> Tensor:
    x = torch.rot90(x, k, dims=(-2, -1)) if k else x
    return x.flip(-1) if flip else x


def _batch(
    cache: dict[str, Any], codes: Tensor | None, tc: TrainSection, rng: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    n, r = cache["lq"].shape[0], cache["lq"].shape[-1]
    idx = rng.integers(0, n, size=tc.batch)
    lqs, cls = [], []
    for i in idx:
        y0, x0 = (int(v) for v in rng.integers(0, r - tc.crop + 1, size=2))
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        sl = (slice(None), slice(y0, y0 + tc.crop), slice(x0, x0 + tc.crop))
        lqs.append(_augment(cache["lq"][i][sl], k, flip))
        cls.append(_augment(cache["clean"][i][sl], k, flip))
    lq = torch.stack(lqs).float() / 255
    clean = torch.stack(cls).float() / 255
    z = None if codes is None else codes[torch.from_numpy(idx)].float()
    return lq, clean, z


def export_model(
    folder: Path,
    net: torch.nn.Module,
    mapnet: MapNet,
    config: SceneTrainConfig,
    info: dict[str, Any],
    half: bool = True,
) -> list[str]:
    """Write the release folder: weights and configs (``save_pretrained``), ``scene.json``,
    ``metadata.json`` (``trained_with`` the FaDeX sha256; every file pinned, configs included)
    and ``training.json``; the model card is written by
    :func:`face2scene_cli.research.eval.scene.write_card`."""
    from face2scene_cli.zoo import write_metadata

    kind = "sd-turbo" if config.network.variant.startswith("sd-turbo") else "embedded"
    settings = RestoreSettings(
        kind=kind, color_fix=config.network.color_fix, fadex=config.network.fadex
    )
    files = SceneRestorer(copy.deepcopy(net), settings, copy.deepcopy(mapnet)).save_pretrained(
        folder, half=half
    )
    (folder / "training.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    from face2scene_cli.research.eval.scene import write_card

    val = info.get("val", {})
    lines = [
        "Training-time validation (EMA weights; VAL photos at long side "
        f"{config.val.long_side} px; PSNR dB / SSIM, RGB uint8):",
        "",
        "| degradation | input | " + " | ".join(m for m in ("blind", "code") if m in val) + " |",
        "|---|---|" + "---|" * sum(m in val for m in ("blind", "code")),
    ]
    for deg, base in info.get("val_input", {}).items():
        cells = [f"{base['psnr']:.2f} / {base['ssim']:.3f}"]
        cells += [
            f"{val[m][deg]['psnr']:.2f} / {val[m][deg]['ssim']:.3f}"
            for m in ("blind", "code")
            if m in val
        ]
        lines.append(f"| {deg} | " + " | ".join(cells) + " |")
    write_card(folder, "\n".join(lines) + "\n")
    meta = {
        "name": config.name,  # not the folder's: a run may export elsewhere
        "version": "1",
        "task": "scene restoration (Stage II), conditioned on MapNet degradation tokens",
        "licence": "Apache-2.0",
        "source": "trained here",
        "input": {"range": [0, 1], "channels": "RGB (gray replicated)", "any_size": True},
        "trained_with": info.get("trained_with", {}),
        "training": {k: info[k] for k in ("steps", "wall_s", "hardware", "phases") if k in info},
    }
    write_metadata(folder, meta, [*files, "scene.json", "training.json"])
    return files


# ------------------------------------------------------------------------------------------
# the loop


def _fadex(name: str) -> tuple[torch.nn.Module | None, str | None, int]:
    """(frozen FaDeX or None, its zoo sha256, Z channels)."""
    from face2scene_cli.archs.fadex import create_fadex
    from face2scene_cli.restorers.loading import load_fadex
    from face2scene_cli.zoo import models_dir, require_model

    folder = models_dir() / name
    if not (folder / "metadata.json").is_file():
        return None, None, int(create_fadex(name).z_channels)
    info = require_model(name)
    fadex = load_fadex(name).requires_grad_(False)
    return fadex, info.sha256, int(fadex.z_channels)


def train_scene(config: SceneTrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train MapNet + the scene network as configured (see the module docstring).

    Args:
        config: the training configuration.
        resume: continue from ``<run_dir>/checkpoint`` (weights, EMA, optimizer, step, wall
            time, RNG states).

    Returns:
        The ``result.json`` dict (steps, wall time, best validation, export).
    """
    t0 = time.monotonic()
    tc = config.train
    torch.set_num_threads(tc.threads)
    stop_at = _deadline(tc, t0)
    run = Path(config.logging.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict()))))
    splits = load_splits(Path(config.data.splits))
    manifest = {
        s: [{"name": p.name, "source": p.source, "sha256": p.sha256} for p in ps]
        for s, ps in splits.items()
    }
    (run / "data_manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    blind_fr = BlindFaceRestorer()

    # 1. data (cached across runs with the same data section)
    cache_dir = Path(config.data.cache_from) if config.data.cache_from else run / "cache"
    key_fields = {k: v for k, v in dataclasses.asdict(config.data).items() if k != "cache_from"}
    key = json.dumps(key_fields, sort_keys=True)
    if config.data.cache_from or (
        (cache_dir / "key.json").is_file() and (cache_dir / "key.json").read_text() == key
    ):
        cache = load_cache(cache_dir)
    else:
        cache = build_cache(config.data, splits["train"], blind_fr)
        save_cache(cache_dir, cache)
        (cache_dir / "key.json").write_text(key)
    fadex, fadex_sha, z_ch = _fadex(config.network.fadex)
    # the scene model depends on Z only: the encoder's hash says which FaDeX heads fit it too
    trained_with = (
        {"fadex": fadex_sha, "fadex_encoder": fadex.encoder_sha256()} if fadex is not None else {}
    )
    codes = None
    if tc.condition == "code":
        if fadex is None:
            raise ConfigError(f"train.condition=code needs FaDeX weights ({config.network.fadex})")
        code_file = cache_dir / f"codes-{trained_with['fadex_encoder'][:16]}.safetensors"
        if code_file.is_file():
            codes = load_file(str(code_file))["z"]
        else:
            codes = cache_codes(fadex, cache["face_lq"], cache["face_hq"])
            save_file({"z": codes.contiguous()}, str(code_file))
    val_items = build_val_items(splits["val"], config.val, blind_fr) if config.val.enabled else []
    if fadex is not None:
        with torch.inference_mode():
            for it in val_items:
                it.z = fadex(it.face_lq, it.face_hq).z.to(tc.device)

    # 2. networks, optimizer, EMA
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    net = create("scene_net", config.network.variant, **config.network.overrides)
    ctx_dim = int(net.cond.token_dim)
    mapnet = MapNet(
        **{
            "in_channels": z_ch,
            "dim": 128,
            "heads": 4,
            "depth": 1,
            "cross_attention_dim": ctx_dim,
            **config.network.mapnet,
        }
    )
    device = torch.device(tc.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but CUDA is not available")
    model = _ckpt_modules(net, mapnet)
    ema = _ckpt_modules(
        create("scene_net", config.network.variant, **config.network.overrides),
        MapNet.from_config(mapnet.config),
    )
    ema.load_state_dict(model.state_dict())
    torch.nn.Module.to(model, device)
    torch.nn.Module.to(ema, device)
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=tc.lr, weight_decay=0.0
    )
    step, wall_before, best, phases = 0, 0.0, -math.inf, []
    ckpt = run / "checkpoint"
    from face2scene_cli.research.train.fadex import _load_checkpoint, _save_checkpoint

    if resume:
        meta = _load_checkpoint(ckpt, model, opt)
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        step, wall_before, best = int(meta["step"]), float(meta["wall_s"]), float(meta["best"])
        phases = list(meta.get("phases", []))
        rng = np.random.default_rng([tc.seed, step])
    elif tc.init_from:
        src = Path(tc.init_from)
        if (src / "scene.json").is_file():  # a model folder (e.g. the shipped weights)
            loaded = SceneRestorer.from_pretrained(src)
            state = _ckpt_modules(loaded.net, loaded.mapnet).state_dict()
            done = json.loads((src / "training.json").read_text(encoding="utf-8"))["phases"]
            prev = {
                "step": done[-1]["steps"],
                "wall_s": done[-1]["wall_s"],
                "phases": done[:-1],
                "condition": done[-1]["condition"],
            }
        else:  # a run's checkpoint folder
            state = load_file(str(src / "ema.safetensors"))
            prev = json.loads((src / "state.json").read_text(encoding="utf-8"))
        _load_warm(model, state, src)
        _load_warm(ema, state, src)
        phases = [
            *prev.get("phases", []),
            {
                "run": str(src),
                "steps": prev["step"],
                "wall_s": prev["wall_s"],
                "condition": prev.get("condition"),
            },
        ]
        # export only what beats the previous export (the blind phase's, for a code phase)
        if np.isfinite(prev.get("best", -math.inf)):
            best = float(prev["best"])
    prior_steps = sum(p["steps"] for p in phases)
    prior_wall = sum(p["wall_s"] for p in phases)

    def score_of(table: dict[str, Any]) -> float:
        return float(np.mean([v["psnr"] for v in table["means"].values()]))

    def validate() -> dict[str, Any]:
        ema_r = SceneRestorer(
            ema["net"], RestoreSettings(color_fix=config.network.color_fix), ema["mapnet"], device
        )
        with torch.inference_mode():
            table = {"blind": evaluate_items(ema_r, val_items, "blind")}
            if fadex is not None and tc.condition == "code":
                table["code"] = evaluate_items(ema_r, val_items, "code")
        return table

    def checkpoint(step: int, wall: float, best: float) -> None:
        """Weights, EMA, optimizer and the run's state (what ``--resume`` reads back)."""
        state = {
            "step": step,
            "wall_s": wall,
            "best": best,
            "phases": phases,
            "condition": tc.condition,
            "fadex": fadex_sha,
        }
        _save_checkpoint(ckpt, model, opt, state)
        save_file(
            {k: v.contiguous() for k, v in ema.state_dict().items()}, str(ckpt / "ema.safetensors")
        )

    input_table = evaluate_items(None, val_items, "input")  # type: ignore[arg-type]
    (run / "val_input.json").write_text(json.dumps(input_table["means"], indent=1))
    log = (run / "log.jsonl").open("a", encoding="utf-8")
    last_ckpt = last_val = time.monotonic()
    t_loop, steps_here, start_step = time.monotonic(), 0, step
    export_info: dict[str, Any] | None = None
    stop_file = run / "STOP"  # touch it to end the run cleanly (checkpoint, val, export)
    stop_file.unlink(missing_ok=True)
    while step < tc.steps and time.monotonic() < stop_at and not stop_file.exists():
        # 3. one step
        # the run is bounded by steps and by wall time: decay along whichever ends first
        progress = max(
            steps_here / max(1, tc.steps - start_step),
            (time.monotonic() - t0) / max(1e-6, stop_at - t0),
        )
        lr = _lr(tc, step, progress)
        for g in opt.param_groups:
            g["lr"] = lr
        lq, clean, z = (None if t is None else t.to(device) for t in _batch(cache, codes, tc, rng))
        if z is not None:
            tokens = mapnet(z).tokens
            keep = torch.from_numpy(rng.random(tc.batch) >= tc.cond_dropout).to(device)
            tokens = torch.where(keep.view(-1, 1, 1), tokens, mapnet.null_tokens(tc.batch))
        else:
            tokens = mapnet.null_tokens(tc.batch)
        out = net(lq, tokens)
        loss, parts = restoration_loss(out, clean, tc.w_ssim, tc.w_grad, tc.w_fft)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        steps_here += 1
        decay = min(tc.ema, (1 + steps_here) / (10 + steps_here))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        wall = wall_before + time.monotonic() - t0
        if step % config.logging.log_every == 0 or steps_here == 1:
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": loss.item(),
                        **parts,
                        "lr": lr,
                        "s_per_step": (time.monotonic() - t_loop) / steps_here,
                        "wall_s": wall,
                    }
                )
                + "\n"
            )
            log.flush()
        ending = step >= tc.steps or time.monotonic() >= stop_at or stop_file.exists()
        # 4. validation + export when improved
        if time.monotonic() - last_val > config.val.every_s or ending:
            table = validate() if val_items else {}
            score = score_of(table["code" if "code" in table else "blind"]) if table else -1.0
            row = {
                "step": step,
                "wall_s": wall,
                "score": score,
                **{m: t["means"] for m, t in table.items()},
            }
            (run / "val.jsonl").open("a").write(json.dumps(row) + "\n")
            if (score > best or not val_items) and config.logging.export_to:
                best = max(best, score)
                export_info = {
                    "steps": prior_steps + step,
                    "wall_s": prior_wall + wall,
                    "phases": [
                        *phases,
                        {"run": str(run), "steps": step, "wall_s": wall, "condition": tc.condition},
                    ],
                    "hardware": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else f"CPU, {tc.threads} torch threads (2 cores shared with other jobs)",
                    "val": row,
                    "val_input": input_table["means"],
                    "config": config.to_dict(),
                    "trained_with": trained_with,
                }
                export_model(
                    Path(config.logging.export_to),
                    ema["net"],
                    ema["mapnet"],
                    config,
                    export_info,
                    half=config.logging.export_half,
                )
            last_val = time.monotonic()
        if time.monotonic() - last_ckpt > config.logging.checkpoint_every_s or ending:
            checkpoint(step, wall, best)
            last_ckpt = time.monotonic()
    log.close()
    wall = wall_before + time.monotonic() - t0
    checkpoint(step, wall, best)
    result = {
        "steps": step,
        "wall_s": wall,
        "best": best,
        "exported": export_info is not None,
        "total_steps": prior_steps + step,
        "total_wall_s": prior_wall + wall,
    }
    (run / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m face2scene_cli.research.train.scene --config configs/scene.yaml [--resume]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m face2scene_cli.research.train.scene")
    ap.add_argument("--config", type=Path, default=Path("configs/scene.yaml"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="section.key=YAML value, e.g. train.condition=code",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        k, _, v = item.partition("=")
        sec, _, key = k.partition(".")
        overrides.setdefault(sec, {})[key] = yaml.safe_load(v)
    result = train_scene(load_scene_config(args.config, **overrides), resume=args.resume)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
