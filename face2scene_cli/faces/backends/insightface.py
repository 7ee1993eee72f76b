"""insightface's SCRFD face detector (5 landmarks), from an already downloaded pack.

Never downloads: the ``buffalo_l`` pack must be on disk (``f2s models fetch insightface``).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from face2scene_cli.errors import ModelIntegrityError, NotAvailableError
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.detect import (
    INSIGHTFACE_FETCH_HINT,
    INSIGHTFACE_PACK,
    as_rgb_uint8,
    insightface_detector_file,
)

__all__ = ["InsightFaceDetector"]


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
        return [
            DetectedFace.from_arrays(det[:4], det[4], kps)
            for det, kps in zip(dets, kpss, strict=True)
        ]
