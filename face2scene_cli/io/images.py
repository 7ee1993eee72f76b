"""Image reading and writing for f2s: decode any supported photo into an upright numpy array plus
its metadata (EXIF, ICC, XMP), and encode it back atomically. Torch-free (tensors:
:mod:`face2scene_cli.io.tensors`); the pixel conversions, metadata handling and per-format
encoders behind it live in :mod:`~face2scene_cli.io.pixels`, :mod:`~face2scene_cli.io.metadata`
and :mod:`~face2scene_cli.io.encoders`.

What it guarantees:

* the file type is decided by content (magic bytes), never by extension;
* the pixel count is checked from the header *before* any pixel is decoded (decompression bombs);
* every decoder failure becomes an :class:`ImageDecodeError` with a one-line reason, every
  failure to read the file an :class:`InputError` (messages never contain the path: the caller
  prefixes it);
* EXIF orientation is applied to the pixels and reset to 1 in the carried EXIF and XMP;
* 16-bit stays 16-bit, grayscale stays 1 channel, alpha is kept (where the output format can);
* outputs are written through a hidden temp file, fsync'ed and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import logging
import os
import secrets
import stat
import struct
import warnings as _warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, UnidentifiedImageError

from face2scene_cli.config import DEFAULT_MAX_PIXELS
from face2scene_cli.errors import F2SError, ImageDecodeError, ImageTooLargeError, InputError
from face2scene_cli.io.encoders import encode_jpeg, encode_png, encode_tiff, encode_webp
from face2scene_cli.io.metadata import (
    DECODE_ERRORS,
    exif_of,
    matching_icc,
    orientation_of,
    patch_orientation,
    safe_exif,
    xmp_of,
    xmp_reset_orientation,
)
from face2scene_cli.io.pixels import (
    CV2DecodeFailed,
    apply_orientation,
    check_png_chunks,
    collapse_gray,
    decode_cv2,
    needs_cv2,
    pixels_from_pil,
    stored_size,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EXTENSIONS",
    "TEMP_GLOB",
    "TEMP_MARK",
    "Image",
    "atomic_write_bytes",
    "encode_image",
    "format_for",
    "read_image",
    "sniff_format",
    "write_image",
]

EXTENSIONS: dict[str, str] = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif"}
"""Output format name -> file extension."""

TEMP_GLOB = ".*.f2s-tmp-*"
"""Glob matching the hidden temp files :func:`atomic_write_bytes` creates (stale ones may be
deleted on resume)."""

TEMP_MARK = ".f2s-tmp-"
"""What follows the target's name in a temp file's name (``.<name>.f2s-tmp-<pid>-<hex>``)."""

# Our own, clearer pixel limit replaces Pillow's DecompressionBombWarning/Error (whose default,
# ~89 MP warn / ~179 MP error, is below ours and whose message does not name --max-pixels).
PILImage.MAX_IMAGE_PIXELS = None
# A truncated file must fail, never decode into a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_JPEG_MAX_SIDE = 65_535
_WEBP_MAX_SIDE = 16_383


@dataclass
class Image:
    """Decoded pixels plus the metadata f2s carries from input to output."""

    pixels: np.ndarray  # (H, W, C), C in {1, 3, 4}; gray / RGB / RGBA; uint8 or uint16
    source_format: str  # Pillow format name of the input: "JPEG", "PNG", "TIFF", "WEBP", ...
    icc_profile: bytes | None = None
    exif: bytes | None = None  # b"Exif\0\0" + TIFF-structured EXIF, Orientation reset to 1
    xmp: bytes | None = None  # XMP packet, tiff:Orientation reset to 1
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_pixels(self.pixels)

    @property
    def height(self) -> int:
        """Rows."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Columns."""
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        """1 (gray), 3 (RGB) or 4 (RGBA)."""
        return int(self.pixels.shape[2])

    @property
    def has_alpha(self) -> bool:
        """True for RGBA."""
        return self.channels == 4

    @property
    def is_gray(self) -> bool:
        """True for single-channel images."""
        return self.channels == 1

    @property
    def bit_depth(self) -> int:
        """8 or 16."""
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def megapixels(self) -> float:
        """Width x height / 1e6."""
        return self.height * self.width / 1e6

    def with_pixels(self, pixels: np.ndarray) -> Image:
        """A copy with the same metadata (and a copy of the warnings) and new pixels."""
        return replace(self, pixels=pixels, warnings=list(self.warnings))


def _check_pixels(pixels: np.ndarray) -> None:
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels must be a numpy array, not {type(pixels).__name__}")
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"pixels must have shape (H, W, 1|3|4), got {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"pixels must not be empty, got {pixels.shape}")


# --------------------------------------------------------------------------------------------
# sniffing


_AVIF_BRANDS = (b"avif", b"avis")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevx", b"mif1", b"msf1")


def _register_heif() -> None:
    """Let Pillow open HEIC/HEIF (once; imported only when such a file is read)."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


_register_heif_once = functools.cache(_register_heif)


def sniff_format(data: bytes) -> str | None:
    """Image type by content (magic bytes), not extension; None when not an image we read.

    Cheap: looks at the first 32 bytes only. Returns a Pillow format name: "JPEG", "PNG",
    "TIFF", "WEBP", "BMP", "GIF", "AVIF" (Pillow's own decoder) or "HEIF" (phone photos,
    through the ``pillow-heif`` plugin).
    """
    head = bytes(data[:32])
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[4:8] == b"ftyp" and head[8:12] in _AVIF_BRANDS:
        return "AVIF"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    # "BM" alone is too weak (any text starting with "BM"): also require a known DIB header size.
    if head[:2] == b"BM" and len(head) >= 18:
        dib_size = struct.unpack("<I", head[14:18])[0]
        if dib_size in (12, 16, 40, 52, 56, 64, 108, 124):
            return "BMP"
    return None


def _describe_unknown(data: bytes) -> str:
    head = bytes(data[:64])
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000 images are not supported"
    if head[:5] == b"%PDF-":
        return "not an image (this is a PDF file)"
    if _looks_like_text(bytes(data[:512])):
        return "not an image (the file contains text)"
    return "not an image f2s can read (supported: JPEG, PNG, TIFF, WebP, BMP, GIF, AVIF, HEIC)"


def _looks_like_text(sample: bytes) -> bool:
    if not sample or b"\x00" in sample:
        return False
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # not just a character cut at the sample's end
            return False
        text = sample[: e.start].decode("utf-8")
    return all(c.isprintable() or c in "\r\n\t\f" for c in text)


# --------------------------------------------------------------------------------------------
# reading


@contextlib.contextmanager
def _input_errors(path: Path) -> Iterator[None]:
    """Turn an OS failure while opening or reading ``path`` into the InputError a user reads."""
    try:
        yield
    except FileNotFoundError as e:
        if os.path.islink(path):
            raise InputError("broken symlink (its target does not exist)") from e
        raise InputError("file not found") from e
    except PermissionError as e:
        raise InputError("permission denied") from e
    except IsADirectoryError as e:
        raise InputError("is a directory, not an image file") from e
    except OSError as e:
        raise InputError(_os_reason(e)) from e


def _read_file(path: Path) -> bytes:
    """Read a regular file fully; every OS failure becomes an InputError."""
    with _input_errors(path):
        # O_NONBLOCK: opening a FIFO must not hang the batch; it is rejected just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        with _input_errors(path):
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise InputError("is a directory, not an image file")
            if not stat.S_ISREG(st.st_mode):
                raise InputError("not a regular file (device, FIFO or socket)")
            with os.fdopen(fd, "rb", closefd=True) as fh:
                fd = -1
                return fh.read()
    finally:
        if fd >= 0:
            os.close(fd)


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if e.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if e.errno == errno.EIO:
        return "I/O error while reading the file (failing disk or network share?)"
    return f"cannot read file: {e.strerror or e}"


def read_image(
    path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None
) -> Image:
    """Decode `path` (or the already-read `data` bytes of it; the batch engine reads the bytes
    once to hash them and passes them in) into an upright :class:`Image`.

    Raises InputError (cannot read the file), ImageDecodeError (not a decodable image of a
    supported type, truncated, corrupt) or ImageTooLargeError (header claims > max_pixels).
    Messages are one line and do not contain the path.
    """
    if data is None:
        data = _read_file(Path(path))
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(_describe_unknown(data))
    if fmt == "HEIF":
        _register_heif_once()
    # Re-asserted on every call in case other code changed Pillow's globals after import.
    PILImage.MAX_IMAGE_PIXELS = None
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        try:
            with PILImage.open(io.BytesIO(data), formats=[fmt]) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"image is {width}x{height} ({width * height / 1e6:.1f} MP), over the "
                        f"limit of {max_pixels:,} pixels; raise it with --max-pixels if the file "
                        "is trusted"
                    )
                image = _decode(im, data, fmt)
        except F2SError:
            raise
        except DECODE_ERRORS as e:
            raise ImageDecodeError(_decode_reason(e, fmt, data)) from e
    for w in caught:
        text = " ".join(str(w.message).split())
        if text and not issubclass(w.category, DeprecationWarning):
            msg = f"decoder warning: {text}"
            if msg not in image.warnings:
                image.warnings.append(msg)
    return image


def _decode_reason(e: BaseException, fmt: str, data: bytes) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, EOFError) or "truncat" in text.lower():
        return "truncated image data (the file is incomplete)"
    if isinstance(e, MemoryError):
        return "not enough memory to decode the image"
    if isinstance(e, UnidentifiedImageError):
        return f"corrupt {fmt} file (header not recognised)"
    if isinstance(e, CV2DecodeFailed):
        if fmt == "PNG" and b"IEND" not in data[-12:]:
            return "truncated image data (the file is incomplete)"
        return f"corrupt {fmt} data (16-bit decoder failed)"
    return f"corrupt {fmt} data: {text}" if text else f"corrupt {fmt} data"


def _decode(im: PILImage.Image, data: bytes, fmt: str) -> Image:
    warns: list[str] = []
    source_format = im.format or fmt

    try:
        n_frames = int(getattr(im, "n_frames", 1))
    except DECODE_ERRORS:
        n_frames = 0
    if n_frames > 1:
        warns.append(f"multi-frame file: used frame 1 of {n_frames}")
    elif n_frames == 0:
        warns.append("multi-frame file: could not count the frames, used frame 1")
    if n_frames != 1:
        im.seek(0)

    icc = im.info.get("icc_profile") or None
    xmp = xmp_of(im)
    exif, orientation = exif_of(im, source_format, warns)

    # Some decoders apply the orientation themselves (Pillow >= 11 does for TIFF, OpenCV does
    # for TIFF even with IMREAD_UNCHANGED); whatever they do, it must happen exactly once.
    if needs_cv2(im, data, source_format):
        cv_data = data
        if source_format == "TIFF" and orientation != 1:
            # hand OpenCV a copy with Orientation=1 so it leaves the pixels as stored
            cv_data = patch_orientation(data) or data
        if source_format == "PNG":
            check_png_chunks(data)  # libpng would print its complaints to stderr
        pixels = decode_cv2(cv_data, warns)
        stored_w, stored_h = stored_size(im, data, source_format)
        if pixels.shape[:2] == (stored_h, stored_w):
            pass  # as stored: orientation still to apply
        elif orientation in (5, 6, 7, 8) and pixels.shape[:2] == (stored_w, stored_h):
            orientation = 1  # the decoder rotated it already
        else:
            raise CV2DecodeFailed(
                f"decoded size {pixels.shape[1]}x{pixels.shape[0]} does not match the "
                f"header's {stored_w}x{stored_h}"
            )
        if source_format == "PNG" and data[25] == 4:
            warns.append("gray+alpha stored as RGBA")
    else:
        im.load()
        if orientation != 1 and orientation_of(im) != orientation:
            orientation = 1  # Pillow applied it while loading (and dropped the tag)
        pixels, icc = pixels_from_pil(im, icc, warns)

    pixels = apply_orientation(pixels, orientation)
    if source_format == "WEBP":
        pixels = collapse_gray(pixels, icc)
    icc = matching_icc(icc, pixels.shape[2], warns)
    if xmp is not None:
        xmp = xmp_reset_orientation(xmp)
    return Image(
        pixels=pixels,
        source_format=source_format,
        icc_profile=icc,
        exif=exif,
        xmp=xmp,
        warnings=warns,
    )


# --------------------------------------------------------------------------------------------
# writing


def format_for(fmt: str, source_format: str) -> str:
    """Resolve an output format name: "same" -> png/jpg/webp/tiff from the source's Pillow format
    (JPEG/MPO -> jpg, PNG -> png, WEBP -> webp, TIFF -> tiff, anything else -> png); "jpeg" and
    "tif" are accepted as aliases. Raises ValueError for an unknown name."""
    name = fmt.strip().lower()
    if name == "same":
        return {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tiff"}.get(
            source_format.upper(), "png"
        )
    name = {"jpeg": "jpg", "tif": "tiff"}.get(name, name)
    if name not in EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r} (choose same, png, jpg, webp or tiff)")
    return name


def encode_image(image: Image, fmt: str, quality: int = 95) -> bytes:
    """Encode `image` as png/jpg/webp/tiff ("jpeg"/"tif" accepted; resolve "same" first with
    :func:`format_for`).

    * PNG: lossless, 8/16-bit, gray/RGB/RGBA; ICC, EXIF and XMP always kept.
    * JPEG: `quality`; 16-bit is rounded to 8-bit; alpha is composited onto white (JPEG has no
      alpha); ICC, EXIF, XMP kept (EXIF/XMP over 64 KB are dropped: they do not fit a marker).
    * WebP: `quality` (alpha lossless); 8-bit only; gray is stored as RGB (WebP has no gray
      mode; :func:`read_image` turns it back into 1 channel); ICC (RGB only), EXIF, XMP kept.
    * TIFF: lossless, 8/16-bit. Written uncompressed by Pillow with ICC, EXIF (descriptive IFD0
      tags + Exif/GPS sub-IFDs) and XMP -- Pillow cannot write those sub-IFDs through libtiff's
      compressors. 16-bit RGB/RGBA is written deflate-compressed by OpenCV and carries no
      metadata (Pillow has no 16-bit colour mode).

    The carried EXIF always has Orientation=1. Raises ValueError for a bad format/quality and
    F2SError when the encoder cannot store the image (e.g. WebP over 16383 px a side).
    """
    if fmt.strip().lower() == "same":
        raise ValueError('resolve "same" with format_for(fmt, image.source_format) first')
    name = format_for(fmt, "")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    px = image.pixels
    _check_pixels(px)
    h, w = px.shape[:2]
    limit = {"jpg": _JPEG_MAX_SIDE, "webp": _WEBP_MAX_SIDE}.get(name)
    if limit is not None and max(h, w) > limit:
        raise F2SError(
            f"{name.upper()} cannot store images over {limit} px a side (image is {w}x{h}); "
            "choose png or tiff"
        )
    exif = safe_exif(image.exif)
    xmp = xmp_reset_orientation(image.xmp) if image.xmp else None
    try:
        if name == "png":
            return encode_png(px, image.icc_profile, exif, xmp)
        if name == "jpg":
            return encode_jpeg(px, int(quality), image.icc_profile, exif, xmp)
        if name == "webp":
            return encode_webp(px, int(quality), image.icc_profile, exif, xmp)
        return encode_tiff(px, image.icc_profile, exif, xmp)
    except (OSError, ValueError, TypeError, RuntimeError, struct.error, cv2.error) as e:
        reason = " ".join(str(e).split())
        raise F2SError(f"cannot encode {name.upper()}: {reason}") from e


def _temp_name(path: Path) -> str:
    suffix = f"{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    name = path.name
    # keep the temp name within the usual 255-byte limit even for very long target names
    while len(os.fsencode(f".{name}{suffix}")) > 255 and name:
        name = name[:-1]
    return f".{name}{suffix}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a hidden temp file in the same folder (matching
    :data:`TEMP_GLOB`), fsync, os.replace, then a best-effort fsync of the folder. On any failure
    the temp file is removed and the exception (usually OSError) propagates; `path` is then
    either untouched or absent, never partial."""
    path = Path(path)
    tmp = path.with_name(_temp_name(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb", closefd=True) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_image(path: Path, image: Image, fmt: str, quality: int = 95) -> int:
    """Encode `image` (see :func:`encode_image`) and write it atomically to `path` (see
    :func:`atomic_write_bytes`); returns the number of bytes written. Encoding happens fully in
    memory first, so a failed encode never touches the folder."""
    data = encode_image(image, fmt, quality)
    atomic_write_bytes(Path(path), data)
    return len(data)
