"""Planning a run: expand files, folders and globs into work items mirrored under ``--out``.

The walk finds images by content (and by extension, so an unreadable photo is reported, not
skipped), skips hidden entries, the output folder and symlink loops, and gives each image a
relative path: its place in the output tree, the key that seeds it and picks its shard.
Output names are unique case-insensitively and never leave the output folder; old f2s output
folders inside the inputs are skipped with a warning naming them.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from face2scene_cli.config import BatchConfig, Shard
from face2scene_cli.engine.report import LOCK_NAME, REPORT_SUFFIX, SUMMARY_NAME, display_path
from face2scene_cli.errors import ConfigError, F2SError, InputError
from face2scene_cli.io.images import EXTENSIONS, format_for, sniff_format

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif"}
    | {".avif", ".heic", ".heif", ".hif"}
)
_SNIFF_BYTES = 32


@dataclass(frozen=True)
class WorkItem:
    """One input image and where its output and report go (both None when the planner refused
    the image: its output would leave the output folder or take another image's name; it fails
    with no report, named in the summary)."""

    source: Path
    relative: Path  # mirrored under the output folder; also the per-image seed key
    output: Path | None
    report: Path | None
    format: str  # resolved output format: png | jpg | webp | tiff
    error: F2SError | None = None  # a problem found while walking (unreadable, symlink loop)

    @property
    def key(self) -> str:
        """Stable identity of the image within a run (see :func:`relative_key`)."""
        return relative_key(self.relative)


def relative_key(relative: Path) -> str:
    """An image's relative path, POSIX form, as valid UTF-8 (undecodable name bytes escaped):
    its stable identity, which seeds its generators and picks its shard."""
    return display_path(relative.as_posix())


@dataclass
class Plan:
    """The inputs of a run, in a stable order, and the output folder they map into."""

    items: list[WorkItem]
    out: Path
    warnings: list[str] = field(default_factory=list)
    shard: Shard | None = None
    found: int = 0  # images in the inputs, before the shard selection


@dataclass
class InputImage:
    """An input file found by :func:`find_images`: an image by content or by extension."""

    path: Path
    source_format: str | None  # sniffed from the content; None when not an image
    error: F2SError | None  # a problem found while walking (unreadable, symlink loop)
    relative: Path = Path()  # relative to the inputs' common root


def find_images(
    inputs: Sequence[str | Path], recursive: bool = True, exclude: Path | None = None
) -> tuple[list[InputImage], Path, list[str]]:
    """Expand files, folders and glob patterns into images sorted by relative path.

    Returns:
        The images, the root they are relative to, and warnings (skipped folders, ...).

    Raises:
        ConfigError: no input, or an input that does not exist.
    """
    sources = _expand_all(inputs)
    root = _common_root({r for _, r, _ in sources})
    warnings: list[str] = []
    exclude_real = os.path.realpath(exclude) if exclude is not None else None
    return _collect(sources, root, exclude_real, recursive, warnings), root, warnings


def plan_inputs(inputs: Sequence[str | Path], cfg: BatchConfig) -> Plan:
    """Expand files, folders and glob patterns into work items mirrored under the output folder.

    Raises:
        ConfigError: an input does not exist, the output folder is an input folder, or no
            default output folder can be derived.
    """
    sources = _expand_all(inputs)
    rel_root = _common_root({root for _, root, _ in sources})
    out = (cfg.out if cfg.out is not None else _default_out(rel_root)).expanduser().absolute()
    out_real = os.path.realpath(out)
    for path, _, explicit in sources:
        if not explicit and os.path.realpath(path) == out_real:
            raise ConfigError(f"output folder {display_path(out)} is an input folder; use --out")
    if out_real == os.path.realpath(rel_root):
        raise ConfigError(
            f"output folder {display_path(out)} is the input folder; outputs would land beside "
            "the inputs. Choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {display_path(out)} exists and is not a folder")
    warnings: list[str] = []
    images = _collect(sources, rel_root, out_real, cfg.recursive, warnings)
    input_reals = {os.path.realpath(img.path) for img in images}
    items = _assign_outputs(images, out, out_real, cfg.format, input_reals)
    shard = cfg.shard_spec
    # Outputs are named over every input first, so a shard writes what an unsharded run would.
    mine = [item for item in items if shard.contains(item.key)] if shard else items
    return Plan(items=mine, out=out, warnings=warnings, shard=shard, found=len(items))


def _expand_all(inputs: Sequence[str | Path]) -> list[tuple[Path, Path, bool]]:
    if not inputs:
        raise ConfigError("no input given")
    sources: list[tuple[Path, Path, bool]] = []  # (path, root, explicit file?)
    for raw in inputs:
        sources.extend(_expand(str(raw)))
    return sources


def _collect(
    sources: list[tuple[Path, Path, bool]],
    rel_root: Path,
    out_real: str | None,
    recursive: bool,
    warnings: list[str],
) -> list[InputImage]:
    """Walk the sources; dedupe by real path; relative paths against ``rel_root``."""
    images: list[InputImage] = []
    seen: set[str] = set()
    markers: dict[Path, str | None] = {}  # folder -> its f2s output marker, for glob matches
    for path, root, explicit in sources:
        if explicit and out_real and os.path.realpath(path).startswith(out_real + os.sep):
            warnings.append(f"skipped {display_path(path)}: it is inside the output folder")
            continue
        if explicit and _below_output_folder(path, root, markers, warnings):
            continue
        if explicit:
            found = [_candidate(path, explicit=True)]
        else:
            found = list(_walk(path, out_real, recursive, warnings))
        for image in found:
            if image is None:
                continue
            real = os.path.realpath(image.path)
            if real in seen:
                continue
            seen.add(real)
            image.relative = Path(os.path.relpath(image.path, rel_root))
            images.append(image)
    images.sort(key=lambda c: c.relative.as_posix())
    return images


def _expand(raw: str) -> list[tuple[Path, Path, bool]]:
    """(path, root, is-explicit-file) for one command-line input."""
    path = Path(os.path.abspath(Path(raw).expanduser()))  # absolute, symlinks kept
    if os.path.lexists(path):
        if path.is_dir():
            return [(path, path, False)]
        return [(path, path.parent, True)]
    if glob.has_magic(raw):
        matches = sorted(glob.glob(os.path.expanduser(raw), recursive=True))
        prefix = Path(os.path.abspath(_glob_prefix(raw)))
        found = [(Path(os.path.abspath(m)), prefix, True) for m in matches if not Path(m).is_dir()]
        if not found:
            raise ConfigError(f"no file matches the pattern {raw!r}")
        return found
    raise ConfigError(f"input not found: {display_path(raw)}")


def _glob_prefix(pattern: str) -> Path:
    parts = Path(os.path.expanduser(pattern)).parts
    prefix: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        prefix.append(part)
    return Path(*prefix) if prefix else Path(".")


def _common_root(roots: set[Path]) -> Path:
    absolute = [os.path.abspath(r) for r in roots]
    return Path(absolute[0] if len(absolute) == 1 else os.path.commonpath(absolute))


def _default_out(rel_root: Path) -> Path:
    rel_root = Path(os.path.abspath(rel_root))
    if rel_root.parent == rel_root:
        raise ConfigError(
            "cannot derive an output folder for inputs at the filesystem root; use --out"
        )
    return rel_root.parent / f"{rel_root.name}_f2s"


def _walk(
    folder: Path, out_real: str | None, recursive: bool, warnings: list[str]
) -> Iterator[InputImage | None]:
    """Image files under ``folder``: hidden entries, the output folder and symlink loops skipped."""
    visited: set[tuple[int, int]] = set()
    try:
        st = folder.stat()
        visited.add((st.st_dev, st.st_ino))
    except OSError as err:
        raise ConfigError(
            f"cannot read input folder {display_path(folder)}: {err.strerror}"
        ) from err

    def on_error(err: OSError) -> None:
        warnings.append(f"cannot list {display_path(err.filename)}: {err.strerror}")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            sub = os.path.join(dirpath, name)
            if name.startswith(".") or not recursive:
                continue
            if os.path.realpath(sub) == out_real:
                continue
            marker = _output_marker(sub)
            if marker is not None:
                warnings.append(_output_folder_warning(sub, marker))
                continue
            try:
                st = os.stat(sub)
            except OSError as err:
                warnings.append(f"skipped folder {display_path(sub)}: {os_error_reason(err)}")
                continue
            if (st.st_dev, st.st_ino) in visited:
                warnings.append(f"skipped folder {display_path(sub)}: symlink loop")
                continue
            visited.add((st.st_dev, st.st_ino))
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            yield _candidate(Path(dirpath, name), explicit=False)


def _output_marker(folder: str) -> str | None:
    """The file that marks ``folder`` as an f2s output folder (its summary or lock), if any."""
    for name in (SUMMARY_NAME, LOCK_NAME):
        if os.path.isfile(os.path.join(folder, name)):
            return name
    return None


def _output_folder_warning(folder: str | Path, marker: str) -> str:
    return (
        f"skipped folder {display_path(folder)}: an f2s output folder (it holds {marker}); "
        "its outputs are not inputs"
    )


def _below_output_folder(
    path: Path, root: Path, markers: dict[Path, str | None], warnings: list[str]
) -> bool:
    """Whether a glob match lies in an f2s output folder below the pattern's fixed prefix
    ``root`` (a file named on the command line has no folder below it); warns once a folder."""
    for folder in path.parents:
        if folder == root or root not in folder.parents:
            return False
        if folder not in markers:
            markers[folder] = marker = _output_marker(str(folder))
            if marker is not None:
                warnings.append(_output_folder_warning(folder, marker))
        if markers[folder] is not None:
            return True
    return False


def _candidate(path: Path, explicit: bool) -> InputImage | None:
    """Sniff a file by content; None for a non-image found by walking (ignored, not an error)."""
    looks_like_image = path.suffix.lower() in IMAGE_SUFFIXES
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block reads
            raise InputError("not a regular file")
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except (OSError, InputError) as err:
        if not (explicit or looks_like_image):
            return None
        reason = os_error_reason(err) if isinstance(err, OSError) else str(err)
        return InputImage(path, None, InputError(f"cannot read: {reason}"))
    fmt = sniff_format(head)
    if fmt is None and not (explicit or looks_like_image):
        return None
    return InputImage(path, fmt, None)


def os_error_reason(err: OSError) -> str:
    """A short reason for an OS error on an input or output file, for its report and the log
    (the path is not in it: the caller names the file)."""
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or str(err)


def _assign_outputs(
    candidates: list[InputImage], out: Path, out_real: str, fmt_option: str, input_reals: set[str]
) -> list[WorkItem]:
    """Output paths ``<out>/<relative dir>/<stem><ext>``, unique case-insensitively.

    Inputs whose names fold to one output (``a.jpg``, ``a.png``; ``b.jpg``, ``b.JPG``) get the
    source extension in the name (``a_jpg.png``, ``a_png.png``); one whose name is still taken
    (by an input named so, or by case alone) adds a hash of its relative path
    (``b_jpg_1a2b3c.png``); one taken even then fails. Plain names are claimed first, then in
    relative-path order, so reruns name every image the same. An output that would land
    outside ``out`` (``..`` after a wildcard, a symlink in the output tree) is refused.
    """
    formats = [format_for(fmt_option, c.source_format or "PNG") for c in candidates]
    plain = [
        c.relative.parent / (c.relative.stem + EXTENSIONS[f])
        for c, f in zip(candidates, formats, strict=True)
    ]
    shared = Counter(_folded(p) for p in plain)
    owners: dict[str, InputImage] = {}  # folded output path -> the input that writes it
    targets: dict[int, Path | F2SError] = {}
    for i in sorted(range(len(candidates)), key=lambda i: shared[_folded(plain[i])] > 1):
        cand, ext = candidates[i], EXTENSIONS[formats[i]]
        escape = _escape_error(cand, out / plain[i], out_real)
        if escape is not None:
            targets[i] = escape
            continue
        names = [plain[i]]
        if shared[_folded(plain[i])] > 1:
            named = f"{cand.relative.stem}_{cand.relative.suffix.lstrip('.').lower() or 'noext'}"
            digest = hashlib.sha256(relative_key(cand.relative).encode()).hexdigest()[:6]
            parent = cand.relative.parent
            names = [parent / f"{named}{ext}", parent / f"{named}_{digest}{ext}"]
        free = next((n for n in names if _folded(n) not in owners), None)
        if free is None:
            other = owners[_folded(names[-1])]
            targets[i] = InputError(
                f"its output name {display_path(names[-1])} is taken by the output of "
                f"{display_path(other.path)} (names must differ case-insensitively); rename one"
            )
            continue
        owners[_folded(free)] = cand
        targets[i] = out / free
    items = []
    for i, cand in enumerate(candidates):
        target, error = targets[i], cand.error
        if isinstance(target, F2SError):
            items.append(WorkItem(cand.path, cand.relative, None, None, formats[i], target))
            continue
        if error is None and os.path.realpath(target) in input_reals:
            error = InputError(f"output {display_path(target)} would overwrite an input file")
        report = target.with_name(target.name + REPORT_SUFFIX)
        items.append(WorkItem(cand.path, cand.relative, target, report, formats[i], error))
    return items


def _folded(relative: Path) -> str:
    """An output path as a case- and normalization-insensitive file system would compare it."""
    return unicodedata.normalize("NFC", relative_key(relative)).casefold()


def _escape_error(cand: InputImage, target: Path, out_real: str) -> InputError | None:
    """Why ``target`` (or its report), resolved, would lie outside the output folder; None
    when both lie inside it."""
    report = target.with_name(target.name + REPORT_SUFFIX)
    if all(os.path.realpath(p).startswith(out_real + os.sep) for p in (target, report)):
        return None
    if os.pardir in cand.relative.parts:
        why = "its path leaves the input folder (a '..' after a wildcard)"
    else:
        why = "a symlink in the output folder points elsewhere"
    return InputError(
        f"refused: its output {display_path(os.path.normpath(target))} would be outside "
        f"--out: {why}; name it by a path inside the inputs"
    )
