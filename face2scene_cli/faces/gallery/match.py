"""Matching faces to people, and choosing each matched face's references by identity and pose.

A person's score for a face is the *best* similarity between the face and that person's
reference embeddings (nearest neighbour). The published thresholds (dlib 0.6, ArcFace 0.4) were
calibrated on single image pairs, which is what a best-pair score is; a mean of the top 3 would
be a different statistic (systematically lower, and undefined for people with one or two
references), so the published threshold would no longer mean what it says. The face is
assigned to the best person when that score reaches the encoder's threshold, else it is
"unknown" (``person=None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from face2scene_cli.faces.base import DetectedFace
from face2scene_cli.faces.gallery.cache import read_crop
from face2scene_cli.faces.gallery.index import GalleryIndex
from face2scene_cli.faces.gallery.pose import PoseWeights, face_pose, pose_distance

__all__ = ["Gallery", "Match", "Reference"]


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
        embedding: (D,) float32, the gallery encoder's embedding of the reference face (the
            one ``similarity`` was computed with).
    """

    path: str
    person: str
    crop_path: Path
    landmarks: np.ndarray
    crop_landmarks: np.ndarray | None
    similarity: float
    pose_distance: float
    score: float
    embedding: np.ndarray

    def crop(self) -> np.ndarray:
        """The aligned crop, (S, S, 3) uint8 RGB, read from the cache."""
        return read_crop(self.crop_path)


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


class Gallery(GalleryIndex):
    """A reference gallery faces are matched against (build with :meth:`GalleryIndex.build`,
    read with :meth:`GalleryIndex.open`): who each face is (:meth:`match_faces`) and which
    references suit it (:meth:`best_references`)."""

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
        if not self.people:
            return np.zeros((emb.shape[0], 0))
        sims = self.encoder.similarity(emb, self.embeddings)
        columns = [sims[:, self.person_rows(p)].max(axis=1) for p in self.people]
        return np.stack(columns, axis=1)

    def match(self, embedding: np.ndarray) -> Match:
        """Who one face is (see :mod:`face2scene_cli.faces.gallery.match` for the rule).

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
        rows = self.person_rows(person)
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
                    embedding=self.embeddings[r],
                )
            )
        ranked.sort(key=lambda r: -r.score)  # stable: ties keep path order
        return ranked[:k]
