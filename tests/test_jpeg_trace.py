"""JPEG quality read from the quantisation grid: real libjpeg files (OpenCV), real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.archs.fadex import fadex_tiny
from face2scene_cli.archs.jpeg_trace import trace_jpeg


def _libjpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def _crop(rgb: np.ndarray, y: int = 37, x: int = 101, size: int = 128) -> torch.Tensor:
    """An off-grid native crop as (1, C, H, W) float in [0, 1]."""
    a = rgb[y : y + size, x : x + size]
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("quality", [25, 50, 75, 90])
def test_reads_libjpeg_quality_off_grid(quality: int) -> None:
    rgb = skdata.astronaut()
    t = trace_jpeg(_crop(_libjpeg(rgb, quality)))
    assert bool(t.found[0])
    assert abs(float(t.quality[0]) - quality) <= 3


@pytest.mark.parametrize("quality", [20, 50])
def test_smooth_content_keeps_the_grid_phase(quality: int) -> None:
    # a soft crop has no high frequencies at any phase; the phase must come from all of the
    # AC coefficients (with the 16 highest only, such crops read as q98)
    soft = cv2.GaussianBlur(skdata.coffee(), (0, 0), 3.0)
    t = trace_jpeg(_crop(_libjpeg(soft, quality), y=101, x=203))
    assert bool(t.found[0]) and abs(float(t.quality[0]) - quality) <= 3, t.quality


def test_noisy_then_compressed_and_gray() -> None:
    rng = np.random.default_rng(0)
    noisy = np.clip(skdata.coffee() + rng.normal(0, 12, skdata.coffee().shape), 0, 255)
    t = trace_jpeg(_crop(_libjpeg(noisy.astype(np.uint8), 40)))
    assert bool(t.found[0]) and abs(float(t.quality[0]) - 40) <= 3
    _, buf = cv2.imencode(".jpg", skdata.camera(), [cv2.IMWRITE_JPEG_QUALITY, 60])
    gray = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    t = trace_jpeg(_crop(gray))
    assert bool(t.found[0]) and abs(float(t.quality[0]) - 60) <= 3


def test_no_trace_without_jpeg_or_after_resizing() -> None:
    rgb = skdata.astronaut()
    assert not bool(trace_jpeg(_crop(rgb)).found[0])  # never compressed
    resized = cv2.resize(_libjpeg(rgb, 40), (400, 400), interpolation=cv2.INTER_AREA)
    assert not bool(trace_jpeg(_crop(resized)).found[0])  # the grid is gone


def test_fadex_reports_the_trace_only_when_asked() -> None:
    torch.manual_seed(0)
    model = fadex_tiny().eval()
    lq = _crop(_libjpeg(skdata.astronaut(), 35))
    with torch.no_grad():
        traced = model(lq, lq)
        head = model(lq, lq, read_jpeg_trace=False)
    assert abs(float(traced.jpeg_quality[0]) - 35) <= 3 and float(traced.jpeg_probability[0]) == 1.0
    assert float(head.jpeg_quality[0]) != float(traced.jpeg_quality[0])
    assert torch.equal(head.code, traced.code) and torch.equal(head.z, traced.z)
