"""Face alignment to the FFHQ canonical frame, and native-resolution face crops.

Two ways to cut a face out of a photo, for two different consumers:

* :class:`FaceAligner` warps a face onto the 5-point FFHQ template used by GFPGAN /
  facexlib / CodeFormer (a least-squares similarity transform, :func:`estimate_similarity`),
  at ``size`` x ``size`` (512 by default: the paper's face restorer runs at 512). The
  resulting :class:`AlignedFace` keeps both transforms so :mod:`face2scene_cli.faces.paste`
  can put the restored face back.
* :func:`native_crop` cuts an axis-aligned square around the face with no resampling at all,
  for the degradation estimator, which reads noise, blur and JPEG statistics that any
  interpolation would change.

Resampling (:func:`warp_similarity`, also used by the paste-back):

* enlarging (the face is smaller in the photo than in the canonical frame, the usual case for
  group photos): one bicubic warp (``cv2.INTER_CUBIC``);
* shrinking by ``r`` source pixels per output pixel (large faces in 12 MP photos): the
  source is first low-passed with a Lanczos-3 windowed sinc whose cut-off is the output's
  Nyquist frequency (an antialiasing filter as in Pillow's ``resize``; for ``r >= 4`` an
  exact integer ``cv2.INTER_AREA`` decimation by ``k = r // 2`` comes first, so the filter
  stays short), then warped bicubically. The band-limited intermediate is oversampled at
  least 2x, which is where bicubic interpolation is accurate; a plain warp would alias (moire
  on hair and fabric), and ``INTER_AREA`` alone (a box filter) blurs more in the pass band.

Coordinates follow OpenCV: pixel centres at integers, x right, y down. Faces near or across
the image border are padded by reflection (``cv2.BORDER_REFLECT_101``), never refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from face2scene_cli.faces.base import DetectedFace

__all__ = [
    "FFHQ_TEMPLATE_512",
    "AlignedFace",
    "FaceAligner",
    "NativeCrop",
    "estimate_similarity",
    "ffhq_template",
    "native_crop",
    "warp_similarity",
]

# GFPGAN / facexlib FFHQ template at 512: eye on the image's left, eye on the image's right,
# nose tip, mouth corner left, mouth corner right (the order of DetectedFace.landmarks).
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
FFHQ_TEMPLATE_512.setflags(write=False)

_BORDERS = {
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}
# Lanczos-3 as Pillow's LANCZOS; Lanczos-2 blurs more (round trip 1.5 dB worse)
_LANCZOS_LOBES = 3
_SHRINK_THRESHOLD = 1.01  # below this reduction a prefilter is a no-op
_JPEG_BLOCK = 8


def ffhq_template(size: int = 512) -> np.ndarray:
    """The 5-point FFHQ template scaled to a ``size`` x ``size`` canonical frame.

    Args:
        size: side of the aligned crop in pixels.

    Returns:
        (5, 2) float64 points (order of :data:`FFHQ_TEMPLATE_512`).
    """
    if size < 16:
        raise ValueError(f"aligned size must be >= 16 pixels, got {size}")
    return FFHQ_TEMPLATE_512 * (size / 512.0)


def estimate_similarity(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    r"""Least-squares similarity transform (rotation, uniform scale, translation) src -> dst.

    Umeyama's closed form (IEEE TPAMI 1991): minimises :math:`\sum_i \|s R p_i + t - q_i\|^2`
    over proper rotations ``R`` (no reflection), scale ``s > 0`` and translation ``t``.
    Deterministic; no RANSAC (five landmarks, no outliers to reject).

    Args:
        src_pts: (N, 2) source points, N >= 2, not all equal.
        dst_pts: (N, 2) destination points.

    Returns:
        (2, 3) float64 matrix ``[s R | t]`` mapping homogeneous source points to destination
        points (``cv2.warpAffine`` convention).

    Raises:
        ValueError: shapes differ or are not (N, 2), fewer than 2 points, non-finite values, or
            the source points are all the same point.
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(
            f"points must be two (N, 2) arrays of the same shape, got {src.shape} and {dst.shape}"
        )
    if src.shape[0] < 2:
        raise ValueError(f"a similarity needs at least 2 points, got {src.shape[0]}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = float((s0**2).sum()) / len(src)
    if var_s <= 1e-12:
        raise ValueError("source points are all the same point: no similarity is defined")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum()) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def _transform_points(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The (2, 3) affine ``a o b`` (apply ``b`` first)."""
    a3 = np.vstack([a, [0.0, 0.0, 1.0]])
    b3 = np.vstack([b, [0.0, 0.0, 1.0]])
    return (a3 @ b3)[:2]


def _lanczos_lowpass(reduction: float) -> np.ndarray:
    """1-D Lanczos low-pass with cut-off ``0.5 / reduction`` cycles per pixel (sums to 1)."""
    radius = math.ceil(_LANCZOS_LOBES * reduction)
    x = np.arange(-radius, radius + 1, dtype=np.float64) / reduction
    k = np.sinc(x) * np.sinc(x / _LANCZOS_LOBES)
    k[np.abs(x) >= _LANCZOS_LOBES] = 0.0
    return (k / k.sum()).astype(np.float32)


def _as_hwc(a: np.ndarray) -> np.ndarray:
    return a[:, :, None] if a.ndim == 2 else a


def _shrink_margin(reduction: float) -> int:
    """Source pixels a shrinking warp reads beyond the footprint of its output."""
    return math.ceil((_LANCZOS_LOBES + 1) * max(reduction, 1.0)) + 4


def warp_similarity(
    src: np.ndarray,
    matrix: np.ndarray,
    out_size: tuple[int, int],
    border: str = "reflect",
) -> np.ndarray:
    """Warp ``src`` by a similarity (or near-similarity) affine, antialiased when shrinking.

    See the module docstring for the resampling choices.

    Args:
        src: (H, W) or (H, W, C) uint8, uint16 or float32 image.
        matrix: (2, 3) affine mapping source pixel coordinates to output coordinates.
        out_size: ``(width, height)`` of the output.
        border: ``"reflect"`` (``BORDER_REFLECT_101``), ``"replicate"`` or ``"constant"`` (0).

    Returns:
        float32 (height, width, C) (C = 1 for 2-D input), same value scale as ``src``.
    """
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {border!r}")
    img = _as_hwc(np.asarray(src))
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"matrix must have shape (2, 3), got {m.shape}")
    flag = _BORDERS[border]
    if flag == cv2.BORDER_REFLECT_101 and min(img.shape[:2]) < 2:
        flag = cv2.BORDER_REPLICATE  # the same thing on a 1-pixel axis (OpenCV hangs on it)
    det = abs(float(np.linalg.det(m[:, :2])))
    if not (math.isfinite(det) and det > 1e-12):
        raise ValueError(f"matrix must be invertible and finite, got determinant {det}")
    reduction = 1.0 / math.sqrt(det)  # source pixels per output pixel
    work = img.astype(np.float32)
    if reduction > _SHRINK_THRESHOLD:
        k = int(reduction // 2) if reduction >= 4 else 1
        if k > 1:
            h, w = work.shape[:2]
            pad_b, pad_r = (-h) % k, (-w) % k
            if pad_b or pad_r:
                work = _as_hwc(cv2.copyMakeBorder(work, 0, pad_b, 0, pad_r, flag, value=0))
            work = _as_hwc(
                cv2.resize(
                    work, (work.shape[1] // k, work.shape[0] // k), interpolation=cv2.INTER_AREA
                )
            )
            # decimated pixel j covers source pixels [j k, j k + k): its centre is j k + (k-1)/2
            m = _compose(m, np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2]]))
            reduction /= k
        kern = _lanczos_lowpass(reduction)
        tiny = min(work.shape[:2]) < 2
        filter_border = cv2.BORDER_REPLICATE if tiny else cv2.BORDER_REFLECT_101
        work = _as_hwc(cv2.sepFilter2D(work, cv2.CV_32F, kern, kern, borderType=filter_border))
    out = cv2.warpAffine(work, m, out_size, flags=cv2.INTER_CUBIC, borderMode=flag, borderValue=0)
    return _as_hwc(out)


def _to_dtype(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return a.astype(dt)
    info = np.iinfo(dt)
    return np.clip(np.rint(a), info.min, info.max).astype(dt)


def _check_image(image: np.ndarray, what: str = "image") -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, not {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"{what} must be (H, W) or (H, W, C) with C <= 4, got {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"{what} must be uint8, uint16 or float32, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} must not be empty, got {image.shape}")


def _axis_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Source indices ``[a, b)`` that a warp reading coordinates ``[lo, hi]`` needs on an axis
    of length ``n`` under reflect-101 padding (reflected coordinates included)."""
    a, b = math.floor(lo), math.ceil(hi)
    if a < -(n - 1) or b > 2 * (n - 1):  # reflected more than once: take the whole axis
        return 0, n
    if a < 0:
        b = max(b, -a)  # x < 0 reads -x
    if b > n - 1:
        a = min(a, 2 * (n - 1) - b)  # x > n - 1 reads 2 (n - 1) - x
    return max(a, 0), min(b, n - 1) + 1


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """One face warped onto the canonical frame, with the transforms to go back.

    Attributes:
        crop: (size, size, C) image, same dtype and channel count as the source (gray stays
            gray; 2-D sources give (size, size)).
        matrix: (2, 3) float64 affine, source pixels -> aligned pixels.
        inverse: (2, 3) float64 affine, aligned pixels -> source pixels.
        scale: source pixels per aligned pixel (> 1: the face was shrunk to fit).
        rotation_deg: the face's in-plane rotation in the source, degrees, counter-clockwise as
            displayed (the sign convention of ``cv2.getRotationMatrix2D``); 0 for an upright
            face that matches the template.
        size: side of the canonical frame in pixels.
        landmarks: (5, 2) float64 the face's 5 landmarks in aligned coordinates.
        face: the detected face this was made from.
    """

    crop: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    scale: float
    rotation_deg: float
    size: int
    landmarks: np.ndarray
    face: DetectedFace

    def to_aligned(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) source points -> (N, 2) aligned points."""
        return _transform_points(self.matrix, pts)

    def to_source(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) aligned points -> (N, 2) source points."""
        return _transform_points(self.inverse, pts)


class FaceAligner:
    """Warps faces onto a 5-point template (FFHQ by default) at ``size`` x ``size``.

    Args:
        size: side of the aligned crops in pixels (512: the restorer's input).
        template: (5, 2) target landmark positions in the ``size`` frame; default the FFHQ
            template scaled to ``size``.
        border: how pixels outside the photo are filled: ``"reflect"`` (reflect-101, default:
            faces cut by the photo's edge get a plausible continuation instead of black),
            ``"replicate"`` or ``"constant"`` (black).
    """

    def __init__(
        self, size: int = 512, template: np.ndarray | None = None, border: str = "reflect"
    ) -> None:
        if not isinstance(size, (int, np.integer)) or size < 16:
            raise ValueError(f"aligned size must be an integer >= 16, got {size!r}")
        if border not in _BORDERS:
            raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {border!r}")
        tpl = ffhq_template(int(size)) if template is None else np.asarray(template, np.float64)
        if tpl.shape != (5, 2) or not np.isfinite(tpl).all():
            raise ValueError(f"template must be a finite (5, 2) array, got shape {tpl.shape}")
        self.size = int(size)
        self.template = tpl
        self.border = border

    def align(self, image: np.ndarray, face: DetectedFace) -> AlignedFace:
        """Warp one face of ``image`` onto the template.

        Args:
            image: (H, W) or (H, W, C) uint8 / uint16 / float32, any channel count <= 4.
            face: the face, with its 5 landmarks in ``image`` pixels.

        Returns:
            The aligned face (see :class:`AlignedFace`). A face partly or wholly outside the
            image is padded according to ``border``.
        """
        _check_image(image)
        lm = np.asarray(face.landmarks, dtype=np.float64)
        if lm.shape != (5, 2):
            raise ValueError(f"face.landmarks must have shape (5, 2), got {lm.shape}")
        matrix = estimate_similarity(lm, self.template)
        inverse = cv2.invertAffineTransform(matrix)
        scale = 1.0 / math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
        rotation = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))

        # Read only the part of the photo the crop needs (plus the filter's reach).
        s = self.size
        corners = _transform_points(
            inverse, np.array([[0, 0], [s - 1, 0], [0, s - 1], [s - 1, s - 1]])
        )
        margin = _shrink_margin(scale)
        h, w = image.shape[:2]
        x0, x1 = _axis_range(corners[:, 0].min() - margin, corners[:, 0].max() + margin, w)
        y0, y1 = _axis_range(corners[:, 1].min() - margin, corners[:, 1].max() + margin, h)
        roi = image[y0:y1, x0:x1]
        m_roi = _compose(matrix, np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]]))
        crop = _to_dtype(warp_similarity(roi, m_roi, (s, s), self.border), image.dtype)
        if image.ndim == 2:
            crop = crop[:, :, 0]
        return AlignedFace(
            crop=crop,
            matrix=matrix,
            inverse=inverse,
            scale=scale,
            rotation_deg=rotation,
            size=s,
            landmarks=_transform_points(matrix, lm),
            face=face,
        )

    def align_batch(
        self, images: Sequence[np.ndarray], faces_per_image: Sequence[Sequence[DetectedFace]]
    ) -> list[list[AlignedFace]]:
        """:meth:`align` every face of every image.

        Args:
            images: N images (see :meth:`align`).
            faces_per_image: N lists of faces, one per image (possibly empty).

        Returns:
            N lists of aligned faces, in the order of ``faces_per_image``.
        """
        if len(images) != len(faces_per_image):
            raise ValueError(
                f"got {len(images)} images but {len(faces_per_image)} face lists; "
                "expected one face list per image"
            )
        return [
            [self.align(img, f) for f in faces]
            for img, faces in zip(images, faces_per_image, strict=True)
        ]


@dataclass(frozen=True, eq=False)
class NativeCrop:
    """An axis-aligned square cut of the photo at native resolution (no resampling).

    Attributes:
        crop: (L, L, C) (or (L, L) for 2-D sources) pixels, same dtype as the source; where
            the square leaves the photo it is filled by reflect-101 padding.
        box: ``(x0, y0, x1, y1)`` int square in source pixels (may extend past the image);
            ``crop[i, j]`` is source pixel ``(x0 + j, y0 + i)`` wherever that pixel exists.
        pad: ``(top, bottom, left, right)`` rows / columns of reflected padding (0 when the
            square is inside the photo).
    """

    crop: np.ndarray
    box: tuple[int, int, int, int]
    pad: tuple[int, int, int, int]

    @property
    def padded(self) -> bool:
        """True when part of the crop is reflected padding rather than photo pixels."""
        return any(self.pad)

    @property
    def valid(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of the photo's own pixels inside :attr:`crop`."""
        top, bottom, left, right = self.pad
        side = self.crop.shape[0]
        return left, top, side - right, side - bottom

    @property
    def grid_aligned(self) -> bool:
        """True when the crop origin is on the 8x8 grid of the decoded pixels."""
        return self.box[0] % _JPEG_BLOCK == 0 and self.box[1] % _JPEG_BLOCK == 0


def _snap_origin(ideal: float, side: int, n: int) -> int:
    """Crop origin on one axis: a multiple of 8 near ``ideal``, preferring positions that keep
    the square inside ``[0, n)`` (no padding); unsnapped only when that alone avoids padding."""
    base = round(ideal)
    lo, hi = (
        math.floor(ideal / _JPEG_BLOCK) * _JPEG_BLOCK,
        math.ceil(ideal / _JPEG_BLOCK) * _JPEG_BLOCK,
    )
    candidates = sorted({lo, hi}, key=lambda v: abs(v - ideal))
    fits = [c for c in candidates if c >= 0 and c + side <= n]
    if fits:
        return fits[0]
    if base >= 0 and base + side <= n:
        return base
    return candidates[0]


def native_crop(image: np.ndarray, face: DetectedFace, margin: float = 0.25) -> NativeCrop:
    """An unrotated, unresampled square around ``face`` at the photo's own resolution.

    The degradation estimator reads noise, blur and JPEG statistics from this crop, so it is a
    plain slice of the photo: no rotation, no scaling, no interpolation (any of them would
    smooth the noise, change the blur and break JPEG's 8x8 block grid). For the same reason
    the origin is snapped to a multiple of 8 in source pixels whenever that keeps the square
    inside the photo (JPEG blocks start at multiples of 8 from the top-left of the stored
    image, so the crop's blocks then start at multiples of 8 too), and the side is rounded up
    to a multiple of 8. Where the square leaves the photo the missing pixels are
    reflect-101-padded, and :attr:`NativeCrop.pad` says how many rows / columns are fake.

    Args:
        image: (H, W) or (H, W, C) uint8 / uint16 / float32.
        face: the face; its ``box`` is used.
        margin: extra context on each side as a fraction of the box's longer side
            (side = longer side x (1 + 2 margin)).

    Returns:
        The crop with its source box and padding.
    """
    _check_image(image)
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    box = np.asarray(face.box, dtype=np.float64)
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(
            f"face.box must be a finite (x0, y0, x1, y1) with x1 > x0, y1 > y0, got {box}"
        )
    longer = max(box[2] - box[0], box[3] - box[1])
    side = math.ceil(longer * (1 + 2 * margin) / _JPEG_BLOCK) * _JPEG_BLOCK
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    h, w = image.shape[:2]
    x0 = _snap_origin(cx - side / 2, side, w)
    y0 = _snap_origin(cy - side / 2, side, h)
    x1, y1 = x0 + side, y0 + side
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    crop = _slice_reflect(image, x0, y0, side) if any(pad) else image[y0:y1, x0:x1].copy()
    return NativeCrop(crop=crop, box=(x0, y0, x1, y1), pad=pad)


def _slice_reflect(a: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """``a[y0:y0+side, x0:x0+side]`` with reflect-101 indexing outside ``a``."""

    def idx(start: int, n: int) -> np.ndarray:
        i = np.arange(start, start + side)
        if n == 1:
            return np.zeros_like(i)
        period = 2 * (n - 1)
        i = np.mod(i, period)
        return np.where(i < n, i, period - i)

    return a[np.ix_(idx(y0, a.shape[0]), idx(x0, a.shape[1]))]
