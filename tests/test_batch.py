"""The batch engine through ``f2s degrade``: bad inputs, resume, locking, crashes, signals."""

from __future__ import annotations

import builtins
import errno
import gc
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import reports_in, run_f2s, summary_of, temp_files
from PIL import Image
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.config import BatchConfig
from face2scene_cli.engine.job import build_job
from face2scene_cli.engine.lock import output_lock
from face2scene_cli.engine.plan import plan_inputs
from face2scene_cli.errors import ConfigError

PARAMETRIC = ("--noise-sigma", "5", "--blur-sigma", "0.8")


def _photo(small_photo_dir: Path, name: str = "astronaut.png") -> Image.Image:
    return Image.open(small_photo_dir / name).convert("RGB")


def _bomb_png() -> bytes:
    """A valid PNG whose header claims 100000x100000 pixels (a few dozen bytes on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _bad_input_tree(root: Path, photo: Image.Image) -> dict[str, str]:
    """Every bad input the engine must survive; returns name -> expected status."""
    root.mkdir(parents=True)
    expected = {}
    (root / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "failed"
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["truncated.jpg"] = "failed"
    (root / "notes.jpg").write_text("this is not a photo\n")
    expected["notes.jpg"] = "failed"
    (root / "bomb.png").write_bytes(_bomb_png())
    expected["bomb.png"] = "failed"
    arr16 = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(arr16).save(root / "deep16.png")
    expected["deep16.png"] = "done"
    photo.convert("CMYK").save(root / "cmyk.jpg", quality=90)
    expected["cmyk.jpg"] = "done"
    rgba = photo.convert("RGBA")
    alpha = np.zeros(photo.size[::-1], np.uint8)
    alpha[:, : photo.size[0] // 2] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "alpha.png")
    expected["alpha.png"] = "done"
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    expected["palette.png"] = "done"
    photo.convert("L").save(root / "gray.jpg", quality=90)
    expected["gray.jpg"] = "done"
    wide = photo.resize((photo.width, photo.height // 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    wide.save(root / "rotated.jpg", quality=90, exif=exif)
    expected["rotated.jpg"] = "done"
    loop_file = root / "selfloop.jpg"
    loop_file.symlink_to(loop_file.name)
    expected["selfloop.jpg"] = "failed"
    (root / "nested").mkdir()
    (root / "nested" / "loop").symlink_to("..", target_is_directory=True)
    photo.save(root / "nested" / "inner.png")
    expected["nested/inner.png"] = "done"
    photo.save(os.fsdecode(bytes(root / "caf") + b"\xe9.png"))
    expected[os.fsdecode(b"caf\xe9.png")] = "done"
    (root / ".hidden.png").write_bytes(b"")  # hidden: never an input
    (root / "README.txt").write_text("notes")  # not an image by content or extension: ignored
    return expected


def test_bad_inputs_survive_in_one_run(small_photo_dir: Path, tmp_path: Path) -> None:
    photo = _photo(small_photo_dir)
    src = tmp_path / "in"
    expected = _bad_input_tree(src, photo)
    out = src / "restored"  # output folder inside the input folder
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file() and not p.is_symlink()}

    res = run_f2s("degrade", src, "--out", out, *PARAMETRIC, "--max-pixels", "50000000")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    reports = {r["input"]["relative_path"]: r for r in reports_in(out).values()}
    assert set(reports) == {os.fsencode(k).decode("utf-8", "backslashreplace") for k in expected}
    for name, status in expected.items():
        report = reports[os.fsencode(name).decode("utf-8", "backslashreplace")]
        assert report["status"] == status, (name, report["error"])
        if status == "failed":
            assert report["error"]["message"] and report["output"] is None
            assert f"{name}: " in res.stderr  # the per-file error names the file
    assert "100000x100000" in reports["bomb.png"]["error"]["message"]
    assert "symlink loop" in reports["selfloop.jpg"]["error"]["message"]
    assert reports["deep16.png"]["output"]["bit_depth"] == 16
    assert reports["gray.jpg"]["output"]["channels"] == 1
    assert reports["cmyk.jpg"]["output"]["channels"] == 3 and reports["cmyk.jpg"]["warnings"]
    assert reports["palette.png"]["output"]["channels"] == 3
    rot = reports["rotated.jpg"]["output"]
    assert (rot["width"], rot["height"]) == (photo.height // 2, photo.width)  # upright
    with Image.open(out / "rotated.png") as im:
        assert im.getexif().get(0x0112, 1) == 1
    with Image.open(out / "alpha.png") as im:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im)[..., 3], alpha_of(src / "alpha.png"))
    assert (out / os.fsdecode(b"caf\xe9.png")).is_file()

    summary = summary_of(out)
    assert summary["counts"]["failed"] == sum(s == "failed" for s in expected.values())
    assert any("symlink loop" in w for w in summary["warnings"])
    # Inputs untouched; a rerun skips the done images and finds no output as input.
    after = {p: p.read_bytes() for p in before}
    assert after == before
    res2 = run_f2s("degrade", src, "--out", out, *PARAMETRIC, "--max-pixels", "50000000")
    assert res2.returncode == 1
    counts = summary_of(out)["counts"]
    assert counts["skipped"] == sum(s == "done" for s in expected.values())
    assert counts["total"] == len(expected)


def alpha_of(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)[..., 3]


def test_unreadable_file_is_reported(
    small_photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file without read permission fails with a clear error; the others are done.

    Root reads any file whatever its mode, so under root the permission error is injected
    at ``open`` for that one path (the engine's handling is what is under test)."""
    locked = small_photo_dir / "locked.png"
    _photo(small_photo_dir).save(locked)
    locked.chmod(0o000)
    if os.geteuid() == 0:
        real_open = builtins.open

        def guarded_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            if isinstance(file, (str, os.PathLike)) and os.fspath(file) == os.fspath(locked):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["degrade", str(small_photo_dir), "--out", str(out), *PARAMETRIC])
    assert res.exit_code == 1, res.output
    assert "locked.png: cannot read: permission denied" in res.output
    reports = {r["input"]["relative_path"]: r for r in reports_in(out).values()}
    assert reports["locked.png"]["status"] == "failed"
    assert sum(r["status"] == "done" for r in reports.values()) == len(reports) - 1 == 6


def _many_inputs(small_photo_dir: Path, root: Path, count: int = 30) -> list[Path]:
    """``count`` small crops of real photos, in two folders."""
    photos = [Image.open(p).convert("RGB") for p in sorted(small_photo_dir.rglob("*.*"))]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        x, y = (i * 7) % max(1, photo.width - 64), (i * 5) % max(1, photo.height - 64)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:02d}.png"
        photo.crop((x, y, x + 64, y + 64)).save(path)
        paths.append(path)
    return paths


def test_crash_then_resume_finishes_every_image_once(small_photo_dir: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = _many_inputs(small_photo_dir, src)
    crashed = run_f2s(
        "degrade",
        src,
        "--out",
        out,
        "--preset",
        "mixed",
        "--batch-size",
        "2",
        fault="exit-after:11",
    )
    assert crashed.returncode == 137, crashed.stderr
    done_before = {p: p.stat() for p in out.rglob("*.png")}
    valid_before = [r for r in reports_in(out).values() if r["status"] == "done"]
    assert 0 < len(valid_before) < len(inputs)
    assert len(valid_before) >= 11

    rerun = run_f2s("degrade", src, "--out", out, "--preset", "mixed", "--batch-size", "2")
    assert rerun.returncode == 0, rerun.stderr
    reports = reports_in(out)
    assert len(reports) == len(inputs)
    assert all(r["status"] == "done" for r in reports.values())
    outputs = sorted(out.rglob("*.png"))
    assert len(outputs) == len(inputs)
    for inp in inputs:
        assert (out / inp.relative_to(src)).is_file()
    finished_before = {Path(r["output"]["path"]) for r in valid_before}
    for path in finished_before:  # finished outputs were not rewritten
        before, now = done_before[path], path.stat()
        assert (before.st_ino, before.st_mtime_ns) == (now.st_ino, now.st_mtime_ns)
    counts = summary_of(out)["counts"]
    assert counts["skipped"] == len(finished_before)
    assert counts["done"] == len(inputs) - len(finished_before)
    assert temp_files(out) == []


def test_sigterm_finishes_in_flight_and_exits_143(small_photo_dir: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = _many_inputs(small_photo_dir, src, count=16)
    res = run_f2s(
        "degrade",
        src,
        "--out",
        out,
        "--preset",
        "noise15",
        "--batch-size",
        "1",
        fault="signal-after:3",
    )
    assert res.returncode == 143, res.stderr
    summary = summary_of(out)
    assert summary["interrupted"] == "SIGTERM"
    assert summary["exit_code"] == 143
    counts = summary["counts"]
    assert counts["done"] >= 3 and counts["pending"] > 0
    assert counts["done"] + counts["pending"] == len(inputs)
    assert len(reports_in(out)) == counts["done"]
    assert temp_files(out) == []


def test_resume_rules(small_photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_f2s("degrade", small_photo_dir, "--out", out, *PARAMETRIC, "--seed", "1")
    assert first.returncode == 0, first.stderr
    n = summary_of(out)["counts"]["done"]
    assert n == 6

    again = run_f2s("degrade", small_photo_dir, "--out", out, *PARAMETRIC, "--seed", "1")
    assert summary_of(out)["counts"]["skipped"] == n, again.stderr

    # A changed input, a missing report and a corrupted output are redone; the rest skipped.
    Image.open(small_photo_dir / "coffee.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        small_photo_dir / "coffee.png"
    )
    (out / "camera.png.json").unlink()
    (out / "astronaut.png").write_bytes(b"\x89PNG broken")
    run_f2s("degrade", small_photo_dir, "--out", out, *PARAMETRIC, "--seed", "1")
    counts = summary_of(out)["counts"]
    assert (counts["done"], counts["skipped"]) == (3, n - 3)

    # A different seed changes the settings hash: everything is redone.
    run_f2s("degrade", small_photo_dir, "--out", out, *PARAMETRIC, "--seed", "2")
    assert summary_of(out)["counts"]["done"] == n
    run_f2s("degrade", small_photo_dir, "--out", out, *PARAMETRIC, "--seed", "2", "--overwrite")
    assert summary_of(out)["counts"]["done"] == n


def test_output_is_deterministic_and_order_independent(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    run_f2s(
        "degrade",
        small_photo_dir,
        "--out",
        a,
        "--seed",
        "3",
        "--batch-size",
        "1",
        "--io-workers",
        "1",
    )
    (small_photo_dir / "coffee.png").unlink()  # a different file set and batching
    run_f2s(
        "degrade",
        small_photo_dir,
        "--out",
        b,
        "--seed",
        "3",
        "--batch-size",
        "4",
        "--io-workers",
        "3",
    )
    for out_b in b.rglob("*.png"):
        assert out_b.read_bytes() == (a / out_b.relative_to(b)).read_bytes(), out_b


def test_lock_refuses_a_second_run(small_photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out, "degrade"):
        res = run_f2s("degrade", small_photo_dir, "--out", out, *PARAMETRIC)
    assert res.returncode == 3
    assert f"pid {os.getpid()}" in res.stderr.replace('"pid": ', "pid ")
    assert not list(out.rglob("*.png"))


def test_planning_mirrors_tree_and_refuses_out_equal_in(small_photo_dir: Path) -> None:
    plan = plan_inputs([small_photo_dir], BatchConfig(format="png"))
    assert plan.out == small_photo_dir.parent / "photos_f2s"
    rels = [i.relative.as_posix() for i in plan.items]
    assert "sub/rocket.jpg" in rels and rels == sorted(rels)
    item = next(i for i in plan.items if i.relative.name == "rocket.jpg")
    assert item.output == plan.out / "sub" / "rocket.png"
    assert item.report == plan.out / "sub" / "rocket.png.json"
    with pytest.raises(ConfigError, match="input folder"):
        plan_inputs([small_photo_dir], BatchConfig(out=small_photo_dir))
    with pytest.raises(ConfigError, match="not found"):
        plan_inputs([small_photo_dir / "missing"], BatchConfig())
    globbed = plan_inputs([str(small_photo_dir / "**" / "*.jpg")], BatchConfig())
    assert {i.relative.as_posix() for i in globbed.items} == {"t1.jpg", "sub/rocket.jpg"}


def test_same_stem_siblings_get_distinct_outputs(small_photo_dir: Path, tmp_path: Path) -> None:
    photo = _photo(small_photo_dir)
    src = tmp_path / "in"
    src.mkdir()
    photo.save(src / "a.png")
    photo.save(src / "a.jpg")
    plan = plan_inputs([src], BatchConfig(format="png"))
    assert sorted(i.output.name for i in plan.items) == ["a_jpg.png", "a_png.png"]


def test_a_job_is_built_without_cyclic_collections_and_frozen_afterwards() -> None:
    """The build (imports, model loading) runs with the collector paused; what exists then
    is frozen out of later collections; the collector runs again afterwards, also when the
    build fails (a run that cannot load its models still exits through the normal path)."""
    collector_on: list[bool] = []
    made: list[object] = []

    def factory() -> object:
        collector_on.append(gc.isenabled())
        made.append(object())
        return made[-1]

    def failing() -> object:
        collector_on.append(gc.isenabled())
        raise ConfigError("no such model")

    frozen_before = gc.get_freeze_count()
    try:
        assert build_job(factory) is made[0]
        assert collector_on == [False] and gc.isenabled()
        assert gc.get_freeze_count() > frozen_before
        with pytest.raises(ConfigError):
            build_job(failing)
        assert collector_on == [False, False] and gc.isenabled()
    finally:
        gc.unfreeze()
