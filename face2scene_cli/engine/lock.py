"""The output folder's lock, and the stale temp files a killed run leaves behind.

One run (or one shard of a split run) owns an output folder at a time: a ``flock`` the
kernel drops when the process dies, so a killed run never blocks its rerun. While holding it,
a run deletes the temp files of atomic writes that a killed run left.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from face2scene_cli.config import Shard
from face2scene_cli.engine.plan import Plan, WorkItem, os_error_reason
from face2scene_cli.engine.report import LOCK_NAME, display_path
from face2scene_cli.errors import LockError, OutputFolderError
from face2scene_cli.io.images import TEMP_GLOB, TEMP_MARK


def cannot_write(out: Path, err: OSError) -> OutputFolderError:
    """The error for an output folder that an OS call refused (``err``)."""
    return OutputFolderError(f"cannot write --out {display_path(out)}: {os_error_reason(err)}")


def check_writable(out: Path) -> None:
    """Create ``out``, open its lock file (without locking it) and write, fsync and delete a
    small temp file in it, so a folder that cannot be created, locked or written (read-only,
    full, not ours) is refused before any work.

    Raises:
        OutputFolderError: the folder cannot be created, locked or written (the reason named).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        os.close(os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644))
        fd, probe = tempfile.mkstemp(prefix=f".write-check{TEMP_MARK}", dir=out)
        try:
            os.write(fd, b"f2s")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise cannot_write(out, err) from None


@contextmanager
def output_lock(out: Path, command: str, shard: Shard | None = None) -> Iterator[None]:
    """Lock the output folder for the run: an exclusive ``flock`` on ``<out>/.f2s.lock``, or
    for a shard a shared one plus an exclusive lock of its own shard, so disjoint shards of
    one split run side by side while an unsharded run, the same shard twice or shards of a
    different split are refused.

    The kernel drops the lock when the process dies, so a killed run never blocks the rerun.

    Raises:
        LockError: another live process holds the lock (its pid, host and command are named).
        OutputFolderError: the folder or its lock files cannot be created or written.
    """
    info = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "shard": str(shard) if shard else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fds = [os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)]
    except OSError as err:
        raise cannot_write(out, err) from None
    try:
        if shard is None:
            _take_lock(fds[0], fcntl.LOCK_EX, out, _shard_holders(out))
            _write_holder(fds[0], info, out)
        else:
            _take_lock(fds[0], fcntl.LOCK_SH, out)
            try:
                fds.append(os.open(_shard_lock_path(out, shard), os.O_RDWR | os.O_CREAT, 0o644))
            except OSError as err:
                raise cannot_write(out, err) from None
            _take_lock(fds[1], fcntl.LOCK_EX, out)
            _write_holder(fds[1], info, out)
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


def _write_holder(fd: int, info: str, out: Path) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
    except OSError as err:
        raise cannot_write(out, err) from None


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
        targets = {str(p) for item in items for p in (item.output, item.report) if p is not None}
    removed = 0
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if not Path(name).match(TEMP_GLOB):
                continue
            target = os.path.join(dirpath, name[1 : name.index(TEMP_MARK)])
            if targets is None or target in targets:
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


@contextmanager
def locked_output(plan: Plan, command: str) -> Iterator[None]:
    """Hold the output lock (of the plan's shard) and clear the stale temp files it owns."""
    with output_lock(plan.out, command, plan.shard):
        remove_stale_temp_files(plan.out, plan.items if plan.shard else None)
        yield
