"""The metadata f2s carries from input to output: EXIF (orientation applied to the pixels and
reset to 1; a TIFF's own layout tags dropped), XMP (``tiff:Orientation`` reset to 1) and ICC
profiles (kept only when they describe the pixels' colour space).
"""

from __future__ import annotations

import logging
import re
import struct
import zlib

import cv2
from PIL import Image as PILImage
from PIL import ImageCms

logger = logging.getLogger(__name__)

EXIF_PREFIX = b"Exif\x00\x00"
"""What precedes the TIFF-structured EXIF in a JPEG APP1 marker and in :attr:`Image.exif`."""

_ORIENTATION = 0x0112

# EXIF tags worth carrying out of a TIFF file's IFD0 (everything else there describes the TIFF's
# own strips/compression and would corrupt a different file).
_TIFF_EXIF_KEEP = (
    270,  # ImageDescription
    271,  # Make
    272,  # Model
    274,  # Orientation
    282,  # XResolution
    283,  # YResolution
    296,  # ResolutionUnit
    305,  # Software
    306,  # DateTime
    315,  # Artist
    33432,  # Copyright
)
_EXIF_SUB_IFDS = (0x8769, 0x8825)  # Exif IFD, GPS IFD

DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    PILImage.DecompressionBombError,
    ImageCms.PyCMSError,
    cv2.error,
)
"""Everything a decoder (Pillow, cv2, zlib, struct) raises on bad input, metadata included.
Deliberately not Exception."""


def orientation_of(im: PILImage.Image) -> int:
    """The EXIF orientation Pillow sees now (1 when absent or unreadable): after loading, it
    tells whether the decoder applied the orientation itself."""
    try:
        return int(im.getexif().get(_ORIENTATION, 1) or 1)
    except DECODE_ERRORS:
        return 1


def xmp_of(im: PILImage.Image) -> bytes | None:
    """The image's XMP packet as bytes, wherever its format's Pillow plugin keeps it."""
    xmp = im.info.get("xmp")
    if not xmp:
        xmp = im.info.get("XML:com.adobe.xmp")
    if not xmp:
        return None
    if isinstance(xmp, tuple) and len(xmp) == 1:  # some TIFF writers wrap it in a 1-tuple
        xmp = xmp[0]
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    try:
        return bytes(xmp) or None
    except (TypeError, ValueError):  # not byte-like: ignore rather than fail the image
        return None


def exif_of(im: PILImage.Image, fmt: str, warns: list[str]) -> tuple[bytes | None, int]:
    """(EXIF bytes to carry with Orientation=1, orientation to apply to the pixels)."""
    try:
        parsed = im.getexif()
        orientation = int(parsed.get(_ORIENTATION, 1) or 1)
    except DECODE_ERRORS:
        warns.append("EXIF data is corrupt: ignored (orientation not applied)")
        return None, 1
    if orientation not in range(1, 9):
        orientation = 1
    raw = im.info.get("exif")
    try:
        if isinstance(raw, bytes) and raw:
            exif = _exif_normalize(raw)
        elif fmt == "TIFF":
            exif = exif_allowlisted(parsed)
        elif "Raw profile type exif" in im.info and len(parsed):  # ImageMagick PNG text chunk
            exif = _exif_normalize(parsed.tobytes())
        else:
            exif = None
    except DECODE_ERRORS:
        warns.append("EXIF data could not be carried over (corrupt)")
        exif = None
    return exif, orientation


def exif_allowlisted(src: PILImage.Exif) -> bytes | None:
    """EXIF from a TIFF's IFD0, without the tags that describe the TIFF file itself."""
    out = PILImage.Exif()
    for tag in _TIFF_EXIF_KEEP:
        if tag in src:
            out[tag] = src[tag]
    for tag in _EXIF_SUB_IFDS:
        if tag in src:
            sub = src.get_ifd(tag)
            if sub:
                out.get_ifd(tag).update(sub)
    if not (set(out) - {_ORIENTATION}):  # nothing worth carrying
        return None
    if _ORIENTATION in out:
        out[_ORIENTATION] = 1
    raw = out.tobytes()
    return raw if raw.startswith(EXIF_PREFIX) else EXIF_PREFIX + raw


def _exif_normalize(raw: bytes) -> bytes | None:
    """b"Exif\\0\\0" + TIFF bytes with Orientation set to 1 (patched in place when possible, so
    maker notes and offsets survive byte-exact); None when the data is not EXIF at all."""
    tiff = raw[len(EXIF_PREFIX) :] if raw.startswith(EXIF_PREFIX) else raw
    if len(tiff) < 8:
        return None
    patched = patch_orientation(tiff)
    if patched is None:  # unusual layout: let Pillow re-serialise it
        exif = PILImage.Exif()
        exif.load(EXIF_PREFIX + tiff)
        if _ORIENTATION in exif:
            exif[_ORIENTATION] = 1
        patched = exif.tobytes()[len(EXIF_PREFIX) :]
    return EXIF_PREFIX + patched


def patch_orientation(tiff: bytes) -> bytes | None:
    """Set IFD0 Orientation to 1 in TIFF-structured EXIF; None if the layout is unexpected."""
    if tiff[:4] == b"II*\x00":
        end = "<"
    elif tiff[:4] == b"MM\x00*":
        end = ">"
    else:
        return None
    (offset,) = struct.unpack(end + "I", tiff[4:8])
    if offset + 2 > len(tiff):
        return None
    (count,) = struct.unpack(end + "H", tiff[offset : offset + 2])
    for i in range(count):
        pos = offset + 2 + 12 * i
        if pos + 12 > len(tiff):
            return None
        tag, typ, n = struct.unpack(end + "HHI", tiff[pos : pos + 8])
        if tag == _ORIENTATION:
            if typ != 3 or n != 1:  # must be one SHORT
                return None
            buf = bytearray(tiff)
            buf[pos + 8 : pos + 10] = struct.pack(end + "H", 1)
            return bytes(buf)
    return tiff


_XMP_ORIENT_ATTR = re.compile(rb'(tiff:Orientation\s*=\s*["\'])[0-9]+(["\'])')


_XMP_ORIENT_ELEM = re.compile(rb"(<tiff:Orientation>)\s*[0-9]+\s*(</tiff:Orientation>)")


def xmp_reset_orientation(xmp: bytes) -> bytes:
    """``tiff:Orientation`` set to 1 (attribute or element form): the pixels are upright."""
    xmp = _XMP_ORIENT_ATTR.sub(rb"\g<1>1\g<2>", xmp)
    return _XMP_ORIENT_ELEM.sub(rb"\g<1>1\g<2>", xmp)


def safe_exif(exif: bytes | None) -> bytes | None:
    """EXIF with Orientation=1, or None when it is missing or too broken to rewrite (a bad
    EXIF blob must not cost the user the output image)."""
    if not exif:
        return None
    try:
        return _exif_normalize(exif)
    except DECODE_ERRORS:
        logger.debug("dropping EXIF that cannot be parsed (%d bytes)", len(exif))
        return None


def icc_space(icc: bytes) -> bytes:
    """The ICC profile's colour space signature (``b"RGB "``, ``b"GRAY"``, ``b"CMYK"``, ...)."""
    return icc[16:20] if len(icc) >= 20 else b""


def matching_icc(icc: bytes | None, channels: int, warns: list[str] | None) -> bytes | None:
    """Drop an ICC profile whose colour space does not describe `channels`-channel pixels."""
    if not icc:
        return None
    space = icc_space(icc)
    ok = space == b"GRAY" if channels == 1 else space == b"RGB "
    if ok:
        return icc
    if warns is not None:
        warns.append(
            f"ICC profile dropped (it is for {space.decode('latin-1').strip() or 'unknown'} "
            f"data, the pixels are {'gray' if channels == 1 else 'RGB'})"
        )
    return None
