"""Tests for face2scene_cli.io (images, tensors): every input is generated in tmp_path."""

from __future__ import annotations

import fnmatch
import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageCms, ImageFile

from face2scene_cli.config import DEFAULT_MAX_PIXELS
from face2scene_cli.errors import F2SError, ImageDecodeError, ImageTooLargeError, InputError
from face2scene_cli.io import images as imageio
from face2scene_cli.io.images import (
    EXTENSIONS,
    TEMP_GLOB,
    Image,
    atomic_write_bytes,
    encode_image,
    format_for,
    read_image,
    sniff_format,
    write_image,
)
from face2scene_cli.io.tensors import from_tensor, to_tensor

FORMATS = ("png", "jpg", "webp", "tiff")
DATE = "2021:06:05 04:03:02"


# ---------------------------------------------------------------------------- helpers


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _photo(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth gradient + mild noise: compresses like a photo, not like pure noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [x / max(w, 1) * 200, y / max(h, 1) * 200, (x + y) / max(w + h, 1) * 255]
    base = np.stack(planes[:channels] if channels <= 3 else planes, axis=-1)
    if channels == 1:
        base = base[..., :1]
    noisy = base + _rng(seed).normal(0, 4, base.shape)
    arr = np.clip(noisy, 0, 255).astype(np.uint8)
    if channels == 4:
        alpha = _rng(seed + 1).integers(0, 256, (h, w, 1), dtype=np.uint8)
        arr = np.concatenate([arr, alpha], axis=2)
    return arr


def _save(pil: PILImage.Image, path: Path, fmt: str, **kwargs: object) -> Path:
    pil.save(path, fmt, **kwargs)
    return path


def _encoded(pil: PILImage.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _exif_of(image_exif: bytes | None) -> PILImage.Exif:
    exif = PILImage.Exif()
    if image_exif:
        exif.load(image_exif)
    return exif


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if fnmatch.fnmatch(p.name, TEMP_GLOB)]


def _roundtrip(image: Image, fmt: str, tmp_path: Path, quality: int = 95) -> Image:
    out = tmp_path / f"out{EXTENSIONS[fmt]}"
    n = write_image(out, image, fmt, quality)
    assert n == out.stat().st_size > 0
    assert _no_temp_files(tmp_path)
    return read_image(out)


# ---------------------------------------------------------------------------- bad inputs


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file"):
        read_image(p)


def test_truncated_jpeg_is_an_error_not_a_grey_image(tmp_path: Path) -> None:
    data = _encoded(PILImage.fromarray(_photo(300, 400)), "JPEG", quality=95)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageDecodeError, match="truncated image data") as err:
        read_image(p)
    assert "\n" not in str(err.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_16bit_png_is_an_error(tmp_path: Path) -> None:
    a16 = _rng().integers(0, 65536, (80, 90, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", a16)
    assert ok
    data = buf.tobytes()
    with pytest.raises(ImageDecodeError, match="truncated"):
        read_image(tmp_path / "x.png", data=data[: len(data) // 2])


def test_corrupt_16bit_png_is_an_error(tmp_path: Path) -> None:
    a16 = _rng().integers(0, 65536, (20, 20, 3), dtype=np.uint16)
    data = bytearray(cv2.imencode(".png", a16)[1].tobytes())
    data[len(data) // 2] ^= 0xFF  # inside IDAT
    with pytest.raises(ImageDecodeError, match="checksum error in IDAT"):
        read_image(tmp_path / "x.png", data=bytes(data))


def test_mutated_files_never_raise_anything_but_f2s_errors(tmp_path: Path) -> None:
    """Bit flips and truncations anywhere: an Image or an InputError subclass, nothing else."""
    px = _photo(24, 32)
    seeds = [
        _encoded(PILImage.fromarray(px), "JPEG"),
        _encoded(PILImage.fromarray(px), "PNG"),
        _encoded(PILImage.fromarray(px), "TIFF"),
        _encoded(PILImage.fromarray(px), "WEBP"),
        _encoded(PILImage.fromarray(px).convert("P"), "GIF"),
        _encoded(PILImage.fromarray(px), "BMP"),
        cv2.imencode(".png", px.astype(np.uint16) * 257)[1].tobytes(),
    ]
    rng = _rng(7)
    for seed in seeds:
        for _ in range(40):
            data = bytearray(seed)
            if rng.random() < 0.3:
                data = data[: int(rng.integers(1, len(data)))]
            else:
                for _ in range(int(rng.integers(1, 5))):
                    data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            try:
                image = read_image(tmp_path / "m", data=bytes(data))
            except InputError as err:
                assert str(err) and "\n" not in str(err)
            else:
                assert image.pixels.ndim == 3


def test_text_file_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("these are my holiday notes, not a photo\n" * 5)
    with pytest.raises(ImageDecodeError, match="not an image") as err:
        read_image(p)
    assert "text" in str(err.value)


def test_unknown_binary_and_broken_heic_messages(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not an image"):
        read_image(tmp_path / "x.jpg", data=bytes(range(256)) * 4)
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64  # the header of one, nothing after
    with pytest.raises(ImageDecodeError, match="corrupt HEIF"):
        read_image(tmp_path / "x.heic", data=heic)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_avif_and_heic_decode(fmt: str, tmp_path: Path) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    rgb = _photo(48, 40)
    data = _encoded(PILImage.fromarray(rgb), fmt, quality=95)
    assert sniff_format(data) == fmt
    image = read_image(tmp_path / "x", data=data)
    assert image.pixels.shape == rgb.shape and image.pixels.dtype == np.uint8
    error = image.pixels.astype(np.float64) - rgb
    assert 10 * np.log10(255**2 / np.mean(error**2)) > 30
    assert format_for("same", image.source_format) == "png"


def test_corrupt_png_header(tmp_path: Path) -> None:
    data = _encoded(PILImage.fromarray(_photo(20, 20)), "PNG")
    broken = data[:16] + b"\xff" * 30 + data[46:]  # IHDR payload + CRC smashed
    with pytest.raises(ImageDecodeError) as err:
        read_image(tmp_path / "x.png", data=broken)
    assert "\n" not in str(err.value)


def _png_bomb(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def test_png_bomb_rejected_from_header_without_decoding(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_bomb(100_000, 100_000))
    assert sniff_format(p.read_bytes()) == "PNG"
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as err:
        read_image(p)  # decoding would need 30 GB
    assert time.perf_counter() - start < 2.0
    msg = str(err.value)
    assert "100000x100000" in msg
    assert f"{DEFAULT_MAX_PIXELS:,}" in msg
    assert "--max-pixels" in msg
    # Pillow's own bomb guard is off so that our message (and our limit) wins
    assert PILImage.MAX_IMAGE_PIXELS is None


def test_max_pixels_applies_to_small_limits(tmp_path: Path) -> None:
    data = _encoded(PILImage.fromarray(_photo(30, 40)), "PNG")
    with pytest.raises(ImageTooLargeError, match="40x30"):
        read_image(tmp_path / "x.png", max_pixels=1000, data=data)
    assert read_image(tmp_path / "x.png", max_pixels=1200, data=data).width == 40


# ---------------------------------------------------------------------------- unreadable files


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    d = tmp_path / "folder.jpg"
    d.mkdir()
    with pytest.raises(InputError, match="directory"):
        read_image(d)


def test_symlink_loop_and_broken_symlink(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(InputError, match="symlink loop"):
        read_image(a)
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(InputError, match="broken symlink"):
        read_image(dangling)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_image(fifo)


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "secret.jpg"
    p.write_bytes(_encoded(PILImage.fromarray(_photo(8, 8)), "JPEG"))
    if os.geteuid() == 0:
        # root reads through chmod 000, so simulate the kernel's answer for this one path
        real_open = os.open

        def fake_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
            if Path(os.fsdecode(path)) == p:  # type: ignore[arg-type]
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", fake_open)
    else:
        p.chmod(0)
    try:
        with pytest.raises(InputError, match="permission denied"):
            read_image(p)
    finally:
        p.chmod(0o644)


# ---------------------------------------------------------------------------- sniffing


def test_sniff_format_by_content(tmp_path: Path) -> None:
    pil = PILImage.fromarray(_photo(16, 16))
    for fmt, name in [
        ("JPEG", "JPEG"),
        ("PNG", "PNG"),
        ("TIFF", "TIFF"),
        ("WEBP", "WEBP"),
        ("BMP", "BMP"),
        ("GIF", "GIF"),
    ]:
        assert sniff_format(_encoded(pil, fmt)) == name
    assert sniff_format(b"") is None
    assert sniff_format(b"hello world, definitely not an image") is None
    assert sniff_format(b"BM is also how this text starts") is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None

    png_named_jpg = tmp_path / "liar.jpg"
    png_named_jpg.write_bytes(_encoded(pil, "PNG"))
    assert sniff_format(png_named_jpg.read_bytes()) == "PNG"
    image = read_image(png_named_jpg)
    assert image.source_format == "PNG"
    assert np.array_equal(image.pixels, _photo(16, 16))


def test_data_argument_is_used_instead_of_the_file(tmp_path: Path) -> None:
    data = _encoded(PILImage.fromarray(_photo(10, 12)), "PNG")
    image = read_image(tmp_path / "does-not-exist.png", data=data)
    assert (image.height, image.width, image.channels) == (10, 12, 3)


# ---------------------------------------------------------------------------- modes / depth


def test_16bit_gray_png_roundtrip_exact(tmp_path: Path) -> None:
    g16 = _rng().integers(0, 65536, (33, 47), dtype=np.uint16)
    p = _save(PILImage.fromarray(g16), tmp_path / "g16.png", "PNG")
    image = read_image(p)
    assert image.pixels.shape == (33, 47, 1)
    assert image.pixels.dtype == np.uint16 and image.bit_depth == 16 and image.is_gray
    assert np.array_equal(image.pixels[..., 0], g16)
    for fmt in ("png", "tiff"):
        back = _roundtrip(image, fmt, tmp_path)
        assert back.pixels.dtype == np.uint16
        assert np.array_equal(back.pixels, image.pixels), fmt


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_color_png_and_tiff_roundtrip_exact(tmp_path: Path, channels: int) -> None:
    rgb16 = _rng(channels).integers(0, 65536, (29, 41, channels), dtype=np.uint16)
    code = cv2.COLOR_RGB2BGR if channels == 3 else cv2.COLOR_RGBA2BGRA
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb16, code))
    assert ok
    p = tmp_path / "c16.png"
    p.write_bytes(buf.tobytes())
    image = read_image(p)
    assert image.pixels.dtype == np.uint16
    assert image.channels == channels and image.has_alpha == (channels == 4)
    assert np.array_equal(image.pixels, rgb16)  # channel order RGB(A), not BGR(A)
    for fmt in ("png", "tiff"):
        back = _roundtrip(image, fmt, tmp_path)
        assert back.pixels.dtype == np.uint16
        assert np.array_equal(back.pixels, rgb16), fmt


def test_16bit_gray_alpha_png_becomes_rgba16(tmp_path: Path) -> None:
    ga = _rng(3).integers(0, 65536, (10, 12, 2), dtype=np.uint16)
    raw = b"".join(b"\x00" + ga[i].astype(">u2").tobytes() for i in range(10))
    ihdr = struct.pack(">IIBBBBB", 12, 10, 16, 4, 0, 0, 0)  # 16-bit gray+alpha
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    image = read_image(tmp_path / "la16.png", data=png)
    assert image.pixels.dtype == np.uint16 and image.channels == 4
    for c in range(3):
        assert np.array_equal(image.pixels[..., c], ga[..., 0])
    assert np.array_equal(image.pixels[..., 3], ga[..., 1])
    assert "gray+alpha stored as RGBA" in image.warnings


def test_16bit_png_exif_orientation_applied_once(tmp_path: Path) -> None:
    rgb16 = np.zeros((20, 30, 3), np.uint16)
    rgb16[0, 0] = (65535, 0, 0)  # marker at top-left of the stored image
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    assert ok
    exif = PILImage.Exif()
    exif[274] = 6  # rotate 90° clockwise to display
    png = buf.tobytes()
    png = png[:33] + _png_chunk(b"eXIf", exif.tobytes()[6:]) + png[33:]
    image = read_image(tmp_path / "x.png", data=png)
    assert image.pixels.shape == (30, 20, 3)
    assert tuple(image.pixels[0, -1]) == (65535, 0, 0)  # top-left went to top-right
    assert _exif_of(image.exif).get(274) == 1


def test_cmyk_jpeg_becomes_rgb_with_warning(tmp_path: Path) -> None:
    cmyk = PILImage.frombytes("CMYK", (32, 24), _photo(24, 32, 4).tobytes())
    p = _save(cmyk, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    image = read_image(p)
    assert image.pixels.shape == (24, 32, 3) and image.pixels.dtype == np.uint8
    assert any("CMYK converted to RGB" in w for w in image.warnings)
    assert image.icc_profile is None
    out = _roundtrip(image, "jpg", tmp_path)
    assert out.channels == 3


def test_rgba_png_keeps_alpha_exactly(tmp_path: Path) -> None:
    rgba = _photo(31, 43, 4)
    p = _save(PILImage.fromarray(rgba), tmp_path / "a.png", "PNG")
    image = read_image(p)
    assert image.has_alpha and np.array_equal(image.pixels, rgba)
    assert image.exif is None and image.xmp is None and image.icc_profile is None
    assert image.warnings == []
    assert np.array_equal(_roundtrip(image, "png", tmp_path).pixels, rgba)
    assert np.array_equal(_roundtrip(image, "tiff", tmp_path).pixels, rgba)
    webp = _roundtrip(image, "webp", tmp_path)
    assert webp.has_alpha
    assert np.array_equal(webp.pixels[..., 3], rgba[..., 3])  # alpha is lossless in WebP


def test_palette_png_without_and_with_transparency(tmp_path: Path) -> None:
    idx = (np.arange(20 * 30).reshape(20, 30) % 4).astype(np.uint8)
    colors = [255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 10]

    pal = PILImage.frombytes("P", (30, 20), idx.tobytes())
    pal.putpalette(colors)
    image = read_image(_save(pal, tmp_path / "p.png", "PNG"))
    assert image.channels == 3
    assert "palette converted to RGB" in image.warnings
    assert tuple(image.pixels[0, 1]) == (0, 255, 0)

    pal.info["transparency"] = 2  # index 2 (blue) is fully transparent
    image = read_image(_save(pal, tmp_path / "pt.png", "PNG", transparency=2))
    assert image.channels == 4
    assert "palette converted to RGBA" in image.warnings
    alpha = image.pixels[..., 3]
    assert np.array_equal(alpha == 0, idx == 2)
    assert (alpha[idx != 2] == 255).all()


def test_gray_palette_and_la_and_bilevel(tmp_path: Path) -> None:
    idx = (np.arange(12 * 16).reshape(12, 16) % 3).astype(np.uint8)
    gray_pal = PILImage.frombytes("P", (16, 12), idx.tobytes())
    gray_pal.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255])
    image = read_image(_save(gray_pal, tmp_path / "gp.png", "PNG"))
    assert image.is_gray and image.pixels[0, 1, 0] == 128

    la = PILImage.fromarray(np.dstack([idx * 100, idx * 50 + 5]).astype(np.uint8))
    assert la.mode == "LA"
    image = read_image(_save(la, tmp_path / "la.png", "PNG"))
    assert image.channels == 4 and "gray+alpha stored as RGBA" in image.warnings
    assert (image.pixels[..., 0] == image.pixels[..., 2]).all()
    assert np.array_equal(image.pixels[..., 3], (idx * 50 + 5).astype(np.uint8))

    bw = PILImage.fromarray(idx > 0).convert("1")
    image = read_image(_save(bw, tmp_path / "bw.png", "PNG"))
    assert image.is_gray and set(np.unique(image.pixels)) <= {0, 255}


def test_float_tiff_becomes_uint16_with_warning(tmp_path: Path) -> None:
    f = np.linspace(0, 1, 20 * 10, dtype=np.float32).reshape(10, 20)
    image = read_image(_save(PILImage.fromarray(f), tmp_path / "f.tif", "TIFF"))
    assert image.pixels.dtype == np.uint16 and image.is_gray
    assert image.pixels[0, 0, 0] == 0 and image.pixels[-1, -1, 0] == 65535
    assert any("float" in w for w in image.warnings)


def test_int32_tiff_is_clipped_to_uint16_with_warning(tmp_path: Path) -> None:
    i32 = np.array([[0, 1000, 70000, -5]], dtype=np.int32)
    image = read_image(_save(PILImage.fromarray(i32), tmp_path / "i.tif", "TIFF"))
    assert image.pixels[0, :, 0].tolist() == [0, 1000, 65535, 0]
    assert any("clipped to 16-bit" in w for w in image.warnings)


def test_bmp_reads_and_defaults_to_png(tmp_path: Path) -> None:
    px = _photo(9, 13)
    image = read_image(_save(PILImage.fromarray(px), tmp_path / "x.bmp", "BMP"))
    assert image.source_format == "BMP" and np.array_equal(image.pixels, px)
    assert format_for("same", image.source_format) == "png"


@pytest.mark.parametrize("fmt", FORMATS)
def test_grayscale_jpeg_stays_gray(tmp_path: Path, fmt: str) -> None:
    gray = _photo(40, 56, 1)[..., 0]
    image = read_image(_save(PILImage.fromarray(gray), tmp_path / "g.jpg", "JPEG", quality=95))
    assert image.pixels.shape == (40, 56, 1) and image.is_gray
    back = _roundtrip(image, fmt, tmp_path)
    assert back.pixels.shape == (40, 56, 1), fmt
    assert back.pixels.dtype == np.uint8
    diff = np.abs(back.pixels.astype(int) - image.pixels.astype(int))
    assert diff.mean() < 3.0


# ---------------------------------------------------------------------------- metadata


def _rotated_jpeg(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 60x40 (WxH) JPEG stored sideways with Orientation=6, date and GPS tags, and XMP."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)  # red block at the stored top-left
    exif = PILImage.Exif()
    exif[274] = 6
    exif[271] = "TestCam"
    exif.get_ifd(0x8769)[36867] = DATE  # DateTimeOriginal
    exif.get_ifd(0x8825)[1] = "N"  # GPSLatitudeRef
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
        b'tiff:Orientation="6" dc:title="holiday"/></rdf:RDF></x:xmpmeta>'
    )
    p = tmp_path / "rotated.jpg"
    PILImage.fromarray(stored).save(p, "JPEG", quality=95, exif=exif, xmp=xmp)
    return p, stored


def test_exif_rotated_jpeg_is_upright_and_keeps_tags(tmp_path: Path) -> None:
    p, _ = _rotated_jpeg(tmp_path)
    image = read_image(p)
    # Orientation 6 = rotate 90° clockwise: 60x40 stored -> 40 wide, 60 tall
    assert image.pixels.shape == (60, 40, 3)
    assert tuple(int(v) for v in image.pixels[2, -3]) == pytest.approx((255, 0, 0), abs=12)
    assert image.pixels[-3, 2].max() < 20  # the other corners stay black
    exif = _exif_of(image.exif)
    assert exif.get(274) == 1
    assert exif.get(271) == "TestCam"
    assert exif.get_ifd(0x8769).get(36867) == DATE
    assert exif.get_ifd(0x8825).get(1) == "N"
    assert image.xmp is not None and b'tiff:Orientation="1"' in image.xmp


@pytest.mark.parametrize("fmt", FORMATS)
def test_exif_and_xmp_survive_every_output_format(tmp_path: Path, fmt: str) -> None:
    p, _ = _rotated_jpeg(tmp_path)
    back = _roundtrip(read_image(p), fmt, tmp_path)
    assert back.pixels.shape == (60, 40, 3)  # not rotated a second time
    exif = _exif_of(back.exif)
    assert exif.get(274) == 1
    assert exif.get_ifd(0x8769).get(36867) == DATE
    assert exif.get_ifd(0x8825).get(1) == "N"
    assert back.xmp is not None
    assert b'dc:title="holiday"' in back.xmp and b'tiff:Orientation="1"' in back.xmp


def test_all_eight_orientations_match_pillow_exif_transpose(tmp_path: Path) -> None:
    from PIL import ImageOps

    stored = _rng().integers(0, 256, (6, 10, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = PILImage.Exif()
        exif[274] = orientation
        data = _encoded(PILImage.fromarray(stored), "PNG", exif=exif)
        expected = np.asarray(ImageOps.exif_transpose(PILImage.open(io.BytesIO(data))))
        got = read_image(tmp_path / "o.png", data=data).pixels
        assert np.array_equal(got, expected), orientation


def _cv2_tiff_with_orientation(rgb16: np.ndarray, orientation: int) -> bytes:
    """A 16-bit RGB TIFF written by OpenCV, with an Orientation tag spliced into IFD0 (in place
    of PlanarConfiguration, whose default is the same)."""
    ok, buf = cv2.imencode(".tiff", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    assert ok
    data = bytearray(buf.tobytes())
    end = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(end + "I", data[4:8])
    (count,) = struct.unpack(end + "H", data[offset : offset + 2])
    entries = [bytes(data[offset + 2 + 12 * i : offset + 14 + 12 * i]) for i in range(count)]
    tags = [struct.unpack(end + "H", e[:2])[0] for e in entries]
    entries[tags.index(284)] = struct.pack(end + "HHIHH", 274, 3, 1, orientation, 0)
    entries.sort(key=lambda e: struct.unpack(end + "H", e[:2])[0])
    data[offset + 2 : offset + 2 + 12 * count] = b"".join(entries)
    return bytes(data)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_applied_exactly_once(tmp_path: Path, orientation: int) -> None:
    """Pillow and OpenCV both rotate TIFFs on their own; the result must still be upright."""
    from PIL import ImageOps

    stored8 = _rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = PILImage.Exif()
    exif[274] = orientation
    png = _encoded(PILImage.fromarray(stored8), "PNG", exif=exif)
    expected8 = np.asarray(ImageOps.exif_transpose(PILImage.open(io.BytesIO(png))))

    tif8 = _encoded(PILImage.fromarray(stored8), "TIFF", exif=exif.tobytes())
    image = read_image(tmp_path / "o.tif", data=tif8)
    assert np.array_equal(image.pixels, expected8)
    assert _exif_of(image.exif).get(274) in (None, 1)

    stored16 = stored8.astype(np.uint16) * 257
    image = read_image(tmp_path / "o16.tif", data=_cv2_tiff_with_orientation(stored16, orientation))
    assert image.pixels.dtype == np.uint16
    assert np.array_equal(image.pixels, expected8.astype(np.uint16) * 257)


@pytest.mark.parametrize("fmt", FORMATS)
def test_icc_profile_roundtrip(tmp_path: Path, fmt: str) -> None:
    icc = _srgb_icc()
    p = _save(PILImage.fromarray(_photo(20, 30)), tmp_path / "icc.jpg", "JPEG", icc_profile=icc)
    image = read_image(p)
    assert image.icc_profile == icc
    assert _roundtrip(image, fmt, tmp_path).icc_profile == icc


def test_tiff_source_exif_keeps_descriptive_tags_only(tmp_path: Path) -> None:
    exif = PILImage.Exif()
    exif[274] = 3
    exif[306] = DATE
    exif.get_ifd(0x8769)[36867] = DATE
    raw = exif.tobytes()  # Pillow writes sub-IFDs to TIFF only from loaded (bytes) EXIF
    p = _save(PILImage.fromarray(_photo(10, 14)), tmp_path / "t.tif", "TIFF", exif=raw)
    image = read_image(p)
    assert image.pixels.shape == (10, 14, 3)
    out = _exif_of(image.exif)
    assert out.get(274) == 1 and out.get(306) == DATE
    assert out.get_ifd(0x8769).get(36867) == DATE
    assert 273 not in out and 256 not in out  # StripOffsets / ImageWidth of the source TIFF
    back = _roundtrip(image, "jpg", tmp_path)
    assert _exif_of(back.exif).get_ifd(0x8769).get(36867) == DATE


def test_multi_frame_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [
        PILImage.new("RGB", (24, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    ]
    p = tmp_path / "anim.gif"
    frames[0].save(p, "GIF", save_all=True, append_images=frames[1:], duration=50)
    image = read_image(p)
    assert image.source_format == "GIF"
    assert "multi-frame file: used frame 1 of 3" in image.warnings
    assert image.pixels.shape == (16, 24, 3)
    assert tuple(image.pixels[5, 5]) == (255, 0, 0)
    assert format_for("same", image.source_format) == "png"


def test_mpo_camera_file_reads_first_image_as_jpeg_family(tmp_path: Path) -> None:
    left = PILImage.new("RGB", (32, 24), (200, 30, 30))
    right = PILImage.new("RGB", (32, 24), (30, 30, 200))
    p = tmp_path / "stereo.jpg"
    left.save(p, "MPO", save_all=True, append_images=[right])
    image = read_image(p)
    assert image.source_format == "MPO"
    assert "multi-frame file: used frame 1 of 2" in image.warnings
    assert tuple(int(v) for v in image.pixels[5, 5]) == pytest.approx((200, 30, 30), abs=6)
    assert format_for("same", image.source_format) == "jpg"


# ---------------------------------------------------------------------------- encoding


def test_jpeg_output_flattens_alpha_onto_white_and_reduces_16bit() -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (0, 0, 0)
    rgba[:8, :, 3] = 0  # top half transparent -> white
    rgba[8:, :, 3] = 255  # bottom half opaque black
    back = read_image(Path("x.jpg"), data=encode_image(Image(rgba, "PNG"), "jpg"))
    assert back.channels == 3
    assert back.pixels[:6].min() > 240 and back.pixels[10:].max() < 15

    px16 = np.full((8, 8, 3), 257 * 100, np.uint16)
    back = read_image(Path("x.jpg"), data=encode_image(Image(px16, "PNG"), "jpg", quality=100))
    assert back.pixels.dtype == np.uint8 and abs(int(back.pixels.mean()) - 100) <= 1


def test_webp_cannot_store_huge_sides_and_nothing_is_written(tmp_path: Path) -> None:
    image = Image(np.zeros((1, 17_000, 3), np.uint8), "PNG")
    target = tmp_path / "wide.webp"
    with pytest.raises(F2SError, match="16383"):
        write_image(target, image, "webp")
    assert not target.exists() and _no_temp_files(tmp_path)


def test_encode_rejects_bad_format_and_quality() -> None:
    image = Image(np.zeros((4, 4, 3), np.uint8), "PNG")
    with pytest.raises(ValueError, match="format_for"):
        encode_image(image, "same")  # the caller resolves "same"
    with pytest.raises(ValueError, match="unknown output format"):
        encode_image(image, "gif")
    with pytest.raises(ValueError, match="quality"):
        encode_image(image, "jpg", quality=0)


def test_format_for() -> None:
    assert format_for("same", "JPEG") == "jpg"
    assert format_for("same", "MPO") == "jpg"
    assert format_for("same", "PNG") == "png"
    assert format_for("same", "WEBP") == "webp"
    assert format_for("same", "TIFF") == "tiff"
    assert format_for("same", "BMP") == "png"
    assert format_for("same", "GIF") == "png"
    assert format_for("JPEG", "PNG") == "jpg"
    assert format_for("tif", "PNG") == "tiff"
    with pytest.raises(ValueError):
        format_for("heic", "PNG")
    assert EXTENSIONS == {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif"}


def test_png_encode_is_fast_enough() -> None:
    image = Image(_photo(1000, 1000), "PNG")
    encode_image(image, "png")  # warm up
    start = time.perf_counter()
    data = encode_image(image, "png")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"1 MP PNG encode took {elapsed * 1000:.0f} ms"
    assert np.array_equal(read_image(Path("x.png"), data=data).pixels, image.pixels)


# ---------------------------------------------------------------------------- atomic writes


def test_atomic_write_success_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _no_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_write_failure_never_leaves_partial_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def failing_replace(src: object, dst: object) -> None:
        seen.append(Path(os.fsdecode(src)).name)  # type: ignore[arg-type]
        assert Path(os.fsdecode(src)).exists()  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "replace", failing_replace)
    target = tmp_path / "photo.png"
    image = Image(_photo(20, 20), "PNG")
    with pytest.raises(OSError, match="No space"):
        write_image(target, image, "png")
    assert not target.exists()
    assert _no_temp_files(tmp_path)
    assert list(tmp_path.iterdir()) == []
    # the temp name was hidden, in the same folder and matched TEMP_GLOB
    assert len(seen) == 1 and seen[0].startswith(".photo.png.f2s-tmp-")
    assert fnmatch.fnmatch(seen[0], TEMP_GLOB)

    # an existing output is left intact by a failed overwrite
    target.write_bytes(b"old content")
    with pytest.raises(OSError):
        write_image(target, image, "png")
    assert target.read_bytes() == b"old content"
    assert _no_temp_files(tmp_path)


def test_atomic_write_temp_name_fits_long_names(tmp_path: Path) -> None:
    target = tmp_path / ("x" * 240 + ".png")
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data" and _no_temp_files(tmp_path)


# ---------------------------------------------------------------------------- Image / tensors


def test_image_properties_and_with_pixels() -> None:
    image = Image(np.zeros((10, 20, 4), np.uint16), "PNG", icc_profile=b"icc", warnings=["w"])
    assert (image.height, image.width, image.channels) == (10, 20, 4)
    assert image.has_alpha and not image.is_gray and image.bit_depth == 16
    assert image.megapixels == pytest.approx(0.0002)
    other = image.with_pixels(np.zeros((5, 6, 1), np.uint8))
    assert other.is_gray and other.bit_depth == 8 and other.icc_profile == b"icc"
    other.warnings.append("new")
    assert image.warnings == ["w"]
    with pytest.raises(ValueError):
        Image(np.zeros((4, 4, 2), np.uint8), "PNG")
    with pytest.raises(ValueError):
        Image(np.zeros((4, 4, 3), np.float32), "PNG")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tensor_roundtrip_exact(dtype: type) -> None:
    info = np.iinfo(dtype)
    px = _rng().integers(0, int(info.max) + 1, (7, 9, 3), dtype=dtype)
    px[0, 0] = (0, info.max, 1)
    t = to_tensor(px)
    assert t.shape == (1, 3, 7, 9) and t.dtype == torch.float32 and t.is_contiguous()
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(t[0, 1, 0, 0]) == 1.0  # channel order kept
    assert np.array_equal(from_tensor(t, np.dtype(dtype)), px)
    assert np.array_equal(from_tensor(t[0], dtype), px)  # (C, H, W) accepted too


def test_from_tensor_clips_and_handles_nan() -> None:
    t = torch.tensor([[[[-0.5, 0.5, 1.7, float("nan")]]]])
    assert from_tensor(t, np.uint8)[0, :, 0].tolist() == [0, 128, 255, 0]


def test_reading_and_writing_images_imports_no_torch() -> None:
    """Only io.tensors needs torch: decoding, encoding and the engine's planning stay light."""
    modules = "face2scene_cli.io.images, face2scene_cli.engine.plan, face2scene_cli.engine.lock"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
