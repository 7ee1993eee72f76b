"""The gallery index: each reference photo's chosen face, aligned crop, landmarks and embedding.

In each reference photo the detector's largest face (box area x score) is kept, aligned (a PNG
crop) and embedded; images are decoded upright (:func:`face2scene_cli.io.images.read_image`).
Entries are keyed by file content (sha256) under one set of models (detector, aligner size,
encoder and their weights' sha256): a rebuild with nothing changed recomputes nothing, a changed
or added file is recomputed, a deleted one dropped (:class:`GalleryStats`). Where and how the
index is stored: :mod:`face2scene_cli.faces.gallery.cache`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from face2scene_cli.errors import F2SError
from face2scene_cli.faces.base import DetectedFace, FaceDetector, IdentityEncoder
from face2scene_cli.faces.gallery.cache import (
    CROPS_DIR,
    check_outside,
    face_from_json,
    face_to_json,
    gallery_dir,
    model_sha256,
    models_key,
    read_crop,
    read_index,
    write_cache_file,
    write_index,
)
from face2scene_cli.faces.gallery.pose import Pose, face_pose
from face2scene_cli.faces.gallery.scan import (
    GalleryWarning,
    RefFile,
    RefsError,
    describe_warnings,
    scan_refs,
)
from face2scene_cli.faces.identity import as_rgb8
from face2scene_cli.hashing import json_sha256
from face2scene_cli.io.images import Image, encode_image, read_image

logger = logging.getLogger(__name__)

__all__ = ["DETECT_MAX_SIDE", "Aligner", "GalleryIndex", "GalleryStats", "ReferenceFace"]

DETECT_MAX_SIDE = 1600
"""Reference photos larger than this (longer side, pixels) are detected on a downscaled copy;
alignment and embedding still use the full-resolution pixels."""

_G = TypeVar("_G", bound="GalleryIndex")


class Aligner(Protocol):
    """What the gallery needs from :class:`face2scene_cli.faces.align.FaceAligner`."""

    size: int

    def align(self, image: np.ndarray, face: DetectedFace) -> Any:
        """An object with ``.crop`` ((size, size, 3) uint8) and optionally ``.landmarks``
        ((5, 2) in crop pixels) and ``.matrix`` ((2, 3) source -> crop)."""
        ...


@dataclass
class GalleryStats:
    """What the last :meth:`GalleryIndex.build` did with the reference files.

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
        row: the embedding's row in :attr:`GalleryIndex.embeddings`.
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
        return read_crop(self.crop_path)


class GalleryIndex:
    """Indexed reference faces of one refs folder; build with :meth:`build`, read an existing
    index with :meth:`open`. Immutable after construction (safe to share between threads as
    far as the index itself is concerned; the encoder's own rules apply to embedding).
    Matching faces against it: :class:`face2scene_cli.faces.gallery.match.Gallery`.

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
        cls: type[_G],
        refs_dir: Path,
        detector: FaceDetector,
        aligner: Aligner,
        encoder: IdentityEncoder,
        *,
        cache_dir: Path | None = None,
        detect_max_side: int | None = DETECT_MAX_SIDE,
    ) -> _G:
        """Index ``refs_dir`` (reusing the cached index where files and models are unchanged).

        Args:
            refs_dir: the refs folder (layouts: :mod:`face2scene_cli.faces.gallery.scan`).
            detector: finds faces in the reference photos.
            aligner: makes the aligned crops (its ``size`` is the crop size).
            encoder: the identity encoder.
            cache_dir: the cache root; default
                :func:`~face2scene_cli.faces.gallery.cache.cache_root`.
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
        check_outside(index_dir, refs_dir)
        if not files:
            skipped = f"; {len(warnings)} file(s) skipped: {describe_warnings(warnings)}"
            raise RefsError(
                f"no reference photos in {refs_dir}: expected refs/<person>/*.jpg (several "
                "people) or refs/*.jpg (one person)" + (skipped if warnings else "")
            )
        models = models_key(detector, aligner, encoder, detect_max_side)
        crop_key = json_sha256(models)[:8]
        scan_warnings = list(warnings)
        old = read_index(index_dir)
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
        first_seen: dict[str, RefFile] = {}
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
        write_index(index_dir, models, layout, refs_dir, entries, emb_all, scan_warnings, old)
        stats.seconds = time.perf_counter() - start
        gallery = cls._from_index(
            refs_dir, index_dir, encoder, entries, emb_all, warnings, stats, layout, models
        )
        if not gallery.references:
            raise RefsError(
                f"no usable face in the {len(files)} reference photo(s) in {refs_dir}: "
                + describe_warnings(warnings)
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
        cls: type[_G], refs_dir: Path, encoder: IdentityEncoder, *, cache_dir: Path | None = None
    ) -> _G:
        """The gallery as last built, without looking at the refs folder's files (for worker
        processes once the main process has run :meth:`build`).

        Raises:
            RefsError: no index, or an index built with another encoder.
        """
        refs_dir = Path(refs_dir).expanduser()
        index_dir = gallery_dir(refs_dir, cache_dir)
        old = read_index(index_dir)
        if old is None:
            raise RefsError(f"no gallery index for {refs_dir} in {index_dir}: build it first")
        index, emb = old
        enc = index["models"].get("encoder", {})
        if enc.get("name") != encoder.name or enc.get("model_sha256") != model_sha256(encoder):
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
        cls: type[_G],
        refs_dir: Path,
        index_dir: Path,
        encoder: IdentityEncoder,
        entries: list[dict[str, Any]],
        embeddings: np.ndarray,
        warnings: Sequence[GalleryWarning],
        stats: GalleryStats,
        layout: str,
        models: dict[str, Any],
    ) -> _G:
        refs: list[ReferenceFace] = []
        rows: list[int] = []
        for e in entries:
            if e.get("row") is None:
                continue
            face = face_from_json(e["face"])
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
        return [self.references[i] for i in self.person_rows(person)]

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

    def person_rows(self, person: str) -> np.ndarray:
        """Indices into :attr:`references` / :attr:`embeddings` of ``person``'s references.

        Raises:
            ValueError: ``person`` is not in the gallery.
        """
        if person not in self._rows:
            raise ValueError(
                f"{person!r} is not in the gallery; people: {', '.join(self._rows) or '(none)'}"
            )
        return self._rows[person]


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
    write_cache_file(
        index_dir / crop_name, encode_image(Image(pixels=crop, source_format="PNG"), "png")
    )
    entry["face"] = face_to_json(face)
    entry["crop"] = crop_name
    lm = getattr(aligned, "landmarks", None)
    entry["crop_landmarks"] = None if lm is None else np.round(np.asarray(lm), 3).tolist()
    matrix = getattr(aligned, "matrix", None)
    entry["crop_matrix"] = None if matrix is None else np.asarray(matrix).tolist()
    return entry, emb


def _fmt_box(box: np.ndarray) -> str:
    return ",".join(str(round(float(v))) for v in box)
