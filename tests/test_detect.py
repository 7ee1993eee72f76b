"""Face detectors on real package photos: MTCNN (our cascade, zoo weights), dlib, the factory,
and the insightface wrapper against a tiny stand-in SCRFD model (the real pack is not here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import missing_data
from PIL import Image

from face2scene_cli.errors import ConfigError, InputError, ModelIntegrityError, NotAvailableError
from face2scene_cli.faces.backends.dlib import DlibDetector, five_from_68
from face2scene_cli.faces.backends.insightface import InsightFaceDetector
from face2scene_cli.faces.backends.mtcnn import MTCNN, MTCNNDetector, box_crops, nms
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.detect import (
    DETECTOR_CHOICES,
    DETECTORS,
    OFFLINE_DEFAULT,
    as_rgb_uint8,
    create_detector,
)
from face2scene_cli.registry import KINDS
from face2scene_cli.research import sample_data
from face2scene_cli.zoo import check_state_dict, models_dir, require_model

# Hand-counted faces of insightface's t1.jpg (x0, y0, x1, y1), as in benchmarks/bench_faces.py.
T1_FACES = (
    (55, 262, 175, 397),
    (266, 150, 376, 272),
    (448, 262, 570, 406),
    (722, 346, 845, 476),
    (868, 62, 1014, 202),
    (1116, 276, 1230, 395),
)
OFFLINE = ("mtcnn", "dlib")


def _package_photo(name: str) -> np.ndarray:
    for photo in sample_data.package_photos():
        if photo.name == name:
            with Image.open(photo.path) as im:
                return np.asarray(im)
    missing_data(f"{name} is not installed")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """MTCNN's thin layers gain little from threads, and on a busy machine 2 threads were
    3-4x slower than 1 (benchmarks/bench_faces.py); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _package_photo("skimage/astronaut")


@pytest.fixture(scope="module")
def detectors() -> dict[str, FaceDetector]:
    return {name: create_detector(name) for name in OFFLINE}


@pytest.fixture(scope="module")
def t1_faces(detectors, people_photo: Path) -> dict[str, list[DetectedFace]]:
    with Image.open(people_photo) as im:
        rgb = np.asarray(im.convert("RGB"))
    return {name: det.detect([rgb])[0] for name, det in detectors.items()}


def _centre_in(face: DetectedFace, box) -> bool:
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def _check_face(face: DetectedFace) -> None:
    assert face.box.shape == (4,) and face.box.dtype == np.float32
    assert np.isfinite(face.box).all() and face.box[2] > face.box[0] and face.box[3] > face.box[1]
    assert face.landmarks.shape == (5, 2) and np.isfinite(face.landmarks).all()
    assert 0.0 <= face.score <= 1.0


# --------------------------------------------------------------------------- real photos


@pytest.mark.parametrize("name", OFFLINE)
def test_astronaut_has_exactly_one_face(detectors, astronaut, name):
    faces = detectors[name].detect([astronaut])[0]
    assert len(faces) == 1
    face = faces[0]
    _check_face(face)
    assert _centre_in(face, (172, 62, 270, 175))
    left_eye, right_eye, nose, mouth_l, mouth_r = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def test_mtcnn_landmarks_match_dlib68(detectors, astronaut):
    """MTCNN's 5 points vs the 5 derived from dlib's 68 (measured: 1.2-4.6% of the IOD)."""
    mtcnn = detectors["mtcnn"].detect([astronaut])[0][0]
    dlib_face = detectors["dlib"].detect([astronaut])[0][0]
    assert dlib_face.landmarks68 is not None and dlib_face.landmarks68.shape == (68, 2)
    np.testing.assert_allclose(dlib_face.landmarks, five_from_68(dlib_face.landmarks68))
    err = np.linalg.norm(mtcnn.landmarks - dlib_face.landmarks, axis=1) / dlib_face.interocular
    assert err.max() < 0.05, err


@pytest.mark.parametrize("name", OFFLINE)
def test_group_photo(t1_faces, name):
    """t1: the default finds 6/6 with no false face; dlib (HOG, margin 0.3) also 6/6, 0 false."""
    faces = t1_faces[name]
    for face in faces:
        _check_face(face)
    hits = {i for f in faces for i, box in enumerate(T1_FACES) if _centre_in(f, box)}
    false = [f for f in faces if not any(_centre_in(f, box) for box in T1_FACES)]
    assert len(hits) >= 5, f"{name} found {sorted(hits)}"
    assert len(false) <= 1, [f.box for f in false]
    if name == OFFLINE_DEFAULT:
        assert len(hits) == 6 and not false


def test_max_faces_keeps_the_most_confident(detectors, people_photo, t1_faces):
    with Image.open(people_photo) as im:
        rgb = np.asarray(im.convert("RGB"))
    det = MTCNNDetector(max_faces=2)
    top = det.detect([rgb])[0]
    best = sorted(t1_faces["mtcnn"], key=lambda f: -f.score)[:2]
    assert [f.score for f in top] == [f.score for f in best]
    assert all(np.array_equal(a.box, b.box) for a, b in zip(top, best, strict=True))


@pytest.mark.parametrize("name", OFFLINE)
def test_no_face_photos(detectors, photos, name):
    """A Debian nature photo (at ~1 MP) and scikit-image's coffee: no face."""
    picks = [p for p in photos if p.name in ("mate/greenmeadow", "skimage/coffee")]
    assert len(picks) == 2
    for photo in picks:
        with Image.open(photo.path) as im:
            im = im.convert("RGB")
            im.thumbnail((1155, 1155))
            assert detectors[name].detect([np.asarray(im)])[0] == [], photo.name


@pytest.mark.parametrize("x0", [200, 225])
@pytest.mark.parametrize("name", OFFLINE)
def test_face_cut_by_the_image_edge(detectors, astronaut, name, x0):
    """The face spans x 181-268: cut at 200 (a fifth gone) and 225 (half gone)."""
    crop = np.ascontiguousarray(astronaut[:, x0:])
    faces = detectors[name].detect([crop])[0]
    for face in faces:
        _check_face(face)
        assert face.box[0] < crop.shape[1] and face.box[2] > 0  # overlaps the image
    if name == "mtcnn" and x0 == 200:
        assert len(faces) == 1 and faces[0].box[0] < 0  # found, box reaches past the edge


def test_tiny_face_is_filtered_by_min_face(astronaut):
    """Astronaut at 85x85: the face is ~13 px; found with min_face=12, dropped with 20."""
    small = np.asarray(Image.fromarray(astronaut).resize((85, 85), Image.Resampling.LANCZOS))
    found = MTCNNDetector(min_face=12).detect([small])[0]
    assert len(found) == 1 and 12 <= found[0].size < 20
    assert MTCNNDetector(min_face=20).detect([small])[0] == []


def _upscaled(rgb: np.ndarray, pixels: float = 12e6) -> tuple[np.ndarray, float]:
    """``rgb`` enlarged (bicubic) to about ``pixels``, and the factor."""
    h, w = rgb.shape[:2]
    k = (pixels / (h * w)) ** 0.5
    return cv2.resize(rgb, (round(w * k), round(h * k)), interpolation=cv2.INTER_CUBIC), k


def _record_inputs(det: FaceDetector, monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the images ``det``'s backend is handed (both entry points)."""
    shapes: list[tuple[int, ...]] = []
    for hook in ("_detect_at", "_detect_one"):
        inner = getattr(det, hook)

        def wrapped(image, *args, _inner=inner):
            shapes.append(image.shape)
            return _inner(image, *args)

        monkeypatch.setattr(det, hook, wrapped)
    return shapes


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union)


def test_12mp_photo_is_detected_on_a_2mp_copy(people_photo, t1_faces, monkeypatch):
    """t1 enlarged to 12 MP: the backend sees <= 2 MP (so the cost does not grow with the
    photo) and finds t1's faces at its own size, boxes scaled (IoU >= 0.7), landmarks (redone
    by O-Net at full resolution) within 8% of the face (the cascade run on the full 12 MP
    photo differs from t1 by up to 5% too). min_face scales with the photo (an
    extra ~43 px face appears in the enlarged photo at any resolution)."""
    with Image.open(people_photo) as im:
        big, k = _upscaled(np.asarray(im.convert("RGB")))
    det = MTCNNDetector(min_face=round(20 * k))
    shapes = _record_inputs(det, monkeypatch)
    model_shapes: list[tuple[int, ...]] = []
    model_detect = det.model.detect
    monkeypatch.setattr(
        det.model,
        "detect",
        lambda img, **kw: model_shapes.append(img.shape) or model_detect(img, **kw),
    )
    faces = det.detect([big])[0]
    assert shapes and model_shapes
    assert all(s[0] * s[1] <= FaceDetector.detect_pixels for s in shapes + model_shapes)
    ref = t1_faces["mtcnn"]
    assert len(faces) == len(ref) == 6
    for face in ref:
        best = max(faces, key=lambda f: _iou(f.box, face.box * k))
        assert _iou(best.box, face.box * k) >= 0.7
        err = np.linalg.norm(best.landmarks - face.landmarks * k, axis=1).max()
        assert err < 0.08 * best.size, (err, best.size)


def test_refined_landmarks_match_full_resolution(astronaut):
    """The astronaut at 12 MP: downscaled + O-Net refinement vs the cascade at full resolution
    (same box within IoU 0.9, landmarks within 5% of the interocular distance, as MTCNN vs dlib)."""
    big, _ = _upscaled(astronaut)
    det = MTCNNDetector(min_face=300)
    down = det.detect([big])[0]
    det.detect_pixels = None
    full = det.detect([big])[0]
    assert len(down) == len(full) == 1
    assert _iou(down[0].box, full[0].box) >= 0.9
    err = np.linalg.norm(down[0].landmarks - full[0].landmarks, axis=1) / full[0].interocular
    assert err.max() < 0.05, err


@pytest.mark.parametrize(
    ("name", "pixels"), [("mtcnn", 2_000_000), ("mtcnn", None), ("dlib", 2_000_000)]
)
def test_min_face_counts_source_pixels(astronaut, name, pixels):
    """The astronaut at its size and at 12 MP (detected on the 2 MP copy or, ``None``, at full
    resolution): a min_face 20% under the face's size keeps it, 25% over drops it."""
    size = create_detector(name).detect([astronaut])[0][0].size
    big, k = _upscaled(astronaut)
    for image, face in ((astronaut, size), (big, size * k)):
        keep = create_detector(name, min_face=round(0.8 * face))
        drop = create_detector(name, min_face=round(1.25 * face))
        keep.detect_pixels = drop.detect_pixels = pixels
        found = keep.detect([image])[0]
        assert len(found) == 1 and found[0].size >= keep.min_face, (image.shape, face)
        assert drop.detect([image])[0] == [], (image.shape, face)


def test_gray_input(detectors):
    """skimage camera is a single-channel photo: (H, W) and (H, W, 1) both work."""
    gray = _package_photo("skimage/camera")
    assert gray.ndim == 2
    faces = detectors["mtcnn"].detect([gray, gray[:, :, None]])
    assert [len(f) for f in faces] == [1, 1]
    assert np.array_equal(faces[0][0].box, faces[1][0].box)
    assert _centre_in(faces[0][0], (195, 115, 262, 195))
    # dlib's HOG scores this half-hidden face below its threshold: no crash, no false face
    assert len(detectors["dlib"].detect([gray])[0]) <= 1


@pytest.mark.parametrize("name", OFFLINE)
def test_deterministic(detectors, astronaut, name):
    again = create_detector(name).detect([astronaut, astronaut])
    first = detectors[name].detect([astronaut])[0]
    for faces in again:
        assert len(faces) == len(first)
        for a, b in zip(faces, first, strict=True):
            assert np.array_equal(a.box, b.box) and np.array_equal(a.landmarks, b.landmarks)
            assert a.score == b.score


def test_as_rgb_uint8():
    rgba16 = np.full((4, 5, 4), 65535, dtype=np.uint16)
    out = as_rgb_uint8(rgba16)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and (out == 255).all()
    assert as_rgb_uint8(np.full((3, 3), 0.5)).max() == 128
    with pytest.raises(InputError, match=r"shape \(3, 3, 2\)"):
        as_rgb_uint8(np.zeros((3, 3, 2), np.uint8))
    with pytest.raises(InputError, match="int32"):
        as_rgb_uint8(np.zeros((3, 3, 3), np.int32))


# --------------------------------------------------------------------------- MTCNN weights


def test_mtcnn_weights_load_strictly_and_run():
    info = require_model("mtcnn")
    assert info.task == "face-detection" and info.trained_with == {}
    model = MTCNN.from_pretrained(info.folder)
    with torch.inference_mode():
        reg, prob = model.pnet(torch.zeros(1, 3, 24, 30))
        assert reg.shape == (1, 4, 7, 10) and prob.shape == (1, 2, 7, 10)
        reg, prob = model.rnet(torch.zeros(3, 3, 24, 24))
        assert reg.shape == (3, 4) and prob.shape == (3, 2)
        reg, points, prob = model.onet(torch.zeros(3, 3, 48, 48))
        assert reg.shape == (3, 4) and points.shape == (3, 10) and prob.shape == (3, 2)
    for t in (reg, points, prob):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(prob.sum(1), torch.ones(3))
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 6632 + 100178 + 389040  # facenet-pytorch's P-, R-, O-Net


def test_mtcnn_state_dict_check_names_the_problem():
    state = MTCNN().onet.state_dict()
    state.pop("dense6_3.bias")
    state["conv1.weight"] = torch.zeros(32, 3, 5, 5)
    state["extra"] = torch.zeros(1)
    with pytest.raises(ModelIntegrityError) as err:
        check_state_dict(MTCNN().onet, state, "x.safetensors")
    msg = str(err.value)
    assert "missing dense6_3.bias" in msg and "unexpected extra" in msg
    assert "conv1.weight: shape (32, 3, 5, 5), expected (32, 3, 3, 3)" in msg


def test_mtcnn_refuses_tampered_weights(tmp_path):
    shutil.copytree(models_dir() / "mtcnn", tmp_path / "mtcnn")
    weights = tmp_path / "mtcnn" / "rnet.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"rnet\.safetensors: sha256"):
        MTCNNDetector(models_root=tmp_path)


def test_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.8])
    # IoU(1, 0) = 81 / 119 > 0.5; the small box 3 has IoU 0.16 with box 1
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]
    # "min": box 3 lies inside box 1, so it overlaps it fully
    assert nms(boxes, scores, 0.7, mode="min").tolist() == [1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_crops_of_boxes_leaving_the_image():
    """facenet-pytorch's ``pad``: a box is truncated, cut at the border, then area-resized."""
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 256, (1, 3, 40, 50)).astype(np.float32))
    boxes = np.array([[-5.7, 3.2, 20.9, 29.5], [45.0, 30.0, 60.0, 45.0], [60.0, 1.0, 70.0, 9.0]])
    crops, ok = box_crops(img, boxes, 24)
    assert ok.tolist() == [True, True, False]  # the last box lies wholly outside
    assert crops.shape == (2, 3, 24, 24)
    for crop, (x0, y0, x1, y1) in zip(crops, [(0, 2, 20, 29), (44, 29, 50, 40)], strict=True):
        want = F.interpolate(img[:, :, y0:y1, x0:x1], size=(24, 24), mode="area")[0]
        torch.testing.assert_close(crop, want)


# --------------------------------------------------------------------------- factory


def test_detector_table_and_factory(monkeypatch, tmp_path):
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    assert DETECTOR_CHOICES == ("auto", "insightface", "mtcnn", "dlib")
    assert set(DETECTORS) == set(KINDS["detector"].builtins) == {"insightface", "mtcnn", "dlib"}
    assert all(spec.description for spec in DETECTORS.values())
    assert OFFLINE_DEFAULT in DETECTORS and DETECTORS[OFFLINE_DEFAULT].offline
    det = create_detector("auto", min_face=30, max_faces=3)
    assert det.name == OFFLINE_DEFAULT and (det.min_face, det.max_faces) == (30, 3)
    assert isinstance(create_detector("dlib"), DlibDetector)
    with pytest.raises(ConfigError, match="auto, insightface, mtcnn, dlib"):
        create_detector("retinaface")
    with pytest.raises(ConfigError, match="min_face"):
        create_detector("mtcnn", min_face=0)


def test_insightface_without_pack_names_the_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    with pytest.raises(NotAvailableError, match="f2s models fetch insightface"):
        create_detector("insightface")
    # a pack without a detector is not a detector pack
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "w600k_r50.onnx").write_bytes(b"not used")
    with pytest.raises(NotAvailableError, match=r"det_10g\.onnx"):
        InsightFaceDetector()
    assert create_detector("auto").name == OFFLINE_DEFAULT


def test_insightface_corrupt_pack_is_refused_not_downloaded(monkeypatch, tmp_path):
    _no_downloads(monkeypatch)
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"truncated download")
    with pytest.raises(ModelIntegrityError, match=r"det_10g\.onnx"):
        create_detector("auto")  # the pack is there: auto must not fall back silently


def _no_downloads(monkeypatch) -> None:
    pytest.importorskip("insightface")
    import insightface.model_zoo.model_zoo as mz
    import insightface.utils.storage as storage

    def refuse(*args, **kwargs):
        raise AssertionError(f"insightface tried to download: {args}")

    monkeypatch.setattr(storage, "download_file", refuse)
    monkeypatch.setattr(mz, "download_onnx", refuse)


def _fake_scrfd(path: Path) -> None:
    """A stand-in for det_10g.onnx with SCRFD's 9 outputs (3 strides x score/box/5 points):
    the score is high where the image is bright, boxes are 2 strides from each anchor, and
    the 5 points sit at fixed offsets. Enough to run insightface's real decoding code."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], {"score": [], "bbox": [], "kps": []}
    kps = np.array([-0.5, -0.5, 0.5, -0.5, 0.0, 0.0, -0.4, 0.6, 0.4, 0.6], np.float32)
    for s in (8, 16, 32):
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"p{s}"], kernel_shape=[s, s],
                                      strides=[s, s]))  # fmt: skip
        for kind, k, weight, bias in (
            ("score", 1, np.full((2, 3, 1, 1), 4 / 3, np.float32), np.full(2, -2.0, np.float32)),
            ("bbox", 4, np.zeros((8, 3, 1, 1), np.float32), np.full(8, 2.0, np.float32)),
            ("kps", 10, np.zeros((20, 3, 1, 1), np.float32), np.tile(kps, 2)),
        ):
            w, b, name = f"{kind}{s}_w", f"{kind}{s}_b", f"{kind}_{s}"
            inits += [numpy_helper.from_array(weight, w), numpy_helper.from_array(bias, b)]
            inits.append(numpy_helper.from_array(np.array([-1, k], np.int64), f"{kind}{s}_shape"))
            nodes.append(helper.make_node("Conv", [f"p{s}", w, b], [f"{name}_c"]))
            last = f"{name}_c"
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [last], [f"{name}_sig"]))
                last = f"{name}_sig"
            nodes += [
                helper.make_node("Transpose", [last], [f"{name}_t"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{name}_t", f"{kind}{s}_shape"], [name]),
            ]
            outs[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, k]))
    graph = helper.make_graph(
        nodes,
        "fake_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])],
        outs["score"] + outs["bbox"] + outs["kps"],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_insightface_wrapper_on_a_stand_in_model(monkeypatch, tmp_path):
    _no_downloads(monkeypatch)
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    _fake_scrfd(pack / "det_10g.onnx")
    det = create_detector("auto", min_face=20)
    assert isinstance(det, InsightFaceDetector)
    img = np.zeros((300, 400, 3), np.uint8)
    img[100:164, 200:264] = 255  # one bright 64 px square
    faces = det.detect([img])[0]
    assert faces, "the stand-in model scores bright cells high"
    for face in faces:
        _check_face(face)
        assert 180 <= (face.box[0] + face.box[2]) / 2 <= 284
        assert 80 <= (face.box[1] + face.box[3]) / 2 <= 184
        eyes, mouth = face.landmarks[:2], face.landmarks[3:]
        assert eyes[0, 0] < eyes[1, 0] and mouth[:, 1].min() > eyes[:, 1].max()
    assert det.detect([np.zeros((300, 400), np.uint8)])[0] == []
