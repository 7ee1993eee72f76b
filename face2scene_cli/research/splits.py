"""The photo split manifest ``data/splits.yaml``: which real photos train, which validate
(VAL: used to choose steps, configs and designs) and which test (TEST: each released model is
scored on it once, after the choice is made on VAL; never used to choose anything).

Whole photos are split (never crops of one photo on two sides), each pinned by sha256; only
photos listed there are ever used for training, validation or test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from face2scene_cli.errors import ConfigError
from face2scene_cli.hashing import file_sha256
from face2scene_cli.research.sample_data import Photo, all_photos, fetch_hint

logger = logging.getLogger(__name__)

#: The splits of the manifest.
SPLITS: tuple[str, ...] = ("train", "val", "test")


def load_splits(path: Path, *, verify: bool = True) -> dict[str, list[Photo]]:
    """The photos of each split, matched by name to :func:`all_photos` and checked by sha256.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``; photos of the manifest that are
        not available here are left out (logged; for Debian photos, one warning per package
        naming ``make testdata`` or ``make traindata``), a sha256 mismatch raises ConfigError.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the split manifest ({err.strerror})") from err
    by_name = {p.name: p for p in all_photos()}
    out: dict[str, list[Photo]] = {split: [] for split in SPLITS}
    unfetched: dict[str, list[str]] = {}  # Debian package -> its photos not in the cache
    for e in doc.get("photos", []):
        photo = by_name.get(e["name"])
        if photo is None:
            source = str(e.get("source", ""))
            if source.startswith("debian:"):
                unfetched.setdefault(source.removeprefix("debian:"), []).append(
                    f"{e['name']} ({e.get('split', '?')})"
                )
            else:
                logger.warning("split photo %s is not available here; skipped", e["name"])
            continue
        if verify:
            digest = photo.sha256 or file_sha256(photo.path)
            if digest != e["sha256"]:
                raise ConfigError(
                    f"{photo.path}: sha256 {digest[:12]}…, split manifest says {e['sha256'][:12]}…"
                )
        if e["split"] not in out:
            raise ConfigError(
                f"{path}: split must be one of {', '.join(SPLITS)}, got {e['split']!r}"
            )
        out[e["split"]].append(photo)
    for package, names in unfetched.items():
        logger.warning(
            "%d split photos of Debian package %s are not fetched or do not verify here; "
            "skipped: %s. To use them, %s",
            len(names),
            package,
            ", ".join(names),
            fetch_hint(package),
        )
    return out
