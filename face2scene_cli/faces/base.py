"""The face types every stage shares, and the interfaces that backends implement.

Coordinates are in source-image pixels, x right, y down. The five landmarks are, in order:
the eye on the image's left, the eye on the image's right, the nose tip, the mouth corner on
the image's left, the mouth corner on the image's right (the insightface / MTCNN order).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from face2scene_cli.errors import InputError


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any image f2s reads as a contiguous (H, W, 3) uint8 RGB array.

    Accepts (H, W) or (H, W, 1) gray (repeated to 3 channels), (H, W, 3) RGB and (H, W, 4)
    RGBA (alpha dropped), as uint8, uint16 (top 8 bits kept) or float in [0, 1].

    Raises:
        InputError: another shape or dtype.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise InputError(f"face detection needs an (H, W[, 1|3|4]) image, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"face detection needs uint8, uint16 or float pixels, got {arr.dtype}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


@dataclass(frozen=True)
class DetectedFace:
    """One face found in an image.

    Attributes:
        box: (4,) float32 ``x0, y0, x1, y1`` in source pixels.
        score: detector confidence in [0, 1].
        landmarks: (5, 2) float32 points in source pixels (order in the module docstring).
        landmarks68: (68, 2) float32 iBUG points when the backend gives them, else None.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    landmarks68: np.ndarray | None = None

    @property
    def size(self) -> float:
        """The face's size in source pixels: the shorter side of its box."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def interocular(self) -> float:
        """Distance between the two eye landmarks in source pixels."""
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    @classmethod
    def from_arrays(
        cls, box: Any, score: float, landmarks: Any, landmarks68: Any = None
    ) -> DetectedFace:
        """A face from a backend's raw output (any array-likes): ``box`` (4,), ``landmarks``
        (5, 2), ``landmarks68`` (68, 2) or None, cast to float32."""
        return cls(
            box=np.asarray(box, dtype=np.float32).reshape(4),
            score=float(score),
            landmarks=np.asarray(landmarks, dtype=np.float32).reshape(5, 2),
            landmarks68=None if landmarks68 is None else np.asarray(landmarks68, np.float32),
        )

    def to_report(self) -> dict[str, Any]:
        """The report schema's ``box``/``landmarks``/``score`` fields (rounded)."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(float(self.score), 4),
        }


DETECT_PIXELS = 2_000_000
"""Photos larger than this (pixels) are detected on an area-downscaled copy of this size."""


class FaceDetector(ABC):
    """Finds faces with 5 landmarks in RGB images; backends subclass this.

    Subclasses set ``name`` and implement :meth:`_detect_one` (or :meth:`_detect_at` when the
    search depends on the smallest face, or :meth:`detect` when the backend batches natively).
    Shared here: filtering by ``min_face`` and ``max_faces``, and the cost bound on large
    photos.

    Large photos: an image of more than :attr:`detect_pixels` pixels is area-downscaled
    (``cv2.INTER_AREA``) by a factor ``f < 1`` to at most that many pixels, the backend finds
    the faces there, boxes and landmarks are mapped back to source pixels (divided by ``f``
    per axis) and :meth:`_refine` may redo the landmarks at full resolution (MTCNN: O-Net on
    each face's full-resolution crop; dlib: the 68-point predictor on the full image; other
    backends keep the mapped-back landmarks). Detection then costs about the same for a 12 MP
    photo as for a 2 MP one. ``min_face`` keeps its meaning in source pixels: the backend
    searches the copy for faces from ``min_face * f`` px (never below
    :attr:`smallest_face`, so the copy is not enlarged again) and faces are filtered by their
    mapped-back size. So in a photo over :attr:`detect_pixels` a backend with a
    :attr:`smallest_face` finds faces from ``max(min_face, smallest_face / f)`` source px:
    MTCNN (12) from 29 px at 12 MP, 42 px at 24 MP. Set ``detect_pixels = None`` on an
    instance to detect at full resolution.
    """

    name: str = "base"
    detect_pixels: int | None = DETECT_PIXELS
    smallest_face: float = 1.0
    """The smallest face (px) the backend's search can find in the image it is given; the
    search size on a downscaled copy is not taken below it."""

    def __init__(self, min_face: int = 20, max_faces: int | None = None) -> None:
        if min_face < 1:
            raise ValueError(f"min_face must be >= 1 pixel, got {min_face}")
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {max_faces}")
        self.min_face = min_face
        self.max_faces = max_faces

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces per image, most confident first.

        Args:
            images: RGB uint8 arrays (H, W, 3); gray images are passed as 3 equal channels.

        Returns:
            One list per image of faces at least ``min_face`` source pixels, at most
            ``max_faces``, in source pixels (images over :attr:`detect_pixels` are searched
            on a downscaled copy, see the class docstring).
        """
        return [self._filter(self._detect_bounded(img)) for img in images]

    def _detect_bounded(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces of one image in source pixels, searched on a copy of at most
        :attr:`detect_pixels` pixels."""
        h, w = image.shape[:2]
        if self.detect_pixels is None or h * w <= self.detect_pixels:
            return self._detect_one(image)
        import cv2

        rgb = as_rgb_uint8(image)
        scale = (self.detect_pixels / (h * w)) ** 0.5
        sw, sh = max(1, int(w * scale)), max(1, int(h * scale))
        small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
        fx, fy = sw / w, sh / h
        search = max(self.min_face * min(fx, fy), self.smallest_face)
        back = np.array([1.0 / fx, 1.0 / fy], dtype=np.float32)
        faces = [
            DetectedFace(
                box=(f.box.reshape(2, 2) * back).reshape(4),
                score=f.score,
                landmarks=f.landmarks * back,
                landmarks68=None if f.landmarks68 is None else f.landmarks68 * back,
            )
            for f in self._detect_at(small, search)
        ]
        return self._refine(rgb, faces) if faces else faces

    def _detect_at(self, image: np.ndarray, min_face: float) -> list[DetectedFace]:
        """All faces in one RGB uint8 image, searched from ``min_face`` px (in ``image``'s
        pixels); default :meth:`_detect_one`, for backends whose search does not depend on it."""
        return self._detect_one(image)

    @abstractmethod
    def _detect_one(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in one RGB uint8 (H, W, 3) image, any order, unfiltered."""

    def _refine(self, image: np.ndarray, faces: list[DetectedFace]) -> list[DetectedFace]:
        """``faces`` found on a downscaled copy (mapped back to source pixels) with their
        landmarks redone on the full-resolution RGB uint8 ``image``; default: unchanged."""
        return faces

    def _filter(self, faces: list[DetectedFace]) -> list[DetectedFace]:
        kept = sorted((f for f in faces if f.size >= self.min_face), key=lambda f: -f.score)
        return kept[: self.max_faces] if self.max_faces else kept


class IdentityEncoder(ABC):
    """Turns faces into identity embeddings; backends subclass this.

    ``metric`` says how embeddings compare: ``euclidean`` (dlib: same person when the
    distance is below ``threshold``) or ``cosine`` (ArcFace: same person above ``threshold``).
    :meth:`similarity` maps either to "higher is more alike".
    """

    name: str = "base"
    dim: int = 0
    metric: str = "euclidean"
    threshold: float = 0.0

    @abstractmethod
    def embed(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """(N, dim) float32 embeddings of ``faces`` found in the RGB uint8 ``image``."""

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairwise similarity (higher = more alike) of (N, dim) and (M, dim) -> (N, M):
        negative distance for ``euclidean``, cosine for ``cosine``."""
        a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
        if self.metric == "cosine":
            a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
            b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
            return a @ b.T
        return -np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)

    @property
    def similarity_threshold(self) -> float:
        """The published same-person threshold on the :meth:`similarity` scale."""
        return -self.threshold if self.metric == "euclidean" else self.threshold
