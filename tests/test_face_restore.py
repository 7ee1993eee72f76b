"""BlindFaceRestorer and its helpers on a real face crop (scikit-image astronaut)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.degradations.jpeg import jpeg_compress
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.research.metrics import psnr
from face2scene_cli.restorers.face.base import FaceRestorer, RestoredFaces
from face2scene_cli.restorers.face.blind import (
    BlindFaceRestorer,
    blockiness,
    estimate_noise_sigma,
)

# The astronaut's face (dlib HOG box x 175..266, y 76..167), as a 128 px native crop.
FACE = (slice(57, 185), slice(156, 284))


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    img = skdata.astronaut()[FACE]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return psnr(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy(), data_range=1.0)


def _q8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round() / 255


def _noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _q8(apply(x, Degradation("parametric", noise_sigma=sigma), g))


def test_improves_psnr_on_noisy_face(face: torch.Tensor) -> None:
    lq = _noisy(face, 15.0)
    out = BlindFaceRestorer().restore(lq)
    assert isinstance(out, RestoredFaces)
    assert out.hq.shape == lq.shape and out.hq.dtype == lq.dtype
    gain = _psnr(out.hq, face) - _psnr(lq, face)
    assert gain > 1.5, gain


def test_batch_confidence_and_method(face: torch.Tensor) -> None:
    lq = torch.cat([_q8(face), _noisy(face, 10.0), _noisy(face, 30.0)])
    r = BlindFaceRestorer()
    out = r.restore(lq)
    assert out.method == "blind-nlm/1" == r.method
    assert out.confidence.shape == (3,)
    assert bool(((out.confidence >= 0) & (out.confidence <= 1)).all())
    c = out.confidence.tolist()
    assert c[0] > c[1] > c[2], c
    assert not r.uses_references and isinstance(r, FaceRestorer)


def test_deterministic(face: torch.Tensor) -> None:
    lq = _noisy(face, 20.0)
    a = BlindFaceRestorer().restore(lq)
    b = BlindFaceRestorer().restore(lq.clone())
    assert torch.equal(a.hq, b.hq) and torch.equal(a.confidence, b.confidence)


def test_gray_stays_gray(face: torch.Tensor) -> None:
    gray = _q8(face.mean(1, keepdim=True))
    lq = _noisy(gray, 15.0)
    out = BlindFaceRestorer().restore(lq)
    assert out.hq.shape == (1, 1, 128, 128)
    assert _psnr(out.hq.expand(1, 3, -1, -1), gray.expand(1, 3, -1, -1)) > _psnr(
        lq.expand(1, 3, -1, -1), gray.expand(1, 3, -1, -1)
    )
    out3 = BlindFaceRestorer().restore(lq.expand(1, 3, -1, -1).contiguous())
    assert torch.equal(out3.hq[:, 0], out3.hq[:, 1]) and torch.equal(out3.hq[:, 0], out3.hq[:, 2])


def test_noise_estimate_tracks_sigma(face: torch.Tensor) -> None:
    est = [
        estimate_noise_sigma(_noisy(face, s)[0].permute(1, 2, 0).numpy()) for s in (5.0, 15.0, 30.0)
    ]
    assert est[0] < est[1] < est[2], est
    assert abs(est[1] - 15.0) < 3.0 and abs(est[2] - 30.0) < 4.0, est


def test_blockiness_detects_jpeg(face: torch.Tensor) -> None:
    clean = blockiness(face[0].permute(1, 2, 0).numpy())[0]
    blocked = blockiness(jpeg_compress(face, 20)[0].permute(1, 2, 0).numpy())
    assert blocked[0] > 0.2 > clean, (clean, blocked)
    assert blocked[1:] == (0, 0)  # the grid of a crop compressed on its own starts at 0


def test_rejects_bad_input(face: torch.Tensor) -> None:
    r = BlindFaceRestorer()
    with pytest.raises(ValueError, match="B, C, H, W"):
        r.restore(face[0])
    with pytest.raises(ValueError, match="one list per crop"):
        r.restore(face, references=[[], []])
    with pytest.raises(TypeError, match="floating point"):
        r.restore((face * 255).to(torch.uint8))
