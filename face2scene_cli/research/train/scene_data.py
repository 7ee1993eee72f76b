"""The scene trainer's data: the degraded sample cache and the validation items.

:func:`build_cache` degrades regions of the TRAIN photos once (uint8, so JPEG is never
re-encoded per step) and cuts a face-sized crop from the same degraded region, restored blind
as at inference; :func:`cache_codes` adds FaDeX's maps. :func:`build_val_items` and
:func:`evaluate_items` are the training-time validation on the VAL photos.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from face2scene_cli.degradations.noise_level import estimate_noise_curve
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import DegradationDistribution, apply
from face2scene_cli.errors import ConfigError
from face2scene_cli.pipelines.reading import SCENE_CROPS, scene_crop_boxes
from face2scene_cli.research.metrics import psnr_torch, sharpness_ratio, ssim_torch
from face2scene_cli.research.train.data import PhotoBank, dlib_faces, rgb_float
from face2scene_cli.research.train.scene_config import DataSection, ValSection
from face2scene_cli.restorers.face.blind import BlindFaceRestorer
from face2scene_cli.restorers.scene import SceneRestorer

__all__ = [
    "ValItem",
    "build_cache",
    "build_val_items",
    "cache_codes",
    "check_cache_photos",
    "evaluate_items",
    "for_scale",
    "load_cache",
    "save_cache",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# degradations and the sample cache


def _degrade(x: Tensor, degradation: Degradation) -> Tensor:
    r"""``degradation`` applied to :math:`(1, C, H, W)` in [0, 1], quantised to 8-bit levels
    (a decoded photo); same size (the trainers' degradations resize back) unless made for an
    upscaler (:func:`for_scale`)."""
    return (apply(x, degradation).clamp(0, 1) * 255).round() / 255


def for_scale(degradation: Degradation, scale: int) -> Degradation:
    """``degradation`` made to end at 1 / ``scale`` of the size (a learned upscaler's pairs):
    preset and parametric records lose the resolution by exactly ``scale`` (bicubic,
    antialiased; not resized back; their own downscale is replaced by it) before their noise
    and JPEG, second-order samples get ``final_scale = scale`` (Real-ESRGAN's x2/x4 setting)."""
    if scale == 1:
        return degradation
    if degradation.mode == "second-order":
        so = dataclasses.replace(degradation.second_order, final_scale=scale)
        return dataclasses.replace(degradation, second_order=so)
    return dataclasses.replace(
        degradation, mode="parametric", preset=None, downscale=float(scale), resize_back=False
    )


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
        ``{"lq": (N, 3, R/s, R/s), "clean": (N, 3, R, R) uint8 (s = ``cfg.scale``), "face_lq",
        "face_hq": (N, 3, F, F) uint8 (cut from the LQ region),
        "degradations": [Degradation.to_dict()] * N, "photos": [photo name] * N}`` (each
        sample's photo: :func:`check_cache_photos` refuses a cache with a photo outside the
        train split); gray photos are replicated to 3 channels.
    """
    rng = np.random.default_rng(cfg.seed)
    bank = PhotoBank(photos, cfg.base_long_side, cfg.region)
    r, f, sc = cfg.region, cfg.face_crop, cfg.scale
    lq = torch.empty(cfg.samples, 3, r // sc, r // sc, dtype=torch.uint8)
    clean = torch.empty(cfg.samples, 3, r, r, dtype=torch.uint8)
    face_lq = torch.empty(cfg.samples, 3, f, f, dtype=torch.uint8)
    face_hq = torch.empty_like(face_lq)
    degs, names = [], []
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
        deg = for_scale(cfg.degradation.sample(rng), sc)
        y = _degrade(x, deg)
        lq_faces = [(cx / sc, cy / sc, 0.0) for cx, cy, _ in faces]
        fy, fx = _face_box(lq_faces, r // sc, r // sc, f, rng)
        crop = y[..., fy : fy + f, fx : fx + f]
        hq = restorer.restore(crop).hq
        lq[i], clean[i] = _u8(y[0]).expand(3, r // sc, r // sc), _u8(x[0]).expand(3, r, r)
        face_lq[i], face_hq[i] = _u8(crop[0]).expand(3, f, f), _u8(hq[0]).expand(3, f, f)
        degs.append(deg.to_dict())
        names.append(base.name)
        if (i + 1) % 200 == 0:
            logger.info("cache: %d / %d samples", i + 1, cfg.samples)
    return {
        "lq": lq,
        "clean": clean,
        "face_lq": face_lq,
        "face_hq": face_hq,
        "degradations": degs,
        "photos": names,
    }


def save_cache(folder: Path, cache: dict[str, Any]) -> None:
    """Write :func:`build_cache`'s output to ``folder`` (safetensors + JSON, no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: cache[k] for k in ("lq", "clean", "face_lq", "face_hq")},
        str(folder / "samples.safetensors"),
    )
    (folder / "degradations.json").write_text(json.dumps(cache["degradations"]), encoding="utf-8")
    (folder / "photos.json").write_text(json.dumps(cache["photos"]), encoding="utf-8")


def load_cache(folder: Path) -> dict[str, Any]:
    """Read what :func:`save_cache` wrote (e.g. a carried shard, ``data.cache_from``);
    ``photos`` is None for a cache written before samples recorded their photo."""
    cache: dict[str, Any] = dict(load_file(str(folder / "samples.safetensors")))
    cache["degradations"] = json.loads((folder / "degradations.json").read_text(encoding="utf-8"))
    photos = folder / "photos.json"
    cache["photos"] = json.loads(photos.read_text(encoding="utf-8")) if photos.is_file() else None
    return cache


def check_cache_photos(cache: dict[str, Any], train: list[str], where: Path) -> None:
    """Refuse (ConfigError) a training cache with a sample from a photo outside ``train`` (the
    train split's photo names), or one that does not say its samples' photos."""
    if cache.get("photos") is None:
        raise ConfigError(
            f"{where}: this cache does not record its samples' photos (written before 0.2), so "
            "it cannot be checked against the train split; rebuild it (drop data.cache_from)"
        )
    outside = sorted(set(cache["photos"]) - set(train))
    if outside:
        raise ConfigError(
            f"{where}: samples from photos outside the train split of data/splits.yaml: "
            f"{', '.join(outside)}; rebuild the cache"
        )


@torch.inference_mode()
def cache_codes(
    fadex: torch.nn.Module,
    face_lq: Tensor,
    face_hq: Tensor,
    batch: int = 64,
    device: torch.device | None = None,
) -> Tensor:
    r"""FaDeX maps Z for cached uint8 face pairs :math:`(N, 3, F, F)` -> :math:`(N, C_z, F/8, F/8)`
    float16 on the CPU (FaDeX is frozen, so Z is computed once), run on ``device`` (FaDeX's
    own; default the CPU) in batches of ``batch``; only the encoder runs (Z is all the scene
    model reads)."""
    device = device or torch.device("cpu")
    out = []
    for i in range(0, face_lq.shape[0], batch):
        a = face_lq[i : i + batch].to(device).float() / 255
        b = face_hq[i : i + batch].to(device).float() / 255
        out.append(fadex.encode_pair(a, b).half().cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------
# validation


@dataclass
class ValItem:
    """One validation image under one degradation: the clean and degraded image, the crops its
    code is read off as ``f2s restore`` reads them (its face crop, else its scene crops),
    degraded and blind-restored, with the restorer's confidence, and their FaDeX maps once
    computed."""

    name: str
    degradation: str
    clean: Tensor  # (1, 3, H, W) float
    lq: Tensor
    face_lq: Tensor  # (N, 3, F, F): N = 1 (a face) or up to SCENE_CROPS
    face_hq: Tensor
    weights: list[float]  # (N,) the restorer's confidence per crop
    z: Tensor | None = None  # (N, C_z, F/8, F/8)


def _long_side(x: Tensor, side: int) -> Tensor:
    h, w = x.shape[-2:]
    if max(h, w) <= side:
        return x
    f = side / max(h, w)
    return F.interpolate(x, size=(round(h * f), round(w * f)), mode="area")


def build_val_items(
    photos: list[Any], cfg: ValSection, restorer: BlindFaceRestorer, scale: int = 1
) -> list[ValItem]:
    """The VAL photos (area-downscaled to ``long_side``, 8-bit), each under every preset,
    parametric item and second-order seed, with the crops of the degraded image its code is
    read off, restored blind: a face-sized crop on its dlib face, else its
    :data:`SCENE_CROPS` scene crops (:func:`scene_crop_boxes`), as ``f2s restore`` reads a
    photo without a face; for an upscaler (``scale`` > 1) the photo is cut to a multiple of
    ``scale`` and each degradation ends at 1 / ``scale`` (:func:`for_scale`)."""
    items = []
    for photo in photos:
        arr = rgb_float(photo.path)
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
        x = (_long_side(x, cfg.long_side).clamp(0, 1) * 255).round() / 255
        x = x.expand(1, 3, *x.shape[2:]).contiguous()
        x = x[..., : x.shape[-2] // scale * scale, : x.shape[-1] // scale * scale]
        h, w = x.shape[-2] // scale, x.shape[-1] // scale
        s = min(cfg.face_crop, h, w) // 8 * 8
        faces = dlib_faces(x[0].permute(1, 2, 0).numpy()) if photo.people else []
        degs = [(n, Degradation.from_preset(n, 11)) for n in cfg.presets]
        degs += [(n, Degradation("parametric", seed=11, **f)) for n, f in cfg.parametric.items()]
        second_order = DegradationDistribution(mix=(0.0, 0.0, 1.0))
        for seed in cfg.second_order_seeds:
            sample = second_order.sample(torch.Generator().manual_seed(seed))
            degs.append((f"second-order-{seed}", sample))
        lq_faces = [(cx / scale, cy / scale, 0.0) for cx, cy, _ in faces]
        for dname, deg in degs:
            y = _degrade(x, for_scale(deg, scale))
            if faces:
                fy, fx = _face_box(lq_faces, h, w, s, np.random.default_rng(0))
                boxes = [(fx, fy, fx + s, fy + s)]
            else:
                boxes = scene_crop_boxes(_u8(y[0]).permute(1, 2, 0).numpy(), s, SCENE_CROPS)
            crops = torch.cat([y[..., y0:y1, x0:x1] for x0, y0, x1, y1 in boxes])
            restored = restorer.restore(crops)
            weights = [max(float(c), 1e-6) for c in restored.confidence]
            items.append(ValItem(photo.name, dname, x, y, crops, restored.hq, weights))
    return items


def evaluate_items(
    restorer: SceneRestorer,
    items: list[ValItem],
    mode: str,
    tile: int | None = None,
    scale: int = 1,
    sharpness: bool = False,
) -> dict[str, Any]:
    """PSNR/SSIM (RGB, 8-bit, whole image) of ``mode`` (``input``: bicubic-upscaled when
    ``scale`` > 1, ``blind`` or ``code``) per item, and per degradation means; with
    ``sharpness``, each row also has the sharpness ratio against the clean image.

    ``restorer`` is anything with :meth:`SceneRestorer.restore`'s signature (e.g. an
    :class:`~face2scene_cli.restorers.upscaler.UpscaleRestorer` in ``blind`` mode)."""
    rows = []
    for it in items:
        if mode == "input":
            out = it.lq
            if scale > 1:
                out = F.interpolate(out, scale_factor=scale, mode="bicubic", align_corners=False)
        else:
            tokens = None
            if mode == "code":
                if it.z is None or restorer.mapnet is None:
                    raise ConfigError("code mode needs FaDeX maps and a MapNet")
                tokens = restorer.tokens_for_crops(list(it.z.float().split(1)), it.weights)
            noise = estimate_noise_curve(it.lq[0]) if restorer.takes_noise else None
            out = restorer.restore(it.lq, tokens, tile=tile, scale=scale, noise=noise)
        q = (out.clamp(0, 1) * 255).round() / 255
        row = {
            "image": it.name,
            "degradation": it.degradation,
            "psnr": float(psnr_torch(q, it.clean)[0]),
            "ssim": float(ssim_torch(q, it.clean)[0]),
        }
        if sharpness:
            hwc = [_u8(t[0]).permute(1, 2, 0).numpy() for t in (q, it.clean)]
            row["sharpness"] = sharpness_ratio(*hwc)
        rows.append(row)
    means: dict[str, dict[str, float]] = {}
    for d in sorted({r["degradation"] for r in rows}):
        sel = [r for r in rows if r["degradation"] == d]
        means[d] = {k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "ssim")}
    return {"rows": rows, "means": means}
