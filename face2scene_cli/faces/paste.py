"""Paste restored faces back into the photo: face-shaped soft masks and colour matching.

What GFPGAN/CodeFormer-style paste-back gets wrong, and what this module does instead:

* square masks (the crop's outline shows) -> a face-shaped mask built in the canonical frame
  from a mean 68-point face (jaw line + an elliptic forehead reaching the hair line),
  feathered over ``0.1 x size`` with a smoothstep of the signed distance to its outline, so
  it has no hard edge and is exactly 0 well inside the crop's border (:func:`face_mask`);
  with a face's own 68 landmarks the outline follows that face (:func:`blend_mask_for`);
* hair cut off -> the mask's top is the hair line (about one facial third above the brows),
  not the eyebrows;
* blurry blocks -> the inverse warp is antialiased only when it shrinks (Lanczos-3 low-pass at
  the photo's Nyquist, then bicubic; see :func:`face2scene_cli.faces.align.warp_similarity`)
  and it runs only on the face's bounding region;
* colour shift -> colour matching keeps the restored face's detail and takes its low
  frequencies from the photo: ``out = restored + G(original - restored)`` with ``G`` a
  Gaussian of sigma ``size / 32`` (16 px at 512) in the canonical frame (the same
  construction as StableSR / OSEDiff's wavelet colour fix, with a Gaussian instead of a
  wavelet low band). A spatially varying cast (relit face) is removed too, which per-channel
  mean/std matching cannot do;
* gray photos colourised -> a 1-channel photo gets 1 channel back (a 3-channel restored crop
  is converted to BT.601 luma), and a 3-channel photo whose face is gray (channels equal
  within 1 % of the range) gets a gray face.

The alpha channel of RGBA / gray+alpha photos is never touched; 8-bit, 16-bit and float32
(in [0, 1]) photos keep their dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from face2scene_cli.faces.align import AlignedFace, warp_similarity

__all__ = [
    "MEAN_BROWS_512",
    "MEAN_JAW_512",
    "blend_mask_for",
    "face_mask",
    "face_polygon",
    "lowfreq_color_transfer",
    "paste_faces",
]

# Mean dlib/iBUG-68 jaw line (points 0-16) and eyebrows (17-26) in the 512 FFHQ frame: the 9
# faces dlib finds in the project's real photos (skimage astronaut, insightface t1 x6 and
# Tom Hanks, OpenCV messi5 and basketball1) aligned with the 5-point template, averaged and
# mirrored to be left-right symmetric. They agree with OpenFace's published mean 68-point
# shape (fitted to the same template) within 4.5 px on average, 10.6 px at most.
MEAN_JAW_512 = np.array(
    [
        [114.6, 236.4], [114.9, 273.2], [118.9, 310.5], [126.8, 347.6], [142.5, 382.4],
        [164.6, 413.6], [191.1, 440.3], [220.1, 463.7], [255.9, 468.7], [291.8, 463.7],
        [320.7, 440.3], [347.3, 413.6], [369.3, 382.4], [385.1, 347.6], [393.0, 310.5],
        [397.0, 273.2], [397.3, 236.4],
    ],
    dtype=np.float64,
)  # fmt: skip
MEAN_BROWS_512 = np.array(
    [
        [148.0, 211.5], [165.9, 198.8], [188.1, 198.2], [212.2, 202.7], [233.5, 212.8],
        [278.4, 212.8], [299.7, 202.7], [323.8, 198.2], [346.0, 198.8], [363.9, 211.5],
    ],
    dtype=np.float64,
)  # fmt: skip
MEAN_JAW_512.setflags(write=False)
MEAN_BROWS_512.setflags(write=False)

FEATHER = 0.1  # width of the mask's 0 -> 1 ramp as a fraction of the frame
GROW = 0.25 * FEATHER  # the mask's 0.5 level lies this far (fraction of frame) outside the outline
FOREHEAD = 0.5  # hair line above the brows, as a fraction of the brows-to-chin height
COLOR_SIGMA = 1 / 32  # colour-matching low-pass sigma as a fraction of the frame
GRAY_SPREAD = 0.01  # a face whose channels agree within this fraction of the range is gray
_ARC_POINTS = 24
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601, as cv2.COLOR_RGB2GRAY


def face_polygon(jaw: np.ndarray, brows: np.ndarray, size: int) -> np.ndarray:
    """The face outline used for masks: the jaw line, then an elliptic forehead arc.

    The arc joins the jaw's ends (points 0 and 16, near the ears) over the top of the head;
    its top is ``FOREHEAD x (chin - brows)`` above the brows' mean height: the hair line, by
    the rule of facial thirds. The outline is kept ``FEATHER / 2 x size`` (+2 px) inside the
    frame (``(GROW + FEATHER / 2) x size + 2`` px) so the feathered mask reaches 0 before the
    crop's edge.

    Args:
        jaw: (17, 2) jaw points (iBUG 0-16) in the ``size`` frame.
        brows: (10, 2) eyebrow points (iBUG 17-26) in the ``size`` frame.
        size: side of the canonical frame.

    Returns:
        (17 + _ARC_POINTS, 2) float64 closed polygon (clockwise as displayed).
    """
    jaw = np.asarray(jaw, dtype=np.float64)
    brows = np.asarray(brows, dtype=np.float64)
    if jaw.shape != (17, 2) or brows.shape != (10, 2):
        raise ValueError(
            f"need (17, 2) jaw and (10, 2) brow points, got {jaw.shape}, {brows.shape}"
        )
    left, right = jaw[0], jaw[16]
    centre = (left + right) / 2
    half_width = float(np.linalg.norm(right - left)) / 2
    brow_y = float(brows[:, 1].mean())
    chin_y = float(jaw[8, 1])
    top_y = brow_y - FOREHEAD * (chin_y - brow_y)
    half_height = max(centre[1] - top_y, 1.0)
    t = np.linspace(0.0, np.pi, _ARC_POINTS + 2)[1:-1]
    arc = np.stack([centre[0] + half_width * np.cos(t), centre[1] - half_height * np.sin(t)], 1)
    poly = np.concatenate([jaw, arc])
    inset = (GROW + FEATHER / 2) * size + 2
    return np.clip(poly, inset, size - 1 - inset)


def _signed_distance(poly: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from grid points to the closed polygon's outline, positive
    inside (even-odd rule), negative outside: (len(ys), len(xs)) float32."""
    px, py = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
    px, py = px.reshape(-1, 1), py.reshape(-1, 1)
    a = poly.astype(np.float32)
    b = np.roll(a, -1, axis=0)
    ax, ay, bx, by = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    ex, ey = bx - ax, by - ay
    t = np.clip(((px - ax) * ex + (py - ay) * ey) / np.maximum(ex * ex + ey * ey, 1e-12), 0, 1)
    dist = np.sqrt(((px - ax - t * ex) ** 2 + (py - ay - t * ey) ** 2).min(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        crosses = ((ay > py) != (by > py)) & (px < ex * (py - ay) / ey + ax)
    inside = crosses.sum(axis=1) % 2 == 1
    return np.where(inside, dist, -dist).reshape(len(ys), len(xs))


def _mask_from_polygon(poly: np.ndarray, size: int) -> np.ndarray:
    """Smoothstep of the signed distance to ``poly``'s outline: 0.5 at ``GROW x size``
    outside it, 1 and 0 at ``FEATHER x size / 2`` either side of that level.

    The exact distance is computed on a grid of at most 64 x 64 (the ramp is >= 6.4 grid
    pixels wide, so bilinear upsampling changes the mask by <= 0.01 against a 128 x 128 grid)
    and the mask upsampled: a few ms per face at any size.
    """
    n = min(size, 64)
    f = size / n
    centres = (np.arange(n) + 0.5) * f - 0.5  # coarse pixel centres in frame coordinates
    signed = _signed_distance(poly, centres, centres) / f
    width = FEATHER * size / f
    x = np.clip((signed + GROW * size / f) / width + 0.5, 0.0, 1.0)
    mask = x * x * (3.0 - 2.0 * x)
    # soften the distance field's creases (polygon corners); sigma << ramp width
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=width / 8, borderType=cv2.BORDER_CONSTANT)
    if n != size:
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
    # exactly 0 on the frame's edge: the blur's far tail (< 0.01) is tapered off over 2 %
    edge = np.minimum(np.arange(size), np.arange(size)[::-1]) / max(1.0, 0.02 * size)
    taper = np.clip(edge, 0.0, 1.0).astype(np.float32)
    mask = mask * np.minimum(taper[:, None], taper[None, :])
    return np.clip(mask, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _template_mask(size: int) -> np.ndarray:
    k = size / 512.0
    mask = _mask_from_polygon(face_polygon(MEAN_JAW_512 * k, MEAN_BROWS_512 * k, size), size)
    mask.setflags(write=False)
    return mask


def face_mask(size: int = 512) -> np.ndarray:
    """The soft face mask of the canonical frame (mean face; the same for every face).

    Args:
        size: side of the canonical frame (>= 16).

    Returns:
        (size, size) float32 in [0, 1]: 1 over the face from chin to hair line, 0 at the
        crop's corners and edges, with a smooth ramp ``0.1 x size`` wide in between.
    """
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"mask size must be an integer >= 16, got {size!r}")
    return _template_mask(int(size)).copy()


def _plausible(jaw: np.ndarray, size: int) -> bool:
    """The face's own jaw line is close enough to the mean one to be trusted."""
    mean = MEAN_JAW_512 * (size / 512.0)
    return bool(np.isfinite(jaw).all() and np.abs(jaw - mean).max() < 0.2 * size)


def blend_mask_for(aligned: AlignedFace) -> np.ndarray:
    """The blend mask of one aligned face in its canonical frame.

    With ``aligned.face.landmarks68`` the outline follows the face's own jaw and brows
    (mapped through ``aligned.matrix``); without them, or when they stray more than
    ``0.2 x size`` from the mean face (a failed landmark fit), it is :func:`face_mask`.

    Args:
        aligned: the aligned face.

    Returns:
        (size, size) float32 in [0, 1].
    """
    size = aligned.size
    lm68 = aligned.face.landmarks68
    if lm68 is not None and np.asarray(lm68).shape == (68, 2):
        pts = aligned.to_aligned(np.asarray(lm68, dtype=np.float64))
        if _plausible(pts[:17], size):
            return _mask_from_polygon(face_polygon(pts[:17], pts[17:27], size), size)
    return _template_mask(size).copy()


def _lowpass(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of an (S, S, C) float32 image; large sigmas run on a decimated copy
    (the result is smooth, so bilinear upsampling of it is exact to well below a level)."""
    f = max(1, int(sigma // 4))
    h, w = a.shape[:2]
    if f > 1:
        small = cv2.resize(a, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / f, borderType=cv2.BORDER_REFLECT_101)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        out = cv2.GaussianBlur(a, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(a.shape)


def lowfreq_color_transfer(restored: np.ndarray, original: np.ndarray, sigma: float) -> np.ndarray:
    """Give ``restored`` the low-frequency colour of ``original``, keeping its own detail.

    ``out = restored + G_sigma(original - restored)`` (G: Gaussian low-pass), i.e. the
    restored image's high frequencies on the original's low frequencies.

    Args:
        restored: (S, S, C) float32.
        original: (S, S, C) float32, same value scale.
        sigma: Gaussian sigma in pixels.

    Returns:
        (S, S, C) float32 (not clipped).
    """
    if restored.shape != original.shape:
        raise ValueError(f"shapes differ: restored {restored.shape}, original {original.shape}")
    return restored + _lowpass(original - restored, sigma)


def _peak(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return 1.0


def _colour_channels(channels: int) -> int:
    """Colour channels of a photo with ``channels`` (the rest is alpha)."""
    return {1: 1, 2: 1, 3: 3, 4: 3}[channels]


def _prepare_restored(restored: np.ndarray, n: int, peak: float) -> np.ndarray:
    """(S, S, n) float32 on the photo's scale from a restored crop of any supported layout."""
    r = restored[:, :, None] if restored.ndim == 2 else restored
    rf = r.astype(np.float32) * np.float32(peak / _peak(r.dtype))
    c = rf.shape[2]
    if c in (2, 4):  # drop the restorer's alpha
        rf = rf[:, :, : c - 1]
        c -= 1
    if n == 1 and c == 3:
        return (rf @ _LUMA)[:, :, None]
    if n == 3 and c == 1:
        return np.repeat(rf, 3, axis=2)
    return rf


def _looks_gray(crop: np.ndarray, mask: np.ndarray, peak: float) -> bool:
    """The 3 channels agree inside the face (a black-and-white photo stored as RGB); judged on
    every 4th pixel, which is plenty for a 99th percentile."""
    c = crop[::4, ::4].astype(np.float32)
    inside = mask[::4, ::4] > 0.5
    if not inside.any():
        return False
    r, g, b = c[..., 0][inside], c[..., 1][inside], c[..., 2][inside]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return float(np.percentile(spread, 99)) <= GRAY_SPREAD * peak


def _check_inputs(
    image: np.ndarray, restored: Sequence[np.ndarray], aligned: Sequence[AlignedFace]
) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, not {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"image must be (H, W) or (H, W, C) with C <= 4, got {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"image must be uint8, uint16 or float32, got {image.dtype}")
    if len(restored) != len(aligned):
        raise ValueError(
            f"got {len(restored)} restored crops for {len(aligned)} aligned faces; "
            "expected one restored crop per aligned face"
        )
    for i, (r, a) in enumerate(zip(restored, aligned, strict=True)):
        r = np.asarray(r)
        if r.ndim not in (2, 3) or r.shape[0] != r.shape[1] or r.shape[0] < 16:
            raise ValueError(f"restored crop {i} must be square (S, S[, C]), got {r.shape}")
        if r.ndim == 3 and r.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"restored crop {i} must have 1-4 channels, got {r.shape}")
        if r.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"restored crop {i} must be uint8, uint16 or float32, got {r.dtype}")
        if a.crop.shape[:2] != (a.size, a.size):
            raise ValueError(f"aligned face {i} crop is {a.crop.shape}, expected size {a.size}")


def _support_box(mask: np.ndarray) -> np.ndarray:
    """(4, 2) corners of the bounding box of the mask's non-zero part."""
    ys, xs = np.nonzero(mask > 1e-4)
    if xs.size == 0:
        return np.zeros((4, 2))
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    return np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)


def paste_faces(
    image: np.ndarray,
    restored: Sequence[np.ndarray],
    aligned: Sequence[AlignedFace],
    color_match: bool = True,
) -> np.ndarray:
    """Blend restored face crops back into the photo they were aligned from.

    For each face, in order (later faces are blended over earlier ones): convert the
    restored crop to the photo's channels and scale, colour-match it to the original crop in
    the canonical frame (optional), warp it and its soft mask back with ``aligned.inverse``
    over the face's bounding region only, and blend ``out = m * face + (1 - m) * out``.

    Args:
        image: the photo, (H, W) or (H, W, C) with C in {1, 2, 3, 4} (gray, gray+alpha, RGB,
            RGBA), uint8 / uint16 / float32 in [0, 1].
        restored: one crop per aligned face, (S, S) or (S, S, C) uint8 / uint16 / float32 in
            [0, 1], RGB(A) or gray; any dtype / channel layout is converted to the photo's.
            S may differ from ``aligned[i].size`` (e.g. a 2x super-resolved face at 1024).
        aligned: the faces the crops came from (:meth:`FaceAligner.align` on ``image``).
        color_match: give each face the photo's low-frequency colour (see module docs).

    Returns:
        A new array with the shape and dtype of ``image``; its alpha channel is a copy of
        the input's.

    Raises:
        ValueError: shapes, dtypes or counts that do not fit (the message says which).
    """
    _check_inputs(image, restored, aligned)
    out = image.copy()
    view = out[:, :, None] if out.ndim == 2 else out
    h, w = view.shape[:2]
    n = _colour_channels(view.shape[2])
    peak = _peak(image.dtype)
    for crop, face in zip(restored, aligned, strict=True):
        crop = np.asarray(crop)
        s = crop.shape[0]
        k = face.size / s  # aligned pixels per restored pixel
        mask = blend_mask_for(face)
        original = face.crop[:, :, None] if face.crop.ndim == 2 else face.crop
        original = original[:, :, :n].astype(np.float32)
        if s != face.size:
            mask = cv2.resize(mask, (s, s), interpolation=cv2.INTER_LINEAR)
            original = cv2.resize(original, (s, s), interpolation=cv2.INTER_CUBIC).reshape(s, s, n)
        rest = _prepare_restored(crop, n, peak)
        if n == 3 and _looks_gray(original, mask, peak):
            rest = np.repeat((rest @ _LUMA)[:, :, None], 3, axis=2)
        if color_match:
            rest = lowfreq_color_transfer(rest, original, COLOR_SIGMA * s)

        # restored pixels -> source pixels, and the bounding region the mask covers there
        to_src = face.inverse @ np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2], [0, 0, 1]])
        corners = _support_box(mask) @ to_src[:, :2].T + to_src[:, 2]
        x0 = max(0, math.floor(corners[:, 0].min()) - 2)
        y0 = max(0, math.floor(corners[:, 1].min()) - 2)
        x1 = min(w, math.ceil(corners[:, 0].max()) + 3)
        y1 = min(h, math.ceil(corners[:, 1].max()) + 3)
        if x1 <= x0 or y1 <= y0:
            continue  # the face is entirely outside the photo
        to_roi = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        fwd = (to_roi @ np.vstack([to_src, [0.0, 0.0, 1.0]]))[:2]
        size = (x1 - x0, y1 - y0)
        warped = warp_similarity(rest, fwd, size, border="replicate")
        m = cv2.warpAffine(mask, fwd, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        m = np.clip(m, 0.0, 1.0)[:, :, None]
        region = view[y0:y1, x0:x1, :n].astype(np.float32)
        blended = region + m * (warped - region)
        if image.dtype == np.float32:
            view[y0:y1, x0:x1, :n] = np.clip(blended, 0.0, 1.0)
        else:
            view[y0:y1, x0:x1, :n] = np.clip(np.rint(blended), 0, peak).astype(image.dtype)
    return out
