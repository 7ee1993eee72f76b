"""Scaling out: the Ray engine (one local 2-CPU Ray for the session), shards and their merge."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from faults import inject_into_ray_workers
from helpers import TESTS, reports_in, run_f2s, summary_of, temp_files
from PIL import Image
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.config import Shard
from face2scene_cli.engine.lock import output_lock
from face2scene_cli.engine.report import summary_name
from face2scene_cli.errors import ConfigError

PARAMETRIC = ("--noise-sigma", "5", "--blur-sigma", "0.8")


@pytest.fixture(scope="session")
def ray_cluster() -> Any:
    """One local Ray with 2 CPUs for every test of this file (loopback only); its workers
    inherit ``tests/`` on ``PYTHONPATH`` so they can import :mod:`faults`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
        )
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def f2s(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    """Run ``f2s`` in this process (so it joins the session's Ray)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _tiles(small_photo_dir: Path, root: Path, count: int) -> list[Path]:
    """``count`` 48x48 crops of the real photos, in two folders."""
    photos = [Image.open(p).convert("RGB") for p in sorted(small_photo_dir.rglob("*.*"))]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        x, y = (i * 11) % (photo.width - 48), (i * 7) % (photo.height - 48)
        paths.append(folder / f"img{i:02d}.png")
        photo.crop((x, y, x + 48, y + 48)).save(paths[-1])
    return paths


def _without_run(report: dict[str, Any]) -> dict[str, Any]:
    """A report without the run-varying fields (and the output path, which names the folder)."""
    rest = {k: v for k, v in report.items() if k != "run"}
    rest["output"] = {k: v for k, v in (report["output"] or {}).items() if k != "path"}
    return rest


def _assert_same_results(a: Path, b: Path) -> None:
    reports_a, reports_b = reports_in(a), reports_in(b)
    assert len(reports_a) == len(reports_b) > 0
    for path_a, report_a in reports_a.items():
        path_b = b / path_a.relative_to(a)
        assert _without_run(report_a) == _without_run(reports_b[path_b]), path_a
        if report_a["output"] is None:
            continue
        out_a, out_b = Path(report_a["output"]["path"]), Path(reports_b[path_b]["output"]["path"])
        pixels_a = np.asarray(Image.open(out_a), dtype=np.int32)
        pixels_b = np.asarray(Image.open(out_b), dtype=np.int32)
        assert pixels_a.shape == pixels_b.shape
        assert np.abs(pixels_a - pixels_b).max() <= 1, out_a


def test_ray_engine_matches_local_engine(
    ray_cluster: Any, small_photo_dir: Path, tmp_path: Path
) -> None:
    """Same seed, same outputs and reports (degrade, 2 workers); a rerun skips every image."""
    src = tmp_path / "in"
    _tiles(small_photo_dir, src, 8)
    common = ("degrade", src, "--seed", "5", "-b", "3", "--threads", "1")
    local = f2s(*common, "--out", tmp_path / "local")
    assert local.exit_code == 0, local.output
    res = f2s(*common, "--out", tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert res.exit_code == 0, res.output
    _assert_same_results(tmp_path / "local", tmp_path / "ray")
    summary = summary_of(tmp_path / "ray")
    assert summary["run"]["engine"] == "ray" and summary["run"]["workers"] == 2
    assert summary["counts"] == summary_of(tmp_path / "local")["counts"]
    assert summary["settings_hash"] == summary_of(tmp_path / "local")["settings_hash"]

    rerun = f2s(*common, "--out", tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert rerun.exit_code == 0, rerun.output
    assert summary_of(tmp_path / "ray")["counts"]["skipped"] == 8


def test_ray_restore_matches_local_restore(
    ray_cluster: Any, small_photo_dir: Path, tmp_path: Path
) -> None:
    """``f2s restore`` (faces, models loaded by the worker) gives the local engine's results;
    the gallery's warnings are reported once per run (not per worker or batch) by both."""
    people, refs = tmp_path / "people", tmp_path / "refs"
    people.mkdir()
    refs.mkdir()
    for name in ("t1.jpg", "astronaut.png"):
        (people / name).write_bytes((small_photo_dir / name).read_bytes())
    (refs / "astronaut.png").write_bytes((small_photo_dir / "astronaut.png").read_bytes())
    (refs / "notes.txt").write_text("not a photo")
    restore = ("restore", people, "--refs", refs, "--threads", "1", "-b", "1")
    assert f2s(*restore, "--out", tmp_path / "local").exit_code == 0
    res = f2s(*restore, "--out", tmp_path / "ray", "--engine", "ray", "--workers", "1")
    assert res.exit_code == 0, res.output
    _assert_same_results(tmp_path / "local", tmp_path / "ray")
    assert any(r["faces"] for r in reports_in(tmp_path / "ray").values())
    assert res.stderr.count("warning: --refs notes.txt: not an image, skipped") == 1
    for out in ("local", "ray"):
        assert summary_of(tmp_path / out)["warnings"] == ["--refs notes.txt: not an image, skipped"]


def test_ray_worker_crash_is_retried_without_losing_or_redoing_images(
    ray_cluster: Any, small_photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker is killed once after its 3rd image: Ray restarts it and retries the batch,
    which finds the images the dead worker wrote and does not write them again."""
    inject_into_ray_workers(monkeypatch, "exit-after:3")
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = _tiles(small_photo_dir, src, 12)
    jsonl = tmp_path / "reports.jsonl"
    res = f2s(
        "degrade", src, "--out", out, *PARAMETRIC, "--engine", "ray", "--workers", "2",
        "-b", "2", "--report-jsonl", jsonl,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = summary_of(out)
    assert summary["counts"] == {"total": 12, "done": 12, "skipped": 0, "failed": 0, "pending": 0}
    assert summary["run"]["worker_restarts"] >= 1
    assert summary["run"]["recovered"] >= 1  # written by a dead worker, reported, not redone
    reports = reports_in(out)
    assert sorted(r["input"]["relative_path"] for r in reports.values()) == sorted(
        p.relative_to(src).as_posix() for p in inputs
    )
    assert all(r["status"] == "done" for r in reports.values())
    assert {r["run"]["run_id"] for r in reports.values()} == {summary["run"]["run_id"]}
    assert len(list(out.rglob("*.png"))) == 12 and temp_files(out) == []
    streamed = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["input"]["relative_path"] for r in streamed) == sorted(
        r["input"]["relative_path"] for r in reports.values()
    )  # one event per image


def test_ray_poison_image_is_reported_failed(
    ray_cluster: Any, small_photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image that kills its worker every time is tried a bounded number of times, then
    reported failed; the rest of its batch is done."""
    inject_into_ray_workers(monkeypatch, "crash-on:a/img01.png")
    src, out = tmp_path / "in", tmp_path / "out"
    _tiles(small_photo_dir, src, 4)
    res = f2s(
        "degrade", src, "--out", out, *PARAMETRIC, "--engine", "ray", "--workers", "1",
        "-b", "4",
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    reports = {r["input"]["relative_path"]: r for r in reports_in(out).values()}
    assert len(reports) == 4
    assert reports["a/img01.png"]["status"] == "failed"
    assert "worker died" in reports["a/img01.png"]["error"]["message"]
    assert not (out / "a" / "img01.png").exists()
    assert all(r["status"] == "done" for k, r in reports.items() if k != "a/img01.png")
    summary = summary_of(out)
    assert summary["counts"]["failed"] == 1 and summary["counts"]["done"] == 3
    assert summary["failures"][0]["path"].endswith("a/img01.png")


def _ray_processes(temp_dir: str, wait: float = 10.0) -> list[str]:
    """Command lines of the live processes of the Ray whose temp dir is ``temp_dir`` (once
    ``wait`` s passed without them going)."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if temp_dir in cmdline:
                found.append(cmdline)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("fault", "code", "name"),
    [
        ("signal-after:4", 143, "SIGTERM"),
        pytest.param("interrupt-after:4", 130, "SIGINT", marks=pytest.mark.slow),  # same path
    ],
)
def test_ray_signal_stops_cleanly_with_a_summary_that_matches_the_disk(
    small_photo_dir: Path, tmp_path: Path, fault: str, code: int, name: str
) -> None:
    """A run that starts its own Ray, signalled after 4 images: our handler (not Ray's) stops
    it, exit 143/130 with no traceback or stack dump, the summary counts exactly the reports
    its workers wrote, and the Ray processes it started are gone."""
    src, out = tmp_path / "in", tmp_path / "out"
    _tiles(small_photo_dir, src, 20)
    ray_tmp = tempfile.mkdtemp(prefix="f2s-ray-", dir="/tmp")  # short: Ray's socket paths
    try:
        res = run_f2s(
            "degrade", src, "--out", out, *PARAMETRIC, "--engine", "ray", "--workers", "1",
            "--threads", "1", "-b", "1", env={"RAY_TMPDIR": ray_tmp}, fault=fault,
        )  # fmt: skip
        assert res.returncode == code, res.stderr[-4000:]
        assert "Traceback" not in res.stderr and " received at time=" not in res.stderr
        summary = summary_of(out)
        assert summary["interrupted"] == name and summary["exit_code"] == code
        counts, reports = summary["counts"], reports_in(out)
        assert counts["done"] == len(reports) >= 4 and counts["failed"] == 0
        assert counts["done"] + counts["pending"] == 20
        assert {r["run"]["run_id"] for r in reports.values()} == {summary["run"]["run_id"]}
        assert _ray_processes(ray_tmp) == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_shards_cover_every_image_once_and_merge(small_photo_dir: Path, tmp_path: Path) -> None:
    """Shards 0/3, 1/3, 2/3 on one --out: each image once, per-shard summaries, one merge."""
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = _tiles(small_photo_dir, src, 15)
    (src / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    full = tmp_path / "full"
    assert f2s("degrade", src, "--out", full, *PARAMETRIC).exit_code == 1
    with output_lock(out, "degrade", Shard(0, 3)):  # shard 0 running: disjoint shards may run
        for i in (1, 2):
            res = f2s("degrade", src, "--out", out, *PARAMETRIC, "--shard", f"{i}/3")
            assert res.exit_code in (0, 1), res.output
        for clash in ("0/3", "1/4", None):
            shard = ("--shard", clash) if clash else ()
            assert f2s("degrade", src, "--out", out, *PARAMETRIC, *shard).exit_code == 3
    assert f2s("degrade", src, "--out", out, *PARAMETRIC, "--shard", "0/3").exit_code in (0, 1)

    expected = sorted([*(p.relative_to(src).as_posix() for p in inputs), "b/broken.jpg"])
    summaries = [summary_of_shard(out, f"{i}/3") for i in range(3)]
    totals = [s["counts"]["total"] for s in summaries]
    assert totals == [sum(Shard(i, 3).contains(r) for r in expected) for i in range(3)]
    assert sum(totals) == len(expected) and min(totals) > 0
    reports = reports_in(out)
    assert sorted(r["input"]["relative_path"] for r in reports.values()) == expected
    _assert_same_results(full, out)  # the shards wrote what one unsharded run writes

    merged = f2s("report", "merge", out)
    assert merged.exit_code == 0, merged.output
    summary = summary_of(out)
    assert summary["counts"] == {"total": 16, "done": 15, "skipped": 0, "failed": 1, "pending": 0}
    assert summary["exit_code"] == 1 and summary["failures"][0]["path"].endswith("broken.jpg")
    assert sorted(p["shard"] for p in summary["run"]["parts"]) == ["0/3", "1/3", "2/3"]
    assert summary["settings_hash"] == summary_of(full)["settings_hash"]

    summary_path = out / summary_name(Shard(2, 3))
    summary_path.unlink()
    res = f2s("report", "merge", out)
    assert res.exit_code == 2 and "missing ['2/3']" in res.output


def summary_of_shard(out: Path, shard: str) -> dict[str, Any]:
    path = out / summary_name(Shard.parse(shard))
    data = json.loads(path.read_text())
    assert data["run"]["shard"] == shard
    return data


def test_shard_partition_is_stable_and_complete() -> None:
    keys = [f"dir{i % 7}/photo{i}.jpg" for i in range(3000)]
    owners = [[Shard(i, 4).contains(k) for i in range(4)] for k in keys]
    assert all(sum(o) == 1 for o in owners)
    counts = [sum(o[i] for o in owners) for i in range(4)]
    assert min(counts) > 600  # roughly even: 750 each
    assert Shard.parse("3/4") == Shard(3, 4) and str(Shard(3, 4)) == "3/4"
    for bad in ("4/4", "1", "-1/3", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="I/N"):
            Shard.parse(bad)


def test_engine_ray_without_ray_says_how_to_install(
    small_photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    res = f2s("degrade", small_photo_dir, "--out", tmp_path / "out", "--engine", "ray")
    assert res.exit_code == 4
    assert "pip install 'face2scene[ray]'" in res.output
    assert not (tmp_path / "out").exists()
