"""Reading photos before restoring them: whose faces they show, and how they are degraded.

:class:`FaceFinder` detects faces, aligns them and (with a reference gallery) says whose they
are and which references suit them; :class:`DegradationReader` restores the face crops of a
batch of images (Stage I), runs FaDeX on the (degraded, restored) pairs and aggregates each
image's faces into one degradation estimate. An image without a usable face is read off
scene crops instead (:func:`scene_crop_boxes`), restored by the blind restorer: the crops the
scene restorer was trained with where a training region held no face.
``Face2ScenePipeline.from_pretrained`` (:mod:`face2scene_cli.pipelines.restore`) assembles
them; nothing here prints.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from face2scene_cli.archs.fadex import FaDeX
from face2scene_cli.config import FaceSettings
from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.noise_level import NoiseCurve, estimate_noise_curve
from face2scene_cli.faces.align import (
    AlignedFace,
    FaceAligner,
    estimate_similarity,
    ffhq_template,
    native_crop,
)
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.detect import as_rgb_uint8, create_detector
from face2scene_cli.faces.gallery import Gallery, Match, Reference
from face2scene_cli.faces.identity import create_identity_encoder
from face2scene_cli.io.pixels import split_alpha
from face2scene_cli.io.tensors import to_tensor
from face2scene_cli.restorers.face.base import FaceRestorer
from face2scene_cli.restorers.face.blind import BlindFaceRestorer

# FaDeX reads native crops of at least this side; smaller faces take more context around them.
MIN_CROP_SIDE = 64
# The smallest image side that can be read, px: the noise curve's blocks, FaDeX's smallest crop.
MIN_IMAGE_SIDE = 16
#: Scene crops read off an image without a usable face (chosen on VAL:
#: ``benchmarks/results/scene-crops-val``); the scene trainer's validation reads as many.
SCENE_CROPS = 8


@dataclass
class FoundFace:
    """One face of an image: where it is, its aligned crop, and whose it is."""

    face: DetectedFace
    aligned: AlignedFace | None = None
    match: Match | None = None
    references: list[Reference] = field(default_factory=list)

    def to_report(self) -> dict[str, Any]:
        """The report schema's ``faces[]`` entry."""
        entry = self.face.to_report()
        entry["person"] = self.match.person if self.match else None
        entry["similarity"] = round(self.match.similarity, 4) if self.match else None
        entry["references"] = [r.path for r in self.references]
        return entry


class FaceFinder:
    """Detect -> align -> match to the gallery -> choose references, for one image at a time.

    Args:
        detector: the face detector.
        aligner: makes aligned crops (None: no crops, e.g. for listing only).
        gallery: the reference gallery (None: every face is "unknown").
        refs_k: references chosen per matched face.
        unique_identities: a person appears at most once per photo.
    """

    def __init__(
        self,
        detector: FaceDetector,
        aligner: FaceAligner | None = None,
        gallery: Gallery | None = None,
        refs_k: int = 3,
        unique_identities: bool = True,
    ) -> None:
        self.detector = detector
        self.aligner = aligner
        self.gallery = gallery
        self.refs_k = refs_k
        self.unique_identities = unique_identities

    @classmethod
    def from_settings(
        cls, settings: FaceSettings, aligner: FaceAligner | None = None, device: str = "cpu"
    ) -> FaceFinder:
        """The detector, identity encoder and reference gallery ``settings`` name.

        Args:
            aligner: makes aligned crops (None: none; the gallery aligns with the default).
            device: where the detector runs.
        """
        detector = create_detector(settings.detector, settings.min_face, settings.max_faces, device)
        gallery = None
        if settings.refs is not None:
            encoder = create_identity_encoder(settings.identity)
            gallery = Gallery.build(settings.refs, detector, aligner or FaceAligner(), encoder)
        return cls(detector, aligner, gallery, refs_k=settings.refs_k)

    def find(self, pixels: np.ndarray) -> list[FoundFace]:
        """Faces of one image, most confident first.

        Args:
            pixels: (H, W, C) uint8/uint16 pixels, C in {1, 3, 4} (as read by imageio).
        """
        rgb = as_rgb_uint8(pixels)
        faces = self.detector.detect([rgb])[0]
        found = [FoundFace(face) for face in faces]
        if self.aligner is not None:
            for item in found:
                item.aligned = self.aligner.align(pixels, item.face)
        if self.gallery is not None and faces:
            matches = self.gallery.match_faces(rgb, faces, unique=self.unique_identities)
            for item, match in zip(found, matches, strict=True):
                item.match = match
                if match.person is not None and match.embedding is not None:
                    item.references = self.gallery.best_references(
                        match.embedding, item.face, match.person, k=self.refs_k
                    )
        return found


@dataclass
class CropDegradation:
    """One crop's Stage I result and FaDeX's reading of it (a scene crop; faces add theirs).

    Attributes:
        index: the crop's position among its image's faces (:meth:`read_batch`'s list) or
            scene crops.
        code: (D,) unit vector.
        estimates: FaDeX's :class:`Estimate` for this crop.
        weight: its share of the image's code, in (0, 1]: the restorer's confidence (faces:
            x detection score x size factor).
        crop_box: ``(x0, y0, x1, y1)`` of ``lq``/``hq`` in source pixels (inside the photo).
        restorer: the Stage I method, e.g. ``blind-nlm/1``.
        lq: (1, C, h, w) float [0, 1] the native crop; hq: Stage I's output, same shape.
        z: FaDeX's map (1, C_z, h/8, w/8).
    """

    index: int
    code: np.ndarray
    estimates: Estimate
    weight: float
    crop_box: tuple[int, int, int, int]
    restorer: str
    lq: torch.Tensor = field(repr=False)
    hq: torch.Tensor = field(repr=False)
    z: torch.Tensor = field(repr=False)


@dataclass
class FaceDegradation(CropDegradation):
    """One face's reading: a :class:`CropDegradation` with the face it was cut around.

    Attributes:
        face: the detected face.
        references_used: how many references shaped ``hq`` (None: the restorer reads none).
    """

    face: DetectedFace = field(kw_only=True)
    references_used: int | None = field(default=None, kw_only=True)


@dataclass
class ImageDegradation:
    """One image's degradation: per face, aggregated over faces (without faces, over its
    scene crops; None when neither was read), and the noise per brightness band of the whole
    photo."""

    faces: list[FaceDegradation]
    restorer: str
    code: np.ndarray | None = None
    estimates: Estimate | None = None
    noise_curve: NoiseCurve | None = None  # read off the whole photo, faces or not
    scene_crops: list[CropDegradation] = field(default_factory=list)

    @property
    def readings(self) -> list[CropDegradation]:
        """The crops the code and estimates were aggregated over: the faces, else the scene
        crops."""
        return list(self.faces) if self.faces else self.scene_crops

    @property
    def source(self) -> str:
        """``face`` when read off faces, ``scene`` off scene crops (no usable face), ``blind``
        when nothing was read."""
        return "face" if self.faces else "scene" if self.scene_crops else "blind"

    def noise_curve_report(self) -> dict[str, Any] | None:
        """The reports' ``noise_curve`` (None where it was not read)."""
        return None if self.noise_curve is None else self.noise_curve.to_report()

    def to_report(self) -> dict[str, Any] | None:
        """The report schema's ``degradation`` field (None when nothing was read)."""
        if self.estimates is None or self.code is None:
            return None
        scene = {"scene_crops": [list(c.crop_box) for c in self.scene_crops]}
        return {
            "code": [round(float(v), 5) for v in self.code],
            **self.estimates.to_report(),
            **(scene if self.scene_crops else {}),
            "source": self.source,
        }


@dataclass
class _Crop:
    """A face crop on its way through Stage I and FaDeX (one image of a batch)."""

    image: int
    index: int
    face: DetectedFace | None  # None: a scene crop
    box: tuple[int, int, int, int]
    lq: torch.Tensor  # (C, h, w)
    references: list[torch.Tensor] | None
    reference_embeddings: np.ndarray | None = None  # (len(references), D)
    confidence: float = 0.0
    references_used: int | None = None


class DegradationReader:
    """Reads images' degradation off their faces (Stage I restorer + FaDeX), a batch at a time.

    For each face a native-resolution square crop (no resampling: noise, blur and the JPEG
    grid stay as in the photo) is restored by ``restorer``; FaDeX reads the (crop, restored)
    pair. Crops of the same size are restored and read together, ``batch_size`` at a time,
    across all images of a batch. An image's estimate is the weighted mean over its faces,
    weights = restorer confidence x detection score x min(1, face size / 64 px).

    An image without a usable face is read off ``scene_crops`` native crops of
    ``scene_crop_side`` px (:func:`scene_crop_boxes`) restored by ``scene_restorer``, weighted
    by its confidence: what the scene trainer does for a training region without a face
    (:func:`~face2scene_cli.research.train.scene_data.build_cache`), so the scene restorer
    gets a code it was trained on instead of restoring blind.

    Args:
        fadex: the degradation extractor (eval mode).
        restorer: the Stage I face restorer (blind baseline or reference-based).
        device: where FaDeX runs.
        margin: context around the face box in the crop (fraction of the box side).
        batch_size: crops per Stage I / FaDeX call.
        scene_crops: scene crops read per image without a face (0: none, the image has no
            reading).
        scene_crop_side: their side, px (the scene trainer's ``face_crop``).
        scene_restorer: their Stage I restorer; None = the blind baseline, as in training.
    """

    def __init__(
        self,
        fadex: FaDeX,
        restorer: FaceRestorer,
        device: str = "cpu",
        margin: float = 0.25,
        batch_size: int = 8,
        scene_crops: int = SCENE_CROPS,
        scene_crop_side: int = 96,
        scene_restorer: FaceRestorer | None = None,
    ) -> None:
        if scene_crops < 0 or scene_crop_side < MIN_IMAGE_SIDE:
            raise ValueError(
                f"need scene_crops >= 0 and scene_crop_side >= {MIN_IMAGE_SIDE}, got "
                f"{scene_crops} and {scene_crop_side}"
            )
        self.fadex = fadex.to(device).eval()
        self.restorer = restorer
        self.device = device
        self.margin = margin
        self.batch_size = max(1, batch_size)
        self.scene_crops = scene_crops
        self.scene_crop_side = scene_crop_side
        self.scene_restorer = scene_restorer or BlindFaceRestorer()

    def read(
        self,
        pixels: np.ndarray,
        faces: list[DetectedFace],
        references: list[list[torch.Tensor]] | None = None,
    ) -> ImageDegradation:
        """The degradation of one image from its ``faces`` (see :meth:`read_batch`)."""
        return self.read_batch([(pixels, faces, references)])[0][0]

    @torch.inference_mode()
    def read_batch(
        self,
        images: Sequence[tuple[np.ndarray, list[DetectedFace], list[list[torch.Tensor]] | None]],
        reference_embeddings: Sequence[list[np.ndarray | None]] | None = None,
    ) -> tuple[list[ImageDegradation], list[dict[str, float]]]:
        """The degradation of each image of a batch, and its noise curve.

        Args:
            images: per image, its pixels (H, W, C) uint8/uint16 with C in {1, 3, 4} (alpha is
                ignored), its faces, and per face the reference crops (C, Hr, Wr) float in
                [0, 1] handed to the Stage I restorer (None: no reference gallery).
            reference_embeddings: per image, per face, None or the (n_refs, D) identity
                embeddings of its references, by an encoder named the restorer's
                ``identity_encoder`` (a restorer without one refuses them): the restorer then
                need not embed the references again.

        Returns:
            One :class:`ImageDegradation` per image, and per image the seconds spent in
            ``stage1`` and ``fadex`` (the batch's, shared by the crops each image had read)
            and reading its ``noise`` curve. Faces whose crop has a side under 16 px are left
            out; an image left without a face is read off its scene crops.
        """
        if reference_embeddings is not None and self.restorer.identity_encoder is None:
            raise ValueError(f"{self.restorer.method} takes no reference embeddings")
        embeddings = reference_embeddings or [None] * len(images)
        crops = []
        colours = [split_alpha(pixels)[0] for pixels, _, _ in images]
        for i, ((_, faces, refs), emb) in enumerate(zip(images, embeddings, strict=True)):
            face_crops = self._crops(i, colours[i], faces, refs, emb)
            crops += face_crops or self._scene_crops(i, colours[i])
        groups: dict[tuple[bool, tuple[int, ...]], list[_Crop]] = {}
        for crop in crops:
            groups.setdefault((crop.face is None, tuple(crop.lq.shape)), []).append(crop)
        chunks = [
            group[k : k + self.batch_size]
            for group in groups.values()
            for k in range(0, len(group), self.batch_size)
        ]
        t0 = time.perf_counter()
        restored = [self._restore(chunk) for chunk in chunks]
        t1 = time.perf_counter()
        readings: list[list[CropDegradation]] = [[] for _ in images]
        for chunk, hq in zip(chunks, restored, strict=True):
            for crop, reading in zip(chunk, self._fadex(chunk, hq), strict=True):
                readings[crop.image].append(reading)
        t2 = time.perf_counter()
        results = [self._aggregate(sorted(r, key=lambda f: f.index)) for r in readings]
        times = []
        for colour, result, read in zip(colours, results, readings, strict=True):
            share = len(read) / len(crops) if crops else 1 / len(images)
            t = time.perf_counter()
            result.noise_curve = estimate_noise_curve(colour)
            noise = time.perf_counter() - t
            times.append({"stage1": (t1 - t0) * share, "fadex": (t2 - t1) * share, "noise": noise})
        return results, times

    def _scene_crops(self, image: int, colour: np.ndarray) -> list[_Crop]:
        """The scene crops of an image without a usable face (none when it is too small);
        ``colour``: its (H, W, C) pixels without alpha."""
        crops = []
        for index, box in enumerate(
            scene_crop_boxes(colour, self.scene_crop_side, self.scene_crops)
        ):
            x0, y0, x1, y1 = box
            lq = to_tensor(np.ascontiguousarray(colour[y0:y1, x0:x1]))[0]
            crops.append(_Crop(image, index, None, box, lq, None))
        return crops

    def _crops(
        self,
        image: int,
        colour: np.ndarray,
        faces: list[DetectedFace],
        references: list[list[torch.Tensor]] | None,
        embeddings: list[np.ndarray | None] | None = None,
    ) -> list[_Crop]:
        crops = []
        for index, face in enumerate(faces):
            margin = max(self.margin, (MIN_CROP_SIDE / max(face.size, 1.0) - 1) / 2)
            crop = native_crop(colour, face, margin=margin)
            x0, y0, x1, y1 = crop.valid
            if min(x1 - x0, y1 - y0) < MIN_IMAGE_SIDE:
                continue
            lq = to_tensor(np.ascontiguousarray(crop.crop[y0:y1, x0:x1]))[0]
            box = (crop.box[0] + x0, crop.box[1] + y0, crop.box[0] + x1, crop.box[1] + y1)
            refs, emb = None, None
            if references is not None and self.restorer.uses_references:
                refs = [warp_reference(r, face, box) for r in references[index]]
                emb = None if embeddings is None else embeddings[index]
            crops.append(_Crop(image, index, face, box, lq, refs, emb))
        return crops

    def _restore(self, chunk: list[_Crop]) -> torch.Tensor:
        """Stage I on crops of one size: (B, C, h, w) in [0, 1]; fills each crop's
        ``confidence`` and ``references_used``."""
        refs, extra = None, {}
        if any(c.references is not None for c in chunk):
            refs = [_as_channels(c.references or [], c.lq.shape[0]) for c in chunk]
        if any(c.reference_embeddings is not None for c in chunk):
            extra["reference_embeddings"] = [c.reference_embeddings for c in chunk]
        restorer = self._restorer_for(chunk[0])  # a chunk holds faces or scene crops, not both
        out = restorer.restore(torch.stack([c.lq for c in chunk]), refs, **extra)
        used = out.references_used
        for j, crop in enumerate(chunk):
            crop.confidence = float(out.confidence[j])
            crop.references_used = None if used is None else int(used[j])
        return out.hq.detach().float().cpu().clamp(0.0, 1.0)

    def _restorer_for(self, crop: _Crop) -> FaceRestorer:
        """The Stage I restorer of a crop: the face restorer, or the blind one for scene
        crops (as the scene trainer restores them)."""
        return self.scene_restorer if crop.face is None else self.restorer

    def _fadex(self, chunk: list[_Crop], hq: torch.Tensor) -> list[CropDegradation]:
        lq = torch.stack([c.lq for c in chunk])
        out = self.fadex(lq.to(self.device), hq.to(self.device))
        estimates = out.estimates()
        readings: list[CropDegradation] = []
        for j, c in enumerate(chunk):
            common = {
                "index": c.index,
                "code": out.code[j].float().cpu().numpy(),
                "estimates": estimates[j],
                "crop_box": c.box,
                "lq": lq[j : j + 1],
                "hq": hq[j : j + 1],
                "z": out.z[j : j + 1].cpu(),
                "restorer": self._restorer_for(c).method,
            }
            if c.face is None:
                readings.append(CropDegradation(weight=max(c.confidence, 1e-6), **common))
                continue
            weight = c.confidence * c.face.score * min(1.0, c.face.size / 64.0)
            readings.append(
                FaceDegradation(
                    weight=max(weight, 1e-6),
                    face=c.face,
                    references_used=c.references_used,
                    **common,
                )
            )
        return readings

    def _aggregate(self, readings: list[CropDegradation]) -> ImageDegradation:
        """The image's code and estimates: the weighted mean over its faces (or scene
        crops)."""
        faces = [r for r in readings if isinstance(r, FaceDegradation)]
        scene = [r for r in readings if not isinstance(r, FaceDegradation)]
        restorer = self.restorer if faces or not scene else self.scene_restorer
        result = ImageDegradation(faces=faces, restorer=restorer.method, scene_crops=scene)
        if readings:
            w = np.array([r.weight for r in readings], dtype=np.float64)
            w = w / w.sum()
            code = np.sum([wi * r.code for wi, r in zip(w, readings, strict=True)], axis=0)
            result.code = (code / max(np.linalg.norm(code), 1e-12)).astype(np.float32)
            result.estimates = Estimate.mean([r.estimates for r in readings], list(w))
        return result


def scene_crop_boxes(pixels: np.ndarray, side: int, count: int) -> list[tuple[int, int, int, int]]:
    """Where to read the degradation of an image without a face: ``count`` of its
    non-overlapping ``side`` px windows (a grid centred on the image), spread over its range
    of detail.

    The windows are ranked by detail (the mean gradient magnitude of the image area-downscaled
    2x, so that noise, which fills flat windows too, does not decide) and taken at ``count``
    evenly spaced ranks: neither only flat windows (no blur or JPEG to read there) nor only
    the most detailed (where the blind restorer takes texture for noise and the noise reads
    high). Chosen on VAL (``benchmarks/results/scene-crops-val``). Ties keep grid order, so
    the choice is deterministic.

    Args:
        pixels: (H, W, C) uint8/uint16, C in {1, 3}.
        side: the window side, px (shrunk to the image's shorter side, a multiple of 8).
        count: windows wanted (all of them when the image holds fewer).

    Returns:
        ``(x0, y0, x1, y1)`` boxes, most detailed first; none when the image's shorter side
        is under :data:`MIN_IMAGE_SIDE` px.
    """
    h, w = pixels.shape[:2]
    s = min(side, h, w) // 8 * 8
    if s < MIN_IMAGE_SIDE or count <= 0:
        return []
    gray = pixels.mean(axis=2, dtype=np.float32) / float(np.iinfo(pixels.dtype).max)
    small = cv2.resize(gray, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    grad = np.abs(np.diff(small, axis=0))[:, :-1] + np.abs(np.diff(small, axis=1))[:-1, :]
    ny, nx = h // s, w // s
    oy, ox = (h - ny * s) // 2, (w - nx * s) // 2
    scored = []
    for i in range(ny):
        for j in range(nx):
            x0, y0 = ox + j * s, oy + i * s
            g = grad[y0 // 2 : (y0 + s) // 2, x0 // 2 : (x0 + s) // 2]
            detail = float(g.mean()) if g.size else 0.0
            scored.append((-detail, i * nx + j, (x0, y0, x0 + s, y0 + s)))
    scored.sort(key=lambda t: t[:2])
    n = len(scored)
    ranks = sorted({int((k + 0.5) * n / count) for k in range(count)}) if count < n else range(n)
    return [scored[r][2] for r in ranks]


def warp_reference(
    ref: torch.Tensor, face: DetectedFace, box: tuple[int, int, int, int]
) -> torch.Tensor:
    r"""A FFHQ-aligned reference crop moved into a native crop's geometry by the landmarks.

    Args:
        ref: :math:`(C, S, S)` float in [0, 1], aligned to :func:`ffhq_template` (S).
        face: the degraded face (its 5 landmarks, in photo pixels).
        box: ``(x0, y0, x1, y1)`` of the native crop in photo pixels.

    Returns:
        :math:`(C, y1 - y0, x1 - x0)` float in [0, 1]: the reference at the face's position,
        scale and rotation in the crop (edge-replicated outside the reference).
    """
    size = ref.shape[-1]
    lm = np.asarray(face.landmarks, np.float64) - np.array(box[:2], np.float64)
    m = estimate_similarity(ffhq_template(size), lm)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    img = ref.permute(1, 2, 0).numpy().astype(np.float32)
    if scale < 1.0:  # shrink with area averaging first: warpAffine alone would alias
        side = max(16, round(size * scale))
        img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        m = m @ np.diag([size / side, size / side, 1.0])
    w, h = box[2] - box[0], box[3] - box[1]
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return torch.from_numpy(out.reshape(h, w, -1)).permute(2, 0, 1).clamp(0.0, 1.0)


def _as_channels(refs: list[torch.Tensor], channels: int) -> list[torch.Tensor]:
    """Reference crops (3, H, W) with the LQ crop's channel count (BT.601 luma for gray)."""
    if channels == 3:
        return refs
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return [(r * luma).sum(0, keepdim=True) for r in refs]
