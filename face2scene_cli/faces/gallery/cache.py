"""The gallery index on disk: where it lives, how it is read and written atomically.

The index lives in the cache, never inside the refs folder (inputs are never modified)::

    $F2S_CACHE_DIR (default ~/.cache/face2scene)/galleries/<sha256(real path of refs)[:16]>/
        index.json               schema, models, one entry per reference file
        embeddings.safetensors   "embeddings": (N, D) float32, rows as in index.json
        crops/<key>.png          aligned reference crops

Every file is written atomically; ``index.json`` records the sha256 of the embeddings file it
goes with and readers retry until the pair agrees, so a reader never uses a half-updated index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from face2scene_cli.faces.base import DetectedFace, FaceDetector, IdentityEncoder
from face2scene_cli.faces.gallery.scan import GalleryWarning, RefsError
from face2scene_cli.faces.identity import as_rgb8
from face2scene_cli.hashing import json_sha256
from face2scene_cli.io.images import atomic_write_bytes, read_image

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "CROPS_DIR",
    "EMBEDDINGS_NAME",
    "INDEX_NAME",
    "INDEX_SCHEMA",
    "cache_root",
    "check_outside",
    "face_from_json",
    "face_to_json",
    "gallery_dir",
    "model_sha256",
    "models_key",
    "read_crop",
    "read_index",
    "write_cache_file",
    "write_index",
]

CACHE_ENV = "F2S_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/face2scene")
INDEX_SCHEMA = 1
"""Version of ``index.json``; an index of another version is rebuilt from scratch."""

INDEX_NAME = "index.json"
EMBEDDINGS_NAME = "embeddings.safetensors"
CROPS_DIR = "crops"
_READ_RETRIES = 8


def cache_root() -> Path:
    """``$F2S_CACHE_DIR`` when set and non-empty, else ``~/.cache/face2scene``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_CACHE_DIR.expanduser()


def gallery_dir(refs_dir: Path, cache_dir: Path | None = None) -> Path:
    """Where the index of ``refs_dir`` lives: ``<cache>/galleries/<sha256(realpath)[:16]>``."""
    real = os.path.realpath(Path(refs_dir).expanduser())
    key = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "galleries" / key


def model_sha256(obj: Any) -> str | None:
    """A component's weights' sha256 when it exposes ``model_sha256``, else None."""
    value = getattr(obj, "model_sha256", None)
    return value if isinstance(value, str) else None


def models_key(
    detector: FaceDetector, aligner: Any, encoder: IdentityEncoder, detect_max_side: int | None
) -> dict[str, Any]:
    """What the cached results depend on: each component's class, its public scalar settings
    (e.g. the detector's ``min_face``, ``upsample``, ``threshold``; the aligner's ``size``) and
    its weights' sha256 where it exposes ``model_sha256``. ``aligner`` is the gallery's
    :class:`~face2scene_cli.faces.gallery.index.Aligner`."""
    return {
        "detector": {
            "name": detector.name,
            **_settings(detector),
            "model_sha256": model_sha256(detector),
            "detect_max_side": detect_max_side,
        },
        "aligner": {
            **_settings(aligner),
            "template_sha256": _array_sha(getattr(aligner, "template", None)),
        },
        "encoder": {
            "name": encoder.name,
            **_settings(encoder),
            "dim": encoder.dim,
            "model_sha256": model_sha256(encoder),
        },
    }


def _settings(obj: Any) -> dict[str, Any]:
    scalars = (bool, int, float, str, type(None))
    public = {
        k: v
        for k, v in sorted(vars(obj).items())
        if not k.startswith("_") and isinstance(v, scalars)
    }
    return {"class": type(obj).__name__, **public}


def _array_sha(value: Any) -> str | None:
    if value is None:
        return None
    arr = np.ascontiguousarray(np.asarray(value, np.float64))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def check_outside(index_dir: Path, refs_dir: Path) -> None:
    """Refuse an index folder inside the refs folder (inputs are never modified).

    Raises:
        RefsError: ``index_dir`` is ``refs_dir`` or lies under it.
    """
    refs = Path(os.path.realpath(refs_dir))
    idx = Path(os.path.realpath(index_dir))
    if idx == refs or refs in idx.parents:
        raise RefsError(
            f"the gallery cache {index_dir} would be inside the refs folder {refs_dir} "
            f"(inputs are never modified): point ${CACHE_ENV} elsewhere"
        )


def write_cache_file(path: Path, data: bytes) -> None:
    """Write one file of the index atomically (creating its folder).

    Raises:
        RefsError: the cache cannot be written; the message says how to point it elsewhere.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as e:
        raise RefsError(
            f"cannot write the gallery cache {path}: {e.strerror or e}; set ${CACHE_ENV} to a "
            "writable folder"
        ) from e


def read_index(index_dir: Path) -> tuple[dict[str, Any], np.ndarray] | None:
    """The index and its embeddings when both are present and agree, else None.

    ``index.json`` names the sha256 of the embeddings file it was written with; a reader that
    catches a writer between its two renames sees a mismatch and reads both again.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = index_dir / INDEX_NAME
    for attempt in range(_READ_RETRIES):
        try:
            index = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.debug("gallery index %s unreadable (%s): rebuilding", path, e)
            return None
        if not isinstance(index, dict) or index.get("schema") != INDEX_SCHEMA:
            logger.debug("gallery index %s has another schema: rebuilding", path)
            return None
        try:
            blob = (index_dir / EMBEDDINGS_NAME).read_bytes()
        except OSError:
            blob = b""
        if hashlib.sha256(blob).hexdigest() == index.get("embeddings_sha256"):
            try:
                return index, load(blob)["embeddings"]
            except SafetensorError as e:
                logger.debug("gallery embeddings %s unreadable (%s)", index_dir, e)
                return None
        time.sleep(0.01 * (attempt + 1))  # a writer is between its two renames
    logger.debug("gallery index %s and embeddings never agreed: rebuilding", path)
    return None


def write_index(
    index_dir: Path,
    models: dict[str, Any],
    layout: str,
    refs_dir: Path,
    entries: list[dict[str, Any]],
    embeddings: np.ndarray,
    scan_warnings: list[GalleryWarning],
    old: tuple[dict[str, Any], np.ndarray] | None,
) -> None:
    """Write embeddings, then index.json (each atomically), then drop crops that neither this
    index nor the previous one uses (a reader of the previous index may still need those)."""
    from safetensors.numpy import save

    blob = save(
        {"embeddings": np.ascontiguousarray(embeddings, np.float32)},
        metadata={"schema": str(INDEX_SCHEMA), "encoder": models["encoder"]["name"]},
    )
    index = {
        "schema": INDEX_SCHEMA,
        "refs": os.path.realpath(refs_dir),
        "layout": layout,
        "models": models,
        "models_sha256": json_sha256(models),
        "embeddings": EMBEDDINGS_NAME,
        "embeddings_sha256": hashlib.sha256(blob).hexdigest(),
        "warnings": [{"path": w.path, "message": w.message} for w in scan_warnings],
        "files": entries,
    }
    write_cache_file(index_dir / EMBEDDINGS_NAME, blob)
    write_cache_file(
        index_dir / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False).encode()
    )
    keep = {e["crop"] for e in entries if e.get("crop")}
    if old is not None:
        keep |= {e["crop"] for e in old[0]["files"] if e.get("crop")}
    crops = index_dir / CROPS_DIR
    if crops.is_dir():
        for p in crops.glob("*.png"):
            if f"{CROPS_DIR}/{p.name}" not in keep:
                try:
                    p.unlink()
                except OSError as e:
                    logger.debug("cannot remove stale crop %s: %s", p, e)


def read_crop(path: Path) -> np.ndarray:
    """An aligned crop from the cache, (S, S, 3) uint8 RGB."""
    return as_rgb8(read_image(path).pixels)


def face_to_json(face: DetectedFace) -> dict[str, Any]:
    """A face as stored in ``index.json`` (float32 values as JSON numbers)."""
    out: dict[str, Any] = {
        "box": [float(v) for v in np.asarray(face.box, np.float32)],
        "landmarks": np.asarray(face.landmarks, np.float32).tolist(),
        "score": float(face.score),
    }
    if face.landmarks68 is not None:
        out["landmarks68"] = np.asarray(face.landmarks68, np.float32).tolist()
    return out


def face_from_json(data: dict[str, Any]) -> DetectedFace:
    """The face :func:`face_to_json` stored."""
    lm68 = data.get("landmarks68")
    return DetectedFace(
        box=np.asarray(data["box"], np.float32),
        score=float(data["score"]),
        landmarks=np.asarray(data["landmarks"], np.float32),
        landmarks68=None if lm68 is None else np.asarray(lm68, np.float32),
    )
