"""Issue 17: outputs never escape ``--out`` or overwrite each other; inputs f2s cannot decode
and old f2s output folders inside the inputs are named, not processed silently."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from helpers import reports_in, run_f2s, summary_of
from PIL import Image

from face2scene_cli.config import BatchConfig
from face2scene_cli.engine.plan import plan_inputs
from face2scene_cli.io.images import read_image

PARAMETRIC = ("--noise-sigma", "5", "--blur-sigma", "0.8")


def _photo(small_photo_dir: Path) -> Image.Image:
    return Image.open(small_photo_dir / "astronaut.png").convert("RGB").resize((64, 64))


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_dotdot_after_a_wildcard_never_writes_outside_out(
    small_photo_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    photo = _photo(small_photo_dir)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "deep").mkdir()
    photo.save(tmp_path / "deep" / "x.jpg")
    photo.save(tmp_path / "in" / "ok.jpg")
    before = _files_under(tmp_path)
    monkeypatch.chdir(tmp_path)
    pattern = "in/s*/../../deep/*.jpg"
    res = run_f2s("degrade", pattern, "in/ok.jpg", "--out", "o", *PARAMETRIC, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    written = _files_under(tmp_path) - before
    assert written and all(p.is_relative_to(tmp_path / "o") for p in written), written
    summary = summary_of(tmp_path / "o")
    assert summary["counts"]["done"] == 1 and summary["counts"]["failed"] == 1
    (failure,) = summary["failures"]
    assert failure["path"].endswith("deep/x.jpg") and "outside --out" in failure["message"]
    assert "outside --out" in res.stderr


def test_an_output_folder_symlinked_elsewhere_is_refused(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _photo(small_photo_dir).save(src / "sub" / "x.png")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    (item,) = plan_inputs([src], BatchConfig(out=out)).items
    assert item.output is None and item.report is None
    assert item.error is not None and "outside --out" in str(item.error)


def test_output_names_are_unique_case_insensitively_and_reruns_are_stable(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    photo = _photo(small_photo_dir)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.jpg", "a.png", "a_jpg.png", "b.jpg", "b.JPG"):
        photo.save(src / name, "JPEG" if name.lower().endswith(".jpg") else "PNG")
    for fmt in ("png", "same"):
        out = tmp_path / f"out-{fmt}"
        plan = plan_inputs([src], BatchConfig(out=out, format=fmt))
        names = [i.output.relative_to(out).as_posix().casefold() for i in plan.items]
        assert len(set(names)) == 5 and all(i.error is None for i in plan.items), names
        by_input = {i.relative.as_posix(): i.output.name for i in plan.items}
        assert by_input["a_jpg.png"] == "a_jpg.png"  # a plain name is never taken by a renaming
        assert by_input["b.JPG"] == f"b_jpg.{fmt.replace('same', 'jpg')}"
        assert by_input["a.png"] == ("a_png.png" if fmt == "png" else "a.png")
        res = run_f2s("degrade", src, "--out", out, "--format", fmt, *PARAMETRIC)
        assert res.returncode == 0, res.stderr
        assert len(reports_in(out)) == 5
        assert len([p for p in out.iterdir() if p.suffix in (".png", ".jpg")]) == 5
        again = run_f2s("degrade", src, "--out", out, "--format", fmt, *PARAMETRIC)
        assert summary_of(out)["counts"] | {"total": 5} == {
            "total": 5,
            "done": 0,
            "skipped": 5,
            "failed": 0,
            "pending": 0,
        }, again.stderr


def test_an_unresolvable_name_collision_fails_the_image_and_names_the_other(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    photo = _photo(small_photo_dir)
    src = tmp_path / "in"
    src.mkdir()
    hashed = hashlib.sha256(b"b.jpg").hexdigest()[:6]
    for name in ("b.JPG", "b.jpg"):
        photo.save(src / name, "JPEG")
    photo.save(src / f"b_jpg_{hashed}.png")
    plan = plan_inputs([src], BatchConfig(out=tmp_path / "out", format="png"))
    items = {i.relative.as_posix(): i for i in plan.items}
    assert items["b.JPG"].output.name == "b_jpg.png"
    assert items[f"b_jpg_{hashed}.png"].output.name == f"b_jpg_{hashed}.png"
    refused = items["b.jpg"]
    assert refused.output is None and refused.report is None
    assert f"b_jpg_{hashed}.png" in str(refused.error) and "taken" in str(refused.error)


def test_phone_heic_and_web_avif_in_a_folder_are_decoded(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    src = tmp_path / "in"
    src.mkdir()
    photo = _photo(small_photo_dir).convert("RGB")
    photo.save(src / "ok.png")
    photo.save(src / "phone.HEIC", format="HEIF", quality=95)
    photo.save(src / "web.avif", format="AVIF", quality=95)
    out = tmp_path / "out"
    res = run_f2s("degrade", src, "--out", out, *PARAMETRIC)
    assert res.returncode == 0, res.stderr
    assert summary_of(out)["counts"]["done"] == 3
    clean = np.asarray(photo, np.float64)
    for source, output in (("phone.HEIC", "phone.png"), ("web.avif", "web.png")):
        decoded = read_image(src / source).pixels.astype(np.float64)
        assert decoded.shape == clean.shape
        assert 10 * np.log10(255**2 / np.mean((decoded - clean) ** 2)) > 30  # lossy, the photo
        assert (out / output).is_file()  # "same" writes PNG for formats f2s does not write


def test_an_old_output_folder_inside_the_inputs_is_skipped(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _photo(small_photo_dir).save(src / "ok.png")
    first = run_f2s("degrade", src, "--out", src / "old", *PARAMETRIC)
    assert first.returncode == 0, first.stderr
    res = run_f2s("degrade", src, "--out", tmp_path / "new", *PARAMETRIC)
    assert res.returncode == 0, res.stderr
    summary = summary_of(tmp_path / "new")
    assert summary["counts"]["done"] == 1
    (warning,) = [w for w in summary["warnings"] if "output folder" in w]
    assert str(src / "old") in warning and str(src / "old") in res.stderr


def test_a_glob_skips_old_output_folders_below_its_prefix(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    (src / "old" / "sub").mkdir(parents=True)
    _photo(small_photo_dir).save(src / "ok.png")
    _photo(small_photo_dir).save(src / "old" / "sub" / "ok.png")
    (src / "old" / "f2s-summary.json").write_text("{}")
    plan = plan_inputs([str(src / "**" / "*.png")], BatchConfig(out=tmp_path / "out"))
    assert [i.relative.as_posix() for i in plan.items] == ["ok.png"]
    assert len([w for w in plan.warnings if str(src / "old") in w]) == 1
    named = plan_inputs([src / "old" / "sub" / "ok.png"], BatchConfig(out=tmp_path / "o2"))
    assert len(named.items) == 1  # a file named on the command line is always an input
