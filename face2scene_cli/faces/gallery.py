"""Reference galleries: clean photos of the people in a batch, indexed once, matched per face.

``f2s restore ./photos --refs ./refs`` reads one of two layouts:

* ``refs/<person>/*.jpg`` -- several people; a person is a first-level folder's name (photos in
  deeper folders belong to that person, photos directly in ``refs/`` are skipped with a
  warning);
* ``refs/*.jpg`` -- one person, named after the folder.

Files are recognised as images by content (:func:`face2scene_cli.io.images.sniff_format`),
hidden files and folders are skipped, and images are decoded upright
(:func:`face2scene_cli.io.images.read_image`). In each reference photo the detector's largest
face (box area x score) is kept, aligned (a PNG crop) and embedded.

The index lives in the cache, never inside the refs folder (inputs are never modified)::

    $F2S_CACHE_DIR (default ~/.cache/face2scene)/galleries/<sha256(real path of refs)[:16]>/
        index.json               schema, models, one entry per reference file
        embeddings.safetensors   "embeddings": (N, D) float32, rows as in index.json
        crops/<key>.png          aligned reference crops

Entries are keyed by file content (sha256) under one set of models (detector, aligner size,
encoder and their weights' sha256): a rebuild with nothing changed recomputes nothing, a changed
or added file is recomputed, a deleted one dropped (:class:`GalleryStats`). Every file is
written atomically; ``index.json`` records the sha256 of the embeddings file it goes with and
readers retry until the pair agrees, so a reader never uses a half-updated index.

Matching (:meth:`Gallery.match`): a person's score is the *best* similarity between the face and
that person's reference embeddings (nearest neighbour). The published thresholds (dlib 0.6,
ArcFace 0.4) were calibrated on single image pairs, which is what a best-pair score is; a mean of
the top 3 would be a different statistic (systematically lower, and undefined for people with
one or two references), so the published threshold would no longer mean what it says. The
face is assigned to the best person when that score reaches the encoder's threshold, else it
is "unknown" (``person=None``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from face2scene_cli.errors import ConfigError, F2SError
from face2scene_cli.faces.base import DetectedFace, FaceDetector, IdentityEncoder
from face2scene_cli.faces.identity import as_rgb8
from face2scene_cli.hashing import json_sha256
from face2scene_cli.io.images import (
    Image,
    atomic_write_bytes,
    encode_image,
    read_image,
    sniff_format,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "INDEX_SCHEMA",
    "Aligner",
    "Gallery",
    "GalleryStats",
    "GalleryWarning",
    "Match",
    "Pose",
    "PoseWeights",
    "Reference",
    "ReferenceFace",
    "RefsError",
    "cache_root",
    "face_pose",
    "gallery_dir",
    "pose_distance",
    "scan_refs",
]

CACHE_ENV = "F2S_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/face2scene")
INDEX_SCHEMA = 1
"""Version of ``index.json``; an index of another version is rebuilt from scratch."""

INDEX_NAME = "index.json"
EMBEDDINGS_NAME = "embeddings.safetensors"
CROPS_DIR = "crops"
DETECT_MAX_SIDE = 1600
"""Reference photos larger than this (longer side, pixels) are detected on a downscaled copy;
alignment and embedding still use the full-resolution pixels."""

_READ_RETRIES = 8


class RefsError(ConfigError):
    """The ``--refs`` folder cannot be used: missing, empty, or without a usable face."""


class Aligner(Protocol):
    """What the gallery needs from :class:`face2scene_cli.faces.align.FaceAligner`."""

    size: int

    def align(self, image: np.ndarray, face: DetectedFace) -> Any:
        """An object with ``.crop`` ((size, size, 3) uint8) and optionally ``.landmarks``
        ((5, 2) in crop pixels) and ``.matrix`` ((2, 3) source -> crop)."""
        ...


# --------------------------------------------------------------------------------------------
# data types


@dataclass(frozen=True)
class GalleryWarning:
    """Something about one reference file (``path`` relative to the refs folder; ``""`` for
    the folder itself)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class GalleryStats:
    """What the last :meth:`Gallery.build` did with the reference files.

    Attributes:
        reused: files whose cached result (face, crop, embedding, or "no face") was reused.
        computed: files decoded, detected, aligned and embedded now.
        removed: files in the previous index that are gone from the refs folder.
        seconds: wall time of the build.
    """

    reused: int = 0
    computed: int = 0
    removed: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Pose:
    """Head-pose proxies from the five landmarks (not angles, except roll).

    Attributes:
        yaw: horizontal offset of the nose tip from the eye midpoint, in inter-ocular distances,
            measured along the eye line; 0 frontal, positive when the nose points to the
            image's right (about 0.35 at 30 degrees of yaw).
        pitch: ``log(nose-to-eye-line / mouth-to-nose)`` vertical distances, perpendicular to
            the eye line; about 0 frontal, positive looking down, negative looking up.
        roll: angle of the eye line in degrees (image-left eye to image-right eye), positive
            clockwise on screen (y is down).
    """

    yaw: float
    pitch: float
    roll: float

    def to_dict(self) -> dict[str, float]:
        """Rounded JSON-ready values."""
        return {
            "yaw": round(self.yaw, 4),
            "pitch": round(self.pitch, 4),
            "roll": round(self.roll, 2),
        }


@dataclass(frozen=True)
class PoseWeights:
    """How :meth:`Gallery.best_references` trades identity against pose.

    ``score = identity - pose_weight * pose_distance`` where ``identity`` is the similarity
    rescaled so the encoder's threshold is 0 and a perfect match is 1, and ``pose_distance``
    is the Euclidean norm of the pose differences divided by their scales (1 = one scale
    apart, e.g. about 30 degrees of yaw).

    Attributes:
        pose_weight: identity units one pose-distance unit costs (0 = rank by identity only).
        yaw_scale: yaw-proxy difference worth one unit (0.35 = about 30 degrees).
        pitch_scale: pitch-proxy difference worth one unit (0.3 = about 15-20 degrees).
        roll_scale: roll difference in degrees worth one unit; large because the aligned
            crops the restorer sees have roll undone, so it matters least (it only breaks ties
            such as lighting direction relative to the face).

    The pitch proxy is the noisiest (a smile lifts the mouth corners), hence its wider scale.
    """

    pose_weight: float = 0.25
    yaw_scale: float = 0.35
    pitch_scale: float = 0.3
    roll_scale: float = 90.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pose_weight) and self.pose_weight >= 0):
            raise ValueError(f"pose_weight must be >= 0, got {self.pose_weight}")
        for name in ("yaw_scale", "pitch_scale", "roll_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class ReferenceFace:
    """One indexed reference photo's chosen face.

    Attributes:
        path: the photo, relative to the refs folder (POSIX separators).
        person: whose reference it is.
        sha256: the photo file's content hash.
        face: the chosen face, in the photo's upright pixel coordinates.
        crop_path: the aligned crop (PNG) in the gallery cache.
        crop_landmarks: (5, 2) float32 landmarks in crop pixels, when the aligner gives them.
        pose: pose proxies of ``face``.
        row: the embedding's row in :attr:`Gallery.embeddings`.
    """

    path: str
    person: str
    sha256: str
    face: DetectedFace
    crop_path: Path
    crop_landmarks: np.ndarray | None
    pose: Pose
    row: int

    def crop(self) -> np.ndarray:
        """The aligned crop, (S, S, 3) uint8 RGB, read from the cache."""
        return as_rgb8(read_image(self.crop_path).pixels)


@dataclass(frozen=True)
class Reference:
    """A reference chosen for one face by :meth:`Gallery.best_references`.

    Attributes:
        path: the reference photo, relative to the refs folder.
        person: whose reference it is.
        crop_path: its aligned crop (PNG) in the gallery cache; :meth:`crop` reads it.
        landmarks: (5, 2) float32 landmarks in the reference photo's pixels.
        crop_landmarks: (5, 2) float32 landmarks in crop pixels (None if the aligner has none).
        similarity: identity similarity to the face (the encoder's scale: higher = closer).
        pose_distance: pose difference to the face (see :class:`PoseWeights`).
        score: the ranking score, ``identity - pose_weight * pose_distance``.
    """

    path: str
    person: str
    crop_path: Path
    landmarks: np.ndarray
    crop_landmarks: np.ndarray | None
    similarity: float
    pose_distance: float
    score: float

    def crop(self) -> np.ndarray:
        """The aligned crop, (S, S, 3) uint8 RGB, read from the cache."""
        return as_rgb8(read_image(self.crop_path).pixels)


@dataclass(frozen=True)
class Match:
    """Who a face is.

    Attributes:
        person: the matched person, or None ("unknown").
        similarity: the face's score for ``person`` -- or, when unknown, for ``candidate``
            (the encoder's similarity scale; a person's score is its best reference).
        margin: how far the decision is from changing, >= 0: the chosen outcome's score minus
            the best alternative's, where "unknown" scores the encoder's threshold.
        candidate: the best-scoring person even when rejected (None for an empty gallery).
        scores: every person's score for this face.
        embedding: the face's embedding, (D,) float32 (for :meth:`Gallery.best_references`).
    """

    person: str | None
    similarity: float
    margin: float
    candidate: str | None = None
    scores: dict[str, float] = field(default_factory=dict, compare=False)
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)

    def to_report(self) -> dict[str, Any]:
        """JSON-ready fields for a report (no embedding)."""
        return {
            "person": self.person,
            "similarity": round(self.similarity, 4),
            "margin": round(self.margin, 4),
            "candidate": self.candidate,
        }


# --------------------------------------------------------------------------------------------
# pose


def face_pose(landmarks: np.ndarray) -> Pose:
    """Pose proxies (see :class:`Pose`) of five landmarks.

    Args:
        landmarks: (5, 2) points: image-left eye, image-right eye, nose tip, image-left mouth
            corner, image-right mouth corner (source pixels).

    Returns:
        The :class:`Pose`; all zeros when the eyes coincide (degenerate landmarks).
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if pts.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {np.asarray(landmarks).shape}")
    left_eye, right_eye, nose, mouth_l, mouth_r = pts
    eye_mid = (left_eye + right_eye) / 2
    d = right_eye - left_eye
    iod = float(np.hypot(*d))
    if not math.isfinite(iod) or iod < 1e-6:
        return Pose(0.0, 0.0, 0.0)
    roll = math.degrees(math.atan2(d[1], d[0]))
    c, s = d / iod

    def derolled(p: np.ndarray) -> np.ndarray:
        q = p - eye_mid
        return np.array([c * q[0] + s * q[1], -s * q[0] + c * q[1]])

    n = derolled(nose)
    m = derolled((mouth_l + mouth_r) / 2)
    eps = 0.05 * iod
    pitch = math.log(max(n[1], eps) / max(m[1] - n[1], eps))
    return Pose(yaw=float(n[0] / iod), pitch=float(pitch), roll=float(roll))


def pose_distance(a: Pose, b: Pose, weights: PoseWeights | None = None) -> float:
    """Scaled Euclidean distance between two poses (roll wrapped to [-180, 180))."""
    w = weights or PoseWeights()
    droll = (a.roll - b.roll + 180.0) % 360.0 - 180.0
    return float(
        math.sqrt(
            ((a.yaw - b.yaw) / w.yaw_scale) ** 2
            + ((a.pitch - b.pitch) / w.pitch_scale) ** 2
            + (droll / w.roll_scale) ** 2
        )
    )


# --------------------------------------------------------------------------------------------
# locations and scanning


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


@dataclass(frozen=True)
class _RefFile:
    rel: str
    person: str
    path: Path


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _image_kind(path: Path) -> str | OSError | None:
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(32))
    except OSError as e:
        return e


def scan_refs(refs_dir: Path) -> tuple[str, list[_RefFile], list[GalleryWarning]]:
    """The reference photos in ``refs_dir`` and its layout.

    Returns:
        ``(layout, files, warnings)``: layout ``"people"`` when a visible sub-folder holds
        images (person = first-level folder name) else ``"flat"`` (person = the folder's
        name); files sorted by relative path; warnings for files that are skipped.

    Raises:
        RefsError: ``refs_dir`` is missing or not a folder.
    """
    root = Path(refs_dir).expanduser()
    if not root.exists():
        raise RefsError(f"reference folder not found: {root}")
    if not root.is_dir():
        raise RefsError(f"--refs must be a folder of reference photos, got a file: {root}")
    warnings: list[GalleryWarning] = []
    top_files: list[Path] = []
    people: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if _hidden(entry.name):
            continue
        if entry.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(entry):
                dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
                found += [Path(dirpath) / f for f in sorted(filenames) if not _hidden(f)]
            people[entry.name] = found
        elif entry.is_file():
            top_files.append(entry)

    def images(paths: list[Path]) -> list[Path]:
        kept = []
        for p in paths:
            kind = _image_kind(p)
            rel = p.relative_to(root).as_posix()
            if isinstance(kind, OSError):
                warnings.append(
                    GalleryWarning(rel, f"cannot read the file: {kind.strerror or kind}")
                )
            elif kind is None:
                warnings.append(GalleryWarning(rel, "not an image, skipped"))
            else:
                kept.append(p)
        return kept

    person_images = {name: images(paths) for name, paths in people.items()}
    files: list[_RefFile] = []
    if any(person_images.values()):
        layout = "people"
        for name, paths in person_images.items():
            files += [_RefFile(p.relative_to(root).as_posix(), name, p) for p in paths]
        for p in top_files:
            if isinstance(_image_kind(p), str):
                warnings.append(
                    GalleryWarning(
                        p.name,
                        "photo directly in a per-person refs folder belongs to no one, skipped "
                        "(move it into refs/<person>/)",
                    )
                )
    else:
        layout = "flat"
        person = root.name if root.name not in ("", "..") else Path(os.path.realpath(root)).name
        person = person or "person"
        files = [_RefFile(p.name, person, p) for p in images(top_files)]
    return layout, sorted(files, key=lambda f: f.rel), warnings


# --------------------------------------------------------------------------------------------
# the gallery


class Gallery:
    """Indexed reference faces of one refs folder; build with :meth:`build`, read an existing
    index with :meth:`open`. Immutable after construction (safe to share between threads as
    far as the gallery itself is concerned; the encoder's own rules apply to embedding).

    Attributes:
        refs_dir: the refs folder.
        index_dir: the cache folder of its index.
        encoder: the identity encoder the embeddings come from.
        references: the indexed faces, one per usable reference photo, sorted by path.
        embeddings: (N, D) float32, row ``i`` belongs to ``references[i]``.
        warnings: per-file problems (no face, several faces, unreadable, skipped).
        stats: what the build reused / computed / removed.
        layout: ``"people"`` or ``"flat"``.
        models: the detector / aligner / encoder description the index is keyed by.
    """

    def __init__(
        self,
        *,
        refs_dir: Path,
        index_dir: Path,
        encoder: IdentityEncoder,
        references: Sequence[ReferenceFace],
        embeddings: np.ndarray,
        warnings: Sequence[GalleryWarning] = (),
        stats: GalleryStats | None = None,
        layout: str = "flat",
        models: dict[str, Any] | None = None,
    ) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(references):
            raise ValueError(f"embeddings must be ({len(references)}, D), got {embeddings.shape}")
        if references and embeddings.shape[1] != encoder.dim:
            raise ValueError(
                f"embeddings have {embeddings.shape[1]} dims, encoder {encoder.name} has "
                f"{encoder.dim}"
            )
        embeddings.setflags(write=False)
        self.refs_dir = Path(refs_dir)
        self.index_dir = Path(index_dir)
        self.encoder = encoder
        self.references = tuple(references)
        self.embeddings = embeddings
        self.warnings = tuple(warnings)
        self.stats = stats or GalleryStats()
        self.layout = layout
        self.models = dict(models or {})
        people: dict[str, list[int]] = {}
        for i, ref in enumerate(self.references):
            people.setdefault(ref.person, []).append(i)
        self._rows = {p: np.array(rows) for p, rows in sorted(people.items())}

    # ---------------------------------------------------------------- building and opening

    @classmethod
    def build(
        cls,
        refs_dir: Path,
        detector: FaceDetector,
        aligner: Aligner,
        encoder: IdentityEncoder,
        *,
        cache_dir: Path | None = None,
        detect_max_side: int | None = DETECT_MAX_SIDE,
    ) -> Gallery:
        """Index ``refs_dir`` (reusing the cached index where files and models are unchanged).

        Args:
            refs_dir: the refs folder (see the module docstring for layouts).
            detector: finds faces in the reference photos.
            aligner: makes the aligned crops (its ``size`` is the crop size).
            encoder: the identity encoder.
            cache_dir: the cache root; default :func:`cache_root`.
            detect_max_side: detect on a copy downscaled to this longer side (None = never).

        Returns:
            The gallery; ``stats`` says what was reused or computed, ``warnings`` lists files
            without a usable face.

        Raises:
            RefsError: the folder is missing, holds no reference photo, or no usable face;
                or the cache cannot be written.
        """
        start = time.perf_counter()
        refs_dir = Path(refs_dir).expanduser()
        layout, files, warnings = scan_refs(refs_dir)
        index_dir = gallery_dir(refs_dir, cache_dir)
        _check_outside(index_dir, refs_dir)
        if not files:
            raise RefsError(
                f"no reference photos in {refs_dir}: expected refs/<person>/*.jpg (several "
                "people) or refs/*.jpg (one person)"
                + (f"; {len(warnings)} file(s) skipped: {warnings[0]}" if warnings else "")
            )
        models = _models_key(detector, aligner, encoder, detect_max_side)
        crop_key = json_sha256(models)[:8]
        scan_warnings = list(warnings)
        old = _read_index(index_dir)
        old_entries: dict[str, tuple[dict[str, Any], np.ndarray | None]] = {}
        old_paths: set[str] = set()
        if old is not None:
            index, old_emb = old
            old_paths = {e["path"] for e in index["files"]}
            if index.get("models") == models:
                for e in index["files"]:
                    row = e.get("row")
                    emb = old_emb[row] if row is not None else None
                    crop_ok = e.get("crop") is None or (index_dir / e["crop"]).is_file()
                    if crop_ok:
                        old_entries[e["sha256"]] = (e, emb)

        stats = GalleryStats()
        entries: list[dict[str, Any]] = []
        vectors: list[np.ndarray] = []
        computed: dict[str, tuple[dict[str, Any], np.ndarray | None]] = {}
        first_seen: dict[str, _RefFile] = {}
        for ref in files:
            try:
                data = ref.path.read_bytes()
                st = ref.path.stat()
            except OSError as e:
                warnings.append(GalleryWarning(ref.rel, f"cannot read the file: {e.strerror or e}"))
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in computed:  # the same content twice in this folder
                result = computed[digest]
                stats.reused += 1
                twin = first_seen[digest]
                if twin.person != ref.person:
                    warnings.append(
                        GalleryWarning(
                            ref.rel,
                            f"the same photo as {twin.rel}: one face is a reference for both "
                            f"{twin.person!r} and {ref.person!r}",
                        )
                    )
            elif digest in old_entries:
                result = old_entries[digest]
                stats.reused += 1
            else:
                result = _index_one(
                    data, digest, detector, aligner, encoder, index_dir, crop_key, detect_max_side
                )
                stats.computed += 1
            computed[digest] = result
            first_seen.setdefault(digest, ref)
            entry, emb = result
            entry = {
                **entry,
                "path": ref.rel,
                "person": ref.person,
                "size": st.st_size,
                "mtime": st.st_mtime,
                "row": None,
            }
            if emb is not None:
                entry["row"] = len(vectors)
                vectors.append(np.asarray(emb, np.float32))
            warnings += [GalleryWarning(ref.rel, w) for w in entry["warnings"]]
            entries.append(entry)
        stats.removed = len(old_paths - {f.rel for f in files})

        dim = encoder.dim
        emb_all = np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)
        _write_index(index_dir, models, layout, refs_dir, entries, emb_all, scan_warnings, old)
        stats.seconds = time.perf_counter() - start
        gallery = cls._from_index(
            refs_dir, index_dir, encoder, entries, emb_all, warnings, stats, layout, models
        )
        if not gallery.references:
            raise RefsError(
                f"no usable face in the {len(files)} reference photo(s) in {refs_dir}: "
                + "; ".join(str(w) for w in warnings[:3])
                + (f" (and {len(warnings) - 3} more)" if len(warnings) > 3 else "")
            )
        logger.debug(
            "gallery %s: %d refs, %d people, reused %d, computed %d, removed %d (%.2fs)",
            refs_dir,
            len(gallery.references),
            len(gallery.people),
            stats.reused,
            stats.computed,
            stats.removed,
            stats.seconds,
        )
        return gallery

    @classmethod
    def open(
        cls, refs_dir: Path, encoder: IdentityEncoder, *, cache_dir: Path | None = None
    ) -> Gallery:
        """The gallery as last built, without looking at the refs folder's files (for worker
        processes once the main process has run :meth:`build`).

        Raises:
            RefsError: no index, or an index built with another encoder.
        """
        refs_dir = Path(refs_dir).expanduser()
        index_dir = gallery_dir(refs_dir, cache_dir)
        old = _read_index(index_dir)
        if old is None:
            raise RefsError(f"no gallery index for {refs_dir} in {index_dir}: build it first")
        index, emb = old
        enc = index["models"].get("encoder", {})
        if enc.get("name") != encoder.name or enc.get("model_sha256") != _model_sha(encoder):
            raise RefsError(
                f"the gallery index of {refs_dir} was built with encoder {enc.get('name')!r}, "
                f"not {encoder.name!r}: build it again"
            )
        warnings = [GalleryWarning(w["path"], w["message"]) for w in index.get("warnings", [])]
        warnings += [GalleryWarning(e["path"], w) for e in index["files"] for w in e["warnings"]]
        return cls._from_index(
            refs_dir,
            index_dir,
            encoder,
            index["files"],
            emb,
            warnings,
            GalleryStats(reused=len(index["files"])),
            index.get("layout", "flat"),
            index["models"],
        )

    @classmethod
    def _from_index(
        cls,
        refs_dir: Path,
        index_dir: Path,
        encoder: IdentityEncoder,
        entries: list[dict[str, Any]],
        embeddings: np.ndarray,
        warnings: Sequence[GalleryWarning],
        stats: GalleryStats,
        layout: str,
        models: dict[str, Any],
    ) -> Gallery:
        refs: list[ReferenceFace] = []
        rows: list[int] = []
        for e in entries:
            if e.get("row") is None:
                continue
            face = _face_from_json(e["face"])
            crop_lm = e.get("crop_landmarks")
            refs.append(
                ReferenceFace(
                    path=e["path"],
                    person=e["person"],
                    sha256=e["sha256"],
                    face=face,
                    crop_path=index_dir / e["crop"],
                    crop_landmarks=None if crop_lm is None else np.asarray(crop_lm, np.float32),
                    pose=face_pose(face.landmarks),
                    row=len(refs),
                )
            )
            rows.append(int(e["row"]))
        emb = embeddings[rows] if rows else np.zeros((0, encoder.dim), np.float32)
        return cls(
            refs_dir=refs_dir,
            index_dir=index_dir,
            encoder=encoder,
            references=refs,
            embeddings=emb,
            warnings=warnings,
            stats=stats,
            layout=layout,
            models=models,
        )

    # ---------------------------------------------------------------- queries

    @property
    def people(self) -> tuple[str, ...]:
        """The people with at least one usable reference, sorted."""
        return tuple(self._rows)

    def references_of(self, person: str) -> list[ReferenceFace]:
        """A person's reference faces (ValueError for someone not in the gallery)."""
        return [self.references[i] for i in self._person_rows(person)]

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Per-person scores of faces.

        Args:
            embeddings: (N, D) or (D,) face embeddings.

        Returns:
            (N, P) float64, column ``j`` = best similarity to ``people[j]``'s references.
        """
        emb = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        if emb.shape[1] != self.encoder.dim:
            raise ValueError(
                f"embeddings must have {self.encoder.dim} dims ({self.encoder.name}), "
                f"got shape {emb.shape}"
            )
        if not self._rows:
            return np.zeros((emb.shape[0], 0))
        sims = self.encoder.similarity(emb, self.embeddings)
        return np.stack([sims[:, rows].max(axis=1) for rows in self._rows.values()], axis=1)

    def match(self, embedding: np.ndarray) -> Match:
        """Who one face is (see the module docstring for the rule).

        Args:
            embedding: (D,) face embedding from :attr:`encoder`.
        """
        emb = np.asarray(embedding, dtype=np.float32).reshape(-1)
        return self._decide(self.scores(emb)[0], emb, set())

    def match_faces(
        self, image: np.ndarray, faces: list[DetectedFace], *, unique: bool = True
    ) -> list[Match]:
        """Embed ``faces`` of ``image`` and match each.

        Args:
            image: (H, W, 3) RGB uint8 (what the encoder accepts).
            faces: faces found in ``image``.
            unique: one person at most once per photo: faces are assigned greedily, highest
                score first; a face whose best person went to a face that matched better gets
                its next-best person above the threshold, else "unknown". Turn off for photos
                that may show someone twice (mirrors, photos of photos).

        Returns:
            One :class:`Match` per face, in ``faces`` order, each carrying its embedding.
        """
        if not faces:
            return []
        emb = self.encoder.embed(image, faces)
        scores = self.scores(emb)
        if not unique:
            return [self._decide(scores[i], emb[i], set()) for i in range(len(faces))]
        thr = self.encoder.similarity_threshold
        people = self.people
        pairs = sorted(
            ((scores[i, j], i, j) for i in range(len(faces)) for j in range(len(people))),
            key=lambda t: -t[0],
        )
        taken: dict[int, int] = {}  # person column -> face
        done: set[int] = set()
        for s, i, j in pairs:
            if s < thr:
                break
            if i in done or j in taken:
                continue
            taken[j] = i
            done.add(i)
        matches = []
        for i in range(len(faces)):
            blocked = {people[j] for j, f in taken.items() if f != i}
            matches.append(self._decide(scores[i], emb[i], blocked))
        return matches

    def _decide(self, scores: np.ndarray, embedding: np.ndarray, blocked: set[str]) -> Match:
        thr = self.encoder.similarity_threshold
        by_person = {p: float(s) for p, s in zip(self.people, scores, strict=True)}
        if not by_person:
            return Match(None, float("-inf"), 0.0, None, {}, embedding)
        candidate = max(by_person, key=lambda p: by_person[p])
        open_scores = sorted(
            ((s, p) for p, s in by_person.items() if p not in blocked), reverse=True
        )
        if open_scores and open_scores[0][0] >= thr:
            s1, person = open_scores[0]
            rival = max([thr, *(s for s, _ in open_scores[1:2])])
            return Match(person, s1, s1 - rival, candidate, by_person, embedding)
        similarity = by_person[candidate]
        best_open = open_scores[0][0] if open_scores else similarity
        return Match(None, similarity, max(0.0, thr - best_open), candidate, by_person, embedding)

    def best_references(
        self,
        face_embedding: np.ndarray,
        face: DetectedFace,
        person: str,
        k: int = 3,
        weights: PoseWeights | None = None,
    ) -> list[Reference]:
        """The ``k`` references of ``person`` best suited to restore ``face``.

        Ranked by ``score = identity - pose_weight * pose_distance`` (see
        :class:`PoseWeights`): ``identity`` maps the encoder similarity so its threshold is 0
        and identical embeddings are 1 (dlib: ``1 - distance / 0.6``; ArcFace:
        ``(cos - 0.4) / 0.6``); ``pose_distance`` compares :func:`face_pose` of the face's and
        the reference's landmarks. Ties keep path order.

        Args:
            face_embedding: (D,) embedding of ``face``.
            face: the face (its five landmarks give its pose).
            person: a person in :attr:`people`.
            k: how many references at most.
            weights: the identity / pose trade-off; default :class:`PoseWeights`.

        Returns:
            Up to ``k`` :class:`Reference`, best first.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        w = weights or PoseWeights()
        rows = self._person_rows(person)
        emb = np.asarray(face_embedding, dtype=np.float32).reshape(1, -1)
        sims = self.encoder.similarity(emb, self.embeddings[rows])[0]
        thr = self.encoder.similarity_threshold
        perfect = 0.0 if self.encoder.metric == "euclidean" else 1.0
        identity = (sims - thr) / (perfect - thr)
        query = face_pose(face.landmarks)
        ranked = []
        for r, sim, ident in zip(rows, sims, identity, strict=True):
            ref = self.references[r]
            pd = pose_distance(query, ref.pose, w)
            ranked.append(
                Reference(
                    path=ref.path,
                    person=ref.person,
                    crop_path=ref.crop_path,
                    landmarks=ref.face.landmarks,
                    crop_landmarks=ref.crop_landmarks,
                    similarity=float(sim),
                    pose_distance=pd,
                    score=float(ident - w.pose_weight * pd),
                )
            )
        ranked.sort(key=lambda r: -r.score)  # stable: ties keep path order
        return ranked[:k]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for reports: people, reference counts, warnings, stats."""
        return {
            "refs": str(self.refs_dir),
            "index": str(self.index_dir),
            "layout": self.layout,
            "encoder": self.encoder.name,
            "people": {p: len(rows) for p, rows in self._rows.items()},
            "warnings": [str(w) for w in self.warnings],
            "stats": {
                "reused": self.stats.reused,
                "computed": self.stats.computed,
                "removed": self.stats.removed,
                "seconds": round(self.stats.seconds, 3),
            },
        }

    def _person_rows(self, person: str) -> np.ndarray:
        if person not in self._rows:
            raise ValueError(
                f"{person!r} is not in the gallery; people: {', '.join(self._rows) or '(none)'}"
            )
        return self._rows[person]


# --------------------------------------------------------------------------------------------
# indexing one file


def _model_sha(obj: Any) -> str | None:
    value = getattr(obj, "model_sha256", None)
    return value if isinstance(value, str) else None


def _models_key(
    detector: FaceDetector, aligner: Aligner, encoder: IdentityEncoder, detect_max_side: int | None
) -> dict[str, Any]:
    """What the cached results depend on: each component's class, its public scalar settings
    (e.g. the detector's ``min_face``, ``upsample``, ``threshold``; the aligner's ``size``) and
    its weights' sha256 where it exposes ``model_sha256``."""
    return {
        "detector": {
            "name": detector.name,
            **_settings(detector),
            "model_sha256": _model_sha(detector),
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
            "model_sha256": _model_sha(encoder),
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


def _detect(detector: FaceDetector, rgb: np.ndarray, max_side: int | None) -> list[DetectedFace]:
    h, w = rgb.shape[:2]
    scale = 1.0 if not max_side or max(h, w) <= max_side else max_side / max(h, w)
    if scale == 1.0:
        return detector.detect([rgb])[0]
    import cv2

    small = cv2.resize(
        rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    faces = detector.detect([small])[0]
    inv = np.float32(1.0 / scale)
    return [
        DetectedFace(
            box=np.asarray(f.box, np.float32) * inv,
            score=f.score,
            landmarks=np.asarray(f.landmarks, np.float32) * inv,
            landmarks68=None if f.landmarks68 is None else np.asarray(f.landmarks68) * inv,
        )
        for f in faces
    ]


def _face_weight(face: DetectedFace) -> float:
    b = np.asarray(face.box, np.float64)
    return float(max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) * face.score)


def _index_one(
    data: bytes,
    digest: str,
    detector: FaceDetector,
    aligner: Aligner,
    encoder: IdentityEncoder,
    index_dir: Path,
    crop_key: str,
    detect_max_side: int | None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Decode, detect, choose, align, embed one reference photo; write its crop."""
    entry: dict[str, Any] = {"sha256": digest, "warnings": [], "faces_found": 0, "face": None}
    entry["crop"] = None
    try:
        image = read_image(Path(digest), data=data)
    except F2SError as e:
        entry["warnings"].append(f"cannot decode: {e}")
        return entry, None
    rgb = as_rgb8(image.pixels)
    faces = _detect(detector, rgb, detect_max_side)
    entry["faces_found"] = len(faces)
    if not faces:
        entry["warnings"].append("no face found; not used as a reference")
        return entry, None
    face = max(faces, key=_face_weight)
    if len(faces) > 1:
        entry["warnings"].append(
            f"{len(faces)} faces found; used the largest (box {_fmt_box(face.box)}), "
            "a reference photo should show one person"
        )
    try:
        aligned = aligner.align(rgb, face)
        crop = as_rgb8(np.asarray(aligned.crop))
        emb = encoder.embed(rgb, [face])[0].astype(np.float32)
    except ValueError as e:  # degenerate landmarks (e.g. all five on one point)
        entry["warnings"].append(f"cannot align or embed the face: {e}")
        return entry, None
    crop_name = f"{CROPS_DIR}/{digest[:24]}-{crop_key}.png"
    (index_dir / CROPS_DIR).mkdir(parents=True, exist_ok=True)
    _write(index_dir / crop_name, encode_image(Image(pixels=crop, source_format="PNG"), "png"))
    entry["face"] = _face_to_json(face)
    entry["crop"] = crop_name
    lm = getattr(aligned, "landmarks", None)
    entry["crop_landmarks"] = None if lm is None else np.round(np.asarray(lm), 3).tolist()
    matrix = getattr(aligned, "matrix", None)
    entry["crop_matrix"] = None if matrix is None else np.asarray(matrix).tolist()
    return entry, emb


def _fmt_box(box: np.ndarray) -> str:
    return ",".join(str(round(float(v))) for v in box)


def _face_to_json(face: DetectedFace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "box": [float(v) for v in np.asarray(face.box, np.float32)],
        "landmarks": np.asarray(face.landmarks, np.float32).tolist(),
        "score": float(face.score),
    }
    if face.landmarks68 is not None:
        out["landmarks68"] = np.asarray(face.landmarks68, np.float32).tolist()
    return out


def _face_from_json(data: dict[str, Any]) -> DetectedFace:
    lm68 = data.get("landmarks68")
    return DetectedFace(
        box=np.asarray(data["box"], np.float32),
        score=float(data["score"]),
        landmarks=np.asarray(data["landmarks"], np.float32),
        landmarks68=None if lm68 is None else np.asarray(lm68, np.float32),
    )


# --------------------------------------------------------------------------------------------
# the index on disk


def _check_outside(index_dir: Path, refs_dir: Path) -> None:
    refs = Path(os.path.realpath(refs_dir))
    idx = Path(os.path.realpath(index_dir))
    if idx == refs or refs in idx.parents:
        raise RefsError(
            f"the gallery cache {index_dir} would be inside the refs folder {refs_dir} "
            f"(inputs are never modified): point ${CACHE_ENV} elsewhere"
        )


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as e:
        raise RefsError(
            f"cannot write the gallery cache {path}: {e.strerror or e}; set ${CACHE_ENV} to a "
            "writable folder"
        ) from e


def _read_index(index_dir: Path) -> tuple[dict[str, Any], np.ndarray] | None:
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


def _write_index(
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
    _write(index_dir / EMBEDDINGS_NAME, blob)
    _write(index_dir / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False).encode())
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
