"""The ``f2s restore`` pipeline on real photos: references per face, batching, paste-back,
extra outputs and one batch of awkward inputs (gray, RGBA, 16-bit, border face, no face,
corrupt file)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from helpers import reports_in, run_f2s, summary_of
from PIL import Image, ImageOps
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.degradations.noise_level import NoiseCurve, estimate_noise_curve
from face2scene_cli.degradations.record import PRESETS
from face2scene_cli.degradations.sampling import apply, image_generator
from face2scene_cli.faces.align import FaceAligner
from face2scene_cli.faces.detect import as_rgb_uint8, create_detector
from face2scene_cli.io.images import Image as F2SImage
from face2scene_cli.io.images import read_image, write_image
from face2scene_cli.io.tensors import from_tensor, to_tensor
from face2scene_cli.pipelines.reading import (
    DegradationReader,
    scene_crop_boxes,
    warp_reference,
)
from face2scene_cli.pipelines.restore import resolve_face_restorer
from face2scene_cli.registry import KINDS
from face2scene_cli.research.sample_data import package_photos
from face2scene_cli.restorers.face.base import FaceRestorer, RestoredFaces
from face2scene_cli.restorers.face.blind import BlindFaceRestorer
from face2scene_cli.restorers.loading import load_fadex
from face2scene_cli.restorers.scene import SceneRestorer

runner = CliRunner()


def _photo(name: str) -> np.ndarray:
    path = next(p.path for p in package_photos() if p.name == name)
    return np.asarray(Image.open(path).convert("RGB"))


def _noisy(rgb: np.ndarray, key: str) -> np.ndarray:
    noisy = apply(to_tensor(rgb), PRESETS["noise15"], image_generator(0, key))
    return from_tensor(noisy, np.uint8)


class RecordingRestorer(FaceRestorer):
    """Records what Stage I is given; returns the crops unchanged (tests plumbing only)."""

    name = "recording"
    version = "1"
    uses_references = True
    agree = True
    calls: ClassVar[list[tuple[tuple[int, ...], list[list[torch.Tensor]] | None]]] = []

    def restore(self, lq: torch.Tensor, references: list[list[torch.Tensor]] | None = None):
        type(self).calls.append((tuple(lq.shape), references))
        n = lq.shape[0]
        used = tuple(len(r) if self.agree else 0 for r in references or [[]] * n)
        return RestoredFaces(lq.clone(), torch.ones(n), self.method, used)


@pytest.fixture
def two_people(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """One photo: the astronaut (noisy) beside a man from the t1 group; refs: the astronaut
    only (a mirrored copy of the clean photo: self-derived, an optimistic setting)."""
    monkeypatch.setenv("F2S_CACHE_DIR", str(tmp_path / "cache"))
    astro = _photo("skimage/astronaut")
    man = np.asarray(Image.fromarray(_photo("insightface/t1")[80:340, 200:450]).resize((256, 266)))
    left = _noisy(np.asarray(Image.fromarray(astro).resize((256, 256))), "astro")
    photo = np.zeros((266, 512, 3), np.uint8)
    photo[:256, :256], photo[:, 256:] = left, man
    photos, refs = tmp_path / "photos", tmp_path / "refs" / "eileen"
    photos.mkdir()
    refs.mkdir(parents=True)
    Image.fromarray(photo).save(photos / "pair.png")
    ImageOps.mirror(Image.fromarray(astro)).resize((400, 400)).save(refs / "flip.png")
    return photos / "pair.png", refs.parent


def _restore_with_refs(photo: Path, refs: Path, out: Path, *options: str) -> None:
    res = runner.invoke(
        app, ["restore", str(photo), "--refs", str(refs), "--out", str(out), "-q", *options]
    )
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    ("restorer", "agree", "reason"),
    [
        ("recording", True, None),
        ("recording", False, "references disagreed"),
        ("blind", True, "restorer ignores references"),
    ],
)
def test_each_face_gets_its_own_persons_references(
    two_people, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restorer, agree, reason
) -> None:
    photo, refs = two_people
    monkeypatch.setitem(KINDS["face_restorer"].builtins, "recording", RecordingRestorer)
    monkeypatch.setattr(RecordingRestorer, "agree", agree)
    monkeypatch.setattr(RecordingRestorer, "calls", [])
    out = tmp_path / "out"
    _restore_with_refs(photo, refs, out, "--face-restorer", restorer)
    report = next(iter(reports_in(out).values()))
    faces = sorted(report["faces"], key=lambda f: f["box"][0])
    assert [f["person"] for f in faces] == ["eileen", None]  # the man is not given her refs
    eileen, man = faces
    assert eileen["references"] == ["eileen/flip.png"] and man["references"] == []
    assert man["blind_reason"] == "unknown person"
    assert eileen["blind_reason"] == reason
    method = "recording/1" if restorer == "recording" else BlindFaceRestorer().method
    assert {f["restorer"] for f in faces} == {method}
    assert report["settings"]["face_restorer"] == method
    assert len(report["settings"]["refs"]) == 64  # the gallery is part of the resume key
    if restorer == "blind":
        assert eileen["references_used"] is None and man["references_used"] is None
        return
    assert eileen["references_used"] == (1 if agree else 0) and man["references_used"] == 0
    given = [refs for _, batch in RecordingRestorer.calls for refs in batch or []]
    assert sorted(len(r) for r in given) == [0, 1]  # per crop: hers, and none for him
    crop_shape = next(shape for shape, batch in RecordingRestorer.calls if batch and batch[0])
    ref = next(r for r in given if r)[0]
    assert ref.shape == crop_shape[1:]  # moved into the native crop's geometry
    assert float(ref.min()) >= 0.0 and float(ref.max()) <= 1.0 and float(ref.std()) > 0.05


class EmbeddingRecorder(RecordingRestorer):
    """A restorer whose identity gate uses ``identity_encoder``: records the reference
    embeddings it is given."""

    name = "embedding-recorder"
    identity_encoder = "dlib-resnet"
    given: ClassVar[list[list[np.ndarray | None] | None]] = []

    def restore(self, lq, references=None, reference_embeddings=None):
        type(self).given.append(reference_embeddings)
        return super().restore(lq, references)


@pytest.mark.parametrize("encoder", ["dlib-resnet", "arcface-buffalo_l"])
def test_the_gallery_s_reference_embeddings_reach_a_gate_of_the_same_encoder(
    two_people, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder: str
) -> None:
    """Stage I's identity gate is handed the gallery's embeddings of the references instead of
    embedding the warped references again, only when it uses the gallery's encoder."""
    from face2scene_cli.faces.identity import DlibResNetEncoder

    photo, refs = two_people
    monkeypatch.setitem(KINDS["face_restorer"].builtins, "embedding-recorder", EmbeddingRecorder)
    monkeypatch.setattr(EmbeddingRecorder, "identity_encoder", encoder)
    monkeypatch.setattr(EmbeddingRecorder, "given", [])
    _restore_with_refs(photo, refs, tmp_path / "out", "--face-restorer", "embedding-recorder")
    assert len(EmbeddingRecorder.given) == 2  # two crop sizes: one call each
    if encoder != "dlib-resnet":  # the gallery embeds with dlib: nothing to share
        assert EmbeddingRecorder.given == [None, None]
        return
    # her crop gets the gallery's embedding of her one reference; the man has none
    hers = [e for call in EmbeddingRecorder.given for e in call or [] if e is not None]
    assert EmbeddingRecorder.given.count(None) == 1
    assert len(hers) == 1 and hers[0].shape == (1, 128)
    ref = np.asarray(Image.open(refs / "eileen" / "flip.png").convert("RGB"))
    enc = DlibResNetEncoder()
    own = enc.embed(ref, create_detector("mtcnn").detect([ref])[0][:1])
    assert float(np.linalg.norm(own - hers[0])) < 0.05  # the reference photo's own face
    # a restorer whose gate is not told which encoder it uses is never handed embeddings
    reader = DegradationReader(load_fadex(), BlindFaceRestorer())
    with pytest.raises(ValueError, match="takes no reference embeddings"):
        reader.read_batch([(ref, [], None)], [[]])


def test_gallery_warnings_reach_stderr_and_the_summary_once(two_people, tmp_path: Path) -> None:
    """Issue 17 case 8: what ``f2s faces`` warns about a gallery, ``f2s restore`` says too, once
    per run (two batches here): a ref linked outside the refs folder (not an image), an
    unreadable ref, the same photo under two people."""
    photo, refs = two_people
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/sh\n")
    (refs / "eileen" / "passwd.jpg").symlink_to(outside)
    (refs / "eileen" / "gone.png").symlink_to(tmp_path / "missing.png")
    (refs / "twin").mkdir()
    (refs / "twin" / "flip.png").write_bytes((refs / "eileen" / "flip.png").read_bytes())
    (photo.parent / "again.png").write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    args = ["restore", str(photo.parent), "--refs", str(refs), "--out", str(out), "-b", "1"]
    res = runner.invoke(app, [*args, "--face-restorer", "blind"])
    assert res.exit_code == 0, res.output
    expected = [
        "eileen/gone.png: cannot read the file",
        "eileen/passwd.jpg: not an image",
        "twin/flip.png: the same photo as eileen/flip.png",
    ]
    lines = [line for line in res.stderr.splitlines() if line.startswith("f2s: warning:")]
    warnings = summary_of(out)["warnings"]
    for text in expected:
        assert sum(text in line for line in lines) == 1, res.stderr
        assert sum(text in w for w in warnings) == 1, warnings


def test_references_are_warped_into_the_native_crop_by_the_landmarks() -> None:
    astro = _photo("skimage/astronaut")
    face = create_detector("mtcnn").detect([as_rgb_uint8(astro)])[0][0]
    aligned = to_tensor(FaceAligner(512).align(astro, face).crop)[0]
    x0, y0 = (int(v) - 40 for v in face.box[:2])
    box = (x0, y0, x0 + 176, y0 + 160)
    native = astro[y0 : box[3], x0 : box[2]].astype(np.float64)
    warped = from_tensor(warp_reference(aligned, face, box)[None], np.uint8).astype(np.float64)
    plain = Image.fromarray(from_tensor(aligned[None], np.uint8)).resize((176, 160))
    resized = np.asarray(plain).astype(np.float64)

    def psnr(a: np.ndarray) -> float:
        inner = (slice(30, -30), slice(30, -30))  # the face, away from replicated borders
        return float(10 * np.log10(255.0**2 / np.mean((a[inner] - native[inner]) ** 2)))

    assert warped.shape == native.shape
    assert psnr(warped) > 24.0  # the same photo: only resampling error remains
    assert psnr(warped) > psnr(resized) + 6.0  # geometry matters: a plain resize is far off


def test_auto_face_restorer_follows_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(KINDS["face_restorer"].builtins, "ref-guided", raising=False)
    assert resolve_face_restorer("auto", with_references=True) == "blind"
    monkeypatch.setitem(KINDS["face_restorer"].builtins, "ref-guided", RecordingRestorer)
    assert resolve_face_restorer("auto", with_references=True) == "ref-guided"
    assert resolve_face_restorer("auto", with_references=False) == "blind"
    assert resolve_face_restorer("blind", with_references=True) == "blind"


def test_unknown_face_restorer_is_a_config_error(tmp_path: Path) -> None:
    photo = tmp_path / "a.png"
    Image.fromarray(_photo("skimage/coffee")[:64, :64]).save(photo)
    args = ["restore", str(photo), "--out", str(tmp_path / "o"), "--face-restorer", "nope"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "unknown face restorer 'nope'" in res.output


def test_batch_reading_equals_one_image_at_a_time() -> None:
    """Stage I and FaDeX over the faces of several images at once give each image the same
    reading as reading it alone (crops of one size share a call), noise curve included."""
    images = [_noisy(_photo("skimage/astronaut"), "a"), _photo("insightface/t1")[:, :700]]
    det = create_detector("auto")
    faces = [det.detect([as_rgb_uint8(im)])[0] for im in images]
    assert len(faces[0]) == 1 and len(faces[1]) >= 3
    reader = DegradationReader(load_fadex("fadex-s"), BlindFaceRestorer(), batch_size=2)
    batched, times = reader.read_batch([(im, f, None) for im, f in zip(images, faces, strict=True)])
    assert [set(t) for t in times] == [{"stage1", "fadex", "noise"}] * 2
    # the batch's Stage I time is shared by the crops each image had read: 1 face and 3+
    assert 0 < times[0]["stage1"] * 3 <= times[1]["stage1"]
    for im, f, together in zip(images, faces, batched, strict=True):
        alone = reader.read(im, f)
        assert together.noise_curve == alone.noise_curve == estimate_noise_curve(im)
        assert [r.index for r in together.faces] == [r.index for r in alone.faces]
        np.testing.assert_allclose(together.code, alone.code, atol=1e-5)
        assert together.estimates.to_dict() == pytest.approx(
            alone.estimates.to_dict(), rel=1e-4, abs=1e-4
        )
    assert 8 <= batched[0].estimates.noise_sigma <= 25  # the truth is 15/255


def test_scene_crops_spread_over_the_range_of_detail() -> None:
    """A photo whose left half is flat (but as noisy as the rest) is read on both halves, the
    windows ranked by detail, not by noise; bit depth and gray do not change the choice."""
    coffee = _photo("skimage/coffee")[:192, :384]  # 2 x 4 windows of 96 px
    flat = coffee.copy()
    flat[:, :192] = 128
    noisy = _noisy(flat, "flat")
    every = scene_crop_boxes(noisy, 96, 8)
    assert len(set(every)) == 8 and {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in every} == {(96, 96)}
    assert all(b[0] >= 192 for b in every[:4]) and all(b[0] < 192 for b in every[4:])
    assert scene_crop_boxes(noisy, 96, 20) == every  # never more than the image holds
    four = scene_crop_boxes(noisy, 96, 4)
    assert four == [every[1], every[3], every[5], every[7]]  # ranks 1, 3, 5, 7 of 8
    assert scene_crop_boxes(noisy.astype(np.uint16) * 257, 96, 4) == four
    gray = np.asarray(Image.fromarray(noisy).convert("L"))[..., None]
    assert [b[0] >= 192 for b in scene_crop_boxes(gray, 96, 4)] == [True, True, False, False]
    thin = scene_crop_boxes(noisy[:60], 96, 4)  # the window shrinks to 56 px
    assert len(thin) == 4 and {(y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in thin} == {(2, 56, 56)}
    assert scene_crop_boxes(noisy[:12], 96, 4) == []


def test_an_image_without_a_face_is_read_off_scene_crops() -> None:
    """No face: the code and estimates come from scene crops restored by the blind restorer
    (whatever the face restorer), and read the noise that is there; none when disabled."""
    noisy = _noisy(_photo("skimage/chelsea"), "c")
    reader = DegradationReader(load_fadex("fadex-s"), RecordingRestorer())
    RecordingRestorer.calls.clear()
    reading = reader.read(noisy, [])
    assert reading.source == "scene" and reading.faces == []
    assert reading.restorer == "blind-nlm/1" and not RecordingRestorer.calls
    assert len(reading.scene_crops) == 8 and reading.readings == reading.scene_crops
    assert [c.crop_box for c in reading.scene_crops] == scene_crop_boxes(noisy, 96, 8)
    assert float(np.linalg.norm(reading.code)) == pytest.approx(1.0, abs=1e-5)
    assert 10 <= reading.estimates.noise_sigma <= 20  # the truth is 15/255
    report = reading.to_report()
    assert report["source"] == "scene" and len(report["scene_crops"]) == 8
    none = DegradationReader(load_fadex("fadex-s"), BlindFaceRestorer(), scene_crops=0)
    unread = none.read(noisy, [])
    assert unread.source == "blind" and unread.code is None and unread.to_report() is None


def test_the_scene_restorer_is_given_the_noise_curve_read_off_the_photo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scene model with noise levels is conditioned on the curve ``f2s restore`` reads off
    the whole photo: the one its report gives."""
    seen: list[NoiseCurve | None] = []
    restore = SceneRestorer.restore

    def recording(self, image, tokens=None, *args, noise=None, **kwargs):
        seen.append(noise)
        return restore(self, image, tokens, *args, noise=noise, **kwargs)

    monkeypatch.setattr(SceneRestorer, "restore", recording)
    photos = tmp_path / "photos"
    photos.mkdir()
    noisy = _noisy(_photo("skimage/chelsea"), "curve")
    Image.fromarray(noisy).save(photos / "cat.png")
    res = runner.invoke(app, ["restore", str(photos), "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    assert seen == [estimate_noise_curve(noisy)]
    report = json.loads((tmp_path / "out" / "cat.png.json").read_text())
    assert report["degradation"]["noise_curve"] == seen[0].to_report()
    assert 12 <= seen[0].at(128) <= 18  # the truth is 15/255 at every level


def test_paste_faces_and_extra_outputs(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    small = np.asarray(Image.fromarray(_photo("skimage/astronaut")).resize((256, 256)))
    Image.fromarray(_noisy(small, "p")).save(photos / "astro.png")
    plain, pasted = tmp_path / "plain", tmp_path / "pasted"
    res = runner.invoke(app, ["restore", str(photos), "--out", str(plain), "-q"])
    assert res.exit_code == 0, res.output
    extra = ["--paste-faces", "--save-faces", "--save-compare"]
    res = runner.invoke(app, ["restore", str(photos), "--out", str(pasted), "-q", *extra])
    assert res.exit_code == 0, res.output
    a = np.asarray(Image.open(plain / "astro.png")).astype(int)
    b = np.asarray(Image.open(pasted / "astro.png")).astype(int)
    report = json.loads((pasted / "astro.png.json").read_text())
    assert {"faces", "stage1", "fadex", "scene", "paste", "extras"} <= set(report["run"]["timings"])
    x0, y0, x1, y1 = (int(v) for v in report["faces"][0]["box"])
    w, h = x1 - x0, y1 - y0
    inner = (slice(y0 + h // 4, y1 - h // 4), slice(x0 + w // 4, x1 - w // 4))
    assert np.abs(a[inner] - b[inner]).mean() > 0.5  # the Stage I face replaced the scene's
    far = np.ones(a.shape[:2], bool)
    far[max(0, y0 - h) : y1 + h, max(0, x0 - w) : x1 + w] = False
    assert np.array_equal(a[far], b[far])  # nothing changes away from the face
    compare = np.asarray(Image.open(pasted / "astro.compare.png"))
    noisy = np.asarray(Image.open(photos / "astro.png"))
    assert np.array_equal(compare[:, :256], noisy) and np.array_equal(compare[:, 256:], b)
    for kind in ("lq", "hq"):
        with Image.open(pasted / "astro.faces" / f"face0_{kind}.png") as im:
            assert im.size == (512, 512) and im.mode == "RGB"
    assert report["settings"]["refs"] is None
    assert report["settings"]["scene_crops"] == [8, 96]  # part of the resume key
    assert report["faces"][0]["blind_reason"] == "no references"
    assert (
        report["settings"]["paste_faces"]
        and report["settings_hash"]
        != json.loads((plain / "astro.png.json").read_text())["settings_hash"]
    )


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gray, RGBA, 16-bit, a face cut by the photo's edge and a photo without a face, all with
    noise (clean, the scene restorer would keep them as they are)."""
    root = tmp_path_factory.mktemp("awkward") / "photos"
    root.mkdir()
    astro = _noisy(_photo("skimage/astronaut"), "awkward")
    small = np.asarray(Image.fromarray(astro).resize((256, 256)))
    Image.fromarray(small).convert("L").save(root / "gray.png")
    alpha = np.tile(np.linspace(40, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 1))
    Image.fromarray(np.concatenate([small, alpha], axis=2), "RGBA").save(root / "rgba.png")
    ramp = np.arange(256)[None, :, None] % 199
    deep = np.clip(small.astype(np.int64) * 257 + ramp, 0, 65535).astype(np.uint16)
    write_image(root / "deep.png", F2SImage(deep, "PNG"), "png")
    Image.fromarray(np.ascontiguousarray(astro[20:276, 200:456])).save(root / "border.png")
    coffee = np.asarray(Image.fromarray(_photo("skimage/coffee")).resize((200, 134)))
    Image.fromarray(_noisy(coffee, "noface")).save(root / "noface.png")
    return root


def test_awkward_inputs_in_one_batch(awkward: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = ["--paste-faces", "--save-faces", "--save-compare", "-q"]
    res = run_f2s("restore", awkward, "--out", out, *extra)
    assert res.returncode == 0, res.stderr
    reports = {p.name: r for p, r in reports_in(out).items()}
    assert {r["status"] for r in reports.values()} == {"done"}
    gray = read_image(out / "gray.png").pixels
    assert gray.shape == (256, 256, 1) and reports["gray.png.json"]["output"]["channels"] == 1
    assert read_image(out / "gray.compare.png").pixels.shape == (256, 512, 1)
    assert read_image(out / "gray.faces" / "face0_hq.png").pixels.shape == (512, 512, 1)
    rgba_in, rgba_out = read_image(awkward / "rgba.png").pixels, read_image(out / "rgba.png").pixels
    assert rgba_out.shape == (256, 256, 4)
    assert np.array_equal(rgba_out[..., 3], rgba_in[..., 3])
    deep = read_image(out / "deep.png").pixels
    assert deep.dtype == np.uint16 and reports["deep.png.json"]["output"]["bit_depth"] == 16
    assert len(np.unique(deep[..., 0] % 257)) > 1  # real 16-bit values, not 8-bit ones x 257
    border = reports["border.png.json"]
    assert len(border["faces"]) == 1 and border["faces"][0]["box"][0] < 0
    assert border["faces"][0]["restorer"] is not None
    assert border["degradation"]["source"] == "face"
    for name in ("gray", "rgba", "deep"):
        assert reports[f"{name}.png.json"]["degradation"]["source"] == "face", name
    noface = reports["noface.png.json"]
    assert noface["faces"] == [] and noface["degradation"]["source"] == "scene"
    assert sorted(noface["degradation"]["scene_crops"]) == [[4, 19, 100, 115], [100, 19, 196, 115]]
    assert noface["scene"]["check"]["faces"] == [] and noface["warnings"] == []
    # a corrupt file fails alone: exit 1, the others are kept (resumed)
    # and so does a strip too thin to read (12 px), with a clear message
    (awkward / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    strip = np.ascontiguousarray(_photo("skimage/coffee")[100:112, :96])
    Image.fromarray(strip).save(awkward / "strip.png")
    try:
        res = run_f2s("restore", awkward, "--out", out, *extra)
    finally:
        (awkward / "broken.jpg").unlink()
        (awkward / "strip.png").unlink()
    assert res.returncode == 1
    summary = summary_of(out)
    assert summary["counts"] == {"total": 7, "done": 0, "skipped": 5, "failed": 2, "pending": 0}
    failures = {Path(f["path"]).name: f for f in summary["failures"]}
    assert set(failures) == {"broken.jpg", "strip.png"}
    assert "96x12 px is too small" in json.dumps(failures["strip.png"])
    failed = [p.name for p, r in reports_in(out).items() if r["status"] == "failed"]
    assert len(failed) == 2


@pytest.mark.slow
def test_twelve_megapixel_photo_is_tiled_in_bounded_memory(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    big = Image.fromarray(_photo("skimage/astronaut")).resize((4000, 3000), Image.BICUBIC)
    big.save(photos / "big.jpg", quality=90)
    res = run_f2s("restore", photos, "--out", tmp_path / "out", "--tile", "512", timeout=1800)
    assert res.returncode == 0, res.stderr
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit
    report = json.loads((tmp_path / "out" / "big.jpg.json").read_text())
    assert (report["output"]["width"], report["output"]["height"]) == (4000, 3000)
    assert report["degradation"]["source"] == "face"
    assert peak < 3 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
