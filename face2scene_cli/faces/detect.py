"""The face detector factory the CLI uses (``--detector``); backends in ``faces/backends/``.

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
by ``min_face`` (shorter box side) and ``max_faces``. The backends (``backends/mtcnn.py``,
``backends/dlib.py``, ``backends/insightface.py``) are registered in
:data:`face2scene_cli.registry.KINDS` and imported only when built.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from face2scene_cli.errors import ConfigError
from face2scene_cli.external import insightface_pack
from face2scene_cli.faces.base import FaceDetector, as_rgb_uint8
from face2scene_cli.registry import create, is_registered

logger = logging.getLogger(__name__)

__all__ = [
    "DETECTORS",
    "DETECTOR_CHOICES",
    "INSIGHTFACE_FETCH_HINT",
    "INSIGHTFACE_PACK",
    "OFFLINE_DEFAULT",
    "DetectorSpec",
    "as_rgb_uint8",
    "create_detector",
    "insightface_detector_file",
    "resolve_detector_name",
]

INSIGHTFACE_PACK = "buffalo_l"
INSIGHTFACE_FETCH_HINT = "f2s models fetch insightface"


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


# --------------------------------------------------------------------------- factory


@dataclass(frozen=True)
class DetectorSpec:
    """One built-in ``--detector`` choice: a one-line description, and whether it works
    without anything beyond the installed packages and the zoo (its class is registered in
    :data:`face2scene_cli.registry.KINDS` under ``"detector"``)."""

    description: str
    offline: bool


DETECTORS: dict[str, DetectorSpec] = {
    "insightface": DetectorSpec(
        "SCRFD + 5 landmarks from insightface's buffalo_l pack (must be downloaded first)",
        offline=False,
    ),
    "mtcnn": DetectorSpec("MTCNN + 5 landmarks (facenet-pytorch weights, MIT; offline)", True),
    "dlib": DetectorSpec(
        "dlib HOG + 68 landmarks (offline; 68-point model: non-commercial training data)", True
    ),
}

OFFLINE_DEFAULT = "mtcnn"
"""What ``auto`` uses without the insightface pack (chosen by ``benchmarks/bench_faces.py``)."""

DETECTOR_CHOICES: tuple[str, ...] = ("auto", *DETECTORS)
"""The ``--detector`` choices, in help order."""


def resolve_detector_name(name: str = "auto") -> str:
    """The backend ``name`` stands for (``auto`` -> insightface when its pack is on disk,
    else :data:`OFFLINE_DEFAULT`; a built-in or a detector plugin's name is kept).

    Raises:
        ConfigError: an unknown name (the message lists the choices).
    """
    if name == "auto":
        has_pack = insightface_detector_file() is not None
        usable = has_pack and importlib.util.find_spec("insightface") is not None
        return "insightface" if usable else OFFLINE_DEFAULT
    if not is_registered("detector", name):
        raise ConfigError(
            f"unknown face detector {name!r}; choose one of {', '.join(DETECTOR_CHOICES)}"
        )
    return name


def create_detector(
    name: str = "auto", min_face: int = 20, max_faces: int | None = None, device: str = "cpu"
) -> FaceDetector:
    """Build a face detector by name.

    Args:
        name: one of :data:`DETECTOR_CHOICES`, or a detector plugin's name
            (:mod:`face2scene_cli.registry`).
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
    detector: FaceDetector = create(
        "detector", resolved, min_face=min_face, max_faces=max_faces, device=device
    )
    return detector
