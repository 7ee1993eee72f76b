"""Side-by-side evaluation of the restorers: ``f2s eval`` and the scene model card.

Items (:mod:`~face2scene_cli.research.eval.items`) are clean photos degraded on the fly, or
(clean, degraded) pairs. On every item, in one go, it runs:

* ``input`` — the degraded image (scale 1), or ``bicubic`` — it bicubic-upscaled (``--scale``
  2 or 4); the two oracles below start from it;
* ``nlm`` — OpenCV ``fastNlMeansDenoisingColored`` (template 7, search 21) at its best ``h`` of
  ``nlm_h`` per degradation (best mean PSNR over the items: an oracle baseline);
* ``usm`` — an unsharp mask ``x + a (x - G_σ * x)`` at its best (σ, a) of the
  ``usm_sigma`` x ``usm_amount`` grid per degradation (an oracle like ``nlm``; a = 0 is the
  input, so it never loses to it on average);
* ``realesrgan`` — Real-ESRGAN x4plus (torch port, blind), its x4 output area-resized to the
  scale: the restorer users already run (~8 CPU-minutes per input megapixel at 1 thread);
* ``blind`` — the scene restorer on MapNet's null tokens;
* ``code`` — as ``f2s restore``: faces detected on the DEGRADED image, each native crop
  restored by the Stage I restorer, FaDeX on the (crop, restored) pair, MapNet tokens weighted
  by confidence; an image without a detected face gets its code from scene crops
  (``code_source: scene``), one too small for them is restored blind (``blind``); the
  network's output, without the check;
* ``restore`` — what ``f2s restore`` writes: ``code`` with a read blur deconvolved (the
  model's ``deblur``), behind its consistency check and its fallbacks, and the
  input itself where the reading is under the model's "nothing to restore" limits (the item's
  ``restore_fallback`` says which);
* ``upper`` — FaDeX on the same crops paired with the CLEAN crops (upper bound of the code;
  scale 1 only);
* ``wrong`` — the code of the same image under ANOTHER degradation (control: should hurt);
  absent when the image has no other degradation with a face code (paired folders).

Metrics per variant (8-bit, vs the clean image): PSNR and SSIM
(:mod:`face2scene_cli.research.metrics`) on RGB and on BT.601 Y, over the whole image, the face
region (union of the boxes of the faces detected on the CLEAN image) and the rest; piq's
MS-SSIM, GMSD and HaarPSI and the sharpness ratio (output / clean Sobel energy) over the whole
image; the identity
distance (dlib ResNet, euclidean) of each clean face to the same box in the output; and FaDeX's
estimate error against the applied degradation (presets only: the second-order pipeline has no
single sigma).

:func:`evaluate` returns an :class:`Evaluation` (a JSON-able ``table`` with stable keys such as
``variants.<name>.psnr``, and the 8-bit outputs for the grids);
:mod:`~face2scene_cli.research.eval.tables` reports it (``results.md``, grids, targets) and
:mod:`~face2scene_cli.research.eval.scene_card` adds the model card's tile and speed checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from face2scene_cli.config import EVAL_VARIANTS, EvalConfig
from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.ops import resize
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.faces.base import DetectedFace, FaceDetector, IdentityEncoder
from face2scene_cli.io.images import atomic_write_bytes
from face2scene_cli.io.tensors import to_tensor
from face2scene_cli.pipelines.reading import DegradationReader, ImageDegradation
from face2scene_cli.pipelines.restore import restore_checked
from face2scene_cli.research.eval.items import EvalItem
from face2scene_cli.research.metrics import (
    perceptual_scores,
    psnr,
    sharpness_ratio,
    ssim_map,
    ssim_map_mean,
)
from face2scene_cli.restorers.scene import SceneRestorer
from face2scene_cli.restorers.upscaler import UpscaleRestorer

__all__ = [
    "METRIC_KEYS",
    "EvalModels",
    "Evaluation",
    "estimate_error",
    "evaluate",
    "face_mask",
    "image_metrics",
    "load_models",
    "nlm",
    "unsharp_mask",
]

logger = logging.getLogger(__name__)

#: The wrong-code control: degradation -> the degradation whose code it is given.
WRONG_CODE = {"noise15": "blur-noise", "blur-noise": "noise15", "mixed": "noise15"}
#: Metric keys of every variant: {psnr, ssim}{, _y}{, _face, _rest}, piq's ms_ssim, gmsd and
#: haarpsi, the sharpness ratio, then identity_distance.
METRIC_KEYS = (
    *(f"{m}{c}{r}" for m in ("psnr", "ssim") for c in ("", "_y") for r in ("", "_face", "_rest")),
    "ms_ssim",
    "gmsd",
    "haarpsi",
    "sharpness",
    "identity_distance",
)
_ESTIMATE_KEYS = ("noise_sigma", "blur_sigma_px", "downscale")


@dataclass
class EvalModels:
    """The models an evaluation runs (None = the variants that need it are skipped).

    Attributes:
        scene: the scene restorer (blind, and with its MapNet the code variants).
        reader: Stage I + FaDeX, reads the code off faces or scene crops (code, upper,
            wrong).
        detector: finds faces (face region, code); None = no face metrics, no code.
        identity: identity encoder for the identity distance.
        upscaler: Real-ESRGAN x4plus (the ``realesrgan`` variant).
    """

    scene: SceneRestorer | UpscaleRestorer | None = None
    reader: DegradationReader | None = None
    detector: FaceDetector | None = None
    identity: IdentityEncoder | None = None
    upscaler: UpscaleRestorer | None = None


@dataclass
class Evaluation:
    """An evaluation's table (JSON-able) and its 8-bit outputs per item and variant."""

    table: dict[str, Any]
    outputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    items: list[EvalItem] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# metrics


def nlm(lq: np.ndarray, h: int) -> np.ndarray:
    """OpenCV NLM (colour, template 7, search 21) on (H, W, 3) uint8 RGB."""
    bgr = cv2.cvtColor(lq, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def unsharp_mask(img: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """``img + amount * (img - G_sigma * img)`` on (H, W, 3) uint8 (Gaussian of ``sigma`` px,
    reflected border), rounded and clipped to uint8; ``amount`` 0 returns ``img``."""
    if amount == 0:
        return img
    x = img.astype(np.float32)
    soft = cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    return np.clip(np.rint(x + amount * (x - soft)), 0, 255).astype(np.uint8)


def face_mask(shape: tuple[int, ...], faces: list[DetectedFace]) -> np.ndarray | None:
    """(H, W) bool: the union of the face boxes, pixels ``[floor(x0), ceil(x1))`` x
    ``[floor(y0), ceil(y1))`` clipped to the image; None without faces."""
    h, w = shape[:2]
    mask = np.zeros((h, w), bool)
    for f in faces:
        x0, x1 = max(0, math.floor(f.box[0])), min(w, math.ceil(f.box[2]))
        y0, y1 = max(0, math.floor(f.box[1])), min(h, math.ceil(f.box[3]))
        mask[y0:y1, x0:x1] = True
    return mask if mask.any() else None


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def image_metrics(out: np.ndarray, clean: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
    """The :data:`METRIC_KEYS` scores (but identity) of ``out`` vs ``clean``, (H, W, 3) uint8;
    region scores are None without a face (or, for SSIM, a region inside the 5 px border),
    MS-SSIM on images with a side under 161 px."""
    scores: dict[str, Any] = {}
    regions = {"": None, "_face": mask, "_rest": None if mask is None else ~mask}
    for ch, y in (("", False), ("_y", True)):
        smap = ssim_map(out, clean, y_channel=y)
        for reg, m in regions.items():
            if reg and (m is None or not m.any()):
                scores[f"psnr{ch}{reg}"] = scores[f"ssim{ch}{reg}"] = None
                continue
            scores[f"psnr{ch}{reg}"] = _finite(psnr(out, clean, y_channel=y, mask=m))
            try:
                scores[f"ssim{ch}{reg}"] = ssim_map_mean(smap, m)
            except ValueError:  # the region lies within the 5 px border SSIM leaves out
                scores[f"ssim{ch}{reg}"] = None
    scores.update(perceptual_scores(out, clean))
    scores["sharpness"] = sharpness_ratio(out, clean)
    return scores


def _identity_distance(
    encoder: IdentityEncoder | None,
    out: np.ndarray,
    faces: list[DetectedFace],
    reference: np.ndarray | None,
) -> float | None:
    if encoder is None or reference is None or not faces:
        return None
    emb = encoder.embed(out, faces)
    return float(np.linalg.norm(emb - reference, axis=1).mean())


def estimate_error(
    estimate: Estimate | None, truth: Degradation | None
) -> dict[str, float | None] | None:
    """Absolute errors of FaDeX's estimates (blur against the truth's
    :meth:`~Degradation.equivalent_blur_px`, which counts a motion blur); ``jpeg_detected`` is
    1 when FaDeX's JPEG call (probability >= 0.5) matches the truth; ``jpeg_quality`` only
    when both say JPEG."""
    if estimate is None or truth is None:
        return None
    true = {"blur_sigma_px": truth.equivalent_blur_px()}
    err: dict[str, float | None] = {
        k: abs(getattr(estimate, k) - float(true.get(k, getattr(truth, k)))) for k in _ESTIMATE_KEYS
    }
    q = truth.jpeg_quality
    err["jpeg_detected"] = float(estimate.jpeg == (q is not None))
    err["jpeg_quality"] = abs(estimate.jpeg_quality - q) if estimate.jpeg and q else None
    return err


# ------------------------------------------------------------------------------------------
# the evaluation


@dataclass
class _Reading:
    faces_lq: int = 0
    code: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    source: str = "blind"  # where the code was read: face, scene (crops) or blind (none)
    image: ImageDegradation | None = None  # the whole reading, with the noise curve

    @property
    def estimates(self) -> Estimate | None:
        """FaDeX's estimates of the image (None when nothing was read)."""
        return None if self.image is None else self.image.estimates


def _read_codes(models: EvalModels, item: EvalItem) -> _Reading:
    """Faces on the degraded image -> code and upper-bound tokens, FaDeX's estimates."""
    if models.detector is None or models.reader is None or models.scene is None:
        return _Reading()
    faces = models.detector.detect([item.lq])[0]
    reading = models.reader.read(item.lq, faces)
    read = reading.readings
    if not read or getattr(models.scene, "mapnet", None) is None:  # blind restorer
        return _Reading(len(faces), image=reading)
    weights = [r.weight for r in read]
    code = models.scene.tokens_for_crops([r.z for r in read], weights)
    source = reading.source
    if item.lq.shape != item.clean.shape:  # no clean crop at the degraded image's scale
        return _Reading(len(faces), code, None, source, reading)
    h, w = item.lq.shape[:2]
    z_upper = []
    with torch.inference_mode():
        for r in read:
            x0, y0, x1, y1 = r.crop_box
            sl = np.s_[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
            lq, clean = to_tensor(item.lq[sl]), to_tensor(item.clean[sl])
            dev = models.reader.device
            z_upper.append(models.reader.fadex.encode_pair(lq.to(dev), clean.to(dev)).cpu())
    upper = models.scene.tokens_for_crops(z_upper, weights)
    return _Reading(len(faces), code, upper, source, reading)


def _wrong_source(item: EvalItem, readings: dict[tuple[str, str], _Reading]) -> str | None:
    """The degradation whose code the wrong-code control of ``item`` gets."""
    others = sorted(
        d
        for (n, d), r in readings.items()
        if n == item.name and d != item.degradation and r.code is not None
    )
    preferred = WRONG_CODE.get(item.degradation)
    if preferred in others:
        return preferred
    return others[0] if others else None


def _best_params(
    items: list[EvalItem],
    bases: list[np.ndarray],
    grid: list[Any],
    run: Callable[[np.ndarray, Any], np.ndarray],
    cache: dict[str, float],
    label: str,
) -> dict[str, Any]:
    """An oracle's best parameter per degradation: the grid value with the best mean PSNR of
    ``run(base, value)`` over the items. ``cache`` (content hash + label + value -> PSNR) is
    filled as it goes."""
    per: dict[str, dict[Any, list[float]]] = {}
    for it, base in zip(items, bases, strict=True):
        digest = hashlib.sha256(base.tobytes() + it.clean.tobytes()).hexdigest()[:24]
        for value in grid:
            key = f"{digest}|{base.shape}|{label}|{value}"
            if key not in cache:
                cache[key] = psnr(run(base, value), it.clean)
            per.setdefault(it.degradation, {}).setdefault(json.dumps(value), []).append(cache[key])
    return {d: json.loads(max(v, key=lambda k: float(np.mean(v[k])))) for d, v in per.items()}


def _upscaled(lq: np.ndarray, scale: int) -> np.ndarray:
    """``lq`` (H, W, 3) uint8 bicubic-upscaled by ``scale`` (as the scene restorer does)."""
    if scale == 1:
        return lq
    y = resize(to_tensor(lq), (lq.shape[0] * scale, lq.shape[1] * scale), "bicubic")
    return (y[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _means(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant present in EVERY row (so all are averaged over the same items), ``n`` and
    the mean of each metric over the rows where it exists (region metrics: rows with a face)."""
    out: dict[str, dict[str, Any]] = {}
    for v in EVAL_VARIANTS:
        if not rows or any(v not in r["variants"] for r in rows):
            continue
        sel = [r["variants"][v] for r in rows]
        out[v] = {"n": len(sel)}
        for k in METRIC_KEYS:
            vals = [s[k] for s in sel if s[k] is not None]
            out[v][k] = float(np.mean(vals)) if vals else None
    return out


def _estimate_means(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    errs = [r["estimate_error"] for r in rows if r["estimate_error"] is not None]
    keys = (*_ESTIMATE_KEYS, "jpeg_quality", "jpeg_detected")
    out: dict[str, float | None] = {"n": len(errs)}
    for k in keys:
        vals = [e[k] for e in errs if e[k] is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def _outputs(
    it: EvalItem,
    base: np.ndarray,
    reading: _Reading,
    wrong: _Reading | None,
    models: EvalModels,
    cfg: EvalConfig,
    best: dict[str, dict[str, Any]],
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]] | None]:
    """Every asked variant of one item, (H, W, 3) uint8 each, and the ``restore`` variant's
    fallbacks (None when it did not run)."""
    want = set(cfg.variants)
    outs = {("input" if cfg.scale == 1 else "bicubic"): base}
    if "nlm" in want:
        outs["nlm"] = nlm(base, best["nlm"][it.degradation])
    if "usm" in want:
        outs["usm"] = unsharp_mask(base, *best["usm"][it.degradation])
    x = to_tensor(it.lq)
    curve = None if reading.image is None else reading.image.noise_curve
    restored: dict[tuple[int, int], torch.Tensor] = {}  # by (restorer, tokens): run once each

    def restore(
        restorer: SceneRestorer | UpscaleRestorer, tokens: torch.Tensor | None
    ) -> torch.Tensor:
        key = (id(restorer), id(tokens))
        if key not in restored:
            restored[key] = restorer.restore(x, tokens, tile=cfg.tile, scale=cfg.scale, noise=curve)
        return restored[key]

    def run(restorer: SceneRestorer | UpscaleRestorer, tokens: torch.Tensor | None) -> np.ndarray:
        y = restore(restorer, tokens)
        return (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    if "realesrgan" in want and models.upscaler is not None:
        outs["realesrgan"] = run(models.upscaler, None)
    scene = models.scene
    if scene is None:
        return outs, None
    if "blind" in want or ("code" in want and reading.code is None):
        outs["blind"] = run(scene, None)
    if "code" in want:
        outs["code"] = run(scene, reading.code) if reading.code is not None else outs["blind"]
    if "blind" not in want:
        outs.pop("blind", None)
    if "upper" in want and reading.upper is not None:
        outs["upper"] = run(scene, reading.upper)
    if "wrong" in want and reading.code is not None and wrong is not None:
        outs["wrong"] = run(scene, wrong.code)
    if "restore" not in want or reading.image is None:
        return outs, None
    outs["restore"], _, fallbacks, _ = restore_checked(
        it.lq,
        reading.image,
        reading.code,
        getattr(scene, "guard", None),
        cfg.scale,
        lambda _lq, tokens: restore(scene, tokens),  # _lq has x's pixels: code's run is reused
        getattr(scene, "deblur", None),
    )
    return outs, [f.to_report() for f in fallbacks]


def evaluate(
    items: list[EvalItem],
    models: EvalModels,
    config: EvalConfig | None = None,
    oracle_cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run every asked variant on every item and score it (see the module docstring).

    Args:
        items: the (clean, degraded) pairs.
        models: what to run; missing models skip their variants.
        config: variants, scale, oracle grids and tile size (its data fields were used to
            build ``items``).
        oracle_cache: JSON file keeping the NLM / unsharp-mask grid scores between runs (keyed
            by the images' content, so new weights reuse them); None = recompute.
        progress: called after each of the ``3 * len(items)`` steps with a label.

    Returns:
        The :class:`Evaluation`; ``table`` has ``items`` (per item: faces, code source,
        estimates, ``variants.<name>.<metric>``), ``variants`` (means over all items),
        ``variants_faces`` (items whose code came from a face), ``by_degradation``,
        ``estimate_error``, ``nlm_h``, ``usm`` (σ, amount) and ``config``.
    """
    cfg = config or EvalConfig()
    tick = progress or (lambda _label: None)
    # 1. faces and codes of every item (the wrong-code control needs the others' codes)
    readings: dict[tuple[str, str], _Reading] = {}
    clean_faces: dict[str, list[DetectedFace]] = {}
    for it in items:
        readings[(it.name, it.degradation)] = _read_codes(models, it)
        if it.name not in clean_faces:
            det = models.detector
            clean_faces[it.name] = det.detect([it.clean])[0] if det is not None else []
        tick(f"codes {it.name} {it.degradation}")
    # 2. the oracles' best parameters per degradation, on the input (or its bicubic upscale)
    bases = [_upscaled(it.lq, cfg.scale) for it in items]
    stored: dict[str, float] = {}
    if oracle_cache is not None and oracle_cache.is_file():
        stored = json.loads(oracle_cache.read_text(encoding="utf-8"))
    best: dict[str, dict[str, Any]] = {}
    if "nlm" in cfg.variants:
        best["nlm"] = _best_params(items, bases, list(cfg.nlm_h), nlm, stored, "nlm")
    if "usm" in cfg.variants:
        grid = [[s, a] for s in cfg.usm_sigma for a in cfg.usm_amount if a > 0] + [[1.0, 0.0]]
        best["usm"] = _best_params(
            items, bases, grid, lambda b, p: unsharp_mask(b, *p), stored, "usm"
        )
    for it in items:
        tick(f"oracles {it.name} {it.degradation}")
    if oracle_cache is not None:
        oracle_cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(oracle_cache, json.dumps(stored).encode())
    # 3. every variant of every item, scored
    rows: list[dict[str, Any]] = []
    outputs: list[dict[str, np.ndarray]] = []
    for it, base in zip(items, bases, strict=True):
        rd = readings[(it.name, it.degradation)]
        faces = clean_faces[it.name]
        mask = face_mask(it.clean.shape, faces)
        ref = models.identity.embed(it.clean, faces) if models.identity and faces else None
        wrong_from = _wrong_source(it, readings)
        wrong = readings[(it.name, wrong_from)] if wrong_from is not None else None
        outs, restore_fallback = _outputs(it, base, rd, wrong, models, cfg, best)
        scores = {}
        for v, out in outs.items():
            scores[v] = image_metrics(out, it.clean, mask)
            scores[v]["identity_distance"] = _identity_distance(models.identity, out, faces, ref)
        rows.append(
            {
                "image": it.name,
                "degradation": it.degradation,
                "size": [int(it.clean.shape[1]), int(it.clean.shape[0])],
                "faces_clean": [[round(float(c), 2) for c in f.box] for f in faces],
                "faces_degraded": rd.faces_lq,
                "code_source": rd.source,
                "wrong_from": wrong_from if "wrong" in outs else None,
                "restore_fallback": restore_fallback,
                "truth": it.truth.to_dict() if it.truth else None,
                "estimate": rd.estimates.to_dict() if rd.estimates else None,
                "estimate_error": estimate_error(rd.estimates, it.truth),
                "variants": scores,
            }
        )
        outputs.append(outs)
        tick(f"restore {it.name} {it.degradation}")
    coded = [r for r in rows if r["code_source"] == "face"]
    degs = list(dict.fromkeys(it.degradation for it in items))
    table = {
        "config": {**asdict(cfg), "items": len(items)},
        "nlm_h": best.get("nlm", {}),
        "usm": best.get("usm", {}),
        "variants": _means(rows),
        "variants_faces": _means(coded),
        "by_degradation": {d: _means([r for r in rows if r["degradation"] == d]) for d in degs},
        "by_degradation_faces": {
            d: _means([r for r in coded if r["degradation"] == d]) for d in degs
        },
        "estimate_error": _estimate_means(rows),
        "items": rows,
    }
    return Evaluation(table, outputs, items)


def load_models(
    scene_model: str,
    detector: str = "auto",
    min_face: int = 20,
    device: str = "cpu",
    upscaler: str | None = "realesrgan-x4plus",
) -> EvalModels:
    """Everything :func:`evaluate` runs, from the restore pipeline's factory: the scene model
    (a zoo name or a model folder), its FaDeX with the blind Stage I restorer, the face
    detector, the dlib identity encoder (None when dlib or its models are missing: no
    identity distance) and the ``upscaler`` of the ``realesrgan`` variant (None = not run)."""
    from face2scene_cli.errors import NotAvailableError
    from face2scene_cli.faces.identity import create_identity_encoder
    from face2scene_cli.pipelines.restore import Face2ScenePipeline
    from face2scene_cli.restorers.upscaler import load_upscale_restorer

    pipe = Face2ScenePipeline.from_pretrained(
        scene_model,
        face_restorer="blind",
        detector=detector,
        min_face=min_face,
        device=device,
        batch_size=8,
    )
    try:
        identity: IdentityEncoder | None = create_identity_encoder("dlib")
    except NotAvailableError as err:
        logger.warning("no identity distance: %s", err)
        identity = None
    up = load_upscale_restorer(upscaler, device) if upscaler else None
    return EvalModels(pipe.scene, pipe.reader, pipe.finder.detector, identity, up)
