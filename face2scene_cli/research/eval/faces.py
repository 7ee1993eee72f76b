"""Stage I on real photos: blind vs reference-guided face restoration (a measurement script).

For every face in the shipped photos with people (:mod:`face2scene_cli.research.sample_data`), the
whole photo is degraded (the ``f2s degrade`` presets and one Real-ESRGAN second-order sample,
fixed seeds), the degraded face is detected and aligned (FFHQ frame), and the clean photo is
warped with the *same* transform (scaled to the clean photo) to give a pixel-registered
ground-truth face. Each degraded face is restored three ways:

* ``blind``: :class:`~face2scene_cli.restorers.face.blind.BlindFaceRestorer`;
* ``self-refs``: the reference-guided restorer with references made from the *clean* photo
  (:func:`self_references`: mirrored and unmirrored copies with rotation, scale, shift and
  colour jitter, re-detected and re-aligned). There are no second photos of these people
  offline, so this is an **optimistic** setting: the references share the ground truth's
  lighting, expression and (unmirrored) pixels;
* ``wrong-refs``: another person's self-derived references forced on the face (every other
  face in the set), a control: the restorer must not paste a stranger's face.

Metrics, always against the clean ground-truth face (never the references): PSNR over the
face mask (:func:`face2scene_cli.faces.paste.face_mask` > 0.5), and the dlib identity
distance between the restored and the ground-truth face (lower is closer; 0.6 is dlib's
same-person threshold).

    f2s eval-faces                    # table on stdout
    f2s eval-faces --json out.json    # and the rows and tables as JSON
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from face2scene_cli.degradations.record import PRESETS
from face2scene_cli.degradations.sampling import DegradationDistribution, apply, image_generator
from face2scene_cli.faces.align import FaceAligner
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.detect import as_rgb_uint8, create_detector
from face2scene_cli.faces.identity import DlibResNetEncoder
from face2scene_cli.faces.paste import face_mask
from face2scene_cli.io.images import read_image
from face2scene_cli.registry import create
from face2scene_cli.research import sample_data
from face2scene_cli.research.metrics import psnr
from face2scene_cli.restorers.face.base import FaceRestorer, RestoredFaces
from face2scene_cli.restorers.face.blind import BlindFaceRestorer
from face2scene_cli.restorers.face.ref_guided import aligned_face_box, to_rgb8

__all__ = [
    "DEGRADATIONS",
    "FaceCase",
    "build_cases",
    "degrade_photo",
    "evaluate",
    "format_table",
    "run",
    "self_references",
    "summarise",
]

logger = logging.getLogger(__name__)

DEGRADATIONS: tuple[str, ...] = (*PRESETS, "second-order")
"""The degradations applied to each photo: the ``f2s degrade`` presets and one second-order
sample (Real-ESRGAN ranges, size kept)."""

#: (mirror, rotation degrees, scale, shift as a fraction of the face box, RGB gain)
JITTERS: tuple[tuple[bool, float, float, float, tuple[float, float, float]], ...] = (
    (True, 5.0, 0.9, 0.04, (1.06, 1.0, 0.94)),
    (False, -4.0, 1.12, -0.03, (0.95, 1.0, 1.05)),
)


@dataclass
class FaceCase:
    """One degraded face with its registered ground truth.

    Attributes:
        name: ``"<photo>#<face index>"``.
        degradation: a name in :data:`DEGRADATIONS`.
        gt: (S, S, C) float32 in [0, 1], the clean face in the degraded face's aligned frame.
        lq: (S, S, C) float32 in [0, 1], the degraded face, aligned.
        person: the key of ``name``'s references in the references dict.
    """

    name: str
    degradation: str
    gt: np.ndarray
    lq: np.ndarray
    person: str


def _to_float(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32) / 255.0
    return f[:, :, None] if f.ndim == 2 else f


def degrade_photo(pixels: np.ndarray, degradation: str, seed: int, key: str) -> np.ndarray:
    """Degrade a whole uint8 photo (H, W, C) -> uint8 (H', W', C) with a fixed seed."""
    x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float() / 255
    gen = image_generator(seed, f"{key}/{degradation}")
    if degradation == "second-order":
        y = apply(x, DegradationDistribution(mix=(0.0, 0.0, 1.0)).sample(gen))
    else:
        y = apply(x, PRESETS[degradation], gen)
    return (y[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def _nearest(faces: list[DetectedFace], centre: np.ndarray) -> DetectedFace | None:
    if not faces:
        return None
    d = [_dist(f.landmarks.mean(0), centre) for f in faces]
    return faces[int(np.argmin(d))]


def self_references(
    pixels: np.ndarray, face: DetectedFace, detector: FaceDetector, aligner: FaceAligner
) -> list[tuple[bool, np.ndarray]]:
    """References of ``face`` made from its own clean photo (the optimistic setting).

    For each of :data:`JITTERS`: mirror the photo (optional), rotate / scale / shift it about
    the face, apply an RGB gain, re-detect the face nearest to where it went and align it.

    Args:
        pixels: the clean photo, (H, W, C) uint8, C in {1, 3}.
        face: the face in ``pixels``.
        detector: finds the face again in each jittered copy.
        aligner: aligns it.

    Returns:
        ``(mirrored, crop)`` pairs, the crop aligned (S, S, C) float32 in [0, 1] (a jitter
        whose face is not found is skipped).
    """
    h, w = pixels.shape[:2]
    refs = []
    for mirror, angle, scale, shift, gain in JITTERS:
        img = pixels[:, ::-1] if mirror else pixels
        centre = face.landmarks.mean(0).astype(np.float64)
        if mirror:
            centre[0] = w - 1 - centre[0]
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
        m[:, 2] += shift * face.size
        out = cv2.warpAffine(
            np.ascontiguousarray(img),
            m,
            (w, h),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REFLECT,
        )
        out = out[:, :, None] if out.ndim == 2 else out
        if out.shape[2] == 3:
            out = np.clip(out.astype(np.float32) * np.float32(gain), 0, 255).astype(np.uint8)
        found = _nearest(detector.detect([as_rgb_uint8(out)])[0], m[:, :2] @ centre + m[:, 2])
        if found is not None:
            refs.append((mirror, _to_float(aligner.align(out, found).crop)))
    return refs


def build_cases(
    detector: FaceDetector,
    aligner: FaceAligner,
    degradations: Sequence[str] = DEGRADATIONS,
    seed: int = 0,
) -> tuple[list[FaceCase], dict[str, list[tuple[bool, np.ndarray]]]]:
    """Every face of the shipped people photos under every degradation, and each face's
    self-derived references (keyed by ``FaceCase.person``)."""
    cases: list[FaceCase] = []
    refs: dict[str, list[tuple[bool, np.ndarray]]] = {}
    photos = [p for p in sample_data.package_photos() + sample_data.debian_photos() if p.people]
    for photo in photos:
        pixels = read_image(photo.path).pixels
        clean_faces = detector.detect([as_rgb_uint8(pixels)])[0]
        degraded = {d: degrade_photo(pixels, d, seed, photo.name) for d in degradations}
        lq_faces = {d: detector.detect([as_rgb_uint8(x)])[0] for d, x in degraded.items()}
        for i, face in enumerate(clean_faces):
            person = f"{photo.name}#{i}"
            refs[person] = self_references(pixels, face, detector, aligner)
            centre = face.landmarks.mean(0)
            for deg, lq_img in degraded.items():
                k = lq_img.shape[0] / pixels.shape[0]
                found = _nearest(lq_faces[deg], centre * k)
                if found is None or _dist(found.landmarks.mean(0) / k, centre) > face.size / 2:
                    continue  # the degraded face was not found
                lq = aligner.align(lq_img, found)
                at_clean = DetectedFace(found.box / k, found.score, found.landmarks / k)
                gt = aligner.align(pixels, at_clean)
                cases.append(FaceCase(person, deg, _to_float(gt.crop), _to_float(lq.crop), person))
    return cases, refs


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)


class _Scorer:
    """Face PSNR (face mask > 0.5) and dlib identity distance against one ground truth."""

    def __init__(self, encoder: DlibResNetEncoder, size: int) -> None:
        self.encoder = encoder
        self.mask = face_mask(size) > 0.5
        self.box = [aligned_face_box(size)]

    def embed(self, x: np.ndarray) -> np.ndarray:
        return self.encoder.embed(to_rgb8(x), self.box)[0]

    def __call__(self, out: np.ndarray, gt: np.ndarray, gt_emb: np.ndarray) -> tuple[float, float]:
        ident = float(np.linalg.norm(self.embed(out) - gt_emb))
        return psnr(out, gt, data_range=1.0, mask=self.mask), ident


class _LastBlind(FaceRestorer):
    """A restorer's output for the last input, reused: every restorer here restores the same
    crop blind first, and it is the slow part."""

    def __init__(self, restorer: FaceRestorer) -> None:
        self.restorer = restorer
        self.name, self.version = restorer.name, restorer.version
        self._last: tuple[bytes, RestoredFaces] | None = None

    def restore(self, lq: torch.Tensor, references: list | None = None) -> RestoredFaces:
        key = lq.numpy().tobytes()
        if self._last is None or self._last[0] != key:
            self._last = (key, self.restorer.restore(lq))
        return self._last[1]


def _run(
    restorer: FaceRestorer,
    case: FaceCase,
    chosen: list[np.ndarray],
    score: _Scorer,
    gt_emb: np.ndarray,
) -> tuple[float, float, int]:
    out = restorer.restore(_tensor(case.lq)[None], [[_tensor(r) for r in chosen]])
    hq = out.hq[0].permute(1, 2, 0).numpy()
    used = out.references_used[0] if out.references_used else 0
    return (*score(hq, case.gt, gt_emb), used)


def evaluate(
    cases: list[FaceCase],
    refs: dict[str, list[tuple[bool, np.ndarray]]],
    restorers: dict[str, FaceRestorer],
) -> list[dict[str, object]]:
    """One row per case: ``(face PSNR dB, identity distance, references used)`` of the blind
    restorer and, per restorer in ``restorers``, with self-derived references (``self``), with
    the mirrored ones only (``mirrored``) and with each other person's (``wrong``: a list)."""
    blind = _LastBlind(create("face_restorer", "blind"))
    for restorer in restorers.values():
        if isinstance(getattr(restorer, "blind", None), BlindFaceRestorer):
            restorer.blind = blind
    score = _Scorer(DlibResNetEncoder(), cases[0].gt.shape[0] if cases else 512)
    rows = []
    for i, case in enumerate(cases):
        logger.info("%d/%d %s %s", i + 1, len(cases), case.name, case.degradation)
        gt_emb = score.embed(case.gt)
        row: dict[str, object] = {"face": case.name, "degradation": case.degradation}
        row["blind"] = _run(blind, case, [], score, gt_emb)
        own = refs[case.person]
        for key, restorer in restorers.items():
            row[f"{key}/self"] = _run(restorer, case, [c for _, c in own], score, gt_emb)
            mirrored = [c for m, c in own if m]
            row[f"{key}/mirrored"] = _run(restorer, case, mirrored, score, gt_emb)
            row[f"{key}/wrong"] = [
                _run(restorer, case, [c for _, c in refs[p]], score, gt_emb)
                for p in refs
                if p != case.person and refs[p]
            ]
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, object]], key: str) -> dict[str, dict[str, float]]:
    """Per degradation (and ``all``): mean blind / self / mirrored / wrong PSNR and identity
    distance of restorer ``key``, and the target checks as counts of cases."""
    groups: dict[str, list[dict[str, object]]] = {"all": rows}
    for r in rows:
        groups.setdefault(str(r["degradation"]), []).append(r)
    table = {}
    for name, rs in groups.items():
        blind = np.array([r["blind"][:2] for r in rs])
        own = np.array([r[f"{key}/self"][:2] for r in rs])
        mir = np.array([r[f"{key}/mirrored"][:2] for r in rs])
        wrong = [np.array([w[:2] for w in r[f"{key}/wrong"]]) for r in rs]
        wmean = np.array([w.mean(0) for w in wrong])
        pairs = list(zip(wrong, blind, strict=True))
        table[name] = {
            "faces": len(rs),
            "blind_psnr": blind[:, 0].mean(),
            "self_psnr": own[:, 0].mean(),
            "mirrored_psnr": mir[:, 0].mean(),
            "wrong_psnr": wmean[:, 0].mean(),
            "blind_id": blind[:, 1].mean(),
            "self_id": own[:, 1].mean(),
            "mirrored_id": mir[:, 1].mean(),
            "wrong_id": wmean[:, 1].mean(),
            "self_psnr_not_lower": int((own[:, 0] >= blind[:, 0] - 1e-6).sum()),
            "self_id_closer": int((own[:, 1] < blind[:, 1]).sum()),
            "mirrored_psnr_not_lower": int((mir[:, 0] >= blind[:, 0] - 1e-6).sum()),
            "mirrored_id_closer": int((mir[:, 1] < blind[:, 1]).sum()),
            "wrong_pairs": sum(len(w) for w in wrong),
            "wrong_psnr_beats": int(sum((w[:, 0] > b[0] + 1e-6).sum() for w, b in pairs)),
            "wrong_id_beats": int(sum((w[:, 1] < b[1] - 1e-6).sum() for w, b in pairs)),
            "wrong_psnr_drop_max": float(max((b[0] - w[:, 0]).max() for w, b in pairs)),
            "wrong_refs_used": int(sum(x[2] > 0 for r in rs for x in r[f"{key}/wrong"])),
        }
    return table


def format_table(table: dict[str, dict[str, float]], key: str) -> str:
    """The summary as a markdown table (PSNR in dB over the face mask; identity = dlib
    distance to the ground-truth face, lower is closer)."""
    head = (
        "| degradation | faces | PSNR blind | PSNR self-refs* | PSNR mirrored-ref* | "
        "PSNR wrong-person | ID blind | ID self-refs* | ID mirrored-ref* | ID wrong-person |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, t in table.items():
        lines.append(
            f"| {name} | {t['faces']} | {t['blind_psnr']:.2f} | {t['self_psnr']:.2f} | "
            f"{t['mirrored_psnr']:.2f} | {t['wrong_psnr']:.2f} | {t['blind_id']:.3f} | "
            f"{t['self_id']:.3f} | {t['mirrored_id']:.3f} | {t['wrong_id']:.3f} |"
        )
    t = table["all"]
    n = t["faces"]
    notes = (
        f"\n{key}, * optimistic (self-derived references). Targets, over {n} degraded faces: "
        f"PSNR not lower with self-refs {t['self_psnr_not_lower']}/{n}, identity closer "
        f"{t['self_id_closer']}/{n}; mirrored ref only: PSNR not lower "
        f"{t['mirrored_psnr_not_lower']}/{n}, identity closer {t['mirrored_id_closer']}/{n}; "
        f"wrong person ({t['wrong_pairs']} face x person pairs): PSNR above blind in "
        f"{t['wrong_psnr_beats']}, identity closer than blind in {t['wrong_id_beats']}, largest "
        f"PSNR drop {t['wrong_psnr_drop_max']:.3f} dB, references used in {t['wrong_refs_used']}."
    )
    return head + "\n".join(lines) + notes


def run(size: int = 512, ablation: bool = False) -> dict[str, Any]:
    """The whole measurement (``f2s eval-faces``): cases from the shipped people photos,
    faces aligned at ``size`` px, the reference-guided restorer (and, with ``ablation``, the
    same without its identity gate) against blind.

    Returns:
        ``{"rows": evaluate(...) rows, "tables": {restorer key: summarise(...)}}``.
    """
    cases, refs = build_cases(create_detector("auto"), FaceAligner(size))
    restorers = {"ref-guided": create("face_restorer", "ref-guided")}
    if ablation:
        restorers["ref-guided (no identity gate)"] = create(
            "face_restorer", "ref-guided", identity=None
        )
    rows = evaluate(cases, refs, restorers)
    return {"rows": rows, "tables": {key: summarise(rows, key) for key in restorers}}
