"""Identity embeddings and reference galleries on real package photos.

No photos of the same person taken on different occasions ship in any package, so "the same
person" here always means another copy of the same photo: flipped, rescaled, rotated or
mildly degraded (noise + JPEG). That is an OPTIMISTIC setting: real references of a person
differ in pose, light, age and expression, so same-person similarities will be lower in use.
Different people, however, are genuinely different (the 6 people of insightface's ``t1.jpg``,
Eileen Collins in scikit-image's ``astronaut``), so the "not someone else" and "unknown"
checks are realistic.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import missing_data

from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.errors import ConfigError, F2SError, NotAvailableError
from face2scene_cli.faces.align import FaceAligner
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.gallery import (
    Gallery,
    PoseWeights,
    RefsError,
    face_pose,
    gallery_dir,
    pose_distance,
)
from face2scene_cli.faces.identity import (
    ArcFaceEncoder,
    DlibResNetEncoder,
    as_rgb8,
    create_identity_encoder,
)
from face2scene_cli.io.images import read_image
from face2scene_cli.io.tensors import from_tensor, to_tensor
from face2scene_cli.research.sample_data import package_photos

CROP_SIZE = 128  # aligned reference crops; small keeps the PNG writes cheap


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    from face2scene_cli.faces.detect import create_detector

    return create_detector("dlib")


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner(size=CROP_SIZE)


@pytest.fixture(scope="module")
def encoder() -> DlibResNetEncoder:
    return DlibResNetEncoder()


def _package_photo(name: str) -> Path:
    for p in package_photos():
        if p.name == name:
            return p.path
    missing_data(f"{name} not installed")


def _rgb(path: Path) -> np.ndarray:
    return as_rgb8(read_image(path).pixels)


def _main_face(detector: FaceDetector, img: np.ndarray) -> DetectedFace:
    faces = detector.detect([img])[0]
    assert faces, "no face found"
    return max(faces, key=lambda f: f.size)


def _crop(img: np.ndarray, face: DetectedFace, margin: float = 1.0) -> np.ndarray:
    """The face's box grown by ``margin`` box sizes on each side, clipped to the photo."""
    x0, y0, x1, y1 = (float(v) for v in face.box)
    w, h = x1 - x0, y1 - y0
    ys = slice(max(0, int(y0 - margin * h)), min(img.shape[0], int(y1 + margin * h)))
    xs = slice(max(0, int(x0 - margin * w)), min(img.shape[1], int(x1 + margin * w)))
    return np.ascontiguousarray(img[ys, xs])


@pytest.fixture(scope="module")
def people(detector: FaceDetector) -> dict[str, np.ndarray]:
    """One photo per person: the 6 people of t1.jpg (left to right) and the astronaut."""
    t1 = _rgb(_package_photo("insightface/t1"))
    faces = sorted(detector.detect([t1])[0], key=lambda f: float(f.box[0]))
    assert len(faces) == 6, [f.box for f in faces]
    out = {f"t1_{i}": _crop(t1, f) for i, f in enumerate(faces)}
    astro = _rgb(_package_photo("skimage/astronaut"))
    out["astronaut"] = _crop(astro, _main_face(detector, astro), margin=0.8)
    return out


def flip(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


def rescale(img: np.ndarray, factor: float = 0.85) -> np.ndarray:
    return cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def degrade(img: np.ndarray, seed: int = 0, noise: float = 3.0) -> np.ndarray:
    """Mild degradation: Gaussian noise (sigma ``noise``/255) then JPEG 90."""
    params = Degradation("parametric", noise_sigma=noise, jpeg_quality=90)
    out = apply(to_tensor(img), params, torch.Generator().manual_seed(seed))
    return from_tensor(out, np.uint8)


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of its bytes ("dir" for folders)."""
    return {
        p.relative_to(root).as_posix(): (
            "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def refs_people(tmp_path_factory: pytest.TempPathFactory, people: dict[str, np.ndarray]) -> Path:
    """refs/<person>/: a flipped copy and a rescaled + degraded copy per person."""
    root = tmp_path_factory.mktemp("refs_people")
    for name in ("t1_0", "t1_2", "t1_5", "astronaut"):
        save(root / name / "flipped.png", flip(people[name]))
        save(root / name / "small_noisy.jpg", degrade(rescale(people[name]), seed=1))
    return root


@pytest.fixture(scope="module")
def built(
    refs_people: Path,
    tmp_path_factory: pytest.TempPathFactory,
    detector: FaceDetector,
    aligner: FaceAligner,
    encoder: DlibResNetEncoder,
) -> tuple[Gallery, dict[str, str], dict[str, str]]:
    """The per-person gallery, with snapshots of the refs folder before and after the build."""
    before = snapshot(refs_people)
    cache = tmp_path_factory.mktemp("cache")
    gallery = Gallery.build(refs_people, detector, aligner, encoder, cache_dir=cache)
    return gallery, before, snapshot(refs_people)


# ------------------------------------------------------------------------------- identity


def test_dlib_encoder_embeddings(people: dict[str, np.ndarray], detector, encoder) -> None:
    """Same photo variants are far closer than different people; gray input works."""
    img = people["astronaut"]
    face = _main_face(detector, img)
    emb = encoder.embed(img, [face])
    assert emb.shape == (1, 128) and emb.dtype == np.float32
    assert encoder.embed(img, []).shape == (0, 128)
    noisy = degrade(img, seed=3)
    d_same = float(np.linalg.norm(encoder.embed(noisy, [face])[0] - emb[0]))
    other = people["t1_0"]
    d_other = float(np.linalg.norm(encoder.embed(other, [_main_face(detector, other)])[0] - emb[0]))
    assert d_same < 0.25 < encoder.threshold < d_other, (d_same, d_other)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(
        encoder.embed(gray, [face]), encoder.embed(np.repeat(gray[:, :, None], 3, 2), [face])
    )
    # deterministic
    np.testing.assert_array_equal(encoder.embed(img, [face]), emb)
    assert len(encoder.model_sha256) == 64


def test_encoder_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))  # an empty pack folder
    assert isinstance(create_identity_encoder("auto"), DlibResNetEncoder)
    assert isinstance(create_identity_encoder("dlib"), DlibResNetEncoder)
    with pytest.raises(NotAvailableError, match="f2s models fetch insightface"):
        create_identity_encoder("arcface")
    with pytest.raises(NotAvailableError):
        ArcFaceEncoder()
    with pytest.raises(ConfigError, match="unknown identity encoder 'facenet'"):
        create_identity_encoder("facenet")


def _tiny_arcface(path: Path) -> np.ndarray:
    """A stand-in ``w600k_r50.onnx`` (random weights, 112x112 input -> 512-D, 8x8 average
    pooling then a linear layer); returns the linear layer's (192, 512) weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((3 * 8 * 8, 512)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["data"], ["pool"], kernel_shape=[14, 14], strides=[14, 14]
            ),
            helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["fc1"]),
        ],
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, path)
    return w


def test_arcface_encoder_plumbing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, people, detector
) -> None:
    """With a buffalo_l pack on disk (here a tiny random stand-in for ``w600k_r50.onnx``),
    ``auto`` picks ArcFace, which aligns with insightface's norm_crop from the five landmarks
    and feeds the network RGB planes scaled to [-1, 1]."""
    pytest.importorskip("onnxruntime")
    from insightface.utils import face_align

    w = _tiny_arcface(tmp_path / "models" / "buffalo_l" / "w600k_r50.onnx")
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    enc = create_identity_encoder("auto")
    assert isinstance(enc, ArcFaceEncoder) and enc.metric == "cosine" and enc.threshold == 0.4
    img = people["astronaut"]
    face = _main_face(detector, img)
    emb = enc.embed(img, [face, face])
    assert emb.shape == (2, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    with warnings.catch_warnings():  # insightface calls a deprecated scikit-image API
        warnings.simplefilter("ignore", FutureWarning)
        crop = face_align.norm_crop(img, landmark=face.landmarks, image_size=112)
    crop = crop.astype(np.float32)
    planes = (crop - 127.5) / 127.5  # RGB, as the model expects
    pooled = planes.reshape(8, 14, 8, 14, 3).mean(axis=(1, 3)).transpose(2, 0, 1).reshape(-1)
    expected = pooled @ w
    np.testing.assert_allclose(emb[0], expected / np.linalg.norm(expected), atol=1e-4)
    assert enc.similarity(emb[:1], emb[1:])[0, 0] == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------- matching


def test_faces_match_their_own_person(built, people, detector) -> None:
    """Optimistic setting (references are flipped / rescaled + degraded copies of the query
    photo): each face matches its person, and every other person scores below threshold."""
    gallery, _, _ = built
    assert gallery.layout == "people"
    assert gallery.people == ("astronaut", "t1_0", "t1_2", "t1_5")
    assert len(gallery.references) == 8 and not gallery.warnings
    thr = gallery.encoder.similarity_threshold
    for name in gallery.people:
        img = people[name]
        [match] = gallery.match_faces(img, [_main_face(detector, img)])
        assert match.person == name, (name, match.scores)
        assert match.similarity == max(match.scores.values()) > -0.35
        others = [s for p, s in match.scores.items() if p != name]
        assert max(others) < thr
        assert match.margin == pytest.approx(match.similarity - max(thr, max(others)))
        assert match.margin > 0.1


def test_wrong_person_gallery_says_unknown(built, people, detector) -> None:
    """Faces of people with no references are "unknown", not the nearest stranger."""
    gallery, _, _ = built
    thr = gallery.encoder.similarity_threshold
    for name in ("t1_1", "t1_3", "t1_4"):
        img = people[name]
        match = gallery.match(gallery.encoder.embed(img, [_main_face(detector, img)])[0])
        assert match.person is None, (name, match.scores)
        assert match.candidate in gallery.people
        assert match.similarity < thr
        assert match.margin == pytest.approx(thr - match.similarity)


def test_one_person_once_per_photo(built, people, detector) -> None:
    """Two faces of one person in one photo: the closer keeps the name, the other is
    "unknown" (unique=True); with unique=False both match."""
    gallery, _, _ = built
    a = people["t1_0"]
    b = degrade(a, seed=7, noise=12.0)  # a noisier copy: further from the references
    h = min(a.shape[0], b.shape[0])
    photo = np.ascontiguousarray(np.concatenate([b[:h], a[:h]], axis=1))
    faces = sorted(detector.detect([photo])[0], key=lambda f: float(f.box[0]))
    assert len(faces) == 2
    unique = gallery.match_faces(photo, faces)
    both = gallery.match_faces(photo, faces, unique=False)
    assert [m.person for m in both] == ["t1_0", "t1_0"]
    assert both[1].similarity > both[0].similarity
    assert [m.person for m in unique] == [None, "t1_0"]
    assert unique[0].candidate == "t1_0"


# ------------------------------------------------------------------------------- the index


def test_cache_lives_outside_refs(built, refs_people: Path) -> None:
    gallery, before, after = built
    assert before == after  # not one byte added, changed or removed in the refs folder
    refs_real = refs_people.resolve()
    assert refs_real not in gallery.index_dir.resolve().parents
    index = json.loads((gallery.index_dir / "index.json").read_text())
    assert index["schema"] == 1 and index["layout"] == "people"
    assert index["models"]["encoder"]["name"] == "dlib-resnet"
    assert index["models"]["encoder"]["model_sha256"] == gallery.encoder.model_sha256
    assert index["models"]["aligner"]["size"] == CROP_SIZE
    entry = next(e for e in index["files"] if e["path"] == "t1_0/flipped.png")
    raw = (refs_people / "t1_0" / "flipped.png").read_bytes()
    assert entry["sha256"] == hashlib.sha256(raw).hexdigest() and entry["size"] == len(raw)
    assert entry["person"] == "t1_0" and len(entry["face"]["landmarks"]) == 5
    ref = gallery.references_of("t1_0")[0]
    assert ref.crop().shape == (CROP_SIZE, CROP_SIZE, 3)
    assert ref.crop_path.parent.parent == gallery.index_dir
    assert not list(gallery.index_dir.rglob("*.pkl")) and not list(gallery.index_dir.rglob(".*"))
    summary = gallery.summary()
    assert summary["people"] == {"astronaut": 2, "t1_0": 2, "t1_2": 2, "t1_5": 2}
    json.dumps(summary)


def test_cache_dir_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, people, detector, aligner, encoder
) -> None:
    refs = tmp_path / "refs"
    save(refs / "a.png", flip(people["astronaut"]))
    monkeypatch.setenv("F2S_CACHE_DIR", str(tmp_path / "cache"))
    gallery = Gallery.build(refs, detector, aligner, encoder)
    assert gallery.index_dir == gallery_dir(refs) and gallery.index_dir.is_dir()
    assert gallery.index_dir.parent == tmp_path / "cache" / "galleries"
    # the cache may not be put inside the refs folder
    monkeypatch.setenv("F2S_CACHE_DIR", str(refs / "cache"))
    with pytest.raises(RefsError, match="inside the refs folder"):
        Gallery.build(refs, detector, aligner, encoder)
    assert sorted(p.name for p in refs.iterdir()) == ["a.png"]


def test_index_reused_refreshed_and_pruned(
    tmp_path: Path, people, detector, aligner, encoder
) -> None:
    """Flat layout: the person is the folder's name; the index is reused, then refreshed."""
    refs = tmp_path / "eileen"
    img = people["astronaut"]
    save(refs / "flip.png", flip(img))
    save(refs / "small.jpg", degrade(rescale(img), seed=1))
    save(refs / "noisy.jpg", degrade(img, seed=2))
    cache = tmp_path / "cache"
    first = Gallery.build(refs, detector, aligner, encoder, cache_dir=cache)
    assert first.layout == "flat" and first.people == ("eileen",)
    assert (first.stats.computed, first.stats.reused, first.stats.removed) == (3, 0, 0)

    second = Gallery.build(refs, detector, aligner, encoder, cache_dir=cache)
    assert (second.stats.computed, second.stats.reused, second.stats.removed) == (0, 3, 0)
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    assert [r.path for r in second.references] == ["flip.png", "noisy.jpg", "small.jpg"]

    opened = Gallery.open(refs, encoder, cache_dir=cache)
    np.testing.assert_array_equal(opened.embeddings, first.embeddings)

    save(refs / "noisy.jpg", degrade(img, seed=5))  # new content, same name
    third = Gallery.build(refs, detector, aligner, encoder, cache_dir=cache)
    assert (third.stats.computed, third.stats.reused, third.stats.removed) == (1, 2, 0)
    changed = [r.path for r in third.references if r.path == "noisy.jpg"]
    assert changed and not np.array_equal(third.embeddings[1], first.embeddings[1])
    np.testing.assert_array_equal(third.embeddings[[0, 2]], first.embeddings[[0, 2]])

    (refs / "small.jpg").unlink()
    fourth = Gallery.build(refs, detector, aligner, encoder, cache_dir=cache)
    assert (fourth.stats.computed, fourth.stats.reused, fourth.stats.removed) == (0, 2, 1)
    assert [r.path for r in fourth.references] == ["flip.png", "noisy.jpg"]
    index = json.loads((fourth.index_dir / "index.json").read_text())
    assert [e["path"] for e in index["files"]] == ["flip.png", "noisy.jpg"]
    # crops of this index and the previous one are kept, older ones pruned
    assert len(list((fourth.index_dir / "crops").glob("*.png"))) == 3


def test_torn_index_is_never_used(tmp_path: Path, people, detector, aligner, encoder) -> None:
    """An index whose embeddings file does not match it (a reader between a writer's two
    renames, or a damaged cache) is not used: open() refuses, build() recomputes."""
    refs = tmp_path / "refs"
    save(refs / "a.png", flip(people["t1_2"]))
    save(refs / "b.jpg", degrade(people["t1_2"], seed=1))
    cache = tmp_path / "cache"
    first = Gallery.build(refs, detector, aligner, encoder, cache_dir=cache)
    emb_file = first.index_dir / "embeddings.safetensors"
    blob = bytearray(emb_file.read_bytes())
    blob[-1] ^= 0xFF
    emb_file.write_bytes(bytes(blob))
    with pytest.raises(RefsError, match="no gallery index"):
        Gallery.open(refs, encoder, cache_dir=cache)
    again = Gallery.build(refs, detector, aligner, encoder, cache_dir=cache)
    assert again.stats.computed == 2
    np.testing.assert_array_equal(again.embeddings, first.embeddings)


def test_refs_without_faces_and_other_files(
    tmp_path: Path, people, detector, aligner, encoder
) -> None:
    """A photo without a face and a non-image are reported; the other photos are indexed."""
    refs = tmp_path / "refs"
    save(refs / "me.png", flip(people["t1_5"]))
    coffee = _rgb(_package_photo("skimage/coffee"))
    save(refs / "coffee.jpg", coffee)
    (refs / "notes.txt").write_text("my references")
    (refs / ".hidden.png").write_bytes((refs / "me.png").read_bytes())
    gallery = Gallery.build(refs, detector, aligner, encoder, cache_dir=tmp_path / "cache")
    assert [r.path for r in gallery.references] == ["me.png"]
    messages = {w.path: w.message for w in gallery.warnings}
    assert set(messages) == {"coffee.jpg", "notes.txt"}
    assert "no face" in messages["coffee.jpg"] and "not an image" in messages["notes.txt"]
    # the no-face result is cached too
    again = Gallery.build(refs, detector, aligner, encoder, cache_dir=tmp_path / "cache")
    assert (again.stats.computed, again.stats.reused) == (0, 2)
    assert {w.path for w in again.warnings} == {"coffee.jpg", "notes.txt"}


def test_group_photo_reference_uses_largest_face(
    tmp_path: Path, people, detector, aligner, encoder
) -> None:
    """t1.jpg as a reference: one face (the largest by box area x score) with a warning;
    a two-face photo with one big and one small face keeps the big one's identity."""
    t1_path = _package_photo("insightface/t1")
    refs = tmp_path / "refs"
    (refs / "group").mkdir(parents=True)
    (refs / "group" / "t1.jpg").write_bytes(t1_path.read_bytes())
    big, small = people["t1_0"], rescale(people["t1_5"], 0.6)
    canvas = np.full((big.shape[0], big.shape[1] + small.shape[1], 3), 128, np.uint8)
    canvas[:, : big.shape[1]] = big
    canvas[: small.shape[0], big.shape[1] :] = small
    save(refs / "pair" / "two.png", canvas)
    gallery = Gallery.build(refs, detector, aligner, encoder, cache_dir=tmp_path / "cache")
    assert gallery.people == ("group", "pair")
    messages = {w.path: w.message for w in gallery.warnings}
    assert messages["group/t1.jpg"].startswith("6 faces found; used the largest")
    assert messages["pair/two.png"].startswith("2 faces found; used the largest")
    t1_faces = detector.detect([_rgb(t1_path)])[0]
    expected = max(t1_faces, key=lambda f: float(np.prod(f.box[2:] - f.box[:2])) * f.score)
    [group_ref] = gallery.references_of("group")
    np.testing.assert_allclose(group_ref.face.box, expected.box, atol=1e-3)
    [pair_ref] = gallery.references_of("pair")
    assert pair_ref.face.box[0] < big.shape[1] / 2  # the big face, on the left
    img = people["t1_0"]
    assert gallery.match_faces(img, [_main_face(detector, img)])[0].person == "pair"


def test_refs_errors(tmp_path: Path, detector, aligner, encoder) -> None:
    with pytest.raises(ConfigError, match="reference folder not found"):
        Gallery.build(tmp_path / "nope", detector, aligner, encoder, cache_dir=tmp_path / "c")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RefsError, match="no reference photos"):
        Gallery.build(empty, detector, aligner, encoder, cache_dir=tmp_path / "c")
    faceless = tmp_path / "faceless"
    save(faceless / "rocket.jpg", _rgb(_package_photo("skimage/rocket")))
    with pytest.raises(F2SError, match="no usable face in the 1 reference photo"):
        Gallery.build(faceless, detector, aligner, encoder, cache_dir=tmp_path / "c")
    with pytest.raises(RefsError, match="no gallery index"):
        Gallery.open(tmp_path / "other", encoder, cache_dir=tmp_path / "c")
    skipped = tmp_path / "skipped"  # issue 17 case 8: the error names every skipped file
    skipped.mkdir()
    (skipped / "notes.txt").write_text("not a photo")
    (skipped / "passwd.jpg").symlink_to(skipped / "notes.txt")
    (skipped / "gone.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(RefsError, match="3 file") as err:
        Gallery.build(skipped, detector, aligner, encoder, cache_dir=tmp_path / "c")
    assert "gone.png: cannot read the file" in str(err.value)
    assert "notes.txt: not an image" in str(err.value)
    assert "passwd.jpg: not an image" in str(err.value)


# ------------------------------------------------------------------------------- references


def test_face_pose_proxies() -> None:
    # the ArcFace 112 template: frontal, upright
    tpl = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])
    p = face_pose(tpl)
    assert abs(p.yaw) < 0.02 and abs(p.pitch) < 0.05 and abs(p.roll) < 1
    mirrored = tpl.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]
    turned = tpl.copy()
    turned[2, 0] += 0.3 * 35.2  # nose 0.3 inter-ocular distances to the right
    assert face_pose(turned).yaw == pytest.approx(0.3 + face_pose(tpl).yaw, abs=0.01)
    theta = math.radians(20)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    rolled = face_pose(turned @ rot.T)
    assert rolled.roll == pytest.approx(20 + p.roll, abs=0.01)
    assert rolled.yaw == pytest.approx(face_pose(turned).yaw, abs=1e-6)  # roll-invariant
    assert pose_distance(p, face_pose(mirrored)) < 0.1
    assert pose_distance(p, face_pose(turned)) == pytest.approx(0.3 / 0.35, rel=0.05)


def test_best_references_prefer_similar_pose(
    tmp_path: Path, people, detector, aligner, encoder
) -> None:
    """With equal identity similarity, the reference whose pose is closer to the face wins;
    the ranking is identity - pose_weight x pose distance."""
    img = people["t1_0"]
    refs = tmp_path / "refs"
    save(refs / "frontal.png", degrade(img, seed=4))
    save(refs / "turned.png", rotate(flip(rescale(img, 0.9)), 14.0))
    gallery = Gallery.build(refs, detector, aligner, encoder, cache_dir=tmp_path / "cache")
    by_path = {r.path: r for r in gallery.references}
    assert set(by_path) == {"frontal.png", "turned.png"}
    assert abs(by_path["turned.png"].pose.roll - by_path["frontal.png"].pose.roll) > 8
    # an embedding exactly halfway between the two references: equal similarity to both
    midpoint = gallery.embeddings.mean(axis=0)
    person = gallery.people[0]

    frontal_face = _main_face(detector, img)
    ranked = gallery.best_references(midpoint, frontal_face, person, k=3)
    assert [r.path for r in ranked] == ["frontal.png", "turned.png"]
    assert ranked[0].similarity == pytest.approx(ranked[1].similarity, abs=1e-5)
    assert ranked[0].pose_distance < ranked[1].pose_distance
    assert ranked[0].score > ranked[1].score

    turned_face = gallery.references[[r.path for r in gallery.references].index("turned.png")]
    ranked = gallery.best_references(midpoint, turned_face.face, person)
    assert [r.path for r in ranked] == ["turned.png", "frontal.png"]
    assert ranked[0].crop().shape == (CROP_SIZE, CROP_SIZE, 3)

    # identity dominates once it differs: the face's own degraded copy beats a pose match
    own = encoder.embed(img, [frontal_face])[0]
    assert gallery.best_references(own, turned_face.face, person, k=1)[0].path == "frontal.png"
    # pose_weight=0 ranks by identity only
    flat = gallery.best_references(midpoint, frontal_face, person, weights=PoseWeights(0.0))
    assert flat[0].score == pytest.approx(flat[1].score, abs=1e-5)
    with pytest.raises(ValueError, match="not in the gallery"):
        gallery.best_references(midpoint, frontal_face, "someone")


def test_same_photo_for_two_people_is_flagged(
    tmp_path: Path, people, detector, aligner, encoder
) -> None:
    refs = tmp_path / "refs"
    save(refs / "ann" / "x.png", flip(people["t1_2"]))
    (refs / "bea").mkdir()
    (refs / "bea" / "x.png").write_bytes((refs / "ann" / "x.png").read_bytes())
    gallery = Gallery.build(refs, detector, aligner, encoder, cache_dir=tmp_path / "cache")
    assert (gallery.stats.computed, gallery.stats.reused) == (1, 1)
    assert gallery.people == ("ann", "bea")
    [warning] = gallery.warnings
    assert warning.path == "bea/x.png" and "the same photo as ann/x.png" in warning.message
