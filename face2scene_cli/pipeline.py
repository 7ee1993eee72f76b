"""Face2Scene's stages wired together: find faces, read the degradation, (later) restore.

:class:`FaceFinder` detects faces, aligns them and (with a reference gallery) says whose they
are and which references suit them; :class:`DegradationReader` restores each face crop
(Stage I), runs FaDeX on the (degraded, restored) pair and aggregates the faces of an image
into one degradation estimate. Commands call these; nothing here prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from face2scene_cli.batch import LoadedImage, Processed
from face2scene_cli.errors import ConfigError, F2SError
from face2scene_cli.faces.align import AlignedFace, FaceAligner, native_crop
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.detect import as_rgb_uint8
from face2scene_cli.faces.gallery import Gallery, Match, Reference
from face2scene_cli.imageio import from_tensor, to_tensor
from face2scene_cli.stages.face_restore import FaceRestorer
from face2scene_cli.stages.fadex import FaDeX
from face2scene_cli.stages.scene import SceneRestorer
from face2scene_cli.zoo import ModelInfo

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
    """FaDeX's reading of one face: the code, the estimates and how much to trust them."""

    face: DetectedFace
    code: np.ndarray  # (D,) unit vector
    estimates: dict[str, float]  # noise_sigma, blur_sigma_px, downscale, jpeg_quality, jpeg_prob
    weight: float  # restorer confidence x detection score x size factor, in [0, 1]
    crop_box: tuple[int, int, int, int]
    z: torch.Tensor | None = field(default=None, repr=False)  # FaDeX's map (1, C, h, w)


@dataclass
class ImageDegradation:
    """One image's degradation: per face, and aggregated over faces (None without faces)."""

    faces: list[FaceDegradation]
    restorer: str
    code: np.ndarray | None = None
    estimates: dict[str, float] | None = None

    @property
    def source(self) -> str:
        """``face`` when read off faces, ``blind`` when the image had no usable face."""
        return "face" if self.faces else "blind"

    def to_report(self) -> dict[str, Any] | None:
        """The report schema's ``degradation`` field (None without faces)."""
        if self.estimates is None or self.code is None:
            return None
        e = self.estimates
        return {
            "code": [round(float(v), 5) for v in self.code],
            "noise_sigma": round(e["noise_sigma"], 3),
            "blur_sigma_px": round(e["blur_sigma_px"], 3),
            "jpeg_quality": round(e["jpeg_quality"], 1) if e["jpeg_prob"] >= 0.5 else None,
            "jpeg_probability": round(e["jpeg_prob"], 3),
            "downscale": round(e["downscale"], 3),
            "source": self.source,
            "summary": describe_degradation(e),
        }


class DegradationReader:
    """Reads an image's degradation off its faces (Stage I restorer + FaDeX).

    For each face a native-resolution square crop (no resampling: noise, blur and the JPEG
    grid stay as in the photo) is restored by ``restorer``; FaDeX reads the (crop, restored)
    pair. The image's estimate is the weighted mean over faces, weights = restorer confidence
    x detection score x min(1, face size / 64 px).

    Args:
        fadex: the degradation extractor (eval mode).
        restorer: the Stage I face restorer (blind baseline or reference-based).
        device: where FaDeX runs.
        margin: context around the face box in the crop (fraction of the box side).
    """

    def __init__(
        self, fadex: FaDeX, restorer: FaceRestorer, device: str = "cpu", margin: float = 0.25
    ) -> None:
        self.fadex = fadex.to(device).eval()
        self.restorer = restorer
        self.device = device
        self.margin = margin

    @torch.inference_mode()
    def read(self, pixels: np.ndarray, faces: list[DetectedFace]) -> ImageDegradation:
        """The degradation of one image from its ``faces``.

        Args:
            pixels: (H, W, C) uint8/uint16, C in {1, 3, 4} (alpha is ignored).
            faces: the faces found in it.
        """
        colour = pixels[..., :3] if pixels.shape[-1] == 4 else pixels
        if colour.shape[-1] == 2:  # gray + alpha
            colour = colour[..., :1]
        readings = []
        for face in faces:
            margin = max(self.margin, (MIN_CROP_SIDE / max(face.size, 1.0) - 1) / 2)
            crop = native_crop(colour, face, margin=margin)
            x0, y0, x1, y1 = crop.valid
            lq = to_tensor(np.ascontiguousarray(crop.crop[y0:y1, x0:x1]))
            if min(lq.shape[-2:]) < 16:
                continue
            restored = self.restorer.restore(lq)
            out = self.fadex(lq.to(self.device), restored.hq.to(self.device))
            weight = float(restored.confidence[0]) * face.score * min(1.0, face.size / 64.0)
            readings.append(
                FaceDegradation(
                    face=face,
                    code=out.code[0].float().cpu().numpy(),
                    estimates=out.estimates()[0],
                    weight=max(weight, 1e-6),
                    crop_box=crop.box,
                    z=out.z.cpu(),
                )
            )
        result = ImageDegradation(faces=readings, restorer=self.restorer.method)
        if readings:
            w = np.array([r.weight for r in readings], dtype=np.float64)
            w = w / w.sum()
            code = np.sum([wi * r.code for wi, r in zip(w, readings, strict=True)], axis=0)
            result.code = (code / max(np.linalg.norm(code), 1e-12)).astype(np.float32)
            keys = readings[0].estimates.keys()
            result.estimates = {
                k: float(sum(wi * r.estimates[k] for wi, r in zip(w, readings, strict=True)))
                for k in keys
            }
        return result


def describe_degradation(e: dict[str, float]) -> str:
    """A plain-language summary, e.g. ``moderate noise (sigma~12/255), mild blur, JPEG q~40``."""
    parts = []
    n = e["noise_sigma"]
    if n < 2:
        parts.append("no visible noise")
    else:
        level = "mild" if n < 6 else "moderate" if n < 15 else "heavy"
        parts.append(f"{level} noise (sigma~{n:.0f}/255)")
    b = e["blur_sigma_px"]
    if b < 0.6:
        parts.append("sharp")
    else:
        level = "mild" if b < 1.3 else "moderate" if b < 2.2 else "strong"
        parts.append(f"{level} blur (sigma~{b:.1f} px)")
    if e["jpeg_prob"] >= 0.5:
        q = e["jpeg_quality"]
        level = "heavy " if q < 40 else "light " if q >= 80 else ""
        parts.append(f"{level}JPEG q~{q:.0f}")
    else:
        parts.append("no JPEG artefacts")
    if e["downscale"] >= 1.5:
        parts.append(f"low resolution (~x{e['downscale']:.1f} lost)")
    return ", ".join(parts)


@dataclass(frozen=True)
class RestoreConfig:
    """Settings of ``f2s restore`` that change the output pixels.

    Attributes:
        blind: ignore faces; restore with MapNet's null tokens.
        tile: tile side in px (None = automatic from free memory).
        precision: fp32 | fp16 | bf16 (None = fp32 on CPU, fp16 on CUDA).
        scale: 1, 2 or 4 (bicubic upscaling before restoring).
        detector, min_face, max_faces: face detection.
        device: cpu | cuda | cuda:N | mps.
        scene_model: zoo name of the scene restorer.
    """

    blind: bool = False
    tile: int | None = None
    precision: str | None = None
    scale: int = 1
    detector: str = "auto"
    min_face: int = 20
    max_faces: int | None = None
    device: str = "cpu"
    scene_model: str = "scene-embedded"

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 4):
            raise ConfigError(f"scale must be 1, 2 or 4, got {self.scale}")
        if self.precision not in (None, "fp32", "fp16", "bf16"):
            raise ConfigError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.tile is not None and self.tile < 32:
            raise ConfigError(f"tile must be >= 32 px, got {self.tile}")


class Face2ScenePipeline:
    """``f2s restore`` as a batch job: faces -> degradation code -> scene restorer.

    Per image: detect faces, read the degradation off them (Stage I restorer + FaDeX), turn
    the faces' FaDeX maps into MapNet tokens (weighted by each face's confidence) and restore
    the whole image with them; without a usable face, or with ``blind``, the scene restorer
    runs on its null tokens and the report says ``source: blind``. Alpha is carried through.
    """

    command = "restore"

    def __init__(
        self,
        config: RestoreConfig,
        finder: FaceFinder,
        reader: DegradationReader,
        scene: SceneRestorer,
        models: list[ModelInfo],
    ) -> None:
        self.config = config
        self.finder = finder
        self.reader = reader
        self.scene = scene
        self.device = config.device
        self._models = [m.ref() for m in models]

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "blind": c.blind,
            "tile": c.tile,
            "precision": c.precision,
            "scale": c.scale,
            "detector": c.detector,
            "min_face": c.min_face,
            "max_faces": c.max_faces,
            "device": c.device,
            "face_restorer": self.reader.restorer.method,
        }

    def models(self) -> list[dict[str, str]]:
        return self._models

    def process(self, batch: list[LoadedImage], seed: int) -> list[Processed | F2SError]:
        return [self._one(loaded) for loaded in batch]

    def _one(self, loaded: LoadedImage) -> Processed:
        image = loaded.image
        pixels = image.pixels
        colour, alpha = (pixels[..., :-1], pixels[..., -1:]) if image.has_alpha else (pixels, None)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        found = self.finder.find(colour)
        t1 = time.perf_counter()
        reading = self.reader.read(colour, [f.face for f in found])
        t2 = time.perf_counter()
        tokens = None
        if reading.faces and not self.config.blind:
            tokens = self.scene.tokens_for_faces(
                [r.z for r in reading.faces], [r.weight for r in reading.faces]
            )
        restored = self.scene.restore(
            to_tensor(colour),
            tokens,
            tile=self.config.tile,
            precision=self.config.precision,
            scale=self.config.scale,
        )
        out = from_tensor(restored, pixels.dtype)
        if alpha is not None:
            a = to_tensor(alpha)
            if a.shape[-2:] != restored.shape[-2:]:
                a = torch.nn.functional.interpolate(a, size=restored.shape[-2:], mode="bilinear")
            out = np.concatenate([out, from_tensor(a, pixels.dtype)], axis=-1)
        t3 = time.perf_counter()
        timings.update({"faces": t1 - t0, "degradation": t2 - t1, "scene": t3 - t2})
        degradation = reading.to_report() or dict.fromkeys(
            ("noise_sigma", "blur_sigma_px", "jpeg_quality", "downscale"), None
        ) | {"code": []}
        if self.config.blind or not reading.faces:
            degradation["source"] = "blind"  # the scene restorer ran on its null tokens
        warnings = [] if reading.faces else ["no usable face: restored in blind mode"]
        fields = {"faces": [f.to_report() for f in found], "degradation": degradation}
        return Processed(image.with_pixels(out), fields, timings, warnings)
