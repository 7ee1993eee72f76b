"""Face2Scene's stages wired together: find faces, read the degradation, restore the scene.

:class:`FaceFinder` detects faces, aligns them and (with a reference gallery) says whose they
are and which references suit them; :class:`DegradationReader` restores the face crops of a
batch of images (Stage I), runs FaDeX on the (degraded, restored) pairs and aggregates each
image's faces into one degradation estimate; :class:`Face2ScenePipeline` is ``f2s restore``'s
job for the batch engine. Commands call these; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from face2scene_cli.archs.fadex import FaDeX
from face2scene_cli.config import FaceSettings, RestoreConfig
from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.engine.local import ExtraOutput, LoadedImage, Processed
from face2scene_cli.errors import ConfigError, F2SError
from face2scene_cli.faces.align import (
    AlignedFace,
    FaceAligner,
    estimate_similarity,
    ffhq_template,
    native_crop,
)
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.detect import as_rgb_uint8, create_detector, resolve_detector_name
from face2scene_cli.faces.gallery import Gallery, Match, Reference
from face2scene_cli.faces.identity import create_identity_encoder
from face2scene_cli.faces.paste import paste_faces
from face2scene_cli.hashing import json_sha256
from face2scene_cli.io.images import Image, from_tensor, to_tensor
from face2scene_cli.registry import create, is_registered
from face2scene_cli.restorers.face.base import FaceRestorer
from face2scene_cli.restorers.loading import load_fadex
from face2scene_cli.restorers.scene import SceneRestorer, load_scene_restorer
from face2scene_cli.zoo import ModelInfo, require_model

# FaDeX reads native crops of at least this side; smaller faces take more context around them.
MIN_CROP_SIDE = 64


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
class FaceDegradation:
    """One face's Stage I result and FaDeX's reading of it.

    Attributes:
        index: the face's position in the list given to :meth:`DegradationReader.read_batch`.
        face: the detected face.
        code: (D,) unit vector.
        estimates: FaDeX's :class:`Estimate` for this face.
        weight: restorer confidence x detection score x size factor, in (0, 1].
        crop_box: ``(x0, y0, x1, y1)`` of ``lq``/``hq`` in source pixels (inside the photo).
        restorer: the Stage I method, e.g. ``blind-nlm/1``.
        references_used: how many references shaped ``hq`` (None: the restorer reads none).
        lq: (1, C, h, w) float [0, 1] the native crop; hq: Stage I's output, same shape.
        z: FaDeX's map (1, C_z, h/8, w/8).
    """

    index: int
    face: DetectedFace
    code: np.ndarray
    estimates: Estimate
    weight: float
    crop_box: tuple[int, int, int, int]
    restorer: str
    references_used: int | None
    lq: torch.Tensor = field(repr=False)
    hq: torch.Tensor = field(repr=False)
    z: torch.Tensor = field(repr=False)


@dataclass
class ImageDegradation:
    """One image's degradation: per face, and aggregated over faces (None without faces)."""

    faces: list[FaceDegradation]
    restorer: str
    code: np.ndarray | None = None
    estimates: Estimate | None = None

    @property
    def source(self) -> str:
        """``face`` when read off faces, ``blind`` when the image had no usable face."""
        return "face" if self.faces else "blind"

    def to_report(self) -> dict[str, Any] | None:
        """The report schema's ``degradation`` field (None without faces)."""
        if self.estimates is None or self.code is None:
            return None
        return {
            "code": [round(float(v), 5) for v in self.code],
            **self.estimates.to_report(),
            "source": self.source,
        }


@dataclass
class _Crop:
    """A face crop on its way through Stage I and FaDeX (one image of a batch)."""

    image: int
    index: int
    face: DetectedFace
    box: tuple[int, int, int, int]
    lq: torch.Tensor  # (C, h, w)
    references: list[torch.Tensor] | None
    confidence: float = 0.0
    references_used: int | None = None


class DegradationReader:
    """Reads images' degradation off their faces (Stage I restorer + FaDeX), a batch at a time.

    For each face a native-resolution square crop (no resampling: noise, blur and the JPEG
    grid stay as in the photo) is restored by ``restorer``; FaDeX reads the (crop, restored)
    pair. Crops of the same size are restored and read together, ``batch_size`` at a time,
    across all images of a batch. An image's estimate is the weighted mean over its faces,
    weights = restorer confidence x detection score x min(1, face size / 64 px).

    Args:
        fadex: the degradation extractor (eval mode).
        restorer: the Stage I face restorer (blind baseline or reference-based).
        device: where FaDeX runs.
        margin: context around the face box in the crop (fraction of the box side).
        batch_size: crops per Stage I / FaDeX call.
    """

    def __init__(
        self,
        fadex: FaDeX,
        restorer: FaceRestorer,
        device: str = "cpu",
        margin: float = 0.25,
        batch_size: int = 8,
    ) -> None:
        self.fadex = fadex.to(device).eval()
        self.restorer = restorer
        self.device = device
        self.margin = margin
        self.batch_size = max(1, batch_size)

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
    ) -> tuple[list[ImageDegradation], dict[str, float]]:
        """The degradation of each image of a batch.

        Args:
            images: per image, its pixels (H, W, C) uint8/uint16 with C in {1, 3, 4} (alpha is
                ignored), its faces, and per face the reference crops (C, Hr, Wr) float in
                [0, 1] handed to the Stage I restorer (None: no reference gallery).

        Returns:
            One :class:`ImageDegradation` per image, and the seconds spent in ``stage1`` and
            ``fadex`` over the whole batch. Faces whose crop has a side under 16 px are left
            out.
        """
        crops = [
            crop
            for i, (pixels, faces, refs) in enumerate(images)
            for crop in self._crops(i, pixels, faces, refs)
        ]
        groups: dict[tuple[int, ...], list[_Crop]] = {}
        for crop in crops:
            groups.setdefault(tuple(crop.lq.shape), []).append(crop)
        chunks = [
            group[k : k + self.batch_size]
            for group in groups.values()
            for k in range(0, len(group), self.batch_size)
        ]
        t0 = time.perf_counter()
        restored = [self._restore(chunk) for chunk in chunks]
        t1 = time.perf_counter()
        readings: list[list[FaceDegradation]] = [[] for _ in images]
        for chunk, hq in zip(chunks, restored, strict=True):
            for crop, reading in zip(chunk, self._fadex(chunk, hq), strict=True):
                readings[crop.image].append(reading)
        t2 = time.perf_counter()
        results = [
            _aggregate(sorted(r, key=lambda f: f.index), self.restorer.method) for r in readings
        ]
        return results, {"stage1": t1 - t0, "fadex": t2 - t1}

    def _crops(
        self,
        image: int,
        pixels: np.ndarray,
        faces: list[DetectedFace],
        references: list[list[torch.Tensor]] | None,
    ) -> list[_Crop]:
        colour = pixels[..., :3] if pixels.shape[-1] == 4 else pixels
        crops = []
        for index, face in enumerate(faces):
            margin = max(self.margin, (MIN_CROP_SIDE / max(face.size, 1.0) - 1) / 2)
            crop = native_crop(colour, face, margin=margin)
            x0, y0, x1, y1 = crop.valid
            if min(x1 - x0, y1 - y0) < 16:
                continue
            lq = to_tensor(np.ascontiguousarray(crop.crop[y0:y1, x0:x1]))[0]
            box = (crop.box[0] + x0, crop.box[1] + y0, crop.box[0] + x1, crop.box[1] + y1)
            refs = None
            if references is not None and self.restorer.uses_references:
                refs = [warp_reference(r, face, box) for r in references[index]]
            crops.append(_Crop(image, index, face, box, lq, refs))
        return crops

    def _restore(self, chunk: list[_Crop]) -> torch.Tensor:
        """Stage I on crops of one size: (B, C, h, w) in [0, 1]; fills each crop's
        ``confidence`` and ``references_used``."""
        refs = None
        if any(c.references is not None for c in chunk):
            refs = [_as_channels(c.references or [], c.lq.shape[0]) for c in chunk]
        out = self.restorer.restore(torch.stack([c.lq for c in chunk]), refs)
        used = out.references_used
        for j, crop in enumerate(chunk):
            crop.confidence = float(out.confidence[j])
            crop.references_used = None if used is None else int(used[j])
        return out.hq.detach().float().cpu().clamp(0.0, 1.0)

    def _fadex(self, chunk: list[_Crop], hq: torch.Tensor) -> list[FaceDegradation]:
        lq = torch.stack([c.lq for c in chunk])
        out = self.fadex(lq.to(self.device), hq.to(self.device))
        estimates = out.estimates()
        readings = []
        for j, c in enumerate(chunk):
            weight = c.confidence * c.face.score * min(1.0, c.face.size / 64.0)
            readings.append(
                FaceDegradation(
                    index=c.index,
                    face=c.face,
                    code=out.code[j].float().cpu().numpy(),
                    estimates=estimates[j],
                    weight=max(weight, 1e-6),
                    crop_box=c.box,
                    restorer=self.restorer.method,
                    references_used=c.references_used,
                    lq=lq[j : j + 1],
                    hq=hq[j : j + 1],
                    z=out.z[j : j + 1].cpu(),
                )
            )
        return readings


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


def _aggregate(readings: list[FaceDegradation], restorer: str) -> ImageDegradation:
    """The image's code and estimates: the weighted mean over its faces."""
    result = ImageDegradation(faces=readings, restorer=restorer)
    if readings:
        w = np.array([r.weight for r in readings], dtype=np.float64)
        w = w / w.sum()
        code = np.sum([wi * r.code for wi, r in zip(w, readings, strict=True)], axis=0)
        result.code = (code / max(np.linalg.norm(code), 1e-12)).astype(np.float32)
        result.estimates = Estimate.mean([r.estimates for r in readings], list(w))
    return result


def resolve_face_restorer(name: str, with_references: bool) -> str:
    """The Stage I restorer ``name`` stands for: ``auto`` is ``ref-guided`` when that restorer
    is registered and references are given, else ``blind``; other names are kept."""
    if name != "auto":
        return name
    usable = with_references and is_registered("face_restorer", "ref-guided", builtin_only=True)
    return "ref-guided" if usable else "blind"


def blind_reason(found: FoundFace, used: int | None, refs_given: bool) -> str | None:
    """Why a face was restored without references (None when references shaped it).

    Args:
        found: the face, its match and its chosen references.
        used: the restorer's ``references_used`` for it (None: it reads no references).
        refs_given: a reference gallery was given.
    """
    if used:
        return None
    if not refs_given:
        return "no references"
    if found.match is None or found.match.person is None:
        return "unknown person"
    if not found.references:
        return "no references"
    return "references disagreed" if used == 0 else "restorer ignores references"


# Per-image timings of a batch-wide stage are its time split over the images by face count.
_BATCH_STAGES = ("stage1", "fadex")


class Face2ScenePipeline:
    """``f2s restore`` as a batch job: faces -> degradation code -> scene restorer.

    A batch of images goes through the stages together: faces are found per image, every
    face of the batch is restored by Stage I and read by FaDeX in shared calls, each image's
    faces give one code (confidence-weighted), and the scene restorer restores each image
    with it (tiles batched). Without a usable face, or with ``blind``, the scene restorer runs
    on its null tokens and the report says ``source: blind``. Optional: Stage I faces pasted
    into the output, aligned face crops and a side-by-side image written beside it. Alpha is
    carried through; gray stays gray; the dtype (8/16 bit) is kept.
    """

    command = "restore"

    def __init__(
        self,
        config: RestoreConfig,
        finder: FaceFinder,
        reader: DegradationReader,
        scene: SceneRestorer | None,
        models: list[ModelInfo],
    ) -> None:
        self.config = config
        self.finder = finder
        self.reader = reader
        self.scene = scene
        self.device = config.device
        self._models = [m.ref() for m in models]
        self._ref_cache: dict[Path, torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        scene_model: str | None = "scene-embedded",
        *,
        fadex: str | None = None,
        batch_size: int = 4,
        **settings: Any,
    ) -> Face2ScenePipeline:
        """Load and assemble every stage: the only place a restore pipeline is put together.

        Args:
            scene_model: zoo name of the scene restorer; None = a pipeline that only reads
                degradations (:meth:`read_degradations`, ``f2s degrade-code``).
            fadex: zoo name of the FaDeX that reads the code; None = the one the scene model
                was trained with (any other is refused: the scene model reads only its codes).
            batch_size: face crops per Stage I / FaDeX call.
            **settings: the other :class:`~face2scene_cli.config.RestoreConfig` fields
                (``detector``, ``device``, ``precision``, ``refs``, ``face_restorer``, ...).

        Raises:
            ConfigError: bad settings; NotAvailableError / ModelIntegrityError: a model is
            missing or its files do not match their metadata.
        """
        cfg = RestoreConfig(**settings, **({"scene_model": scene_model} if scene_model else {}))
        scene = load_scene_restorer(scene_model, device=cfg.device) if scene_model else None
        fadex = fadex or (scene.settings.fadex if scene else None)
        if fadex is None:
            raise ConfigError("a pipeline without a scene model needs fadex= to read codes")
        if scene is not None and fadex != scene.settings.fadex:
            raise ConfigError(
                f"{scene_model} was trained on the codes of {scene.settings.fadex}, not {fadex}"
            )
        refs_given = cfg.refs is not None
        restorer: FaceRestorer = create(
            "face_restorer", resolve_face_restorer(cfg.face_restorer, refs_given)
        )
        finder = FaceFinder.from_settings(cfg, device=cfg.device)
        reader = DegradationReader(
            load_fadex(fadex), restorer, device=cfg.device, batch_size=batch_size
        )
        names = [fadex, *([scene_model] if scene_model else [])]
        if resolve_detector_name(cfg.detector) == "mtcnn":
            names.insert(0, "mtcnn")
        return cls(cfg, finder, reader, scene, [require_model(n) for n in names])

    def settings(self) -> dict[str, Any]:
        """Every :class:`RestoreConfig` field, with ``refs`` replaced by a hash of the
        references it holds and ``face_restorer`` by the restorer ``auto`` resolved to."""
        return dataclasses.asdict(self.config) | {
            "refs": self._gallery_key(),
            "face_restorer": self.reader.restorer.method,
        }

    def models(self) -> list[dict[str, str]]:
        return self._models

    def _gallery_key(self) -> str | None:
        """sha256 of the reference photos (path + content), the encoder and ``refs_k``: the
        references a face gets, and so its Stage I output, depend on them."""
        gallery = self.finder.gallery
        if gallery is None:
            return None
        refs = [(r.person, r.path, r.sha256) for r in gallery.references]
        return json_sha256({"refs": refs, "encoder": gallery.encoder.name, "k": self.finder.refs_k})

    def read_degradations(
        self, images: list[np.ndarray]
    ) -> tuple[list[list[FoundFace]], list[ImageDegradation], list[dict[str, float]]]:
        """Find each image's faces and read its degradation off them (Stage I + FaDeX over
        every face of the batch at once).

        Args:
            images: (H, W, C) uint8/uint16 pixels, C in {1, 3, 4} (alpha is ignored).

        Returns:
            Per image: its faces, its degradation reading, its stage timings (seconds).
        """
        timings: list[dict[str, float]] = [{} for _ in images]
        colours = [_split_alpha(pixels)[0] for pixels in images]
        found = []
        for colour, t in zip(colours, timings, strict=True):
            t0 = time.perf_counter()
            found.append(self.finder.find(colour))
            t["faces"] = time.perf_counter() - t0
        refs_given = self.finder.gallery is not None
        jobs = [
            (c, [f.face for f in faces], self._references(faces) if refs_given else None)
            for c, faces in zip(colours, found, strict=True)
        ]
        readings, stage_times = self.reader.read_batch(jobs)
        n_faces = [len(r.faces) for r in readings]
        total = sum(n_faces)
        for t, n in zip(timings, n_faces, strict=True):
            for key in _BATCH_STAGES:
                t[key] = stage_times[key] * (n / total if total else 1 / len(images))
        return found, readings, timings

    def process(self, batch: list[LoadedImage], seed: int) -> list[Processed | F2SError]:
        if self.scene is None:
            raise ConfigError("this pipeline only reads degradations: it has no scene model")
        found, readings, timings = self.read_degradations([b.image.pixels for b in batch])
        return [
            self._finish(loaded, faces, reading, t)
            for loaded, faces, reading, t in zip(batch, found, readings, timings, strict=True)
        ]

    def _references(self, faces: list[FoundFace]) -> list[list[torch.Tensor]]:
        """Per face, its chosen references' aligned crops (3, S, S) in [0, 1], read once."""
        out = []
        for face in faces:
            crops = []
            for ref in face.references:
                if ref.crop_path not in self._ref_cache:
                    self._ref_cache[ref.crop_path] = to_tensor(ref.crop())[0]
                crops.append(self._ref_cache[ref.crop_path])
            out.append(crops)
        return out

    def _finish(
        self,
        loaded: LoadedImage,
        found: list[FoundFace],
        reading: ImageDegradation,
        timings: dict[str, float],
    ) -> Processed:
        cfg = self.config
        image = loaded.image
        colour, alpha = _split_alpha(image.pixels)
        use_faces = bool(reading.faces) and not cfg.blind
        t0 = time.perf_counter()
        tokens = None
        if use_faces:
            tokens = self.scene.tokens_for_faces(
                [r.z for r in reading.faces], [r.weight for r in reading.faces]
            )
        t1 = time.perf_counter()
        tile, precision = self.scene.run_settings(cfg.tile, cfg.precision)
        retries = self.scene.fp32_retries
        restored = self.scene.restore(
            to_tensor(colour), tokens, tile=tile, precision=precision, scale=cfg.scale
        )
        scene_run = {"tile": tile, "precision": precision}
        scene_run["fp32_retries"] = self.scene.fp32_retries - retries
        out = from_tensor(restored, colour.dtype)
        t2 = time.perf_counter()
        timings.update({"mapnet": t1 - t0, "scene": t2 - t1})
        if cfg.paste_faces and reading.faces:
            out = paste_stage1_faces(out, reading.faces, cfg.scale)
            timings["paste"] = time.perf_counter() - t2
        if alpha is not None:
            alpha = _resize_to(alpha, out.shape[:2], cv2.INTER_LINEAR)
            out = np.concatenate([out, alpha], axis=-1)
        extras = self._extras(loaded, out, colour, reading, timings)
        return Processed(
            image.with_pixels(out),
            self._fields(found, reading, use_faces) | {"scene": scene_run},
            timings,
            [] if reading.faces else ["no usable face: restored in blind mode"],
            extras,
        )

    def _fields(
        self, found: list[FoundFace], reading: ImageDegradation, use_faces: bool
    ) -> dict[str, Any]:
        by_index = {r.index: r for r in reading.faces}
        refs_given = self.finder.gallery is not None
        faces = []
        for i, item in enumerate(found):
            r = by_index.get(i)
            entry = item.to_report()
            entry["restorer"] = r.restorer if r else None
            entry["references_used"] = r.references_used if r else None
            entry["blind_reason"] = blind_reason(item, r.references_used, refs_given) if r else None
            entry["weight"] = round(r.weight, 4) if r else None
            faces.append(entry)
        degradation = reading.to_report() or dict.fromkeys(
            ("noise_sigma", "blur_sigma_px", "jpeg_quality", "downscale"), None
        ) | {"code": []}
        if not use_faces:
            degradation["source"] = "blind"  # the scene restorer ran on its null tokens
        return {"faces": faces, "degradation": degradation}

    def _extras(
        self,
        loaded: LoadedImage,
        out: np.ndarray,
        colour: np.ndarray,
        reading: ImageDegradation,
        timings: dict[str, float],
    ) -> list[ExtraOutput]:
        """The ``--save-faces`` crops and the ``--save-compare`` image, to be written beside
        the output."""
        t0 = time.perf_counter()
        output = loaded.item.output
        extras = []
        if self.config.save_faces and reading.faces:
            folder = output.with_name(output.stem + ".faces")
            pairs = aligned_face_pairs(colour, reading.faces)
            for f, (lq, hq) in zip(reading.faces, pairs, strict=True):
                name = f"face{f.index}"  # its index in the report's faces[]
                extras.append(ExtraOutput(folder / f"{name}_lq.png", Image(lq, "PNG"), "png"))
                extras.append(ExtraOutput(folder / f"{name}_hq.png", Image(hq, "PNG"), "png"))
        if self.config.save_compare:
            before = _resize_to(loaded.image.pixels, out.shape[:2], cv2.INTER_NEAREST)
            side = loaded.image.with_pixels(np.concatenate([before, out], axis=1))
            path = output.with_name(output.stem + ".compare" + output.suffix)
            extras.append(ExtraOutput(path, side, loaded.item.format))
        if extras:
            timings["extras"] = time.perf_counter() - t0
        return extras


def _split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour, alpha) of (H, W, C) pixels; alpha is None unless C is 4."""
    if pixels.shape[-1] == 4:
        return pixels[..., :3], pixels[..., 3:]
    return pixels, None


def _resize_to(pixels: np.ndarray, size: tuple[int, ...], interpolation: int) -> np.ndarray:
    """(H, W, C) pixels at ``size`` = (h, w); the same array when the size already fits."""
    if pixels.shape[:2] == size:
        return pixels
    out = cv2.resize(pixels, (size[1], size[0]), interpolation=interpolation)
    return out.reshape(*size, pixels.shape[2])


def _hq_canvas(base: np.ndarray, faces: list[FaceDegradation], scale: int) -> np.ndarray:
    """``base`` (at ``scale`` x the faces' coordinates) with each face's native crop replaced
    by its Stage I output (bicubic-upscaled by ``scale``)."""
    canvas = base.copy()
    for f in faces:
        hq = from_tensor(f.hq, base.dtype)
        x0, y0, x1, y1 = (v * scale for v in f.crop_box)
        if scale > 1:
            hq = cv2.resize(hq, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
        canvas[y0:y1, x0:x1] = hq.reshape(y1 - y0, x1 - x0, base.shape[2])
    return canvas


def _scaled(face: DetectedFace, scale: int) -> DetectedFace:
    if scale == 1:
        return face
    lm68 = None if face.landmarks68 is None else face.landmarks68 * scale
    return replace(face, box=face.box * scale, landmarks=face.landmarks * scale, landmarks68=lm68)


def _aligner_for(face: DetectedFace, max_size: int = 1024) -> FaceAligner:
    """An FFHQ aligner whose frame keeps the face at about its own resolution (>= 128 px)."""
    m = estimate_similarity(np.asarray(face.landmarks, np.float64), ffhq_template(512))
    scale = 1.0 / np.sqrt(abs(np.linalg.det(m[:, :2])))  # source px per 512-frame px
    return _aligner(int(np.clip(round(512 * scale / 16) * 16, 128, max_size)))


@functools.lru_cache(maxsize=16)
def _aligner(size: int) -> FaceAligner:
    return FaceAligner(size)


def paste_stage1_faces(out: np.ndarray, faces: list[FaceDegradation], scale: int) -> np.ndarray:
    """Blend the Stage I faces into the restored photo (soft face mask, colour matched).

    Args:
        out: the scene restorer's output (H*s, W*s, C) uint8/uint16, C in {1, 3}.
        faces: the image's readings (their ``hq`` crops are pasted).
        scale: s, the output's size over the input's.

    Returns:
        A new array like ``out``; each face keeps Stage I's detail and takes ``out``'s
        low-frequency colour (see :func:`face2scene_cli.faces.paste.paste_faces`).
    """
    canvas = _hq_canvas(out, faces, scale)
    targets = [_scaled(f.face, scale) for f in faces]
    aligners = [_aligner_for(t) for t in targets]
    aligned_out = [a.align(out, t) for a, t in zip(aligners, targets, strict=True)]
    aligned_hq = [a.align(canvas, t).crop for a, t in zip(aligners, targets, strict=True)]
    return paste_faces(out, aligned_hq, aligned_out)


def aligned_face_pairs(
    colour: np.ndarray, faces: list[FaceDegradation], size: int = 512
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per face, its LQ and Stage I HQ crops aligned to the FFHQ template at ``size``.

    Args:
        colour: the input's pixels without alpha, (H, W, C) uint8/uint16, C in {1, 3}.
        faces: the image's readings.

    Returns:
        (lq, hq) pairs of (size, size, C) arrays with ``colour``'s dtype.
    """
    canvas = _hq_canvas(colour, faces, 1)
    aligner = _aligner(size)
    pairs = []
    for f in faces:
        lq, hq = aligner.align(colour, f.face).crop, aligner.align(canvas, f.face).crop
        pairs.append((lq.reshape(size, size, -1), hq.reshape(size, size, -1)))
    return pairs
