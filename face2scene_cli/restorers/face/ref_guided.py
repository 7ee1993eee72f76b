r"""Stage I with references: blind restoration + identity detail from the person's references.

:class:`RefGuidedFaceRestorer` restores each crop blind first (:class:`BlindFaceRestorer` by
default), then adds, where the references agree with the face, the fine luminance band the
degradation destroyed, taken from the references. Colour and everything coarser than the
detail band always come from the photo. Crops and references are both FFHQ-aligned faces
(:class:`~face2scene_cli.faces.align.FaceAligner`), so they are registered up to pose,
expression and landmark error; a dense flow absorbs what is left.

Per crop, with ``Y`` the luminance and ``G_s`` a Gaussian low-pass (lengths are fractions of
the crop side, given at 512 px):

1. ``B`` = blind output. For each reference ``R`` (resized to the crop):
2. identity gate: when an identity encoder is available, ``w_id`` =
   ``clip(identity / id_margin, 0, 1)`` with ``identity`` the encoder's similarity of ``B`` and
   ``R`` rescaled so the same-person threshold is 0 and a perfect match 1 (as in
   :meth:`~face2scene_cli.faces.gallery.Gallery.best_references`). A reference of someone else
   gets weight 0 and is not used at all. ``R``'s embedding is the one given with it (``f2s
   restore`` hands over the gallery's, of the reference photo's face, when the gallery uses
   the gate's encoder: one encoder call per crop instead of 1 + one per reference), else
   ``R`` is embedded here;
3. dense alignment: DIS optical flow between ``Y_B`` and ``Y_R`` at ``flow_size`` px on
   locally normalised images, smoothed; ``Y_R`` is warped onto ``B``'s geometry. The flow is
   trusted (``c_flow``) where it is smooth (``exp(-(|grad f| / 0.5)^2)``) and short
   (``|f| < max_flow``);
4. structure gate: local normalised cross-correlation (Gaussian window, sigma 12) of the mid bands
   ``G_3 - G_12`` of ``Y_B`` and the warped ``Y_R``; ``g = clip((ncc - a) / (b - a), 0, 1)
   * c_flow * w_id`` with ``(a, b) = agree``;
5. the detail bands ``D = Y - G_3(Y)`` of the references are averaged with weights ``g``,
   ``W = max g``; ``Y_out = Y_B + amount * W * (D_ref - replace * D_B)``: the references'
   detail is added and part of the blind output's own (residual noise, artefacts) taken out,
   only where they agree. The luminance change is added to every channel.

A crop with no references, or none whose gate covers at least 2 % of the face region (mean
over the FFHQ face box), comes back exactly as the blind restorer made it, with
``references_used = 0``.

The defaults (``amount = replace = 0.5``, ``agree = (0.3, 0.8)``) were picked on the faces
below, with no held-out set: in the sweep (a prototype of this code, no identity gate) full
replacement (1, 1) gained more with self-derived references (+1.9 dB on average) but lost up
to 0.65 dB on a face with a mirrored reference alone.

Measured with ``f2s eval-faces`` (README, "Stage I"; 11 faces of the
shipped photos x 4 degradations, 512 px): with self-derived references (an optimistic
setting) face PSNR +0.89 dB over blind on average, never lower, dlib distance to the ground
truth 0.380 -> 0.352; with a *mirrored* self-reference only, +0.09 dB and 0.380 -> 0.374;
another person's references are refused by the identity gate in 420/420 pairs.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from torch import Tensor

from face2scene_cli.errors import NotAvailableError
from face2scene_cli.faces.base import DetectedFace, IdentityEncoder
from face2scene_cli.faces.identity import DlibResNetEncoder, as_rgb8
from face2scene_cli.restorers.face.base import FaceRestorer, RestoredFaces, check_crops
from face2scene_cli.restorers.face.blind import BlindFaceRestorer

__all__ = ["RefGuidedFaceRestorer", "aligned_face_box", "to_rgb8"]

logger = logging.getLogger(__name__)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601
_REF_SIZE = 512.0  # the crop side the length parameters are given at
_MIN_USED = 0.02  # a reference counts as used when it shapes this share of the face
# the face region of the FFHQ frame at 512 (where coverage and identity are measured)
_FACE_BOX_512 = (136.0, 170.0, 376.0, 420.0)


def aligned_face_box(size: int) -> DetectedFace:
    """The face box of an FFHQ-aligned crop of side ``size`` (every aligned face sits there),
    as a :class:`DetectedFace` for identity encoders, which need one (landmarks unused)."""
    box = np.array(_FACE_BOX_512, np.float32) * np.float32(size / _REF_SIZE)
    return DetectedFace(box=box, score=1.0, landmarks=np.zeros((5, 2), np.float32))


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] if x.shape[2] == 1 else x @ _LUMA


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _local_ncc(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised cross-correlation of ``a`` and ``b`` in a Gaussian window, in [-1, 1]."""
    ma, mb = _blur(a, sigma), _blur(b, sigma)
    va = np.maximum(_blur(a * a, sigma) - ma * ma, 1e-8)
    vb = np.maximum(_blur(b * b, sigma) - mb * mb, 1e-8)
    return np.clip((_blur(a * b, sigma) - ma * mb) / np.sqrt(va * vb), -1.0, 1.0)


def _normalised_u8(y: np.ndarray, sigma: float) -> np.ndarray:
    """Local mean removed, divided by the local std, as uint8 (flow needs 8-bit input)."""
    d = y - _blur(y, sigma)
    d = d / (np.sqrt(_blur(d * d, sigma)) + 1e-3)
    return np.clip(d * 40.0 + 128.0, 0, 255).astype(np.uint8)


def _as_crop(ref: Tensor, size: tuple[int, int], channels: int) -> np.ndarray:
    """A reference (C, Hr, Wr) in [0, 1], C in 1-4 (alpha dropped) -> (H, W, channels)
    float32 of the crop's ``size`` (H, W)."""
    if not (isinstance(ref, Tensor) and ref.is_floating_point() and ref.ndim == 3):
        raise TypeError("each reference must be a float (C, H, W) tensor in [0, 1]")
    r = ref.detach().float().clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy()
    if r.shape[:2] != size:
        shrink = r.shape[0] > size[0]
        inter = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        r = cv2.resize(r, size[::-1], interpolation=inter)
        r = r[..., None] if r.ndim == 2 else r
    if r.shape[2] in (2, 4):  # drop alpha
        r = r[..., : r.shape[2] - 1]
    if r.shape[2] == channels:
        return r
    if channels == 1:
        return _luma(r)[..., None]
    return np.repeat(r[..., :1], channels, axis=2)


def _pad_square(a: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (S, S, C), S = max(H, W), edge-replicated at the bottom or right."""
    h, w = a.shape[:2]
    if h == w:
        return a
    s = max(h, w)
    out = cv2.copyMakeBorder(a, 0, s - h, 0, s - w, cv2.BORDER_REPLICATE)
    return out.reshape(s, s, a.shape[2])


class RefGuidedFaceRestorer(FaceRestorer):
    """Blind restoration + the references' fine detail where they agree with the face.

    See the module docstring for the method. Deterministic; gray crops (C=1) stay gray.

    Args:
        blind: the restorer run first (default :class:`BlindFaceRestorer`).
        identity: encoder for the identity gate; ``"auto"`` = dlib's when installed (else no
            identity gate, with a logged warning), None = no identity gate (structure gate only).
        amount: share of the references' detail band added where they fully agree.
        replace: share of the blind output's own detail band removed there.
        agree: mid-band correlation ``(a, b)`` mapped to gate 0 and 1.
        id_margin: rescaled identity (0 at the threshold, 1 = identical) that gives full weight.
        flow_size: side of the images the flow runs on (px).
        max_flow: flow longer than this fraction of the crop is not trusted.
    """

    name = "ref-guided"
    version = "1"
    uses_references = True

    def __init__(
        self,
        blind: FaceRestorer | None = None,
        identity: IdentityEncoder | str | None = "auto",
        amount: float = 0.5,
        replace: float = 0.5,
        agree: tuple[float, float] = (0.3, 0.8),
        id_margin: float = 0.25,
        flow_size: int = 128,
        max_flow: float = 0.08,
    ) -> None:
        if not (0.0 <= amount <= 2.0 and 0.0 <= replace <= 1.0):
            raise ValueError(
                f"need 0 <= amount <= 2 and 0 <= replace <= 1, got {amount}, {replace}"
            )
        if not (-1.0 <= agree[0] < agree[1] <= 1.0):
            raise ValueError(f"agree must be (a, b) with -1 <= a < b <= 1, got {agree}")
        if id_margin <= 0 or flow_size < 16 or max_flow <= 0:
            raise ValueError("id_margin and max_flow must be > 0 and flow_size >= 16")
        self.blind = blind or BlindFaceRestorer()
        self.identity = _identity_encoder(identity)
        self.amount = float(amount)
        self.replace = float(replace)
        self.agree = (float(agree[0]), float(agree[1]))
        self.id_margin = float(id_margin)
        self.flow_size = int(flow_size)
        self.max_flow = float(max_flow)
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    @property
    def identity_encoder(self) -> str | None:
        """The identity gate's encoder name: :meth:`restore` takes reference embeddings made
        by an encoder of that name (e.g. a reference gallery's)."""
        return None if self.identity is None else self.identity.name

    def identity_weight(
        self, face: np.ndarray, refs: list[np.ndarray], ref_embeddings: np.ndarray | None = None
    ) -> np.ndarray:
        """Per reference, the identity gate in [0, 1] (all 1 without an encoder).

        Args:
            face: (S, S, C) float32 in [0, 1], the blind-restored crop.
            refs: references, each (S, S, C) float32 in [0, 1].
            ref_embeddings: (len(refs), D) embeddings of the references by an encoder of
                :attr:`identity_encoder`'s name, used instead of embedding ``refs`` (one
                encoder call per reference saved); None = embed ``refs``.
        """
        if self.identity is None:
            return np.ones(len(refs), np.float32)
        box = [aligned_face_box(face.shape[0])]
        if ref_embeddings is None:
            ref_embeddings = np.concatenate([self.identity.embed(to_rgb8(x), box) for x in refs])
        elif len(ref_embeddings) != len(refs):
            raise ValueError(f"{len(ref_embeddings)} reference embeddings for {len(refs)} refs")
        emb = self.identity.embed(to_rgb8(face), box)
        sims = self.identity.similarity(emb, np.asarray(ref_embeddings, np.float32))[0]
        thr = self.identity.similarity_threshold
        perfect = 0.0 if self.identity.metric == "euclidean" else 1.0
        ident = (sims - thr) / (perfect - thr)
        return np.clip(ident / self.id_margin, 0.0, 1.0).astype(np.float32)

    def _warp(self, y_face: np.ndarray, y_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``y_ref`` warped onto ``y_face``'s geometry (S, S) and the flow's trust (S, S)."""
        s, n = y_face.shape[0], self.flow_size
        small = [cv2.resize(y, (n, n), interpolation=cv2.INTER_AREA) for y in (y_face, y_ref)]
        a, b = (_normalised_u8(y, n / 16) for y in small)
        flow = _blur(self._flow.calc(a, b, None), 2.0)
        gy0, gx0 = np.gradient(flow[..., 0])
        gy1, gx1 = np.gradient(flow[..., 1])
        rough = np.sqrt(gy0**2 + gx0**2 + gy1**2 + gx1**2)
        long = np.linalg.norm(flow, axis=2) / n >= self.max_flow
        trust = (np.exp(-((rough / 0.5) ** 2)) * ~long).astype(np.float32)
        flow = cv2.resize(flow, (s, s), interpolation=cv2.INTER_LINEAR) * np.float32(s / n)
        trust = cv2.resize(trust, (s, s), interpolation=cv2.INTER_LINEAR)
        grid = np.arange(s, dtype=np.float32)
        mx = grid[None, :] + flow[..., 0]
        my = grid[:, None] + flow[..., 1]
        warped = cv2.remap(y_ref, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        return warped, trust

    def fuse(
        self, face: np.ndarray, refs: list[np.ndarray], ref_embeddings: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the references' detail to one blind-restored crop.

        Args:
            face: (S, S, C) float32 in [0, 1], the blind output.
            refs: references, each (S, S, C) float32 in [0, 1] (FFHQ-aligned).
            ref_embeddings: their identity embeddings, if already made (see
                :meth:`identity_weight`).

        Returns:
            ``(out, weights)``: (S, S, C) float32 in [0, 1], and per reference the share of
            the face region it shaped (mean gate over the face box), (len(refs),) float32.
        """
        s = face.shape[0]
        k = s / _REF_SIZE
        fine, coarse, window = 3.0 * k, 12.0 * k, 12.0 * k
        y_face = _luma(face)
        detail_face = y_face - _blur(y_face, fine)
        mid_face = _blur(y_face, fine) - _blur(y_face, coarse)
        x0, y0, x1, y1 = (round(float(v)) for v in aligned_face_box(s).box)
        id_w = self.identity_weight(face, refs, ref_embeddings)
        num = np.zeros_like(y_face)
        den = np.full_like(y_face, 1e-6)
        top = np.zeros_like(y_face)
        shares = np.zeros(len(refs), np.float32)
        for i, ref in enumerate(refs):
            if id_w[i] <= 0.0:
                continue
            y_ref, trust = self._warp(y_face, _luma(ref))
            mid_ref = _blur(y_ref, fine) - _blur(y_ref, coarse)
            a, b = self.agree
            ncc = _local_ncc(mid_ref, mid_face, window)
            gate = np.clip((ncc - a) / (b - a), 0.0, 1.0) * trust * id_w[i]
            num += gate * (y_ref - _blur(y_ref, fine))
            den += gate
            top = np.maximum(top, gate)
            shares[i] = float(gate[y0:y1, x0:x1].mean())
        if not (shares >= _MIN_USED).any():
            return face, shares
        delta = self.amount * top * (num / den - self.replace * detail_face)
        return np.clip(face + delta[..., None], 0.0, 1.0).astype(np.float32), shares

    def restore(
        self,
        lq: Tensor,
        references: list[list[Tensor]] | None = None,
        reference_embeddings: list[np.ndarray | None] | None = None,
    ) -> RestoredFaces:
        """Restore a batch of FFHQ-aligned crops, using each crop's references.

        Args:
            lq: :math:`(B, C, H, W)` float in [0, 1], C in {1, 3}; square, or cut short by
                the photo's border (a face at the edge), in which case the fusion runs on it
                edge-replicated to a square and is cut back.
            references: per crop, a (possibly empty) list of aligned references of the same
                person, each :math:`(C_r, H_r, W_r)` in [0, 1] (any size; resized to the crop);
                None = no references (the output is the blind restorer's).
            reference_embeddings: per crop, None or the (n_refs, D) identity embeddings of its
                references by an encoder named :attr:`identity_encoder` (a gallery's): the
                identity gate then embeds only the restored face.

        Returns:
            :class:`RestoredFaces`; ``references_used[i]`` counts the references that shaped
            crop ``i`` (0: blind output returned unchanged). ``confidence`` is the blind
            restorer's, raised towards 1 by half the face share the references shaped.
        """
        check_crops(lq, references)
        base = self.blind.restore(lq)
        if references is None or not any(references):
            return RestoredFaces(base.hq, base.confidence, self.method, (0,) * lq.shape[0])
        (h, w), c = lq.shape[2:], lq.shape[1]
        hq = base.hq.clone()
        conf = base.confidence.clone()
        used = []
        embeddings = reference_embeddings or [None] * len(references)
        if len(embeddings) != len(references):
            raise ValueError(f"{len(embeddings)} embedding sets for {len(references)} crops")
        for i, refs in enumerate(references):
            if not refs:
                used.append(0)
                continue
            face = base.hq[i].detach().float().permute(1, 2, 0).cpu().numpy()
            out, shares = self.fuse(
                _pad_square(face),
                [_pad_square(_as_crop(r, (h, w), c)) for r in refs],
                embeddings[i],
            )
            out = out[:h, :w]
            n = int((shares >= _MIN_USED).sum())
            used.append(n)
            if n:
                hq[i] = torch.from_numpy(out).permute(2, 0, 1).to(hq.device, hq.dtype)
                cover = float(min(1.0, shares.max()))
                conf[i] = conf[i] + (1.0 - conf[i]) * 0.5 * cover
        return RestoredFaces(hq.contiguous(), conf, self.method, tuple(used))


def to_rgb8(x: np.ndarray) -> np.ndarray:
    """(S, S, C) float in [0, 1], C in {1, 3} -> (S, S, 3) uint8 RGB (what encoders take)."""
    return as_rgb8(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))


def _identity_encoder(identity: IdentityEncoder | str | None) -> IdentityEncoder | None:
    if identity != "auto":
        if identity is not None and not isinstance(identity, IdentityEncoder):
            raise TypeError(
                f"identity must be an IdentityEncoder, 'auto' or None, got {identity!r}"
            )
        return identity
    try:
        return DlibResNetEncoder()
    except NotAvailableError as exc:
        logger.warning("reference-guided restorer without identity gate: %s", exc)
        return None
