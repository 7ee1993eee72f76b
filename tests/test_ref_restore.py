"""RefGuidedFaceRestorer on a real face: the scikit-image astronaut (``mixed`` preset, 256 px
aligned crops), with insightface's Tom Hanks as the wrong person.

References are self-derived from the clean photo (mirrored / unmirrored copies with jitter,
re-detected and re-aligned): an optimistic setting, there is no second photo of these people.
Identity and PSNR are always measured against the clean ground-truth face.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import missing_data

from face2scene_cli.faces.align import FaceAligner
from face2scene_cli.faces.base import IdentityEncoder
from face2scene_cli.faces.detect import create_detector
from face2scene_cli.faces.paste import face_mask
from face2scene_cli.io.images import read_image
from face2scene_cli.registry import create
from face2scene_cli.research import sample_data
from face2scene_cli.research.eval.faces import degrade_photo, self_references
from face2scene_cli.research.metrics import psnr
from face2scene_cli.restorers.face.blind import BlindFaceRestorer
from face2scene_cli.restorers.face.ref_guided import RefGuidedFaceRestorer

SIZE = 256


def _photo(name: str) -> np.ndarray:
    for p in sample_data.package_photos():
        if p.name == name:
            return read_image(p.path).pixels
    missing_data(f"{name} not installed")


def _t(x: np.ndarray) -> torch.Tensor:
    """(S, S, C) float32 -> (C, S, S)."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def case() -> dict:
    """The degraded aligned face, its registered ground truth, its self-derived references
    and Tom Hanks's."""
    det, aligner = create_detector("mtcnn"), FaceAligner(SIZE)
    clean = _photo("skimage/astronaut")
    lq_photo = degrade_photo(clean, "mixed", 0, "skimage/astronaut")
    found = det.detect([lq_photo])[0][0]
    hanks = _photo("insightface/tom_hanks")
    return {
        "lq": _t(aligner.align(lq_photo, found).crop.astype(np.float32) / 255)[None],
        "gt": aligner.align(clean, found).crop.astype(np.float32) / 255,
        "refs": [_t(c) for _, c in self_references(clean, det.detect([clean])[0][0], det, aligner)],
        "wrong": [
            _t(c) for _, c in self_references(hanks, det.detect([hanks])[0][0], det, aligner)
        ],
    }


@pytest.fixture(scope="module")
def restorer() -> RefGuidedFaceRestorer:
    return RefGuidedFaceRestorer()


def _face_psnr(out: torch.Tensor, gt: np.ndarray) -> float:
    return psnr(out[0].permute(1, 2, 0).numpy(), gt, data_range=1.0, mask=face_mask(SIZE) > 0.5)


def test_self_references_beat_blind(case: dict, restorer: RefGuidedFaceRestorer) -> None:
    assert len(case["refs"]) == 2
    blind = BlindFaceRestorer().restore(case["lq"])
    out = restorer.restore(case["lq"], [case["refs"]])
    assert out.method == "ref-guided/1" and restorer.uses_references
    assert out.hq.shape == case["lq"].shape and out.hq.dtype == case["lq"].dtype
    assert out.references_used == (2,)
    gain = _face_psnr(out.hq, case["gt"]) - _face_psnr(blind.hq, case["gt"])
    assert gain > 0.5, gain
    assert float(out.confidence[0]) > float(blind.confidence[0])


def test_no_references_is_blind(case: dict, restorer: RefGuidedFaceRestorer) -> None:
    blind = BlindFaceRestorer().restore(case["lq"])
    for refs in (None, [[]]):
        out = restorer.restore(case["lq"], refs)
        assert torch.equal(out.hq, blind.hq) and torch.equal(out.confidence, blind.confidence)
        assert out.references_used == (0,)


def test_wrong_person_is_refused(case: dict, restorer: RefGuidedFaceRestorer) -> None:
    blind = BlindFaceRestorer().restore(case["lq"])
    out = restorer.restore(case["lq"], [case["wrong"]])
    assert out.references_used == (0,)
    assert torch.equal(out.hq, blind.hq)


def test_wrong_person_structure_gate_only(case: dict) -> None:
    """Without the identity gate the structure gate alone must keep a stranger's detail from
    changing the face much: within 0.3 dB of blind either way."""
    blind = _face_psnr(BlindFaceRestorer().restore(case["lq"]).hq, case["gt"])
    out = RefGuidedFaceRestorer(identity=None).restore(case["lq"], [case["wrong"]])
    diff = _face_psnr(out.hq, case["gt"]) - blind
    assert abs(diff) < 0.3, diff


def test_batch_deterministic(case: dict, restorer: RefGuidedFaceRestorer) -> None:
    lq = torch.cat([case["lq"], case["lq"]])
    a = restorer.restore(lq, [case["refs"], []])
    b = restorer.restore(lq.clone(), [list(case["refs"]), []])
    assert torch.equal(a.hq, b.hq) and torch.equal(a.confidence, b.confidence)
    assert a.references_used == (2, 0)
    assert torch.equal(a.hq[1], BlindFaceRestorer().restore(case["lq"]).hq[0])


def test_gray_crops(case: dict, restorer: RefGuidedFaceRestorer) -> None:
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    lq = ((case["lq"] * luma).sum(1, keepdim=True) * 255).round() / 255
    gt = case["gt"] @ luma.flatten().numpy()
    out = restorer.restore(lq, [[r.mean(0, keepdim=True) for r in case["refs"]]])
    assert out.hq.shape == (1, 1, SIZE, SIZE) and out.references_used == (2,)
    blind = BlindFaceRestorer().restore(lq)
    assert _face_psnr(out.hq, gt[..., None]) > _face_psnr(blind.hq, gt[..., None])
    # colour references on a gray crop are converted, not refused
    assert restorer.restore(lq, [case["refs"]]).hq.shape == (1, 1, SIZE, SIZE)


def test_crop_cut_by_the_photo_border(case: dict, restorer: RefGuidedFaceRestorer) -> None:
    # a face at the photo's right edge: its crop (and the references warped into it) stop
    # there; the references still help, on the cut crop's own pixels
    cut = 200
    lq = case["lq"][..., :cut]
    out = restorer.restore(lq, [[r[..., :cut] for r in case["refs"]]])
    assert out.hq.shape == (1, 3, SIZE, cut) and out.references_used == (2,)
    gt, mask = case["gt"][:, :cut], face_mask(SIZE)[:, :cut] > 0.5
    blind = BlindFaceRestorer().restore(lq).hq

    def face_psnr(x: torch.Tensor) -> float:
        return psnr(x[0].permute(1, 2, 0).numpy(), gt, data_range=1.0, mask=mask)

    assert face_psnr(out.hq) > face_psnr(blind) + 0.1, "references did not help the cut crop"


def test_registry_and_bad_input(case: dict) -> None:
    r = create("face_restorer", "ref-guided", identity=None)
    assert isinstance(r, RefGuidedFaceRestorer) and r.identity is None
    with pytest.raises(ValueError, match="one list per crop"):
        r.restore(case["lq"], [[], []])
    with pytest.raises(TypeError, match="float"):
        r.restore(case["lq"], [[(case["refs"][0] * 255).to(torch.uint8)]])


class _CountingEncoder(IdentityEncoder):
    """Another encoder's embeddings, counting the images it embeds."""

    def __init__(self, inner: IdentityEncoder) -> None:
        self.inner, self.calls = inner, 0
        self.name, self.metric = inner.name, inner.metric
        self.dim, self.threshold = inner.dim, inner.threshold

    def embed(self, image: np.ndarray, faces: list) -> np.ndarray:
        self.calls += 1
        return self.inner.embed(image, faces)


def test_given_reference_embeddings_spare_the_gate_re_embedding_them(
    case: dict, restorer: RefGuidedFaceRestorer
) -> None:
    from face2scene_cli.restorers.face.ref_guided import aligned_face_box, to_rgb8

    if restorer.identity is None:
        missing_data("dlib identity encoder not installed")
    counting = _CountingEncoder(restorer.identity)
    r = RefGuidedFaceRestorer(identity=counting)
    assert r.identity_encoder == restorer.identity.name == "dlib-resnet"
    box = [aligned_face_box(SIZE)]

    def embedded(refs: list[torch.Tensor]) -> np.ndarray:
        return np.concatenate(
            [restorer.identity.embed(to_rgb8(x.permute(1, 2, 0).numpy()), box) for x in refs]
        )

    own = embedded(case["refs"])
    plain = restorer.restore(case["lq"], [case["refs"]])
    out = r.restore(case["lq"], [case["refs"]], reference_embeddings=[own])
    assert counting.calls == 1  # the restored face only, not the two references
    assert torch.equal(out.hq, plain.hq) and out.references_used == plain.references_used == (2,)
    # a stranger's embeddings close the gate even on the right person's pixels
    refused = r.restore(case["lq"], [case["refs"]], reference_embeddings=[embedded(case["wrong"])])
    assert refused.references_used == (0,)
    with pytest.raises(ValueError, match="2 refs"):
        r.restore(case["lq"], [case["refs"]], reference_embeddings=[own[:1]])
