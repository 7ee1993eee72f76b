"""The refs folder: which files are reference photos, whose they are, and what was skipped.

``f2s restore ./photos --refs ./refs`` reads one of two layouts:

* ``refs/<person>/*.jpg`` -- several people; a person is a first-level folder's name (photos in
  deeper folders belong to that person, photos directly in ``refs/`` are skipped with a
  warning);
* ``refs/*.jpg`` -- one person, named after the folder.

Files are recognised as images by content (:func:`face2scene_cli.io.images.sniff_format`),
hidden files and folders are skipped, and every skipped file gets a :class:`GalleryWarning`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from face2scene_cli.errors import ConfigError
from face2scene_cli.io.images import sniff_format

__all__ = ["GalleryWarning", "RefFile", "RefsError", "describe_warnings", "scan_refs"]


class RefsError(ConfigError):
    """The ``--refs`` folder cannot be used: missing, empty, or without a usable face."""


@dataclass(frozen=True)
class GalleryWarning:
    """Something about one reference file (``path`` relative to the refs folder; ``""`` for
    the folder itself)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def describe_warnings(warnings: Sequence[GalleryWarning]) -> str:
    """Every warning on one line, ``; ``-separated (an error names each skipped file)."""
    return "; ".join(str(w) for w in warnings)


@dataclass(frozen=True)
class RefFile:
    """A reference photo found by :func:`scan_refs`.

    Attributes:
        rel: its path relative to the refs folder (POSIX separators).
        person: whose reference it is.
        path: the file itself.
    """

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


def scan_refs(refs_dir: Path) -> tuple[str, list[RefFile], list[GalleryWarning]]:
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
        elif entry.is_file() or (entry.is_symlink() and not entry.exists()):
            top_files.append(entry)  # a dangling link is warned about as unreadable

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
    files: list[RefFile] = []
    if any(person_images.values()):
        layout = "people"
        for name, paths in person_images.items():
            files += [RefFile(p.relative_to(root).as_posix(), name, p) for p in paths]
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
        files = [RefFile(p.name, person, p) for p in images(top_files)]
    return layout, sorted(files, key=lambda f: f.rel), warnings
