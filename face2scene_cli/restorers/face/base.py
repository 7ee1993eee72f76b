"""Stage I: face restorers, batched over face crops.

Every restorer implements :class:`FaceRestorer`: it takes low-quality (LQ) face crops
:math:`(B, C, H, W)`, float in [0, 1], C in {1, 3} (RGB order), optionally with reference
faces of the same person, and returns restored (HQ) crops of the same shape together with a
per-crop confidence in [0, 1] that downstream stages use as a weight (FaDeX's per-image code
is a confidence-weighted mean over faces).

:class:`BlindFaceRestorer` is the non-learned baseline used when no reference-based
restorer is available (and to make FaDeX's training pairs): a per-crop noise estimate, then
OpenCV non-local means with a strength tied to that estimate, mild JPEG deblocking along the
8x8 grid, and a mild unsharp mask. The reference-guided restorer (``"ref-guided"``) lives in
:mod:`face2scene_cli.restorers.face.ref_guided`.

:func:`create_face_restorer` builds a restorer by name: the built-ins of
:data:`FACE_RESTORERS`, then plugins, i.e. entry points of the ``face2scene.face_restorers``
group in installed distributions (:func:`available_face_restorers` lists both).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from face2scene_cli.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "FACE_RESTORERS",
    "BlindFaceRestorer",
    "FaceRestorer",
    "RestoredFaces",
    "available_face_restorers",
    "blockiness",
    "check_crops",
    "create_face_restorer",
    "estimate_noise_sigma",
]

logger = logging.getLogger(__name__)

_MAD_TO_SIGMA = 1.0 / 0.6745


@dataclass(frozen=True)
class RestoredFaces:
    """What a :class:`FaceRestorer` returns.

    Attributes:
        hq: restored crops :math:`(B, C, H, W)`, same shape, dtype and device as the input,
            values in [0, 1].
        confidence: :math:`(B,)` float32 in [0, 1]: how much the restorer trusts each output.
        method: the restorer's name and version, e.g. ``"blind-nlm/1"``; reports record it.
        references_used: per crop, how many references shaped the output (0: restored blind,
            e.g. no references or none that agreed with the face); None = the restorer does
            not use references.
    """

    hq: Tensor
    confidence: Tensor
    method: str
    references_used: tuple[int, ...] | None = None


def check_crops(lq: Tensor, references: list[list[Tensor]] | None = None) -> None:
    """Raise TypeError / ValueError unless ``lq`` is a float (B, C, H, W) batch, C in {1, 3},
    and ``references`` (if given) has one list per crop."""
    if not isinstance(lq, Tensor):
        raise TypeError(f"lq must be a torch.Tensor, got {type(lq).__name__}")
    if lq.ndim != 4 or lq.shape[1] not in (1, 3):
        raise ValueError(
            f"lq must have shape (B, C, H, W) with C in {{1, 3}}, got {tuple(lq.shape)}"
        )
    if not lq.is_floating_point():
        raise TypeError(f"lq must be a floating point tensor in [0, 1], got {lq.dtype}")
    if lq.shape[0] < 1 or min(lq.shape[2:]) < 8:
        raise ValueError(f"lq must hold at least one crop of at least 8x8, got {tuple(lq.shape)}")
    if references is not None and len(references) != lq.shape[0]:
        raise ValueError(
            f"references must have one list per crop: {lq.shape[0]} crops, {len(references)} lists"
        )


class FaceRestorer(ABC):
    """Restores face crops (Stage I); backends subclass this.

    Subclasses set ``name`` and ``version`` and implement :meth:`restore`. ``uses_references``
    says whether the backend reads ``references`` at all (the blind baseline does not).
    """

    name: str = "base"
    version: str = "0"
    uses_references: bool = False

    @property
    def method(self) -> str:
        """``"<name>/<version>"``, recorded in :class:`RestoredFaces` and in reports."""
        return f"{self.name}/{self.version}"

    @abstractmethod
    def restore(self, lq: Tensor, references: list[list[Tensor]] | None = None) -> RestoredFaces:
        r"""Restore a batch of face crops.

        Args:
            lq: LQ crops :math:`(B, C, H, W)`, float in [0, 1], C in {1, 3} (RGB).
            references: per crop, a (possibly empty) list of clean reference faces of the same
                person, each :math:`(C, H_r, W_r)` in [0, 1]; None = no references at all.

        Returns:
            :class:`RestoredFaces` with ``hq`` of the same shape as ``lq``.
        """


# ------------------------------------------------------------------------------------------
# numpy helpers (one crop, float32 HxWxC in [0, 1])


def estimate_noise_sigma(img: np.ndarray, flat_fraction: float = 0.5) -> float:
    r"""Robust white-noise sigma of one image, in /255 units (MAD on the flattest blocks).

    The finest diagonal Haar band :math:`HH = (a - b - c + d) / 2` of every 2x2 block has the
    noise's variance and little image energy. Texture leaks into it, so only the
    ``flat_fraction`` of blocks whose coarse gradient (of the 2x2 means, 3x3 smoothed) is
    lowest are used; :math:`\sigma = \mathrm{median}(|HH|) / 0.6745` over them, averaged over
    channels (Donoho's estimator restricted to flat areas).

    Args:
        img: float array (H, W) or (H, W, C) in [0, 1], H and W >= 4.
        flat_fraction: share of 2x2 blocks used, in (0, 1].

    Returns:
        sigma in /255 units (15.0 means 15/255).
    """
    x = img.astype(np.float32)
    if x.ndim == 2:
        x = x[..., None]
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w]
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    hh = np.abs(a - b - c + d) / 2.0
    ll = ((a + b + c + d) / 4.0).mean(axis=2)
    gy, gx = np.gradient(cv2.blur(ll, (3, 3)))
    grad = np.abs(gx) + np.abs(gy)
    cut = np.quantile(grad, float(np.clip(flat_fraction, 1e-3, 1.0)))
    mask = grad <= cut
    sig = np.median(hh[mask].reshape(-1, x.shape[2]), axis=0) * _MAD_TO_SIGMA
    return float(sig.mean() * 255.0)


def blockiness(img: np.ndarray) -> tuple[float, int, int]:
    """JPEG blocking strength of one image and the phase of its 8x8 grid.

    Compares the mean absolute luminance step across columns (rows) at each of the 8 phases;
    the grid's phase has the largest steps. The score is
    ``(step at the grid phase) / (median step) - 1``, >= 0; about 0 for an unblocked image,
    0.2-1+ for visible blocking.

    Args:
        img: float array (H, W) or (H, W, C) in [0, 1], H and W >= 16.

    Returns:
        ``(score, phase_y, phase_x)``: block boundaries lie between pixel ``p + 8k - 1`` and
        ``p + 8k``.
    """
    y = img if img.ndim == 2 else img.mean(axis=2)
    dx = np.abs(np.diff(y, axis=1)).mean(axis=0)  # step between column j and j+1
    dy = np.abs(np.diff(y, axis=0)).mean(axis=1)
    scores, phases = [], []
    for d in (dy, dx):
        per = np.array([d[p::8].mean() if len(d[p::8]) else 0.0 for p in range(8)])
        ref = float(np.median(per)) + 1e-6
        k = int(np.argmax(per))
        scores.append(float(per[k] / ref - 1.0))
        phases.append((k + 1) % 8)
    return float(max(0.0, min(scores))), phases[0], phases[1]


def _deblock(img: np.ndarray, strength: float, py: int, px: int) -> np.ndarray:
    """Blend the two pixels on each side of the 8x8 grid lines towards their local mean."""
    out = img.copy()
    h, w = img.shape[:2]
    a = float(np.clip(strength, 0.0, 1.0)) * 0.5
    for j in range(px if px > 0 else 8, w, 8):  # boundary between columns j-1 and j
        left, right = img[:, j - 1], img[:, j]
        m = 0.5 * (left + right)
        out[:, j - 1] = left + a * (m - left)
        out[:, j] = right + a * (m - right)
    src = out.copy()
    for i in range(py if py > 0 else 8, h, 8):
        top, bottom = src[i - 1], src[i]
        m = 0.5 * (top + bottom)
        out[i - 1] = top + a * (m - top)
        out[i] = bottom + a * (m - bottom)
    return out


class BlindFaceRestorer(FaceRestorer):
    r"""Non-learned blind restorer: noise estimate -> non-local means -> deblock -> sharpen.

    Per crop (8-bit internally, like a decoded photo):

    1. :func:`estimate_noise_sigma` (MAD on the finest Haar band), :math:`\hat\sigma` in /255.
    2. If :math:`\hat\sigma \ge` ``min_sigma``: OpenCV ``fastNlMeansDenoisingColored`` (RGB) or
       ``fastNlMeansDenoising`` (gray) with ``h = h_factor * sigma_hat`` (and the same for
       colour), template 7, search window ``search_window``.
    3. :func:`blockiness` on the input; when above ``deblock_threshold``, the pixel pairs on
       the detected 8x8 grid lines are pulled towards their mean (strength grows with the
       score, at most half-way).
    4. Unsharp mask, Gaussian sigma 1 px, amount ``sharpen`` scaled down by the noise
       removed (no sharpening of what is left of heavy noise).

    Confidence :math:`= \exp(-\hat\sigma / 25) \cdot (1 - \min(b, 1) / 2)` with ``b`` the
    blockiness score: 1 for a clean crop, ~0.55 at sigma 15, ~0.3 at sigma 30, halved at
    most by blocking. It says how much had to be guessed, not how good the output is.

    Deterministic (OpenCV's NLM is deterministic for a fixed thread count and input); a gray
    input stays gray (C=1 in, C=1 out; a 3-channel crop with equal channels is processed as
    gray and returned with equal channels).

    Args:
        h_factor: NLM strength per unit of estimated sigma.
        min_sigma: below this estimated sigma (/255) no denoising is done.
        search_window: NLM search window (odd); 21 is OpenCV's default, 15 is ~2x faster.
        deblock_threshold: blockiness score above which deblocking is applied.
        sharpen: unsharp-mask amount for a clean crop.
    """

    name = "blind-nlm"
    version = "1"
    uses_references = False

    def __init__(
        self,
        h_factor: float = 0.9,
        min_sigma: float = 1.5,
        search_window: int = 15,
        deblock_threshold: float = 0.15,
        sharpen: float = 0.3,
    ) -> None:
        if h_factor <= 0:
            raise ValueError(f"h_factor must be > 0, got {h_factor}")
        if search_window < 3 or search_window % 2 == 0:
            raise ValueError(f"search_window must be odd and >= 3, got {search_window}")
        if sharpen < 0:
            raise ValueError(f"sharpen must be >= 0, got {sharpen}")
        self.h_factor = float(h_factor)
        self.min_sigma = float(min_sigma)
        self.search_window = int(search_window)
        self.deblock_threshold = float(deblock_threshold)
        self.sharpen = float(sharpen)

    def restore_one(self, img: np.ndarray) -> tuple[np.ndarray, float]:
        """Restore one crop: float32 (H, W) or (H, W, 3) in [0, 1] -> (same shape, confidence)."""
        gray = (
            img.ndim == 2
            or img.shape[2] == 1
            or bool(
                np.array_equal(img[..., 0], img[..., 1])
                and np.array_equal(img[..., 0], img[..., 2])
            )
        )
        src = img if img.ndim == 2 else (img[..., 0] if gray else img)
        u8 = np.clip(np.rint(src * 255.0), 0, 255).astype(np.uint8)
        sigma = estimate_noise_sigma(u8.astype(np.float32) / 255.0)
        out = u8
        if sigma >= self.min_sigma:
            h = self.h_factor * sigma
            if gray:
                out = cv2.fastNlMeansDenoising(u8, None, h, 7, self.search_window)
            else:
                out = cv2.fastNlMeansDenoisingColored(u8, None, h, h, 7, self.search_window)
        f = out.astype(np.float32) / 255.0
        score, py, px = (0.0, 0, 0)
        if min(f.shape[:2]) >= 16:
            score, py, px = blockiness(u8.astype(np.float32) / 255.0)
            if score > self.deblock_threshold:
                f = _deblock(f, min(1.0, score), py, px)
        amount = self.sharpen * math.exp(-sigma / 10.0)
        if amount > 1e-3:
            soft = cv2.GaussianBlur(f, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
            f = f + amount * (f - soft)
        f = np.clip(f, 0.0, 1.0)
        if img.ndim == 3 and gray:
            f = np.repeat(f[..., None], img.shape[2], axis=2)
        conf = math.exp(-sigma / 25.0) * (1.0 - 0.5 * min(score, 1.0))
        return f.astype(np.float32), float(min(1.0, max(0.0, conf)))

    def restore(self, lq: Tensor, references: list[list[Tensor]] | None = None) -> RestoredFaces:
        """Restore a batch of crops (``references`` are ignored: this restorer is blind).

        Args:
            lq: :math:`(B, C, H, W)` float in [0, 1], C in {1, 3}.
            references: ignored.

        Returns:
            :class:`RestoredFaces`; ``hq`` has ``lq``'s shape, dtype and device.
        """
        check_crops(lq, references)
        arr = lq.detach().float().clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()
        outs, confs = [], []
        for img in arr:
            f, c = self.restore_one(img[..., 0] if img.shape[2] == 1 else img)
            outs.append(f[..., None] if f.ndim == 2 else f)
            confs.append(c)
        hq = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).to(lq.device, lq.dtype)
        return RestoredFaces(
            hq=hq.contiguous(),
            confidence=torch.tensor(confs, dtype=torch.float32),
            method=self.method,
        )


def _ref_guided(**kwargs: Any) -> FaceRestorer:
    from face2scene_cli.restorers.face.ref_guided import RefGuidedFaceRestorer

    return RefGuidedFaceRestorer(**kwargs)


# Built-in restorers by the name users give (``--face-restorer``): a class or a factory.
FACE_RESTORERS: dict[str, Callable[..., FaceRestorer]] = {
    "blind": BlindFaceRestorer,
    "ref-guided": _ref_guided,
}

ENTRY_POINT_GROUP = "face2scene.face_restorers"
"""Entry-point group of face restorer plugins: each entry point names a :class:`FaceRestorer`
subclass or a factory returning a :class:`FaceRestorer` instance."""


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
    return found


def available_face_restorers() -> dict[str, str]:
    """Every restorer ``create_face_restorer`` accepts: name -> where it comes from
    (``"built-in"``, or ``"plugin <module:attr> (<distribution>)"``). Built-ins shadow plugins
    of the same name. Nothing is imported."""
    out = {name: "built-in" for name in FACE_RESTORERS}
    for name, ep in sorted(_plugins().items()):
        if name not in out:
            dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""
            out[name] = f"plugin {ep.value}{dist}"
    return out


def create_face_restorer(name: str, **kwargs: Any) -> FaceRestorer:
    """The face restorer called ``name``, built with ``kwargs``.

    Built-ins (:data:`FACE_RESTORERS`) first, then plugins: entry points of the
    ``face2scene.face_restorers`` group (:data:`ENTRY_POINT_GROUP`) of installed
    distributions, whose object must be a :class:`FaceRestorer` subclass or a factory that
    returns a :class:`FaceRestorer`.

    Raises:
        ConfigError: unknown name (the message lists the available ones), or a plugin that
            fails to load or does not give a :class:`FaceRestorer` (the message names it).
    """
    if name in FACE_RESTORERS:
        return FACE_RESTORERS[name](**kwargs)
    ep = _plugins().get(name)
    if ep is None:
        raise ConfigError(
            f"unknown face restorer {name!r}; available: "
            f"{', '.join(sorted(available_face_restorers()))}"
        )
    what = f"face restorer plugin {name!r} ({ep.value})"
    try:
        obj = ep.load()
    except Exception as exc:  # a plugin's import can fail in any way
        raise ConfigError(f"{what} failed to load: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise ConfigError(f"{what} is a {type(obj).__name__}, not a FaceRestorer class or factory")
    try:
        restorer = obj(**kwargs)
    except Exception as exc:
        raise ConfigError(f"{what} failed to build: {type(exc).__name__}: {exc}") from exc
    if not isinstance(restorer, FaceRestorer):
        raise ConfigError(
            f"{what} gave a {type(restorer).__name__}, not a "
            "face2scene_cli.restorers.face.base.FaceRestorer"
        )
    return restorer
