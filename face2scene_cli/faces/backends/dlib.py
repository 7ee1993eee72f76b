"""dlib's face detectors: HOG + linear SVM (default) or the mmod CNN, with 68-point landmarks.

Offline; the 68-point model's training data (iBUG 300-W) is licensed for non-commercial use.
The model files come from the ``face_recognition_models`` package (located, not imported).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from face2scene_cli.errors import ConfigError, NotAvailableError
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.detect import as_rgb_uint8

__all__ = ["DLIB_FILES", "DlibDetector", "dlib_model_file", "five_from_68"]

logger = logging.getLogger(__name__)

DLIB_FILES = {
    "68": "shape_predictor_68_face_landmarks.dat",
    "5": "shape_predictor_5_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
}


def dlib_model_file(key: str) -> Path:
    """A dlib model file of ``face_recognition_models`` (located without importing it).

    Args:
        key: ``"68"``, ``"5"`` (shape predictors), ``"cnn"`` (mmod detector) or
            ``"resnet"`` (128-D identity embedding).

    Raises:
        NotAvailableError: the package or the file is missing.
    """
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "models" / DLIB_FILES[key]
        if path.is_file():
            return path
    raise NotAvailableError(
        f"dlib model {DLIB_FILES[key]} not found: install face-recognition-models "
        f"(pip install face-recognition-models)"
    )


def _logistic(x: float, slope: float) -> float:
    return 1.0 / (1.0 + math.exp(-slope * x))


class DlibDetector(FaceDetector):
    """dlib's HOG (or mmod CNN) face detector with shape-predictor landmarks.

    Scores: dlib's detectors return an unbounded margin (0 is dlib's own threshold). We map it
    to [0, 1] with ``score = 1 / (1 + exp(-2 * margin))``: margin 0 -> 0.5, 0.5 -> 0.73,
    1 -> 0.88, 2 -> 0.98. Faces need ``margin >= threshold``.

    Landmarks: the 68-point predictor; the five points are the mean of each eye's six
    contour points (36-41 and 42-47), the nose tip (30) and the mouth corners (48, 54), and
    ``landmarks68`` is filled. (dlib's 5-point predictor has no mouth points, so it cannot
    give the five points f2s aligns with.)

    Args:
        min_face: smallest face kept (pixels, shorter box side).
        max_faces: keep at most this many faces.
        upsample: times the image is doubled before detecting; HOG's window is 80 px, so 1
            finds faces from about 40 px, 2 from about 20 px (4x slower).
        model: ``"hog"`` or ``"cnn"`` (mmod: more poses, but 5-8 s for a 512x512 photo and
            ~40 s for a 1 MP one with ``upsample`` 1 on this CPU).
        threshold: margin a face needs. Default for HOG 0.3: no false face on the
            benchmark photos (``benchmarks/bench_faces.py``), whose highest false margin is
            0.12 (a badge on the astronaut's suit, kept by dlib's own 0); 0 for the CNN.
        device: accepted for a uniform factory; dlib always runs on the CPU.

    Photos over 2 MP are searched on a downscaled copy (:class:`FaceDetector`), so there HOG's
    ~40 px floor (``upsample`` 1) is in the copy's pixels: 98 source px at 12 MP. The 68
    points are then redone on the full-resolution photo (:meth:`_refine`).
    """

    name = "dlib"

    def __init__(
        self,
        min_face: int = 20,
        max_faces: int | None = None,
        upsample: int = 1,
        model: str = "hog",
        threshold: float | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(min_face=min_face, max_faces=max_faces)
        if importlib.util.find_spec("dlib") is None:
            raise NotAvailableError("the dlib detector needs dlib: pip install dlib-bin")
        import dlib

        if model not in ("hog", "cnn"):
            raise ConfigError(f"dlib model must be 'hog' or 'cnn', got {model!r}")
        if upsample < 0:
            raise ConfigError(f"upsample must be >= 0, got {upsample}")
        if device != "cpu":
            logger.info("dlib runs on the CPU; device %s ignored", device)
        self.upsample = upsample
        self.model = model
        self.threshold = (0.3 if model == "hog" else 0.0) if threshold is None else threshold
        if model == "hog":
            self._hog = dlib.get_frontal_face_detector()
        else:
            self._cnn = dlib.cnn_face_detection_model_v1(str(dlib_model_file("cnn")))
        self._shape = dlib.shape_predictor(str(dlib_model_file("68")))

    def _detect_one(self, image: np.ndarray) -> list[DetectedFace]:
        rgb = as_rgb_uint8(image)
        if self.model == "hog":
            rects, margins, _ = self._hog.run(rgb, self.upsample, self.threshold)
        else:
            found = self._cnn(rgb, self.upsample)
            rects = [d.rect for d in found if d.confidence >= self.threshold]
            margins = [d.confidence for d in found if d.confidence >= self.threshold]
        faces = []
        for rect, margin in zip(rects, margins, strict=True):
            box = (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)
            parts = self._shape(rgb, rect).parts()
            pts = np.array([(p.x, p.y) for p in parts], dtype=np.float32)
            faces.append(
                DetectedFace.from_arrays(box, _logistic(margin, 2.0), five_from_68(pts), pts)
            )
        return faces

    def _refine(self, image: np.ndarray, faces: list[DetectedFace]) -> list[DetectedFace]:
        """The 68-point predictor rerun on the full-resolution image in each mapped-back box
        (a few ms a face); box and score stay the downscaled copy's."""
        import dlib

        rgb = as_rgb_uint8(image)
        out = []
        for face in faces:
            x0, y0, x1, y1 = (round(float(v)) for v in face.box)
            parts = self._shape(rgb, dlib.rectangle(x0, y0, x1 - 1, y1 - 1)).parts()
            pts = np.array([(p.x, p.y) for p in parts], dtype=np.float32)
            out.append(replace(face, landmarks=five_from_68(pts), landmarks68=pts))
        return out


def five_from_68(pts: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG points -> (5, 2): eye centres (contour means), nose tip, mouth corners."""
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]).astype(
        np.float32
    )
