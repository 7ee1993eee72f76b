"""Side-by-side evaluation of the restorers: ``f2s eval`` and the scene model card.

Items (:mod:`~face2scene_cli.research.eval.items`) are clean photos degraded on the fly, or
(clean, degraded) pairs. On every item, in one go, it runs:

* ``input`` — the degraded image;
* ``nlm`` — OpenCV ``fastNlMeansDenoisingColored`` (template 7, search 21) at its best ``h`` of
  ``nlm_h`` per degradation (best mean PSNR over the items: an oracle baseline);
* ``blind`` — the scene restorer on MapNet's null tokens;
* ``code`` — as ``f2s restore``: faces detected on the DEGRADED image, each native crop
  restored by the Stage I restorer, FaDeX on the (crop, restored) pair, MapNet tokens weighted
  by confidence; an image without a detected face is restored blind (``code_source: blind``);
* ``upper`` — FaDeX on the same crops paired with the CLEAN crops (upper bound of the code);
* ``wrong`` — the code of the same image under ANOTHER degradation (control: should hurt);
  absent when the image has no other degradation with a face code (paired folders).

Metrics per variant (8-bit, vs the clean image): PSNR and SSIM
(:mod:`face2scene_cli.research.metrics`) on RGB and on BT.601 Y, over the whole image, the face
region (union of the boxes of the faces detected on the CLEAN image) and the rest; the identity
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

from face2scene_cli.config import EvalConfig
from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.faces.base import DetectedFace, FaceDetector, IdentityEncoder
from face2scene_cli.io.images import atomic_write_bytes
from face2scene_cli.io.tensors import to_tensor
from face2scene_cli.pipelines.reading import DegradationReader
from face2scene_cli.research.eval.items import EvalItem
from face2scene_cli.research.metrics import psnr, ssim_map, ssim_map_mean
from face2scene_cli.restorers.scene import SceneRestorer

__all__ = [
    "METRIC_KEYS",
    "VARIANTS",
    "EvalModels",
    "Evaluation",
    "estimate_error",
    "evaluate",
    "face_mask",
    "image_metrics",
    "load_models",
    "nlm",
]

logger = logging.getLogger(__name__)

#: The wrong-code control: degradation -> the degradation whose code it is given.
WRONG_CODE = {"noise15": "blur-noise", "blur-noise": "noise15", "mixed": "noise15"}
VARIANTS = ("input", "nlm", "blind", "code", "upper", "wrong")
#: Metric keys of every variant: {psnr, ssim}{, _y}{, _face, _rest}, then identity_distance.
METRIC_KEYS = (
    *(f"{m}{c}{r}" for m in ("psnr", "ssim") for c in ("", "_y") for r in ("", "_face", "_rest")),
    "identity_distance",
)
_ESTIMATE_KEYS = ("noise_sigma", "blur_sigma_px", "downscale")


@dataclass
class EvalModels:
    """The models an evaluation runs (None = the variants that need it are skipped).

    Attributes:
        scene: the scene restorer (blind, and with its MapNet the code variants).
        reader: Stage I + FaDeX, reads the code off faces (code, upper, wrong).
        detector: finds faces (face region, code); None = no face metrics, no code.
        identity: identity encoder for the identity distance.
    """

    scene: SceneRestorer | None = None
    reader: DegradationReader | None = None
    detector: FaceDetector | None = None
    identity: IdentityEncoder | None = None


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
    region scores are None without a face (or, for SSIM, a region inside the 5 px border)."""
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
    """Absolute errors of FaDeX's estimates; ``jpeg_detected`` is 1 when FaDeX's JPEG call
    (probability >= 0.5) matches the truth; ``jpeg_quality`` only when both say JPEG."""
    if estimate is None or truth is None:
        return None
    err: dict[str, float | None] = {
        k: abs(getattr(estimate, k) - float(getattr(truth, k))) for k in _ESTIMATE_KEYS
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
    estimates: Estimate | None = None


def _read_codes(models: EvalModels, item: EvalItem) -> _Reading:
    """Faces on the degraded image -> code and upper-bound tokens, FaDeX's estimates."""
    if models.detector is None or models.reader is None or models.scene is None:
        return _Reading()
    faces = models.detector.detect([item.lq])[0]
    reading = models.reader.read(item.lq, faces)
    if not reading.faces or models.scene.mapnet is None:
        return _Reading(len(faces), estimates=reading.estimates)
    weights = [r.weight for r in reading.faces]
    code = models.scene.tokens_for_faces([r.z for r in reading.faces], weights)
    h, w = item.lq.shape[:2]
    z_upper = []
    with torch.inference_mode():
        for r in reading.faces:
            x0, y0, x1, y1 = r.crop_box
            sl = np.s_[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
            lq, clean = to_tensor(item.lq[sl]), to_tensor(item.clean[sl])
            dev = models.reader.device
            z_upper.append(models.reader.fadex(lq.to(dev), clean.to(dev)).z.cpu())
    upper = models.scene.tokens_for_faces(z_upper, weights)
    return _Reading(len(faces), code, upper, reading.estimates)


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


def _nlm_scores(
    items: list[EvalItem],
    hs: tuple[int, ...],
    cache: dict[str, float],
    tick: Callable[[str], None],
) -> dict[str, int]:
    """Fill ``cache`` (content hash + h -> PSNR) and return the best h per degradation."""
    per: dict[str, dict[int, list[float]]] = {}
    for it in items:
        digest = hashlib.sha256(it.lq.tobytes() + it.clean.tobytes()).hexdigest()[:24]
        for h in hs:
            key = f"{digest}|{it.lq.shape}|{h}"
            if key not in cache:
                cache[key] = psnr(nlm(it.lq, h), it.clean)
            per.setdefault(it.degradation, {}).setdefault(h, []).append(cache[key])
        tick(f"nlm {it.name} {it.degradation}")
    return {d: max(hs, key=lambda h: float(np.mean(v[h]))) for d, v in per.items()}


def _means(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant present in EVERY row (so all are averaged over the same items), ``n`` and
    the mean of each metric over the rows where it exists (region metrics: rows with a face)."""
    out: dict[str, dict[str, Any]] = {}
    for v in VARIANTS:
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


def evaluate(
    items: list[EvalItem],
    models: EvalModels,
    config: EvalConfig | None = None,
    nlm_cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run every variant on every item and score it (see the module docstring).

    Args:
        items: the (clean, degraded) pairs.
        models: what to run; missing models skip their variants.
        config: NLM strengths and tile size (its data fields were used to build ``items``).
        nlm_cache: JSON file keeping the NLM scores between runs (keyed by the images'
            content, so new weights reuse them); None = recompute.
        progress: called after each of the ``3 * len(items)`` steps with a label.

    Returns:
        The :class:`Evaluation`; ``table`` has ``items`` (per item: faces, code source,
        estimates, ``variants.<name>.<metric>``), ``variants`` (means over all items),
        ``variants_faces`` (items whose code came from a face), ``by_degradation``,
        ``estimate_error``, ``nlm_h`` and ``config``.
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
    # 2. NLM: the best h per degradation
    stored: dict[str, float] = {}
    if nlm_cache is not None and nlm_cache.is_file():
        stored = json.loads(nlm_cache.read_text(encoding="utf-8"))
    best_h = _nlm_scores(items, cfg.nlm_h, stored, tick)
    if nlm_cache is not None:
        nlm_cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(nlm_cache, json.dumps(stored).encode())
    # 3. every variant of every item, scored
    rows: list[dict[str, Any]] = []
    outputs: list[dict[str, np.ndarray]] = []
    scene = models.scene
    for it in items:
        rd = readings[(it.name, it.degradation)]
        faces = clean_faces[it.name]
        mask = face_mask(it.clean.shape, faces)
        ref = models.identity.embed(it.clean, faces) if models.identity and faces else None
        outs = {"input": it.lq, "nlm": nlm(it.lq, best_h[it.degradation])}
        wrong_from = _wrong_source(it, readings)
        if scene is not None:
            x = to_tensor(it.lq)

            def run(tokens: torch.Tensor | None, x: torch.Tensor = x) -> np.ndarray:
                y = scene.restore(x, tokens, tile=cfg.tile)
                return (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

            outs["blind"] = run(None)
            outs["code"] = run(rd.code) if rd.code is not None else outs["blind"]
            if rd.upper is not None:
                outs["upper"] = run(rd.upper)
            if rd.code is not None and wrong_from is not None:
                outs["wrong"] = run(readings[(it.name, wrong_from)].code)
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
                "code_source": "face" if rd.code is not None else "blind",
                "wrong_from": wrong_from if "wrong" in outs else None,
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
        "nlm_h": best_h,
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
    scene_model: str, detector: str = "auto", min_face: int = 20, device: str = "cpu"
) -> EvalModels:
    """Everything :func:`evaluate` runs, from the restore pipeline's factory: the scene model
    (a zoo name or a model folder), its FaDeX with the blind Stage I restorer, the face
    detector, and the dlib identity encoder (None when dlib or its models are missing: no
    identity distance)."""
    from face2scene_cli.errors import NotAvailableError
    from face2scene_cli.faces.identity import create_identity_encoder
    from face2scene_cli.pipelines.restore import Face2ScenePipeline

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
    return EvalModels(pipe.scene, pipe.reader, pipe.finder.detector, identity)
