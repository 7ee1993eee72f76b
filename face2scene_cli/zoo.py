"""The model zoo: ``models/<name>/metadata.json`` + weights + model card, verified by sha256.

The zoo ships inside the wheel (``face2scene_cli/models``); in a source checkout it is the
repository's top-level ``models/``; ``F2S_MODELS_DIR`` points elsewhere. Loaders call
:func:`require_model`, which refuses a model whose files do not match their metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from face2scene_cli.errors import ModelIntegrityError, NotAvailableError
from face2scene_cli.hashing import file_sha256

MODELS_ENV = "F2S_MODELS_DIR"
METADATA_NAME = "metadata.json"
_REQUIRED_KEYS = ("name", "version", "task", "licence", "files", "input", "trained_with", "source")


@dataclass(frozen=True)
class ModelFile:
    """One file of a model, as its metadata pins it."""

    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ModelInfo:
    """A model folder's metadata (``metadata.json``)."""

    name: str
    folder: Path
    version: str
    task: str
    licence: str
    source: str  # "trained here" | "converted from <package> <version>"
    files: tuple[ModelFile, ...]
    input: dict[str, Any]
    trained_with: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """One digest for the whole model: sha256 over its files' sha256s in path order."""
        joined = "".join(f.sha256 for f in sorted(self.files, key=lambda f: f.path))
        return hashlib.sha256(joined.encode()).hexdigest()

    def ref(self) -> dict[str, str]:
        """The ``{"name", "sha256"}`` pair reports record for a model used."""
        return {"name": self.name, "sha256": self.sha256}


def models_dir() -> Path:
    """Where the zoo lives: ``$F2S_MODELS_DIR``, the wheel's copy, or the source checkout's."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV])
    packaged = resources.files("face2scene_cli").joinpath("models")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "models"


def read_model_info(folder: Path) -> ModelInfo:
    """Parse ``folder/metadata.json``.

    Raises:
        ModelIntegrityError: the metadata is missing, not JSON or lacks required keys.
    """
    path = folder / METADATA_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelIntegrityError(f"{path}: cannot read model metadata ({err.strerror})") from err
    except ValueError as err:
        raise ModelIntegrityError(f"{path}: not valid JSON ({err})") from err
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelIntegrityError(f"{path}: missing key(s) {', '.join(missing)}")
    files = tuple(
        ModelFile(path=name, sha256=spec["sha256"], bytes=int(spec["bytes"]))
        for name, spec in sorted(meta["files"].items())
    )
    extra = {k: v for k, v in meta.items() if k not in _REQUIRED_KEYS}
    return ModelInfo(
        name=meta["name"],
        folder=folder,
        version=str(meta["version"]),
        task=meta["task"],
        licence=meta["licence"],
        source=meta["source"],
        files=files,
        input=meta["input"],
        trained_with=dict(meta["trained_with"]),
        extra=extra,
    )


def list_models(root: Path | None = None) -> list[ModelInfo | ModelIntegrityError]:
    """Every model folder of the zoo, in name order; unreadable ones as their error."""
    root = root or models_dir()
    if not root.is_dir():
        return []
    found: list[ModelInfo | ModelIntegrityError] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append(read_model_info(folder))
        except ModelIntegrityError as err:
            found.append(err)
    return found


def verify_model(info: ModelInfo) -> list[str]:
    """Problems with a model's files (missing, wrong size, wrong sha256); empty when verified."""
    problems = []
    for spec in info.files:
        path = info.folder / spec.path
        if not path.is_file():
            problems.append(f"{spec.path}: missing")
            continue
        size = path.stat().st_size
        if size != spec.bytes:
            problems.append(f"{spec.path}: {size} bytes, metadata says {spec.bytes}")
            continue
        digest = file_sha256(path)
        if digest != spec.sha256:
            problems.append(
                f"{spec.path}: sha256 {digest[:12]}…, metadata says {spec.sha256[:12]}…"
            )
    if not (info.folder / "README.md").is_file():
        problems.append("README.md (model card): missing")
    return problems


def require_model(name: str, root: Path | None = None) -> ModelInfo:
    """The verified model ``name``; loaders call this before reading any weights.

    Raises:
        NotAvailableError: no such model in the zoo.
        ModelIntegrityError: its files do not match the metadata.
    """
    root = root or models_dir()
    folder = root / name
    if not (folder / METADATA_NAME).is_file():
        known = [m.name for m in list_models(root) if isinstance(m, ModelInfo)]
        raise NotAvailableError(
            f"model {name!r} is not in the zoo at {root} (available: {', '.join(known) or 'none'})"
        )
    info = read_model_info(folder)
    problems = verify_model(info)
    if problems:
        raise ModelIntegrityError(f"model {name!r} failed verification: {'; '.join(problems)}")
    return info


def write_metadata(folder: Path, meta: dict[str, Any], weight_files: list[str]) -> Path:
    """Write ``metadata.json`` for ``folder``, pinning the sha256 and size of ``weight_files``.

    Used by training and conversion scripts so the pins always match what they wrote.
    """
    meta = dict(meta)
    meta["files"] = {
        name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
        for name in sorted(weight_files)
    }
    path = folder / METADATA_NAME
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
