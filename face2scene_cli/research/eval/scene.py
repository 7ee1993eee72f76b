"""Side-by-side evaluation of the restorers: ``f2s eval`` and the scene model card.

Items are clean photos (area-downscaled to ``long_side``, 8-bit RGB) degraded on the fly by
named presets and seeded Real-ESRGAN second-order samples (:func:`degraded_items`), or
(clean, degraded) pairs (:func:`paired_items`). On every item, in one go, it runs:

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
``variants.<name>.psnr``, and the 8-bit outputs for the grids); :func:`write_results` writes
``results.json``, ``results.md`` and the best / worst case grids. :func:`targets` turns a
table into the scene issue's pass/fail list; :func:`measure_speed` times the restorer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import DegradationDistribution, apply, image_seed
from face2scene_cli.errors import ConfigError, F2SError, InputError
from face2scene_cli.faces.base import DetectedFace, FaceDetector, IdentityEncoder
from face2scene_cli.faces.detect import as_rgb_uint8
from face2scene_cli.io.images import atomic_write_bytes, read_image, to_tensor
from face2scene_cli.pipelines.reading import DegradationReader
from face2scene_cli.research.metrics import psnr, ssim_map, ssim_map_mean
from face2scene_cli.restorers.scene import SceneRestorer

__all__ = [
    "EvalConfig",
    "EvalItem",
    "EvalModels",
    "Evaluation",
    "case_grid",
    "degrade_item",
    "degraded_items",
    "estimate_error",
    "evaluate",
    "face_mask",
    "find_images",
    "image_metrics",
    "item_degradation",
    "load_models",
    "measure_speed",
    "nlm",
    "paired_items",
    "targets",
    "tile_check",
    "to_markdown",
    "val_sources",
    "write_card",
    "write_results",
]

logger = logging.getLogger(__name__)

#: The wrong-code control: degradation -> the degradation whose code it is given.
WRONG_CODE = {"noise15": "blur-noise", "blur-noise": "noise15", "mixed": "noise15"}
VARIANTS = ("input", "nlm", "blind", "code", "upper", "wrong")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
#: Metric keys of every variant: {psnr, ssim}{, _y}{, _face, _rest}, then identity_distance.
METRIC_KEYS = (
    *(f"{m}{c}{r}" for m in ("psnr", "ssim") for c in ("", "_y") for r in ("", "_face", "_rest")),
    "identity_distance",
)
_ESTIMATE_KEYS = ("noise_sigma", "blur_sigma_px", "downscale")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on and how (defaults: ``f2s eval``'s and the model card's).

    Attributes:
        long_side: clean photos are area-downscaled to this long side (0 = keep the size).
        presets: named degradations (:data:`face2scene_cli.degradations.record.PRESETS`).
        second_order: how many seeded second-order samples (the same ones for every image).
        seed: base seed of the degradations.
        nlm_h: the NLM strengths searched.
        tile: the scene restorer's tile side (None = automatic).
    """

    long_side: int = 512
    presets: tuple[str, ...] = ("noise15", "blur-noise", "mixed")
    second_order: int = 1
    seed: int = 0
    nlm_h: tuple[int, ...] = tuple(range(3, 26, 2))
    tile: int | None = None


@dataclass
class EvalItem:
    """One (clean, degraded) pair.

    Attributes:
        name: the image's name (relative path or photo name).
        degradation: preset name, ``second-order-K`` or ``paired``.
        clean, lq: (H, W, 3) uint8 RGB of the same size.
        truth: the applied preset (its fields are what FaDeX estimates), when known.
    """

    name: str
    degradation: str
    clean: np.ndarray
    lq: np.ndarray
    truth: Degradation | None = None


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
# items


def _load_rgb8(path: Path) -> np.ndarray:
    try:
        return as_rgb_uint8(read_image(path).pixels)
    except F2SError as err:
        raise InputError(f"{path}: {err}") from err


def _fit_long_side(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if side <= 0 or max(h, w) <= side:
        return img
    f = side / max(h, w)
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, hidden entries skipped), sorted."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


def item_degradation(name: str, degradation: str, seed: int) -> Degradation:
    """The degradation of item ``name`` under ``degradation`` (a preset or ``second-order-K``).

    A preset's noise is seeded with ``image_seed(seed, f"{name}|{preset}")``; the
    ``second-order-K`` sample is drawn from ``image_seed(seed, "second-order-K")`` (the same
    sample for every image).
    """
    if degradation.startswith("second-order-"):
        g = torch.Generator().manual_seed(image_seed(seed, degradation))
        return DegradationDistribution(mix=(0.0, 0.0, 1.0)).sample(g)
    return Degradation.from_preset(degradation, image_seed(seed, f"{name}|{degradation}"))


def degrade_item(clean: np.ndarray, degradation: Degradation) -> np.ndarray:
    """The degraded copy of ``clean`` (H, W, 3) uint8 -> same shape uint8."""
    y = apply(to_tensor(clean), degradation)
    return (y[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def degraded_items(sources: list[tuple[str, Path]], config: EvalConfig) -> list[EvalItem]:
    """Every ``(name, path)`` clean photo under every preset and second-order sample."""
    degs = list(config.presets) + [f"second-order-{k}" for k in range(config.second_order)]
    if not degs:
        raise ConfigError("no degradation to evaluate: give a preset or --second-order >= 1")
    for d in config.presets:
        Degradation.from_preset(d)  # unknown names fail before any work
    items = []
    for name, path in sources:
        clean = _fit_long_side(_load_rgb8(path), config.long_side)
        for d in degs:
            deg = item_degradation(name, d, config.seed)
            truth = None if deg.mode == "second-order" else deg
            items.append(EvalItem(name, d, clean, degrade_item(clean, deg), truth))
    return items


def paired_items(folder: Path) -> list[EvalItem]:
    """``folder/clean/X`` with ``folder/degraded/X`` (matched by relative path without the
    extension; the degraded image must have the clean one's size)."""
    clean_dir, lq_dir = folder / "clean", folder / "degraded"
    degraded = {p.relative_to(lq_dir).with_suffix("").as_posix(): p for p in find_images(lq_dir)}
    items = []
    for path in find_images(clean_dir):
        key = path.relative_to(clean_dir).with_suffix("").as_posix()
        if key not in degraded:
            logger.warning("%s has no degraded counterpart; skipped", path)
            continue
        clean, lq = _load_rgb8(path), _load_rgb8(degraded[key])
        if clean.shape != lq.shape:
            raise InputError(
                f"{degraded[key]}: size {lq.shape[1]}x{lq.shape[0]} differs from its clean "
                f"image's {clean.shape[1]}x{clean.shape[0]}"
            )
        items.append(EvalItem(key, "paired", clean, lq))
    if not items:
        raise InputError(f"{folder}: no clean/degraded pair found")
    return items


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


# ------------------------------------------------------------------------------------------
# reports


def _gain(row: dict[str, Any]) -> float:
    v = row["variants"]
    main = "code" if "code" in v else "nlm"
    return float(v[main]["psnr"] or 0.0) - float(v["input"]["psnr"] or 0.0)


def case_grid(
    item: EvalItem,
    outputs: dict[str, np.ndarray],
    scores: dict[str, dict[str, Any]] | None = None,
    height: int = 256,
) -> np.ndarray:
    """input | variants | ground truth side by side, each scaled to ``height`` px with its
    name (and PSNR from ``scores``) above: (height + 24, W, 3) uint8 RGB."""
    tiles = [*outputs.items(), ("clean", item.clean)]
    h, w = item.clean.shape[:2]
    tw = max(1, round(w * height / h))
    cols = []
    for name, img in tiles:
        interp = cv2.INTER_AREA if h > height else cv2.INTER_NEAREST
        t = cv2.resize(img, (tw, height), interpolation=interp)
        label = np.full((24, tw, 3), 255, np.uint8)
        if scores and name in scores and scores[name]["psnr"] is not None:
            name = f"{name} {scores[name]['psnr']:.2f} dB"
        cv2.putText(label, name, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cols.append(np.concatenate([label, t], axis=0))
    return np.concatenate(cols, axis=1)


def _cell(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def to_markdown(table: dict[str, Any], checks: list[dict[str, Any]] | None = None) -> str:
    """The evaluation as Markdown: for all items, then for the items whose code was read off a
    face, variants x metrics and PSNR / SSIM per degradation; the estimate errors; optional
    target checks."""
    cfg = table["config"]
    cols = [
        ("PSNR", "psnr", ".2f"),
        ("SSIM", "ssim", ".4f"),
        ("PSNR-Y", "psnr_y", ".2f"),
        ("SSIM-Y", "ssim_y", ".4f"),
        ("PSNR face", "psnr_face", ".2f"),
        ("PSNR rest", "psnr_rest", ".2f"),
        ("SSIM face", "ssim_face", ".4f"),
        ("identity dist.", "identity_distance", ".3f"),
    ]
    lines: list[str] = []
    subsets = (
        ("All items", "variants", "by_degradation"),
        ("Items whose code was read off a face", "variants_faces", "by_degradation_faces"),
    )
    for title, key, by_key in subsets:
        means = table[key]
        if not means:
            continue
        n = next(iter(means.values()))["n"]
        lines += [f"**{title}** ({n})", ""]
        lines.append("| variant | " + " | ".join(c[0] for c in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for v, m in means.items():
            lines.append(f"| {v} | " + " | ".join(_cell(m[k], f) for _, k, f in cols) + " |")
        lines += ["", "| PSNR / SSIM | " + " | ".join(means) + " |"]
        lines.append("|---|" + "---|" * len(means))
        for d, by in table[by_key].items():
            if by:
                cells = [
                    f"{_cell(by[v]['psnr'], '.2f')} / {_cell(by[v]['ssim'], '.3f')}" for v in by
                ]
                lines.append(
                    f"| {d} ({next(iter(by.values()))['n']}) | " + " | ".join(cells) + " |"
                )
        lines.append("")
    e = table["estimate_error"]
    if e["n"]:
        lines += [
            f"FaDeX estimate error (mean absolute, {e['n']} items with a face and a known "
            f"degradation): noise σ {_cell(e['noise_sigma'], '.2f')}/255, blur σ "
            f"{_cell(e['blur_sigma_px'], '.2f')} px, downscale {_cell(e['downscale'], '.2f')}, "
            f"JPEG quality {_cell(e['jpeg_quality'], '.1f')}, JPEG detected right "
            f"{_cell(e['jpeg_detected'], '.0%')}.",
            "",
        ]
    lines.append(
        f"{cfg['items']} items (long side {cfg['long_side'] or 'kept'}, seed {cfg['seed']}); "
        "8-bit, whole image unless said. Face = the union of the faces "
        "detected on the clean image (face, rest and identity columns: items with such a "
        "face); identity distance = dlib ResNet, euclidean, clean face vs the same box in the "
        f"output (same person < 0.6). NLM at its best h per degradation: {table['nlm_h']}."
    )
    if checks:
        lines += ["", "| target | value | met |", "|---|---|---|"]
        lines += [
            f"| {c['target']} | {c['value']} | {'yes' if c['pass'] else '**no**'} |" for c in checks
        ]
    return "\n".join(lines) + "\n"


def write_results(folder: Path, evaluation: Evaluation) -> list[Path]:
    """``results.json``, ``results.md`` and ``grid-best.png`` / ``grid-worst.png`` (the items
    with the largest and smallest PSNR gain of the face-code variant over the input, among
    the items whose code was read off a face when there are any), written atomically;
    returns the paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = evaluation.table["items"]
    paths = [folder / "results.json", folder / "results.md"]
    atomic_write_bytes(paths[0], (json.dumps(evaluation.table, indent=1) + "\n").encode())
    atomic_write_bytes(paths[1], to_markdown(evaluation.table).encode())
    coded = [i for i, r in enumerate(rows) if r["code_source"] == "face"]
    order = sorted(coded or range(len(rows)), key=lambda i: _gain(rows[i]))
    for label, i in (("best", order[-1]), ("worst", order[0])):
        grid = case_grid(evaluation.items[i], evaluation.outputs[i], rows[i]["variants"])
        buf = _png(Image.fromarray(grid))
        path = folder / f"grid-{label}.png"
        atomic_write_bytes(path, buf)
        paths.append(path)
    return paths


def _png(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def targets(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The scene issue's targets as ``[{"target", "value", "pass"}]`` (speed and tiles
    excluded: see :func:`measure_speed` and :func:`tile_check`). Code-vs-blind targets use the
    items whose code came from a face."""
    m, rows = table["by_degradation"], table["items"]
    out: list[dict[str, Any]] = []
    main = "code" if table["variants_faces"] else "blind"

    def add(name: str, value: float | str, ok: bool) -> None:
        out.append({"target": name, "value": value, "pass": bool(ok)})

    if "noise15" in m:
        gain = m["noise15"][main]["psnr"] - m["noise15"]["input"]["psnr"]
        add(f"noise15: {main} PSNR gain over input >= +3 dB", round(gain, 2), gain >= 3.0)
    for deg, v in m.items():
        d = v[main]["psnr"] - v["nlm"]["psnr"]
        add(f"{deg}: {main} better than NLM at best h ({table['nlm_h'][deg]})", round(d, 2), d > 0)
    worse = [
        f"{r['image']}/{r['degradation']}"
        for r in rows
        if r["variants"][main]["psnr"] < r["variants"]["input"]["psnr"]
    ]
    add(f"no item worse than its input ({main})", ", ".join(worse) or "none", not worse)
    faces = {d: v for d, v in table["by_degradation_faces"].items() if "code" in v}
    if main == "code" and faces:
        diffs = {d: v["code"]["psnr"] - v["blind"]["psnr"] for d, v in faces.items()}
        avg = float(np.mean(list(diffs.values())))
        add("face-code beats blind by >= 0.2 dB on average (face items)", round(avg, 3), avg >= 0.2)
        low = min(diffs.values())
        add(
            "face-code never worse than blind by > 0.1 dB on a degradation (face items)",
            round(low, 3),
            low >= -0.1,
        )
        wrong = {
            d: v["code"]["psnr"] - v["wrong"]["psnr"] for d, v in faces.items() if "wrong" in v
        }
        if wrong:
            wmin = min(wrong.values())
            add(
                "wrong-code control lowers PSNR by >= 0.3 dB (each degradation)",
                round(wmin, 3),
                wmin >= 0.3,
            )
    return out


def measure_speed(
    restorer: SceneRestorer, image: torch.Tensor, repeats: int = 3, tile: int | None = None
) -> dict[str, float]:
    """Median seconds per megapixel of :meth:`SceneRestorer.restore` on ``image``
    :math:`(1, C, H, W)`, and this process's peak RSS (GiB) afterwards."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        restorer.restore(image, None, tile=tile)
        times.append(time.perf_counter() - t)
    mp = image.shape[-1] * image.shape[-2] / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "megapixels": mp,
        "s_per_mp": float(np.median(times)) / mp,
        "peak_rss_gib": peak,
        "threads": torch.get_num_threads(),
        "runs_s": times,
    }


def write_card(folder: Path, evaluation: str, extra: str = "") -> None:
    """Write ``folder/README.md`` (the model card) from ``training.json`` and an evaluation
    section (markdown)."""
    info = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    cfg = info.get("config", {})
    net = cfg.get("network", {})
    phases = "\n".join(
        f"- `{p.get('run')}`: {p['steps']} steps, {p['wall_s'] / 60:.1f} min, "
        f"condition `{p.get('condition')}`"
        for p in info.get("phases", [])
    )
    tr, data = cfg.get("train", {}), cfg.get("data", {})
    mix = data.get("degradation", {}).get("mix", data.get("mix"))  # 0.1 runs: data.mix
    fadex_sha = info.get("trained_with", {}).get("fadex")
    text = f"""# {cfg.get("name") or folder.name}

One-step conditional UNet (diffusers `UNet2DConditionModel`, cross-attention only, 4x
pixel-unshuffled grid, residual output) **trained from scratch here** — not a pretrained
diffusion prior — with its MapNet (FaDeX degradation map -> 21 tokens). Stage II of
Face2Scene: restores the whole photo, conditioned on the degradation read off a face.

- Variant: `{net.get("variant")}` {json.dumps(net.get("overrides", {}))};
  colour fix `{net.get("color_fix")}`.
- Trained with FaDeX `{net.get("fadex")}` sha256 `{fadex_sha}` (frozen).
- Training: **{info["steps"]} steps, {info["wall_s"] / 60:.1f} min wall** on
  {info.get("hardware")}; batch {tr.get("batch")} x {tr.get("crop")} px crops.
{phases}
- Data: TRAIN photos of `data/splits.yaml` (package-shipped photos only, see ASSETS.md),
  {data.get("samples")} cached degraded regions of {data.get("region")} px (presets /
  parametric grid / Real-ESRGAN second order, mix {mix}); the code comes from
  FaDeX on a {data.get("face_crop")} px face-sized crop of the same degraded region and its
  BlindFaceRestorer output; condition dropout {tr.get("cond_dropout")} in the code phase.
- Loss: Charbonnier + {tr.get("w_ssim")} (1 - SSIM) + {tr.get("w_grad")} gradient L1 +
  {tr.get("w_fft")} FFT-amplitude L1; lr {tr.get("lr")}, grad clip {tr.get("grad_clip")};
  EMA ({tr.get("ema")}) weights exported, stored in float16.
- Licence: Apache-2.0. Weights: safetensors (`net/`, `mapnet/`).

## Evaluation

{evaluation}
{extra}
"""
    (folder / "README.md").write_text(text, encoding="utf-8")


def _photo_tensor(name: str) -> torch.Tensor:
    from face2scene_cli.io.images import read_image, to_tensor
    from face2scene_cli.research.sample_data import all_photos

    for p in all_photos():
        if p.name == name:
            return to_tensor(read_image(p.path).pixels)[:, :3]
    raise SystemExit(f"photo {name!r} not available")


def _speed_check(args: Any) -> dict[str, Any]:
    """Seconds per megapixel (median of ``repeats``) and peak RSS on a real photo."""
    restorer = SceneRestorer.from_pretrained(args.model)
    x = _photo_tensor(args.photo)
    if args.megapixels:
        f = (args.megapixels * 1e6 / (x.shape[-1] * x.shape[-2])) ** 0.5
        size = (round(x.shape[-2] * f), round(x.shape[-1] * f))
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic").clamp(0, 1)
    return {
        "photo": args.photo,
        "size": list(x.shape[-2:]),
        **measure_speed(restorer, x, repeats=args.repeats),
    }


def tile_check(restorer: SceneRestorer, x: torch.Tensor, tile: int = 192) -> dict[str, float]:
    """PSNR (dB) between the tiled (``tile`` px) and the whole-image (one tile) result."""
    from face2scene_cli.research.metrics import psnr_torch

    side = max(x.shape[-2:])
    m = restorer.net.multiple
    whole = restorer.restore(x, None, tile=-(-side // m) * m)
    tiled = restorer.restore(x, None, tile=tile)
    return {
        "tile": tile,
        "psnr_tiled_vs_whole": float(psnr_torch(tiled, whole)[0]),
        "max_abs_diff": float((tiled - whole).abs().max()),
    }


def load_models(
    scene: SceneRestorer, detector: str = "auto", min_face: int = 20, device: str = "cpu"
) -> EvalModels:
    """Everything :func:`evaluate` runs around ``scene``: its FaDeX (zoo, verified) with the
    Stage I restorer, a face detector and the dlib identity encoder (None when dlib or its
    models are missing: no identity distance)."""
    from face2scene_cli.errors import NotAvailableError
    from face2scene_cli.faces.detect import create_detector
    from face2scene_cli.faces.identity import create_identity_encoder
    from face2scene_cli.restorers.face.blind import BlindFaceRestorer
    from face2scene_cli.restorers.loading import load_fadex

    reader = DegradationReader(load_fadex(scene.settings.fadex), BlindFaceRestorer(), device)
    try:
        identity: IdentityEncoder | None = create_identity_encoder("dlib")
    except NotAvailableError as err:
        logger.warning("no identity distance: %s", err)
        identity = None
    return EvalModels(scene, reader, create_detector(detector, min_face, device=device), identity)


def val_sources(splits: Path = Path("data/splits.yaml")) -> list[tuple[str, Path]]:
    """``(name, path)`` of the VAL photos of the split manifest."""
    from face2scene_cli.research.train.data import load_splits

    return [(p.name, p.path) for p in load_splits(splits)["val"]]


def main(argv: list[str] | None = None) -> int:
    """``python -m face2scene_cli.research.eval.scene --model models/scene-embedded [--card] [--speed]``:
    :func:`evaluate` on the VAL photos with the default :class:`EvalConfig`, the targets and
    the tile check (the model card's numbers). ``--export DIR`` copies the VAL photos into
    ``DIR`` (for ``f2s eval DIR``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m face2scene_cli.research.eval.scene")
    ap.add_argument("--model", type=Path, default=Path("models/scene-embedded"))
    ap.add_argument("--splits", type=Path, default=Path("data/splits.yaml"))
    ap.add_argument("--out", type=Path, default=Path("runs/eval-scene.json"))
    ap.add_argument("--long-side", type=int, default=EvalConfig.long_side)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nlm-cache", type=Path, default=Path("runs/eval-nlm-cache.json"))
    ap.add_argument("--speed", action="store_true", help="time the restorer on a real photo")
    ap.add_argument("--photo", default="mate/storm", help="photo for --speed")
    ap.add_argument(
        "--megapixels",
        type=float,
        default=0.0,
        help="--speed: resize the photo to this many megapixels first",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--card", action="store_true", help="write the model card (README.md)")
    ap.add_argument("--export", type=Path, help="copy the VAL photos into this folder and exit")
    args = ap.parse_args(argv)
    if args.export:
        args.export.mkdir(parents=True, exist_ok=True)
        for name, path in val_sources(args.splits):
            target = args.export / (name.replace("/", "_") + path.suffix.lower())
            atomic_write_bytes(target, path.read_bytes())
        print(args.export)
        return 0
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    if args.speed:
        print(json.dumps(_speed_check(args)))
        return 0
    restorer = SceneRestorer.from_pretrained(args.model)
    cfg = EvalConfig(long_side=args.long_side)
    items = degraded_items(val_sources(args.splits), cfg)
    table = evaluate(items, load_models(restorer), cfg, nlm_cache=args.nlm_cache).table
    checks = targets(table)
    tiles = tile_check(restorer, _photo_tensor("skimage/astronaut"))
    checks.append(
        {
            "target": "tiles: PSNR(tiled at 192 px, whole) >= 40 dB (astronaut)",
            "value": round(tiles["psnr_tiled_vs_whole"], 2),
            "pass": tiles["psnr_tiled_vs_whole"] >= 40,
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({**table, "targets": checks, "tiles": tiles}, indent=1)
    atomic_write_bytes(args.out, data.encode())
    md = to_markdown(table, checks)
    if args.card:
        write_card(args.model, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
