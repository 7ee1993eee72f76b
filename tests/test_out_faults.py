"""An output folder that cannot be created, locked or written, and a disk that fills mid-run
(issue 17, case 3). The OS errors are raised in-process (no mount needed), each case < 20 s."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import SUMMARY_VALIDATOR, reports_in, temp_files
from PIL import Image
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.engine import local
from face2scene_cli.engine.report import SUMMARY_NAME
from face2scene_cli.pipelines.degrade import DegradePipeline

DEGRADE = ("--noise-sigma", "5", "-b", "1", "--io-workers", "1")


def f2s(*args: str | Path) -> Any:
    """Run ``f2s`` in this process, so the patched OS calls apply."""
    return CliRunner().invoke(app, [str(a) for a in args])


def _inputs(root: Path, count: int) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")


def _fail_open(monkeypatch: pytest.MonkeyPatch, under: Path, name: str | None, code: int) -> None:
    """``os.open`` of a path in ``under`` (only files called ``name``, if given) fails with
    ``code`` and ``os.mkdir`` in it with EROFS: a read-only or unwritable folder."""
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path: Any) -> bool:
        p = Path(os.fsdecode(path)).absolute()
        return p.is_relative_to(under) and (name is None or p.name == name)

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        (None, errno.EROFS, "Read-only file system"),  # a read-only --out
        (None, errno.ENOSPC, "No space left on device"),  # a full one
        (".f2s.lock", errno.EACCES, "permission denied"),  # a lock file we may not open
    ],
)
def test_unwritable_out_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str | None, code: int, reason: str
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _inputs(src, 2)
    out.mkdir()
    built = []  # the job (its models) must not even be built
    monkeypatch.setattr(DegradePipeline, "__init__", lambda *args: built.append(args))
    _fail_open(monkeypatch, out, name, code)
    res = f2s("degrade", src, "--out", out, *DEGRADE)
    assert res.exit_code == 2, res.output
    assert res.stderr == f"f2s: error: cannot write --out {out}: {reason}\n"
    assert built == [] and [p.name for p in out.iterdir()] in ([], [".f2s.lock"])


def test_out_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _inputs(src, 1)
    (tmp_path / "file").write_text("a file, not a folder")
    res = f2s("degrade", src, "--out", tmp_path / "file" / "out", *DEGRADE)
    assert res.exit_code == 2, res.output
    assert res.stderr == f"f2s: error: cannot write --out {tmp_path}/file/out: Not a directory\n"


def _disk_fills_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> None:
    """The engine's atomic writes succeed ``writes`` times, then fail with ENOSPC."""
    real, left, lock = local.atomic_write_bytes, [writes], threading.Lock()

    def write(path: Path, data: bytes) -> None:
        with lock:
            left[0] -= 1
            full = left[0] < 0
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(local, "atomic_write_bytes", write)


@pytest.mark.parametrize(("writes", "done"), [(4, 2), (12, 6)])
def test_disk_full_mid_run_fails_images_and_prints_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes: int, done: int
) -> None:
    """Each image is an output and a report (2 writes): the images after the disk filled
    fail one by one; the summary that cannot be written goes to stderr; exit 1."""
    src, out = tmp_path / "in", tmp_path / "out"
    _inputs(src, 6)
    _disk_fills_after(monkeypatch, writes)
    res = f2s("degrade", src, "--out", out, *DEGRADE)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert not (out / SUMMARY_NAME).exists() and temp_files(out) == []
    assert len(reports_in(out)) == done
    assert f"f2s: error: cannot write the summary {out / SUMMARY_NAME}: No space left" in res.stderr
    start = res.stderr.index("{\n")
    summary = json.loads(res.stderr[start : res.stderr.index("\n}\n", start) + 2])
    SUMMARY_VALIDATOR.validate(summary)
    assert summary["exit_code"] == 1
    assert summary["counts"] == {
        "total": 6, "done": done, "skipped": 0, "failed": 6 - done, "pending": 0,
    }  # fmt: skip
    assert all("No space left on device" in f["message"] for f in summary["failures"])

    shutil.rmtree(out)
    res = f2s("degrade", src, "--out", out, *DEGRADE, "--log-json")  # one JSON object a line
    assert res.exit_code == 1, res.output
    lines = [json.loads(line) for line in res.stderr.splitlines()]
    assert lines[-2]["event"] == "run_summary" and lines[-2]["summary"]["exit_code"] == 1
