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


class FaceDetector(ABC):
    """Finds faces with 5 landmarks in RGB images; backends subclass this.

    Subclasses set ``name`` and implement :meth:`_detect_one` (or :meth:`detect` when the
    backend batches natively). Filtering by ``min_face`` and ``max_faces`` is shared.
    """

    name: str = "base"

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
            One list per image of faces at least ``min_face`` pixels, at most ``max_faces``.
        """
        return [self._filter(self._detect_one(img)) for img in images]

    @abstractmethod
    def _detect_one(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in one RGB uint8 (H, W, 3) image, any order, unfiltered."""

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
