"""Pixel arrays out of the decoders and into the encoders: every Pillow mode and OpenCV's
16-bit decode into ``(H, W, C)`` uint8/uint16 (gray, RGB or RGBA), EXIF orientation applied to
the array, and the 8-bit/no-alpha forms the JPEG and WebP encoders need.
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageCms

from face2scene_cli.errors import ImageDecodeError
from face2scene_cli.io.metadata import icc_space


class CV2DecodeFailed(OSError):
    """cv2.imdecode returned nothing."""


def stored_size(im: PILImage.Image, data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) of the pixels as stored, before any orientation."""
    if fmt == "PNG":
        return struct.unpack(">II", data[16:24])
    tags = getattr(im, "tag_v2", None)
    if tags is not None and isinstance(tags.get(256), int) and isinstance(tags.get(257), int):
        return int(tags[256]), int(tags[257])
    return im.size


def needs_cv2(im: PILImage.Image, data: bytes, fmt: str) -> bool:
    """16-bit colour PNG/TIFF: Pillow would truncate these to 8 bits."""
    if fmt == "PNG":
        return data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 4, 6)
    if fmt == "TIFF" and im.mode in ("RGB", "RGBA", "RGBX", "RGBa", "LA"):
        bits = getattr(im, "tag_v2", {}).get(258)
        if isinstance(bits, int):
            bits = (bits,)
        return bool(bits) and any(b == 16 for b in bits)
    return False


def check_png_chunks(data: bytes) -> None:
    """Walk the PNG chunks up to IEND checking lengths and CRCs (cheap: no decompression)."""
    view = memoryview(data)
    pos = 8
    while True:
        if pos + 12 > len(data):
            raise ImageDecodeError("truncated image data (the file is incomplete)")
        length, kind = struct.unpack(">I4s", view[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ImageDecodeError("truncated image data (the file is incomplete)")
        (crc,) = struct.unpack(">I", view[end - 4 : end])
        if zlib.crc32(view[pos + 4 : end - 4]) & 0xFFFFFFFF != crc:
            name = kind.decode("latin-1") if kind.isalpha() else "a"
            raise ImageDecodeError(f"corrupt PNG data (checksum error in {name} chunk)")
        if kind == b"IEND":
            return
        pos = end


def decode_cv2(data: bytes, warns: list[str]) -> np.ndarray:
    """Decode with OpenCV (16-bit colour), silently, into (H, W, C) RGB(A) order.

    Raises:
        CV2DecodeFailed: OpenCV decoded nothing.
    """
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        # IMREAD_UNCHANGED keeps 16 bits and alpha and ignores EXIF orientation (applied later).
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if arr is None or arr.size == 0:
        raise CV2DecodeFailed("cv2 could not decode the image")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    else:
        raise CV2DecodeFailed(f"unexpected channel count {arr.shape[2]}")
    if arr.dtype not in (np.uint8, np.uint16):
        arr = _to_uint16(arr, warns)
    return np.ascontiguousarray(arr)


def pixels_from_pil(
    im: PILImage.Image, icc: bytes | None, warns: list[str]
) -> tuple[np.ndarray, bytes | None]:
    """Pillow image (any mode) -> (H, W, C) uint8/uint16, and the ICC profile that now applies."""
    mode = im.mode
    has_key = "transparency" in im.info
    if mode in ("RGB", "RGBA", "L") and not (has_key and mode != "RGBA"):
        arr = np.asarray(im)
    elif mode in ("RGB", "L"):  # tRNS colour key
        arr = np.asarray(im.convert("RGBA"))
        warns.append("transparent colour key converted to an alpha channel")
    elif mode == "1":
        arr = np.asarray(im.convert("L"))
    elif mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16)
    elif mode in ("I", "F"):
        arr = _to_uint16(np.asarray(im), warns)
    elif mode in ("LA", "La"):
        arr = np.asarray(im.convert("RGBA"))
        warns.append("gray+alpha stored as RGBA")
    elif mode in ("P", "PA"):
        arr = _palette_pixels(im, warns)
    elif mode == "CMYK":
        arr, icc = _cmyk_pixels(im, icc, warns)
    elif mode in ("RGBa", "RGBX"):
        arr = np.asarray(im.convert("RGBA" if mode == "RGBa" else "RGB"))
    else:  # YCbCr, LAB, HSV, exotic modes
        arr = np.asarray(im.convert("RGB"))
        warns.append(f"{mode} converted to RGB")
        icc = None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr), icc


def _palette_pixels(im: PILImage.Image, warns: list[str]) -> np.ndarray:
    transparent = im.mode == "PA" or "transparency" in im.info
    if not transparent:
        palette = im.getpalette("RGB")
        if palette:
            pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
            if (pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all():
                warns.append("palette converted to gray")
                return np.asarray(im.convert("L"))
    warns.append("palette converted to RGBA" if transparent else "palette converted to RGB")
    return np.asarray(im.convert("RGBA" if transparent else "RGB"))


def _cmyk_pixels(
    im: PILImage.Image, icc: bytes | None, warns: list[str]
) -> tuple[np.ndarray, bytes | None]:
    if icc and icc_space(icc) == b"CMYK":
        try:
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, srgb, outputMode="RGB")
            if out is not None:
                warns.append("CMYK converted to RGB (sRGB, using the embedded ICC profile)")
                return np.asarray(out), srgb.tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass
    warns.append("CMYK converted to RGB (approximate colours; CMYK ICC profile dropped)")
    return np.asarray(im.convert("RGB")), None


def _to_uint16(arr: np.ndarray, warns: list[str]) -> np.ndarray:
    """32-bit int/float samples -> uint16 (floats in [0, 1] are scaled, others clipped)."""
    if arr.dtype.kind == "f":
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            a = a * 65535.0
        warns.append("32-bit float image converted to 16-bit")
        return np.clip(np.rint(a), 0, 65535).astype(np.uint16)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > 65535:
        warns.append("32-bit integer image clipped to 16-bit")
    return np.clip(arr, 0, 65535).astype(np.uint16)


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Same transforms as PIL.ImageOps.exif_transpose, on an (H, W, C) array."""
    if orientation == 2:
        out = pixels[:, ::-1]
    elif orientation == 3:
        out = pixels[::-1, ::-1]
    elif orientation == 4:
        out = pixels[::-1]
    elif orientation == 5:
        out = pixels.transpose(1, 0, 2)
    elif orientation == 6:
        out = np.rot90(pixels, -1)
    elif orientation == 7:
        out = pixels[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        out = np.rot90(pixels, 1)
    else:
        return pixels
    return np.ascontiguousarray(out)


def collapse_gray(pixels: np.ndarray, icc: bytes | None) -> np.ndarray:
    """WebP has no gray mode: an RGB WebP whose channels agree within 2 levels (what lossy
    encoding of a gray image gives) is turned back into 1 channel."""
    if pixels.shape[2] != 3 or (icc and icc_space(icc) != b"GRAY"):
        return pixels
    p = pixels.astype(np.int16)
    sample = p[::7, ::7]
    for q in (sample, p):
        if np.abs(q[..., 0] - q[..., 1]).max() > 2 or np.abs(q[..., 2] - q[..., 1]).max() > 2:
            return pixels
    gray = np.rint(pixels.mean(axis=2, keepdims=True))
    return gray.astype(pixels.dtype)


def to_uint8(px: np.ndarray) -> np.ndarray:
    """uint16 -> uint8, rounded (uint8 passes through)."""
    if px.dtype == np.uint8:
        return px
    return ((px.astype(np.uint32) + 128) // 257).astype(np.uint8)


def flatten_alpha(px8: np.ndarray) -> np.ndarray:
    """RGBA uint8 -> RGB composited onto white."""
    rgb = px8[:, :, :3].astype(np.uint16)
    alpha = px8[:, :, 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour, alpha) views of (H, W, C) pixels; alpha is None unless C is 4."""
    if pixels.shape[-1] == 4:
        return pixels[..., :3], pixels[..., 3:]
    return pixels, None
