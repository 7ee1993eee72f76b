"""The model zoo: ``models/<name>/metadata.json`` + weights + model card, verified by sha256.

The zoo ships inside the wheel (``face2scene_cli/models``); in a source checkout it is the
repository's top-level ``models/``; ``F2S_MODELS_DIR`` points elsewhere. Loaders call
:func:`require_model`, which refuses a model whose files do not match their metadata, and
read every file (weights and configs) through :meth:`ModelInfo.files_reader`, which reads only
pinned files and checks each one's sha256 on the bytes it returns; :func:`load_config_model`
and :func:`check_state_dict` refuse a config key or a tensor the network does not expect.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from face2scene_cli.errors import ModelIntegrityError, NotAvailableError
from face2scene_cli.hashing import file_sha256

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch

MODELS_ENV = "F2S_MODELS_DIR"
METADATA_NAME = "metadata.json"
_REQUIRED_KEYS = ("name", "version", "task", "licence", "files", "input", "trained_with", "source")
#: Files of a model folder that need no pin: the metadata itself and the model cards.
_UNPINNED_NAMES = (METADATA_NAME, "README.md")


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

    def files_reader(self) -> ModelFiles:
        """A reader of this model's files that refuses any file not pinned by its metadata."""
        return ModelFiles(
            self.folder, {f.path: f for f in self.files}, label=f"model {self.name!r}"
        )


@dataclass(frozen=True)
class ModelFiles:
    """Reads the files of a model folder, by path relative to the folder (``net/config.json``).

    With ``pins`` (a zoo model, :meth:`ModelInfo.files_reader`) only pinned files are read and
    each one's bytes are checked against its sha256 as they are read, so a file edited after
    :func:`require_model` verified it is refused too. Without pins (a training run's checkpoint
    or export) files are read as they are.

    Args:
        folder: the model folder.
        pins: pinned files by relative path, or None (unpinned folder).
        prefix: relative path of the sub-folder this reader reads (``net/``); see :meth:`sub`.
        label: how errors name the model.
    """

    folder: Path
    pins: Mapping[str, ModelFile] | None = None
    prefix: str = ""
    label: str = ""

    @classmethod
    def for_folder(cls, folder: Path) -> ModelFiles:
        """The reader of ``folder``: pinned by its ``metadata.json`` when it has one (a zoo
        model or a release export), else unpinned (a training checkpoint)."""
        folder = Path(folder)
        if (folder / METADATA_NAME).is_file():
            return read_model_info(folder).files_reader()
        return cls(folder)

    def sub(self, name: str) -> ModelFiles:
        """A reader of the sub-folder ``name`` (same pins)."""
        return ModelFiles(self.folder, self.pins, f"{self.prefix}{name.strip('/')}/", self.label)

    def name(self, rel: str) -> str:
        """``rel`` as errors name it: the path inside the model folder, with the model's name."""
        where = f"{self.prefix}{rel}"
        return f"{self.label}: {where}" if self.label else str(self.folder / where)

    def has(self, rel: str) -> bool:
        """Whether the file or sub-folder ``rel`` is part of the model (on disk or pinned)."""
        where = f"{self.prefix}{rel}".rstrip("/")
        if (self.folder / where).exists():
            return True
        return self.pins is not None and any(
            p == where or p.startswith(where + "/") for p in self.pins
        )

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of ``rel``.

        Raises:
            ModelIntegrityError: not pinned, unreadable, or not the pinned bytes.
        """
        where = f"{self.prefix}{rel}"
        spec = None
        if self.pins is not None:
            spec = self.pins.get(where)
            if spec is None:
                raise ModelIntegrityError(
                    f"{self.name(rel)}: not pinned in {METADATA_NAME} (every file a model "
                    "loads must be pinned by sha256)"
                )
        try:
            data = (self.folder / where).read_bytes()
        except OSError as err:
            raise ModelIntegrityError(f"{self.name(rel)}: cannot read ({err.strerror})") from err
        if spec is not None:
            digest = hashlib.sha256(data).hexdigest()
            if digest != spec.sha256:
                raise ModelIntegrityError(
                    f"{self.name(rel)}: sha256 {digest[:12]}…, metadata says {spec.sha256[:12]}…"
                )
        return data

    def read_json(self, rel: str) -> Any:
        """``rel`` parsed as JSON (ModelIntegrityError when it is not)."""
        try:
            return json.loads(self.read_bytes(rel).decode("utf-8"))
        except ValueError as err:
            raise ModelIntegrityError(f"{self.name(rel)}: not valid JSON ({err})") from err

    def load_safetensors(self, rel: str) -> dict[str, torch.Tensor]:
        """The tensors of the safetensors file ``rel`` (on the CPU)."""
        from safetensors.torch import load

        data = self.read_bytes(rel)
        try:
            return load(data)
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ModelIntegrityError(f"{self.name(rel)}: not a safetensors file ({err})") from err


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
    pinned = {f.path for f in info.files}
    for path in sorted(unpinned_files(info.folder, pinned)):
        problems.append(f"{path}: not pinned in {METADATA_NAME}")
    return problems


def unpinned_files(folder: Path, pinned: set[str]) -> list[str]:
    """Files under ``folder`` (relative, POSIX) that ``pinned`` lacks; the metadata, model
    cards (``README.md``) and hidden files need no pin."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or path.name in _UNPINNED_NAMES:
            continue
        if path.is_file() and rel.as_posix() not in pinned:
            found.append(rel.as_posix())
    return found


def model_location(model: str) -> tuple[str, Path | None]:
    """``(name, root)`` for :func:`find_model`: a zoo name as is, a model folder (holding a
    ``metadata.json``) as its name in its parent folder."""
    folder = Path(model)
    if (folder / METADATA_NAME).is_file():
        return folder.name, folder.parent
    return model, None


def find_model(name: str, root: Path | None = None) -> ModelInfo:
    """Model ``name``'s metadata, its files not yet verified (for what the metadata says:
    its task, or the name and sha256 of a model a loader has already verified).

    Raises:
        NotAvailableError: no such model in the zoo.
        ModelIntegrityError: its metadata is missing keys or not JSON.
    """
    root = root or models_dir()
    folder = root / name
    if not (folder / METADATA_NAME).is_file():
        known = [m.name for m in list_models(root) if isinstance(m, ModelInfo)]
        raise NotAvailableError(
            f"model {name!r} is not in the zoo at {root} (available: {', '.join(known) or 'none'})"
        )
    return read_model_info(folder)


def require_model(name: str, root: Path | None = None) -> ModelInfo:
    """The verified model ``name``; loaders call this before reading any weights.

    Raises:
        NotAvailableError: no such model in the zoo.
        ModelIntegrityError: its files do not match the metadata.
    """
    info = find_model(name, root)
    problems = verify_model(info)
    if problems:
        raise ModelIntegrityError(f"model {name!r} failed verification: {'; '.join(problems)}")
    return info


def write_metadata(
    folder: Path, meta: dict[str, Any], weight_files: list[str] | None = None
) -> Path:
    """Write ``metadata.json`` for ``folder``, pinning the sha256 and size of its files.

    Every file of the folder is pinned (weights, configs, tables), except the metadata, the
    model cards (``README.md``) and hidden files, so that no file a loader reads goes
    unpinned; ``weight_files`` must be among them (a missing one raises FileNotFoundError).
    Used by training and conversion scripts so the pins always match what they wrote.
    """
    meta = dict(meta)
    names = set(unpinned_files(folder, set()))
    for name in weight_files or []:
        if not (folder / name).is_file():
            raise FileNotFoundError(folder / name)
        names.add(Path(name).as_posix())
    meta["files"] = {
        name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
        for name in sorted(names)
    }
    path = folder / METADATA_NAME
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def repin(folder: Path) -> Path:
    """Re-pin the files of ``folder`` in its ``metadata.json``, the rest of it kept: after a
    script edited one of them (a calibrated ``scene.json``, say)."""
    meta = json.loads((folder / METADATA_NAME).read_text(encoding="utf-8"))
    return write_metadata(folder, meta)


def check_state_dict(net: Any, state: Mapping[str, Any], where: str) -> None:
    """Refuse a state dict that does not fit ``net`` (an ``nn.Module``) exactly.

    Raises:
        ModelIntegrityError: naming ``where`` and every missing, unexpected or mis-shaped
            tensor (a few of each kind).
    """
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: shape {got[k]}, expected {expected[k]}"
        for k in sorted(set(got) & set(expected))
        if got[k] != expected[k]
    ]
    problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
    problems += shapes
    if problems:
        shown = "; ".join(problems[:6]) + (f"; … ({len(problems)} in all)" if problems[6:] else "")
        raise ModelIntegrityError(f"{where}: weights do not fit {type(net).__name__}: {shown}")


def load_config_model(
    cls: Any, files: ModelFiles, weights: str = "diffusion_pytorch_model.safetensors"
) -> Any:
    """A diffusers ``ModelMixin``/``ConfigMixin`` network from ``config.json`` + ``weights``
    read through ``files``, strictly: the config's class must be ``cls``, every config key
    must be an argument of ``cls``, and the weights must hold exactly its tensors.

    Raises:
        ModelIntegrityError: naming the file that does not fit.
    """
    config = files.read_json("config.json")
    if not isinstance(config, dict):
        raise ModelIntegrityError(f"{files.name('config.json')}: not a JSON object")
    cls_name = config.get("_class_name", cls.__name__)
    if cls_name != cls.__name__:
        raise ModelIntegrityError(
            f"{files.name('config.json')}: a {cls_name} config, expected {cls.__name__}"
        )
    _, unused, _ = cls.extract_init_dict(config)
    unknown = sorted(k for k in unused if not k.startswith("_"))
    if unknown:
        raise ModelIntegrityError(
            f"{files.name('config.json')}: key(s) {', '.join(unknown)} not understood by "
            f"{cls.__name__}"
        )
    from diffusers.models.modeling_utils import no_init_weights

    try:
        with no_init_weights():  # every tensor is overwritten below: skip the random init
            net = cls.from_config(config)
    except (TypeError, ValueError) as err:
        raise ModelIntegrityError(f"{files.name('config.json')}: {err}") from err
    state = files.load_safetensors(weights)
    check_state_dict(net, state, files.name(weights))
    net.load_state_dict(state, strict=True)
    return net.eval()
