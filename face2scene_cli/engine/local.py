"""The batch engine every file-walking command shares.

It turns inputs (files, folders, globs) into a plan whose output tree mirrors the input tree,
locks the output folder, skips images that are already done (output + valid report whose input
hash and settings match), decodes and encodes on worker threads while the compute stage runs
batches, writes every output and report atomically, records per-file failures and goes on, and
stops cleanly on SIGINT/SIGTERM after the work in flight. It never prints: it reports progress
through an observer callback owned by the caller.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from face2scene_cli.config import BatchConfig, Shard
from face2scene_cli.engine.report import (
    REPORT_SUFFIX,
    ImageReport,
    RunInfo,
    RunSummary,
    display_path,
    read_report,
    summary_name,
)
from face2scene_cli.errors import ConfigError, ExitCode, F2SError, InputError, LockError
from face2scene_cli.hashing import file_sha256, json_sha256
from face2scene_cli.io.images import (
    _TEMP_MARK,  # .<target name>.f2s-tmp-<pid>-<hex>
    EXTENSIONS,
    TEMP_GLOB,
    Image,
    atomic_write_bytes,
    encode_image,
    format_for,
    read_image,
    sniff_format,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif"}
)
LOCK_NAME = ".f2s.lock"
FAULT_ENV = "F2S_FAULT"
_SNIFF_BYTES = 32


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class WorkItem:
    """One input image and where its output and report go."""

    source: Path
    relative: Path  # mirrored under the output folder; also the per-image seed key
    output: Path
    report: Path
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
    items = _assign_outputs(images, out, cfg.format, input_reals)
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
    for path, _, explicit in sources:
        if explicit and out_real and os.path.realpath(path).startswith(out_real + os.sep):
            warnings.append(f"skipped {display_path(path)}: it is inside the output folder")
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
            try:
                st = os.stat(sub)
            except OSError as err:
                warnings.append(f"skipped folder {display_path(sub)}: {_reason(err)}")
                continue
            if (st.st_dev, st.st_ino) in visited:
                warnings.append(f"skipped folder {display_path(sub)}: symlink loop")
                continue
            visited.add((st.st_dev, st.st_ino))
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if not name.startswith("."):
                yield _candidate(Path(dirpath, name), explicit=False)


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
        reason = _reason(err) if isinstance(err, OSError) else str(err)
        return InputImage(path, None, InputError(f"cannot read: {reason}"))
    fmt = sniff_format(head)
    if fmt is None and not (explicit or looks_like_image):
        return None
    return InputImage(path, fmt, None)


def _reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or str(err)


def _assign_outputs(
    candidates: list[InputImage], out: Path, fmt_option: str, input_reals: set[str]
) -> list[WorkItem]:
    """Output paths: ``<out>/<relative dir>/<stem><ext>``; same-stem siblings get the source
    extension in the name (``a_jpg.png``, ``a_png.png``) so they cannot collide."""
    planned: list[tuple[InputImage, str, Path]] = []
    for cand in candidates:
        fmt = format_for(fmt_option, cand.source_format or "PNG")
        planned.append(
            (cand, fmt, out / cand.relative.parent / (cand.relative.stem + EXTENSIONS[fmt]))
        )
    counts: dict[Path, int] = {}
    for _, _, target in planned:
        counts[target] = counts.get(target, 0) + 1
    items = []
    for cand, fmt, target in planned:
        if counts[target] > 1:
            src_ext = cand.relative.suffix.lstrip(".").lower() or "noext"
            target = target.with_name(f"{cand.relative.stem}_{src_ext}{EXTENSIONS[fmt]}")
        error = cand.error
        if error is None and os.path.realpath(target) in input_reals:
            error = InputError(f"output {display_path(target)} would overwrite an input file")
        items.append(
            WorkItem(
                source=cand.path,
                relative=cand.relative,
                output=target,
                report=target.with_name(target.name + REPORT_SUFFIX),
                format=fmt,
                error=error,
            )
        )
    return items


# --------------------------------------------------------------------------- locking


@contextmanager
def output_lock(out: Path, command: str, shard: Shard | None = None) -> Iterator[None]:
    """Lock the output folder for the run: an exclusive ``flock`` on ``<out>/.f2s.lock``, or
    for a shard a shared one plus an exclusive lock of its own shard, so disjoint shards of
    one split run side by side while an unsharded run, the same shard twice or shards of a
    different split are refused.

    The kernel drops the lock when the process dies, so a killed run never blocks the rerun.

    Raises:
        LockError: another live process holds the lock (its pid, host and command are named).
    """
    out.mkdir(parents=True, exist_ok=True)
    info = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "shard": str(shard) if shard else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    fds = [os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)]
    try:
        if shard is None:
            _take_lock(fds[0], fcntl.LOCK_EX, out, _shard_holders(out))
            _write_holder(fds[0], info)
        else:
            _take_lock(fds[0], fcntl.LOCK_SH, out)
            fds.append(os.open(_shard_lock_path(out, shard), os.O_RDWR | os.O_CREAT, 0o644))
            _take_lock(fds[1], fcntl.LOCK_EX, out)
            _write_holder(fds[1], info)
            other = [h for n, h in _shard_holders(out, skip=shard).items() if n != shard.count]
            if other:  # checked after taking ours, so of two racing splits neither proceeds
                raise LockError(
                    f"output folder {display_path(out)} is in use by shards of another split "
                    f"({other[0]}); every shard sharing an --out must use the same N"
                )
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _shard_lock_path(out: Path, shard: Shard) -> Path:
    return out / f"{LOCK_NAME}.shard-{shard.index}-of-{shard.count}"


def _take_lock(fd: int, mode: int, out: Path, holders: dict[int, str] | None = None) -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        holder = holder or next(iter((holders or {}).values()), "") or "unknown process"
        raise LockError(
            f"output folder {display_path(out)} is in use by another f2s run ({holder}); "
            "wait for it to finish or choose another --out"
        ) from None


def _write_holder(fd: int, info: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)


def _shard_holders(out: Path, skip: Shard | None = None) -> dict[int, str]:
    """Shard count -> holder of a shard lock that a live run holds (``skip``: our own)."""
    held: dict[int, str] = {}
    for path in out.glob(f"{LOCK_NAME}.shard-*-of-*"):
        index, _, count = path.name.rsplit(".shard-", 1)[1].partition("-of-")
        if not (index.isdigit() and count.isdigit()) or Shard(int(index), int(count)) == skip:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held[int(count)] = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
    return held


def remove_stale_temp_files(out: Path, items: list[WorkItem] | None = None) -> int:
    """Delete temp files a killed run left in the output tree (call while holding the lock);
    with ``items`` (a shard's), only the temp files of their outputs and reports."""
    targets = None
    if items is not None:
        targets = {str(p) for item in items for p in (item.output, item.report)}
    removed = 0
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if not Path(name).match(TEMP_GLOB):
                continue
            target = os.path.join(dirpath, name[1 : name.index(_TEMP_MARK)])
            if targets is None or target in targets:
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


# --------------------------------------------------------------------------- stopping


class StopFlag:
    """Records SIGINT/SIGTERM so the engine can finish the file in flight, then stop."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self) -> str | None:
        return self.signal_name

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Catch SIGINT/SIGTERM while the block runs (main thread only); a second signal
        falls through to the previous handler."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum: int, frame: Any) -> None:
            self.signal_name = signal.Signals(signum).name
            signal.signal(signum, previous[signum])

        for s in previous:
            signal.signal(s, handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# --------------------------------------------------------------------------- jobs


@dataclass
class LoadedImage:
    """A decoded input handed to a job's compute stage."""

    item: WorkItem
    image: Image
    sha256: str
    nbytes: int
    timings: dict[str, float]


@dataclass
class ExtraOutput:
    """A file a job writes beside an image's output (face crops, a comparison image)."""

    path: Path
    image: Image
    format: str  # png | jpg | webp | tiff


@dataclass
class Processed:
    """What a job returns for one image: the output image and the report fields it fills."""

    image: Image
    fields: dict[str, Any] = field(
        default_factory=dict
    )  # faces / degradation / applied_degradation
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extras: list[ExtraOutput] = field(default_factory=list)  # encoded and written atomically


class ImageJob(Protocol):
    """The compute side of a command: the engine feeds it batches of decoded images."""

    command: str
    device: str

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output pixels (hashed to decide what is done)."""
        ...

    def models(self) -> list[dict[str, str]]:
        """Models used, as ``{"name", "sha256"}``."""
        ...

    def warnings(self) -> list[str]:
        """Warnings about the run as a whole (e.g. reference photos skipped), reported once
        per run (stderr and the run summary), not per image."""
        ...

    def process(self, batch: list[LoadedImage], seed: int) -> list[Processed | F2SError]:
        """Outputs for a batch, one per input, in order; an F2SError marks one failed image."""
        ...


# --------------------------------------------------------------------------- running


@dataclass
class ItemEvent:
    """Progress event for one finished item: status is done | skipped | failed; ``recovered``:
    done by an earlier try of this run (a worker that died after writing it)."""

    item: WorkItem
    status: str
    report: ImageReport | None
    index: int
    total: int
    recovered: bool = False


Observer = Callable[[ItemEvent], None]


def fault_hook() -> tuple[str, str] | None:
    """Test-only fault injection, read from ``F2S_FAULT``: ``exit-after:N`` (``os._exit(137)``,
    a crash) or ``signal-after:N`` (SIGTERM to itself), fired once N images are done, or
    ``crash-on:REL`` (``os._exit(137)`` whenever the image with relative path REL is computed:
    a poison image)."""
    kind, _, arg = os.environ.get(FAULT_ENV, "").partition(":")
    if (kind in ("exit-after", "signal-after") and arg.isdigit()) or (kind == "crash-on" and arg):
        return kind, arg
    return None


class BatchRun:
    """State of one run: the local loop, and the steps a Ray worker and its driver share."""

    def __init__(
        self,
        plan: Plan,
        job: ImageJob,
        cfg: BatchConfig,
        observer: Observer | None,
        stop: Callable[[], str | None],
        run_info: RunInfo,
        fault: tuple[str, str] | None = None,
    ) -> None:
        self.plan, self.job, self.cfg = plan, job, cfg
        self.observer, self.stop = observer, stop
        self.run_info = run_info
        self.settings = {
            **job.settings(),
            "command": job.command,
            "format": cfg.format,
            "quality": cfg.quality,
            "seed": cfg.seed,
            "models": job.models(),
        }
        self.hash = json_sha256(self.settings)
        self.counts = {"total": len(plan.items), "done": 0, "skipped": 0, "failed": 0, "pending": 0}
        self.failures: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.finished = 0
        self.fault = fault

    # ----- per-item steps (reader threads)

    def load(self, item: WorkItem) -> LoadedImage | ItemEvent | tuple[WorkItem, F2SError, dict]:
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        if item.error is not None:
            return item, item.error, info
        try:
            data = item.source.read_bytes()
        except OSError as err:
            return item, InputError(f"cannot read: {_reason(err)}"), info
        sha = hashlib.sha256(data).hexdigest()
        info = {"sha256": sha, "bytes": len(data)}
        done = None if self.cfg.overwrite else self._done_report(item, sha)
        if done is not None:
            if done["run"]["run_id"] == self.run_info.run_id:  # an earlier try of a retried batch
                return ItemEvent(item, "done", ImageReport(**done), 0, 0, recovered=True)
            return ItemEvent(item, "skipped", None, 0, len(self.plan.items))
        t1 = time.perf_counter()
        try:
            image = read_image(item.source, max_pixels=self.cfg.max_pixels, data=data)
        except F2SError as err:
            return item, err, info
        t2 = time.perf_counter()
        return LoadedImage(item, image, sha, len(data), {"read": t1 - t0, "decode": t2 - t1})

    def _done_report(self, item: WorkItem, input_sha: str) -> dict[str, Any] | None:
        """The report of an image already done with these settings and this input, whose
        output is intact; None when the image must be (re)done."""
        report = read_report(item.report)
        if not report or report.get("status") != "done" or report.get("settings_hash") != self.hash:
            return None
        if (report.get("input") or {}).get("sha256") != input_sha:
            return None
        output = report.get("output") or {}
        try:
            if item.output.stat().st_size != output.get("bytes"):
                return None
            return report if file_sha256(item.output) == output.get("sha256") else None
        except OSError:
            return None

    # ----- compute (main thread)

    def compute(self, batch: list[LoadedImage]) -> list[Processed | F2SError]:
        poison = self.fault[1] if self.fault and self.fault[0] == "crash-on" else None
        if poison is not None and any(loaded.item.key == poison for loaded in batch):
            os._exit(137)
        try:
            results = self.job.process(batch, self.cfg.seed)
        except F2SError as err:
            return [err] * len(batch) if len(batch) == 1 else [self._single(b) for b in batch]
        except Exception as err:  # an unexpected failure: isolate the image that causes it
            if len(batch) == 1:
                logger.debug("processing %s failed", batch[0].item.source, exc_info=True)
                return [F2SError(f"internal error: {type(err).__name__}: {err}")]
            return [self._single(b) for b in batch]
        if len(results) != len(batch):
            raise RuntimeError(
                f"{self.job.command} job returned {len(results)} results for {len(batch)}"
            )
        return results

    def _single(self, loaded: LoadedImage) -> Processed | F2SError:
        return self.compute([loaded])[0]

    # ----- writing (writer threads)

    def write(self, loaded: LoadedImage, result: Processed | F2SError) -> None:
        """Write the output and report of one computed image, or its failure report."""
        if isinstance(result, F2SError):
            info = {"sha256": loaded.sha256, "bytes": loaded.nbytes}
            self.write_failed(loaded.item, result, info, loaded)
        else:
            self.write_done(loaded, result)

    def write_done(self, loaded: LoadedImage, result: Processed) -> None:
        item = loaded.item
        t0 = time.perf_counter()
        try:
            data = encode_image(result.image, item.format, self.cfg.quality)
            t1 = time.perf_counter()
            if os.path.realpath(item.output) == os.path.realpath(item.source):
                raise InputError("refusing to overwrite the input file")
            item.output.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(item.output, data)
            for extra in result.extras:
                extra.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(
                    extra.path, encode_image(extra.image, extra.format, self.cfg.quality)
                )
        except (OSError, F2SError) as err:
            error = (
                err
                if isinstance(err, F2SError)
                else InputError(f"cannot write output: {_reason(err)}")
            )
            self.write_failed(
                item, error, {"sha256": loaded.sha256, "bytes": loaded.nbytes}, loaded
            )
            return
        t2 = time.perf_counter()
        timings = {**loaded.timings, **result.timings, "encode": t1 - t0, "write": t2 - t1}
        img = result.image
        output = {
            "path": display_path(item.output),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "format": item.format,
            "width": img.width,
            "height": img.height,
            "channels": img.channels,
            "bit_depth": img.bit_depth,
        }
        report = self._report(
            item,
            "done",
            self._input_info(loaded),
            output,
            None,
            loaded.image.warnings + result.warnings,
            timings,
            result.fields,
        )
        self._finish(item, report)

    def write_failed(
        self, item: WorkItem, error: F2SError, info: dict, loaded: LoadedImage | None = None
    ) -> None:
        input_info = (
            self._input_info(loaded)
            if loaded
            else {
                "path": display_path(item.source),
                "relative_path": item.key,
                "sha256": info.get("sha256"),
                "bytes": info.get("bytes"),
            }
        )
        err = {"type": type(error).__name__, "message": str(error) or type(error).__name__}
        warnings = loaded.image.warnings if loaded else []
        report = self._report(item, "failed", input_info, None, err, warnings, {}, {})
        self._finish(item, report)

    def _input_info(self, loaded: LoadedImage) -> dict[str, Any]:
        img = loaded.image
        return {
            "path": display_path(loaded.item.source),
            "relative_path": loaded.item.key,
            "sha256": loaded.sha256,
            "bytes": loaded.nbytes,
            "format": img.source_format,
            "width": img.width,
            "height": img.height,
            "channels": img.channels,
            "bit_depth": img.bit_depth,
        }

    def _report(
        self,
        item: WorkItem,
        status: str,
        input_info: dict,
        output: dict | None,
        error: dict | None,
        warnings: list[str],
        timings: dict[str, float],
        fields: dict[str, Any],
    ) -> ImageReport:
        run = asdict(self.run_info)
        run["timings"] = {k: round(v, 4) for k, v in timings.items()}
        if timings:
            run["timings"]["total"] = round(sum(timings.values()), 4)
        return ImageReport(
            command=self.job.command,
            status=status,
            input=input_info,
            output=output,
            error=error,
            warnings=list(warnings),
            settings_hash=self.hash,
            settings=self.settings,
            models=self.job.models(),
            seed=self.cfg.seed,
            device=self.job.device,
            run=run,
            **fields,
        )

    def _finish(self, item: WorkItem, report: ImageReport) -> None:
        try:
            item.report.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(item.report, report.to_json().encode())
        except OSError as err:
            report.status = "failed"
            report.error = {
                "type": "OutputError",
                "message": f"cannot write report: {_reason(err)}",
            }
        self.settled(ItemEvent(item, report.status, report, 0, 0))

    def settled(self, event: ItemEvent) -> None:
        """Count a finished item (written, skipped, or done by an earlier try of this run)
        and tell the observer."""
        with self.lock:
            self.counts[event.status] += 1
            if event.status == "failed" and event.report is not None:
                error = event.report.error or {}
                self.failures.append({"path": display_path(event.item.source), **error})
            self.finished += 1
            event.index, event.total = self.finished, len(self.plan.items)
            if self.observer is not None:
                self.observer(event)
            fault = self.fault
            after = fault is not None and fault[0] != "crash-on" and event.status == "done"
            if after and self.counts["done"] == int(fault[1]):
                if fault[0] == "exit-after":
                    os._exit(137)
                os.kill(os.getpid(), signal.SIGTERM)

    # ----- the loop

    def execute(self) -> RunSummary:
        started = time.perf_counter()
        cfg = self.cfg
        items = self.plan.items
        prefetch = cfg.batch_size + 2 * cfg.io_workers
        interrupted: str | None = None
        with (
            ThreadPoolExecutor(cfg.io_workers, thread_name_prefix="f2s-read") as readers,
            ThreadPoolExecutor(cfg.io_workers, thread_name_prefix="f2s-write") as writers,
        ):
            queue: deque[Future] = deque()
            writes: deque[Future] = deque()
            next_item = 0
            batch: list[LoadedImage] = []

            def flush() -> None:
                results = self.compute(batch)
                for loaded, result in zip(batch, results, strict=True):
                    writes.append(writers.submit(self.write, loaded, result))
                batch.clear()
                while len(writes) > prefetch:  # bound memory held by pending encodes
                    writes.popleft().result()

            while next_item < len(items) or queue:
                while next_item < len(items) and len(queue) < prefetch:
                    queue.append(readers.submit(self.load, items[next_item]))
                    next_item += 1
                if self.stop():
                    interrupted = self.stop()
                    break
                outcome = queue.popleft().result()
                if isinstance(outcome, ItemEvent):
                    self.settled(outcome)
                elif isinstance(outcome, LoadedImage):
                    batch.append(outcome)
                else:
                    item, error, info = outcome
                    writes.append(writers.submit(self.write_failed, item, error, info))
                inputs_left = bool(queue) or next_item < len(items)
                if len(batch) >= cfg.batch_size or (batch and not inputs_left):
                    flush()
            for fut in queue:
                fut.cancel()
            for fut in writes:
                fut.result()
            interrupted = interrupted or self.stop()
        return self.summary(interrupted, time.perf_counter() - started)

    def run_items(self, items: list[WorkItem]) -> None:
        """Load, compute and write ``items`` as one batch (a Ray worker's unit of work); every
        item reaches the observer."""
        with ThreadPoolExecutor(self.cfg.io_workers, thread_name_prefix="f2s-io") as pool:
            batch: list[LoadedImage] = []
            for outcome in pool.map(self.load, items):
                if isinstance(outcome, ItemEvent):
                    self.settled(outcome)
                elif isinstance(outcome, LoadedImage):
                    batch.append(outcome)
                else:
                    self.write_failed(*outcome)
            if batch:
                list(pool.map(self.write, batch, self.compute(batch)))

    def summary(self, interrupted: str | None, seconds: float) -> RunSummary:
        """The run summary from the counts so far (images not settled are pending)."""
        self.counts["pending"] = (
            self.counts["total"]
            - self.counts["done"]
            - self.counts["skipped"]
            - self.counts["failed"]
        )
        if interrupted == "SIGTERM":
            code = ExitCode.TERMINATED
        elif interrupted:
            code = ExitCode.INTERRUPTED
        elif self.counts["failed"]:
            code = ExitCode.FAILED_FILES
        else:
            code = ExitCode.OK
        run = asdict(self.run_info)
        run["timings"] = {"total": round(seconds, 4)}
        return RunSummary(
            command=self.job.command,
            out=display_path(self.plan.out),
            counts=dict(self.counts),
            failures=self.failures,
            warnings=[*self.plan.warnings, *self.job.warnings()],  # the planner's, then the job's
            settings_hash=self.hash,
            settings=self.settings,
            models=self.job.models(),
            exit_code=int(code),
            interrupted=interrupted,
            run=run,
        )


def run_batch(
    plan: Plan,
    job: ImageJob,
    cfg: BatchConfig,
    observer: Observer | None = None,
    stop: Callable[[], str | None] = lambda: None,
) -> RunSummary:
    """Process every item of ``plan`` with ``job`` under a lock on the output folder.

    Returns the run summary (also written to the output folder, one per shard).

    Raises:
        LockError: another run holds the output folder (or this shard of it).
    """
    import torch

    torch.set_num_threads(cfg.torch_threads)
    with locked_output(plan, job.command):
        run_info = RunInfo.new("local", str(plan.shard) if plan.shard else None)
        summary = BatchRun(plan, job, cfg, observer, stop, run_info, fault_hook()).execute()
        write_summary(plan, summary)
    return summary


@contextmanager
def locked_output(plan: Plan, command: str) -> Iterator[None]:
    """Hold the output lock (of the plan's shard) and clear the stale temp files it owns."""
    with output_lock(plan.out, command, plan.shard):
        remove_stale_temp_files(plan.out, plan.items if plan.shard else None)
        yield


def write_summary(plan: Plan, summary: RunSummary) -> Path:
    """Write the run summary (``f2s-summary.json``, or the shard's) atomically; its path."""
    path = plan.out / summary_name(plan.shard)
    atomic_write_bytes(path, summary.to_json().encode())
    return path
