"""Third-party model packs that users fetch explicitly (never downloaded implicitly).

insightface's ``buffalo_l`` pack (SCRFD detector + ArcFace) is not redistributable here and not
in any package; users with internet run ``f2s models fetch insightface`` once, after which the
``insightface`` detector and ArcFace identity backends become available.
"""

from __future__ import annotations

import os
from pathlib import Path

from face2scene_cli.errors import F2SError

INSIGHTFACE_PACK = "buffalo_l"


def insightface_root() -> Path:
    """insightface's model root: ``$INSIGHTFACE_HOME`` or ``~/.insightface``."""
    return Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface"))


def insightface_pack(name: str = INSIGHTFACE_PACK) -> Path | None:
    """The insightface model pack folder when it is already on disk (never downloads)."""
    folder = insightface_root() / "models" / name
    return folder if folder.is_dir() and any(folder.glob("*.onnx")) else None


def fetch_insightface_pack(name: str = INSIGHTFACE_PACK) -> Path:
    """Download and unpack insightface's model pack into :func:`insightface_root`.

    Raises:
        F2SError: the download or unpacking failed (e.g. no internet); nothing half-written
            is left where :func:`insightface_pack` would find it.
    """
    existing = insightface_pack(name)
    if existing is not None:
        return existing
    from insightface.utils import storage

    try:
        storage.download("models", name, force=True, root=str(insightface_root()))
    except Exception as err:  # network stacks raise many types; all mean "not fetched"
        url = storage.MODEL_ZOO_RELEASE_DOWNLOAD_URL
        raise F2SError(
            f"could not download insightface pack {name!r} from {url} "
            f"({type(err).__name__}: {err}); check the internet connection"
        ) from err
    pack = insightface_pack(name)
    if pack is None:
        raise F2SError(f"insightface pack {name!r} was downloaded but holds no .onnx model")
    return pack
