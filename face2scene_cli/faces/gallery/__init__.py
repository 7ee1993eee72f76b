"""Reference galleries: clean photos of the people in a batch, indexed once, matched per face.

``scan`` reads the refs folder (per-person or flat layout, skipped files and their warnings);
``index`` builds the index of each reference's face, aligned crop, landmarks and embedding
(stored by ``cache``, keyed by file content and models); ``match`` says who a face is and which
references suit it (identity and ``pose``). This package exports that public API.
"""

from face2scene_cli.faces.gallery.cache import CACHE_ENV, INDEX_SCHEMA, cache_root, gallery_dir
from face2scene_cli.faces.gallery.index import Aligner, GalleryIndex, GalleryStats, ReferenceFace
from face2scene_cli.faces.gallery.match import Gallery, Match, Reference
from face2scene_cli.faces.gallery.pose import Pose, PoseWeights, face_pose, pose_distance
from face2scene_cli.faces.gallery.scan import GalleryWarning, RefsError, scan_refs

__all__ = [
    "CACHE_ENV",
    "INDEX_SCHEMA",
    "Aligner",
    "Gallery",
    "GalleryIndex",
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
