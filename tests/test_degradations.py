"""face2scene_cli.degradations: statistics of each op, libjpeg agreement, determinism, replay,
the Degradation record, the distribution and its YAML block, the Estimate."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.degradations import estimate as E
from face2scene_cli.degradations import jpeg as J
from face2scene_cli.degradations import ops as O
from face2scene_cli.degradations import record as R
from face2scene_cli.degradations import sampling as S
from face2scene_cli.degradations import second_order as SO
from face2scene_cli.errors import ConfigError
from face2scene_cli.research.train.fadex_config import load_train_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _param(**values: object) -> R.Degradation:
    return R.Degradation("parametric", **values)  # type: ignore[arg-type]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _to_u8(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) in [0, 1] -> (H, W, C) uint8."""
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def astro_u8() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut())  # 512x512 RGB photo


@pytest.fixture(scope="module")
def astro(astro_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(astro_u8).permute(2, 0, 1)[None].float() / 255.0


def _cv2_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if img.ndim == 3 else out


# ------------------------------------------------------------------------------- noise


def test_noise15_std_on_flat_grey() -> None:
    x = torch.full((1, 3, 256, 256), 0.5)
    y = S.apply(x, R.PRESETS["noise15"], _gen(1))
    assert y.shape == x.shape
    std = (y - x).std().item()
    assert std == pytest.approx(15 / 255, rel=0.05)
    assert abs((y - x).mean().item()) < 0.002


def test_gray_noise_is_shared_across_channels() -> None:
    x = torch.full((2, 3, 64, 64), 0.5)
    y = O.add_gaussian_noise(x, 10.0, _gen(), gray=True)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    y = O.add_gaussian_noise(x, torch.tensor([0.0, 20.0]), _gen())  # per-image sigma
    assert torch.equal(y[0], x[0])
    assert (y[1] - x[1]).std().item() == pytest.approx(20 / 255, rel=0.1)


def test_poisson_noise(astro: torch.Tensor) -> None:
    x = astro[:, :, :128, :128]
    weak = O.add_poisson_noise(x, 0.5, _gen(), clip=False)
    strong = O.add_poisson_noise(x, 2.0, _gen(), clip=False)
    assert 0 < (weak - x).std().item() < (strong - x).std().item()
    gray = O.add_poisson_noise(x, 1.0, _gen(), gray=True, clip=False) - x
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-6)


# -------------------------------------------------------------------------------- blur


def _second_moments(k: torch.Tensor) -> tuple[float, float]:
    k = k.double() / k.sum()
    n = k.shape[-1]
    ax = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    var_x = float((k.sum(0) * ax**2).sum())
    var_y = float((k.sum(1) * ax**2).sum())
    return var_x, var_y


@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.5])
def test_gaussian_blur_of_impulse_has_kernel_sigma(sigma: float) -> None:
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 20] = 1.0
    y = O.gaussian_blur(x, sigma)
    assert y.sum().item() == pytest.approx(1.0, rel=1e-5)
    var_x, var_y = _second_moments(y[0, 0])
    assert math.sqrt(var_x) == pytest.approx(sigma, rel=0.03)
    assert math.sqrt(var_y) == pytest.approx(sigma, rel=0.03)
    # the separable fast path equals the 2-D convolution
    k = O.gaussian_kernel2d(2 * math.ceil(3 * sigma) + 1 if sigma > 1 else 7, sigma)
    assert torch.allclose(y, O.blur(x, k), atol=1e-6)


def test_anisotropic_kernel_moments_and_rotation() -> None:
    k = O.gaussian_kernel2d(21, 2.0, 1.0, 0.0)
    var_x, var_y = _second_moments(k)
    assert var_x == pytest.approx(4.0, rel=0.03) and var_y == pytest.approx(1.0, rel=0.03)
    kr = O.gaussian_kernel2d(21, 2.0, 1.0, math.pi / 2)
    assert torch.allclose(kr, k.T, atol=1e-7)
    x = torch.zeros(1, 3, 31, 31)
    x[..., 15, 15] = 1.0
    y = O.blur(x, k)
    assert torch.allclose(y[0, 0, 5:26, 5:26], k, atol=1e-7)


def test_other_kernels_are_normalised_and_shaped() -> None:
    g = O.gaussian_kernel2d(15, 1.5)
    gen_heavy = O.generalized_gaussian_kernel2d(15, 1.5, 1.5, 0.0, beta=0.5)
    gen_flat = O.generalized_gaussian_kernel2d(15, 1.5, 1.5, 0.0, beta=4.0)
    plateau = O.plateau_kernel2d(15, 1.5, 2.0, 0.3, beta=1.5)
    sinc = O.sinc_kernel2d(13, math.pi / 3, pad_to=21)
    for k in (g, gen_heavy, gen_flat, plateau, sinc):
        assert k.dtype == torch.float32
        assert k.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert sinc.shape == (21, 21) and sinc[0].abs().sum() == 0
    assert (sinc < 0).any()  # ringing lobes
    # beta = 1 is the Gaussian; beta < 1 has heavier tails than beta > 1
    assert torch.allclose(O.generalized_gaussian_kernel2d(15, 1.5, beta=1.0), g, atol=1e-7)
    assert gen_heavy[7, 0] > g[7, 0] > gen_flat[7, 0]


def test_blur_preset_reduces_high_frequencies(astro: torch.Tensor) -> None:
    def hf_energy(t: torch.Tensor) -> float:
        """Energy of the discrete Laplacian (a high-pass filter) away from the borders."""
        g = t.mean(1)[0].double()
        lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        return float((lap[8:-8, 8:-8] ** 2).mean())

    x = astro[:, :, :256, :256]
    y = S.apply(x, R.PRESETS["blur-noise"], _gen())
    blurred = O.gaussian_blur(x, 1.5)
    assert hf_energy(blurred) < 0.1 * hf_energy(x)
    assert hf_energy(y) < 0.5 * hf_energy(x)


def test_motion_kernel_is_a_normalised_line() -> None:
    k = O.motion_kernel2d(9, 9, 0.0).numpy()
    assert k.shape == (9, 9) and math.isclose(float(k.sum()), 1.0, rel_tol=1e-5)
    rows = k.sum(axis=1)
    assert rows[4] > 0.85 and rows[[0, 1, 2, 6, 7, 8]].sum() < 0.01  # a horizontal line
    diag = O.motion_kernel2d(9, 9, math.pi / 4).numpy()
    assert np.trace(diag) > 0.5 and diag[0, 8] < 0.01
    short = O.motion_kernel2d(15, 5, math.pi / 2).numpy()  # vertical, 5 px in a 15 px kernel
    cols = short.sum(axis=0)
    assert cols[7] > 0.85 and short.sum(axis=1)[5:10].sum() > 0.85  # 5 rows long, not 15


def test_second_order_motion_blur_draws_replay_and_blur_along_a_line() -> None:
    cfg = SO.SecondOrderConfig(
        kernel_list=("motion",), kernel_prob=(1.0,), sinc_prob=0.0, motion_range=(11.0, 15.0)
    )
    s = SO.sample_second_order(cfg, _gen(4))
    k1 = s.kernel1
    assert k1.kind == "motion" and 11 <= k1.length <= 15 and k1.size >= k1.length
    kernel = SO.build_kernel(k1)
    assert math.isclose(float(kernel.sum()), 1.0, rel_tol=1e-5)
    # the kernel's second moment lies along its direction
    c = (k1.size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(k1.size) - c, torch.arange(k1.size) - c, indexing="ij")
    along = (xx * math.cos(k1.rotation) + yy * math.sin(k1.rotation)).pow(2)
    across = (-xx * math.sin(k1.rotation) + yy * math.cos(k1.rotation)).pow(2)
    assert float((kernel * along).sum()) > 8 * float((kernel * across).sum())
    assert (
        R.Degradation.from_dict(
            R.Degradation("second-order", second_order=s).to_dict()
        ).second_order
        == s
    )
    # records written before motion blur (no "length") still load
    old = {k: v for k, v in s.kernel2.to_dict().items() if k != "length"} if s.kernel2 else None
    if old is not None:
        assert R.KernelSpec.from_dict(old).length == 0.0
    x = torch.rand(1, 3, 48, 48, generator=_gen(1))
    assert torch.equal(SO.apply_second_order(x, s), SO.apply_second_order(x, s))
    # Real-ESRGAN's defaults never draw it, so old seeds give the same samples
    assert "motion" not in SO.SecondOrderConfig().kernel_list


def test_parametric_motion_blur_follows_the_gaussian_blur_and_precedes_the_downscale(
    astro: torch.Tensor,
) -> None:
    """blur -> motion kernel (side: the smallest odd >= the length, at least 3; reflect
    padding) -> downscale, against OpenCV's filter2D as the reference convolution."""
    assert [R.motion_kernel_size(v) for v in (1.0, 3.0, 4.0, 7.5, 9.0, 21.0)] == [3, 3, 5, 9, 9, 21]
    x = astro[:, :, 100:164, 200:280]
    d = _param(blur_sigma_px=1.0, motion_px=7.5, motion_angle_deg=30.0, downscale=2.0)
    d = dataclasses.replace(d, resize_back=True)
    kernel = O.motion_kernel2d(9, 7.5, math.radians(30.0)).numpy()
    g = O.gaussian_blur(x, 1.0)[0].permute(1, 2, 0).numpy()
    moved = cv2.filter2D(g, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    ref = torch.from_numpy(moved).permute(2, 0, 1)[None]
    ref = O.resize(O.resize(ref, (32, 40), "bicubic"), (64, 80), "bicubic").clamp(0, 1)
    assert torch.allclose(S.apply(x, d), ref, atol=1e-5)
    # no motion: the angle does nothing
    plain = _param(blur_sigma_px=1.0, noise_sigma=4.0, seed=1)
    turned = dataclasses.replace(plain, motion_angle_deg=45.0)
    assert torch.equal(S.apply(x, plain), S.apply(x, turned))


@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_parametric_motion_blurs_along_its_direction(astro: torch.Tensor, angle: float) -> None:
    """0 degrees smears along the rows (horizontal gradients fade), 90 along the columns; the
    drawn line is about a pixel wide, so the other direction softens too, much less."""
    x = astro[:, :, 40:200, 150:310]  # the face
    y = S.apply(x, _param(motion_px=9.0, motion_angle_deg=angle))

    def energy(t: torch.Tensor) -> tuple[float, float]:
        gx = (t[..., 8:-8, 9:-8] - t[..., 8:-8, 8:-9]).square().mean()
        gy = (t[..., 9:-8, 8:-8] - t[..., 8:-9, 8:-8]).square().mean()
        return float(gx), float(gy)

    (gx, gy), (cx, cy) = energy(y), energy(x)
    along, across = (gx / cx, gy / cy) if angle == 0 else (gy / cy, gx / cx)
    assert along < 0.25 and across > 0.3 and along < 0.5 * across, (along, across)


@pytest.mark.parametrize("length", [5.0, 9.0, 13.0])
def test_motion_kernel_spread_is_its_equivalent_blur(length: float) -> None:
    """A segment of L px has standard deviation L / sqrt(12) along its direction: the label
    FaDeX learns (within 0.25 px for the drawn, anti-aliased kernel at any angle)."""
    for angle in (0.0, 30.0, 90.0, 135.0):
        k = O.motion_kernel2d(R.motion_kernel_size(length), length, math.radians(angle))
        c = (k.shape[0] - 1) / 2
        yy, xx = torch.meshgrid(torch.arange(k.shape[0]) - c, torch.arange(k.shape[0]) - c,
                                indexing="ij")  # fmt: skip
        r = math.radians(angle)
        along = float((k * (xx * math.cos(r) + yy * math.sin(r)).square()).sum()) ** 0.5
        assert abs(along - R.equivalent_blur(0.0, length)) < 0.25, (angle, along)
    assert R.equivalent_blur(0.0, length) == pytest.approx(length / math.sqrt(12))
    assert R.equivalent_blur(1.5, length) == pytest.approx(math.sqrt(2.25 + length**2 / 12))


def test_motion_record_roundtrip_refusals_and_old_records() -> None:
    d = _param(blur_sigma_px=0.5, motion_px=9.0, motion_angle_deg=135.0, noise_sigma=5.0, seed=3)
    assert R.Degradation.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert d.equivalent_blur_px() == pytest.approx(math.sqrt(0.25 + 81 / 12))
    # records written before motion blur (no motion keys) load as no motion
    old = {k: v for k, v in d.to_dict().items() if not k.startswith("motion")}
    assert R.Degradation.from_dict(old) == dataclasses.replace(
        d, motion_px=0.0, motion_angle_deg=0.0
    )
    so = SO.sample_second_order(SO.SecondOrderConfig(), _gen(2))
    for name in ("motion_px", "motion_angle_deg"):
        with pytest.raises(ConfigError, match="second-order degradation takes no"):
            R.Degradation("second-order", second_order=so, **{name: 9.0})  # type: ignore[arg-type]
    bad = [
        ({"motion_px": 0.5}, "0.5"),
        ({"motion_px": 22.0}, "22"),
        ({"motion_px": -1.0}, "-1"),
        ({"motion_px": 5.0, "motion_angle_deg": 180.0}, "180"),
        ({"motion_px": 5.0, "motion_angle_deg": -10.0}, "-10"),
        ({"motion_px": "5"}, "'5'"),
    ]
    for values, needle in bad:
        with pytest.raises(ConfigError, match="motion") as info:
            _param(**values)
        assert needle in str(info.value)


def test_camera_noise_record_roundtrip_refusals_and_old_records() -> None:
    d = _param(poisson_scale=1.5, noise_sigma=2.0, gray_noise=True, jpeg_quality=80, seed=4)
    assert R.Degradation.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    # sigma^2 = read^2 + scale^2 * level (8-bit units), as NoiseCurve fits it
    assert d.noise_sigma_at(100.0) == pytest.approx(math.sqrt(4.0 + 2.25 * 100.0))
    assert _param(noise_sigma=7.0).noise_sigma_at(255.0) == pytest.approx(7.0)
    # records written before shot noise (no such keys) load as Gaussian colour noise
    old = {k: v for k, v in d.to_dict().items() if k not in ("poisson_scale", "gray_noise")}
    assert R.Degradation.from_dict(old) == dataclasses.replace(
        d, poisson_scale=0.0, gray_noise=False
    )
    so = SO.sample_second_order(SO.SecondOrderConfig(), _gen(2))
    for name, value in (("poisson_scale", 1.0), ("gray_noise", True)):
        with pytest.raises(ConfigError, match="second-order degradation takes no"):
            R.Degradation("second-order", second_order=so, **{name: value})  # type: ignore[arg-type]
    for values, needle in (
        ({"poisson_scale": -0.5}, "poisson_scale"),
        ({"poisson_scale": 17.0}, "poisson_scale"),
        ({"gray_noise": 1}, "gray_noise"),
    ):
        with pytest.raises(ConfigError, match=needle):
            _param(**values)


def test_parametric_shot_noise_grows_with_brightness_and_gray_noise_is_shared() -> None:
    """Poisson noise of scale s has sigma ~ s * sqrt(level) (level in 8-bit units), before
    the Gaussian read noise; luminance noise is one field in every channel."""
    dark_half, bright_half = (torch.full((1, 3, 96, 96), v / 255) for v in (30, 150))
    flat = torch.cat([dark_half, bright_half], 3)
    # a photo's many levels: Real-ESRGAN's Poisson noise counts the image's distinct levels
    flat[..., -1, :] = torch.arange(192) / 255
    out = S.apply(flat, _param(poisson_scale=2.0, seed=1)) * 255
    dark, bright = out[..., :-1, :96].std().item(), out[..., :-1, 96:].std().item()
    assert dark == pytest.approx(2.0 * math.sqrt(30), rel=0.1)
    assert bright == pytest.approx(2.0 * math.sqrt(150), rel=0.1)
    # with read noise: sigma^2 adds up; replayed exactly from the seed
    camera = _param(poisson_scale=2.0, noise_sigma=6.0, seed=1)
    noisy = S.apply(flat, camera) * 255
    assert noisy[..., :-1, :96].std().item() == pytest.approx(camera.noise_sigma_at(30), rel=0.1)
    assert torch.equal(noisy, S.apply(flat, camera) * 255)
    colour = S.apply(flat, camera) - flat
    assert not torch.equal(colour[:, 0], colour[:, 1])
    gray = S.apply(flat, dataclasses.replace(camera, gray_noise=True)) - flat
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-6)
    assert torch.allclose(gray[:, 0], gray[:, 2], atol=1e-6)
    with pytest.raises(ValueError, match="needs a seed"):
        S.apply(flat, _param(poisson_scale=1.0))


def test_blur_small_image_and_per_image_kernels() -> None:
    x = torch.rand(2, 1, 5, 6, generator=_gen())
    y = O.gaussian_blur(x, 2.0)  # radius 6 > size: replicate padding
    assert y.shape == x.shape
    k = torch.stack([O.gaussian_kernel2d(7, 1.0), torch.zeros(7, 7)])
    k[1, 3, 3] = 1.0
    z = O.blur(torch.rand(2, 3, 20, 20, generator=_gen()), k)
    assert z.shape == (2, 3, 20, 20)
    with pytest.raises(ValueError, match="per-image kernels"):
        O.blur(torch.rand(3, 3, 20, 20), k)


# ------------------------------------------------------------------------------ resize


def test_downscale_output_shape() -> None:
    x = torch.rand(2, 3, 101, 64, generator=_gen())
    y = S.apply(x, _param(downscale=2.0), _gen())
    assert y.shape == (2, 3, round(101 / 2), 32)
    y = S.apply(x, _param(downscale=3.0, blur_sigma_px=1.0), _gen())
    assert y.shape == (2, 3, 34, 21)
    assert _param(downscale=3.0).output_size(101, 64) == (34, 21)
    # resize_back: the same loss of resolution, at the input size
    back = _param(downscale=3.0, resize_back=True)
    assert back.output_size(101, 64) == (101, 64)
    z = S.apply(x, back, _gen())
    assert z.shape == x.shape and z.min() >= 0 and z.max() <= 1
    small = O.resize(x, (34, 21), "bicubic")
    assert torch.allclose(z, O.resize(small, (101, 64), "bicubic").clamp(0, 1))
    for mode in R.RESIZE_MODES:
        assert O.resize(x, (40, 30), mode).shape == (2, 3, 40, 30)
        assert O.resize(x, (202, 128), mode).shape == (2, 3, 202, 128)


def test_downscale_is_antialiased() -> None:
    # a 1-px checkerboard has its energy at Nyquist; antialiased downscale makes it flat grey
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    x = ((xx + yy) % 2).float()[None, None]
    y = O.resize(x, (21, 21), "bicubic")
    assert (y - 0.5).abs().max().item() < 0.1


# -------------------------------------------------------------------------------- JPEG


def test_jpeg_quant_tables_libjpeg() -> None:
    luma, chroma = J.jpeg_quant_tables(50)
    assert luma[0, 0] == 16 and luma[7, 7] == 99 and chroma[0, 0] == 17
    luma, chroma = J.jpeg_quant_tables(75)  # scale 50: (16 * 50 + 50) // 100 = 8
    assert luma[0, 0] == 8 and chroma[7, 7] == 50
    luma, _ = J.jpeg_quant_tables(10)  # scale 500
    assert luma[0, 0] == 80 and luma.max() == 255
    luma, chroma = J.jpeg_quant_tables(100)
    assert luma.max() == 1 and chroma.max() == 1


def test_torch_jpeg_agrees_with_libjpeg(astro_u8: np.ndarray, astro: torch.Tensor) -> None:
    errors = []
    for q in (10, 30, 45, 70, 90):
        ours = _to_u8(J.jpeg_compress(astro, q))
        ref = _cv2_jpeg(astro_u8, q)
        agreement = _psnr(ours, ref)
        assert agreement > 33.0, (q, agreement)
        # the error vs the clean image is close to libjpeg's
        assert _psnr(ours, astro_u8) == pytest.approx(_psnr(ref, astro_u8), abs=1.0)
        errors.append(_psnr(ours, astro_u8))
    assert errors == sorted(errors)  # monotone in quality
    assert errors[0] + 5 < errors[-1]


def test_torch_jpeg_gray_and_odd_size(astro_u8: np.ndarray) -> None:
    gray = np.ascontiguousarray(astro_u8[:203, :301, 1])
    x = torch.from_numpy(gray)[None, None].float() / 255
    ours = _to_u8(J.jpeg_compress(x, 50))[..., 0]
    assert ours.shape == gray.shape
    assert _psnr(ours, _cv2_jpeg(gray, 50)) > 35.0
    rgb = np.ascontiguousarray(astro_u8[:203, :301])
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    assert _psnr(_to_u8(J.jpeg_compress(x, 50)), _cv2_jpeg(rgb, 50)) > 35.0


def test_jpeg_per_sample_quality(astro: torch.Tensor) -> None:
    x = astro[:, :, :64, :64].expand(3, 3, 64, 64)
    y = J.jpeg_compress(x, torch.tensor([20.0, 50.0, 90.0]))
    for i, q in enumerate((20, 50, 90)):
        assert torch.equal(y[i : i + 1], J.jpeg_compress(x[i : i + 1], q))
    err = [(y[i] - x[i]).abs().mean().item() for i in range(3)]
    assert err[0] > err[1] > err[2]


# ------------------------------------------------------------------- parametric pipeline


def test_parametric_determinism(astro: torch.Tensor) -> None:
    x = astro[:, :, :96, :96]
    for name, params in R.PRESETS.items():
        a = S.apply(x, params, _gen(7))
        b = S.apply(x, params, _gen(7))
        c = S.apply(x, params, _gen(8))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name
        assert a.min() >= 0 and a.max() <= 1


def test_presets_and_record_roundtrip() -> None:
    preset = R.Degradation.from_preset
    assert preset("noise15") == R.Degradation("preset", "noise15", noise_sigma=15.0)
    assert preset("blur-noise").blur_sigma_px == 1.5 and preset("blur-noise").noise_sigma == 5
    mixed = preset("mixed", seed=9)
    assert (mixed.blur_sigma_px, mixed.noise_sigma, mixed.jpeg_quality) == (1.0, 10.0, 45)
    assert all(p.downscale == 1 and p.seed is None for p in R.PRESETS.values())
    assert mixed.to_dict() == {
        "mode": "preset",
        "preset": "mixed",
        "blur_sigma_px": 1.0,
        "motion_px": 0.0,
        "motion_angle_deg": 0.0,
        "noise_sigma": 10.0,
        "jpeg_quality": 45,
        "downscale": 1.0,
        "resize_back": False,
        "seed": 9,
        "poisson_scale": 0.0,
        "gray_noise": False,
        "downscale_kernel": "bicubic",
    }
    p = _param(blur_sigma_px=0.7, noise_sigma=3.5, jpeg_quality=60, downscale=2.5, seed=4)
    so = R.Degradation(
        "second-order", second_order=SO.sample_second_order(SO.SecondOrderConfig(), _gen(2))
    )
    for d in (mixed, p, so, _param(resize_back=True)):
        text = json.dumps(d.to_dict(), allow_nan=False)
        assert R.Degradation.from_dict(json.loads(text)) == d
    assert set(so.to_dict()) == {"mode", "preset", "sample"}
    with pytest.raises(ConfigError, match="nope"):
        preset("nope")
    with pytest.raises(ConfigError, match="differ"):  # a preset's values are the preset's
        R.Degradation.from_dict(dict(mixed.to_dict(), noise_sigma=3.0))
    with pytest.raises(ConfigError, match="sample"):
        R.Degradation.from_dict({"mode": "second-order", "preset": None})


def test_record_replays_the_applied_degradation(astro: torch.Tensor) -> None:
    """apply(x, record) needs nothing but the record: its seed drives the noise."""
    x = astro[:, :, :64, :64]
    d = _param(blur_sigma_px=1.0, noise_sigma=8.0, jpeg_quality=50, seed=123)
    y = S.apply(x, d)
    assert torch.equal(y, S.apply(x, R.Degradation.from_dict(d.to_dict())))
    assert torch.equal(y, S.apply(x, d, _gen(123)))  # the seed is the generator's seed
    assert not torch.equal(y, S.apply(x, d.with_seed(124)))


def test_record_reads_the_0_1_field_names() -> None:
    """Old reports (``params`` with ``blur_sigma``/``scale``) and old scene-training caches
    (``kind``/``blur``/``noise``/``jpeg``, downscale = down-then-up) read back; never written."""
    old_report = {
        "mode": "parametric",
        "preset": None,
        "params": {"blur_sigma": 0.7, "noise_sigma": 3.5, "jpeg_quality": 60, "scale": 2.5},
    }
    assert R.Degradation.from_dict(old_report) == _param(
        blur_sigma_px=0.7, noise_sigma=3.5, jpeg_quality=60, downscale=2.5
    )
    old_preset = {
        "mode": "preset",
        "preset": "noise15",
        "params": {"blur_sigma": None, "noise_sigma": 15.0, "jpeg_quality": None, "scale": 1.0},
    }
    assert R.Degradation.from_dict(old_preset) == R.PRESETS["noise15"]
    sample = SO.sample_second_order(SO.SecondOrderConfig(), _gen(3))
    old_so = {"mode": "second-order", "preset": None, "params": sample.to_dict()}
    assert R.Degradation.from_dict(old_so).second_order == sample
    old_cache = {"kind": "parametric", "blur": 1.2, "noise": 4.0, "downscale": 2.0, "jpeg": None,
                 "seed": 5}  # fmt: skip
    assert R.Degradation.from_dict(old_cache) == _param(
        blur_sigma_px=1.2, noise_sigma=4.0, downscale=2.0, resize_back=True, seed=5
    )
    assert R.Degradation.from_dict({"kind": "preset", "name": "mixed", "seed": 2}) == (
        R.Degradation.from_preset("mixed", 2)
    )
    for d in (old_report, old_cache):
        written = json.dumps(R.Degradation.from_dict(d).to_dict())
        assert "params" not in written and "kind" not in written and '"blur"' not in written


def test_gray_input_supported_everywhere(astro: torch.Tensor) -> None:
    x = astro[:, 1:2, :48, :40]
    g = _gen()
    for name, params in R.PRESETS.items():
        assert S.apply(x, params, g).shape == x.shape, name
    assert S.apply(x, _param(downscale=2), g).shape == (1, 1, 24, 20)
    assert O.gaussian_blur(x, 1.0).shape == x.shape
    assert O.blur(x, O.plateau_kernel2d(9, 1.0, 2.0, 0.5, 1.5)).shape == x.shape
    assert O.resize(x, (20, 21), "area").shape == (1, 1, 20, 21)
    assert O.add_gaussian_noise(x, 5.0, g, gray=True).shape == x.shape
    assert O.add_poisson_noise(x, 1.0, g, gray=True).shape == x.shape
    assert J.jpeg_compress(x, 40).shape == x.shape
    cfg = SO.SecondOrderConfig()
    for seed in range(4):
        s = SO.sample_second_order(cfg, _gen(seed))
        assert SO.apply_second_order(x, s).shape == x.shape


def test_bad_parameters_raise_config_error() -> None:
    cases = [
        (lambda: _param(noise_sigma=-3.0), "-3.0"),
        (lambda: _param(blur_sigma_px=55.0), "55.0"),
        (lambda: _param(jpeg_quality=101), "101"),
        (lambda: _param(jpeg_quality=0), "0"),
        (lambda: _param(downscale=0.5), "0.5"),
        (lambda: _param(downscale=float("nan")), "nan"),
        (lambda: R.Degradation.from_dict({"mode": "parametric", "noise": 3}), "noise"),
        (lambda: R.Degradation("blurry"), "blurry"),
        (lambda: J.jpeg_compress(torch.rand(1, 3, 8, 8), 150), "150"),
        (lambda: O.gaussian_kernel2d(8, 1.0), "8"),
        (lambda: O.gaussian_kernel2d(7, -1.0), "-1.0"),
        (lambda: O.sinc_kernel2d(7, 4.0), "4.0"),
        (lambda: O.resize(torch.rand(1, 3, 8, 8), (4, 4), "lanczos"), "lanczos"),
        (lambda: SO.SecondOrderConfig(kernel_size_range=(7, 23)), "23"),
        (lambda: SO.SecondOrderConfig(resize_prob=(0.5, 0.7, 0.1)), "0.7"),
        (lambda: SO.SecondOrderConfig(jpeg_range=(95, 30)), "95"),
        (lambda: SO.SecondOrderConfig(kernel_list=("iso", "box"), kernel_prob=(0.5, 0.5)), "box"),
        (lambda: SO.SecondOrderConfig(final_scale=0), "0"),
        (lambda: O.add_gaussian_noise(torch.rand(1, 3, 8, 8), -2.0, _gen()), "-2.0"),
    ]
    for fn, needle in cases:
        with pytest.raises(ConfigError) as info:
            fn()
        assert needle in str(info.value), (needle, str(info.value))


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        S.apply(torch.rand(3, 8, 8), R.PRESETS["noise15"], _gen())
    with pytest.raises(ValueError, match="1 or 3 channels"):
        J.jpeg_compress(torch.rand(1, 4, 8, 8), 50)
    with pytest.raises(TypeError, match="floating"):
        O.gaussian_blur(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match="generator"):
        S.apply(torch.rand(1, 3, 8, 8), R.PRESETS["noise15"])


def test_image_generator() -> None:
    a = torch.rand(4, generator=S.image_generator(3, "dir/a.png"))
    b = torch.rand(4, generator=S.image_generator(3, "dir/a.png"))
    c = torch.rand(4, generator=S.image_generator(3, "dir/b.png"))
    d = torch.rand(4, generator=S.image_generator(4, "dir/a.png"))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"3:dir/a.png").digest()[:8], "big") & (2**63 - 1)
    assert S.image_seed(3, "dir/a.png") == expected
    assert S.image_generator(3, "dir/a.png").initial_seed() == expected


# ---------------------------------------------------------------- second-order pipeline


def test_second_order_sample_roundtrip_replays_bit_exact() -> None:
    cfg = SO.SecondOrderConfig()
    x = torch.rand(1, 3, 64, 64, generator=_gen(99))
    seen: set[str] = set()
    for seed in range(8):
        s = SO.sample_second_order(cfg, _gen(seed))
        text = json.dumps(s.to_dict(), allow_nan=False)
        s2 = R.SecondOrderSample.from_dict(json.loads(text))
        assert s2 == s
        y = SO.apply_second_order(x, s)
        assert torch.equal(y, SO.apply_second_order(x, s2))
        assert torch.equal(y, SO.apply_second_order(x.clone(), s))  # pure
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, torch.round(y * 255) / 255)  # 8-bit levels
        seen.update({s.noise1.kind, s.noise2.kind, s.final_order, s.kernel1.kind})
    assert {"gaussian", "poisson", "resize_then_jpeg", "jpeg_then_resize"} <= seen
    # same generator seed -> same sample; different seed -> different sample
    assert SO.sample_second_order(cfg, _gen(5)) == SO.sample_second_order(cfg, _gen(5))
    assert SO.sample_second_order(cfg, _gen(5)) != SO.sample_second_order(cfg, _gen(6))
    back = SO.SecondOrderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


def test_second_order_sample_ranges() -> None:
    cfg = SO.SecondOrderConfig()
    for seed in range(40):
        s = SO.sample_second_order(cfg, _gen(seed))
        assert 7 <= s.kernel1.size <= 21 and s.kernel1.size % 2 == 1
        assert 30 <= s.jpeg1 <= 95 and 30 <= s.jpeg2 <= 95
        if s.kernel1.kind != "sinc":
            assert 0.2 <= s.kernel1.sigma_x <= 3.0
        if s.kernel2 is not None and s.kernel2.kind != "sinc":
            assert 0.2 <= s.kernel2.sigma_x <= 1.5
        assert 0.15 <= s.resize1.scale <= 1.5 and 0.3 <= s.resize2.scale <= 1.2
        if s.noise1.kind == "gaussian":
            assert 1 <= s.noise1.amount <= 30
        else:
            assert 0.05 <= s.noise1.amount <= 3


def test_second_order_final_scale() -> None:
    cfg = SO.SecondOrderConfig(final_scale=4)
    s = SO.sample_second_order(cfg, _gen(3))
    y = SO.apply_second_order(torch.rand(1, 3, 64, 72, generator=_gen()), s)
    assert y.shape == (1, 3, 16, 18)


def test_second_order_batch_mixed_samples() -> None:
    cfg = SO.SecondOrderConfig()
    x = torch.rand(4, 3, 64, 64, generator=_gen(1))
    for seed in range(3):
        samples = SO.sample_second_order_batch(cfg, _gen(seed), 4)
        assert len(samples) == 4
        assert len({s.kernel1 for s in samples}) == 4  # per-image kernels
        assert len({s.noise1.seed for s in samples}) == 4
        assert len({(s.resize1, s.resize2, s.final_order) for s in samples}) == 1
        y = SO.apply_second_order_batch(x, samples)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, SO.apply_second_order_batch(x, samples))
        # each image is close to applying its own sample alone (same ops, other batching)
        for i in (0, 3):
            alone = SO.apply_second_order(x[i : i + 1], samples[i])
            assert (alone - y[i : i + 1]).abs().mean().item() < 2e-3
    with pytest.raises(ValueError, match="share"):
        SO.apply_second_order_batch(x[:2], [SO.sample_second_order(cfg, _gen(i)) for i in (0, 2)])
    with pytest.raises(ValueError, match="one sample per image"):
        SO.apply_second_order_batch(x, samples[:2])


# ------------------------------------------------------------------- the distribution


def test_distribution_second_order_only_draws_what_sample_second_order_draws() -> None:
    """``f2s degrade`` (second-order mode) and ``f2s eval`` draw exactly the 0.1 samples."""
    dist = S.DegradationDistribution(mix=(0.0, 0.0, 1.0))
    for seed in range(3):
        d = dist.sample(_gen(seed))
        assert d.mode == "second-order"
        assert d.second_order == SO.sample_second_order(SO.SecondOrderConfig(), _gen(seed))


def test_distribution_draws_follow_the_config() -> None:
    dist = S.DegradationDistribution(
        mix=(0.25, 0.5, 0.25),
        presets=("noise15", "mixed"),
        p_noise=1.0,
        noise_range=(5.0, 6.0),
        p_blur=0.0,
        p_downscale=0.5,
        downscale_range=(2.0, 3.0),
        p_jpeg=0.5,
        jpeg_range=(30, 31),
    )
    rng = np.random.default_rng(0)  # numpy generators work too (the trainers' rng)
    draws = [dist.sample(rng) for _ in range(400)]
    modes = [d.mode for d in draws]
    assert 0.4 < modes.count("parametric") / 400 < 0.6
    assert 0.15 < modes.count("second-order") / 400 < 0.35
    assert {d.preset for d in draws if d.mode == "preset"} == {"noise15", "mixed"}
    par = [d for d in draws if d.mode == "parametric"]
    assert all(5.0 <= d.noise_sigma <= 6.0 and d.blur_sigma_px == 0.0 for d in par)
    assert all(d.resize_back and d.seed is not None for d in par)
    down = [d.downscale for d in par if d.downscale > 1]
    assert 0.3 < len(down) / len(par) < 0.7 and all(2.0 <= f <= 3.0 for f in down)
    assert {d.jpeg_quality for d in par} == {None, 30, 31}
    # the same generator seed gives the same draws, torch or numpy
    assert dist.sample(_gen(4)) == dist.sample(_gen(4))
    again = np.random.default_rng(0)
    assert [dist.sample(again) for _ in range(5)] == draws[:5]


#: configs/fadex-wide.yaml's block (no motion), read from the config itself.
_WIDE = load_train_config(CONFIGS / "fadex-wide.yaml").data.degradation


def test_distribution_without_motion_draws_what_it_drew_before_motion_blur() -> None:
    """Draws written down from the code before motion blur existed: a distribution without
    motion (every existing config) draws the same records and leaves its generator where it
    left it, so the training caches and seeds stay reproducible."""
    assert S.DegradationDistribution().p_motion == 0.0 == _WIDE.p_motion
    rng = np.random.default_rng([0, 0])  # fadex_heads.build_groups' first shard
    draws = [_WIDE.sample(rng) for _ in range(4)]
    assert [d.seed for d in draws] == [
        2488343231644625808,
        5014055544817598430,
        7961420335204384646,
        5675925829132956439,
    ]
    assert draws[0] == _param(
        blur_sigma_px=0.3611522514555576, resize_back=True, seed=draws[0].seed
    )
    assert (draws[1].jpeg_quality, draws[1].downscale) == (75, 3.607861760615816)
    assert (draws[2].noise_sigma, draws[2].downscale) == (21.423017449284092, 1.5917790103738008)
    assert draws[3].blur_sigma_px == 3.9896767624200806
    assert all(d.motion_px == 0.0 and d.motion_angle_deg == 0.0 for d in draws)
    assert rng.random() == 0.6884467305709401  # the generator is where it was
    assert S.DegradationDistribution().sample(_gen(5)) == _param(
        blur_sigma_px=1.2742345724533166,
        noise_sigma=7.983514163318168,
        resize_back=True,
        seed=4095051218741643470,
    )


def test_distribution_draws_motion_last() -> None:
    """With motion, every other value is the one drawn without it; the motion comes after."""
    moving = dataclasses.replace(_WIDE, p_motion=0.5, motion_range=(5.0, 6.0))
    lengths = []
    for seed in range(60):
        with_motion, without = moving.sample(_gen(seed)), _WIDE.sample(_gen(seed))
        still = dataclasses.replace(with_motion, motion_px=0.0, motion_angle_deg=0.0)
        assert still == without, seed
        if with_motion.motion_px > 0:
            assert 5.0 <= with_motion.motion_px <= 6.0
            assert 0.0 <= with_motion.motion_angle_deg < 180.0
            lengths.append(with_motion.motion_px)
    parametric = sum(_WIDE.sample(_gen(seed)).mode == "parametric" for seed in range(60))
    assert 0.3 < len(lengths) / parametric < 0.7
    assert len({round(v, 6) for v in lengths}) == len(lengths)  # drawn, not fixed
    # the envelope counts the motion by its equivalent blur
    assert _WIDE.envelope()["blur_sigma_px"] == 4.0
    env = dataclasses.replace(_WIDE, motion_range=(3.0, 14.0), p_motion=0.25).envelope()
    assert env["blur_sigma_px"] == pytest.approx(math.hypot(4.0, 14.0 / math.sqrt(12)))


def test_distribution_draws_shot_and_gray_noise_last() -> None:
    """With shot and gray noise, every other value is the one drawn without them; they come
    after motion blur, gray noise only on a draw with noise; the envelope counts the shot
    noise at the brightest level."""
    assert S.DegradationDistribution().p_poisson == 0.0 == _WIDE.p_poisson
    assert S.DegradationDistribution().p_gray_noise == 0.0 == _WIDE.p_gray_noise
    camera = dataclasses.replace(_WIDE, p_poisson=0.5, poisson_range=(1.0, 2.0), p_gray_noise=0.5)
    shot, gray, parametric = [], 0, 0
    for seed in range(80):
        drawn, without = camera.sample(_gen(seed)), _WIDE.sample(_gen(seed))
        plain = dataclasses.replace(drawn, poisson_scale=0.0, gray_noise=False)
        assert plain == without, seed
        if drawn.mode != "parametric":
            continue
        parametric += 1
        if drawn.poisson_scale > 0:
            assert 1.0 <= drawn.poisson_scale <= 2.0
            shot.append(drawn.poisson_scale)
        gray += drawn.gray_noise
        if drawn.gray_noise:
            assert drawn.noise_sigma > 0 or drawn.poisson_scale > 0
    assert 0.3 < len(shot) / parametric < 0.7
    assert 0.15 < gray / parametric < 0.6
    assert len({round(v, 6) for v in shot}) == len(shot)
    noise = _WIDE.noise_range[1]
    assert camera.envelope()["noise_sigma"] == pytest.approx(math.sqrt(noise**2 + 4 * 255))
    assert _WIDE.envelope()["noise_sigma"] == noise
    with pytest.raises(ConfigError, match="poisson_range"):
        dataclasses.replace(_WIDE, poisson_range=(1.0, 20.0))


def test_downscale_kernel_record_apply_and_draws(astro: torch.Tensor) -> None:
    """The downscale's filter is part of the record (old records read as bicubic, a bad name
    is refused), changes the result as that filter does, and a distribution with several
    draws one per downscaled draw, last, leaving every other value as drawn without them."""
    d = _param(downscale=3.0, resize_back=True, downscale_kernel="area")
    assert R.Degradation.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    old = {k: v for k, v in d.to_dict().items() if k != "downscale_kernel"}
    assert R.Degradation.from_dict(old).downscale_kernel == "bicubic"
    with pytest.raises(ConfigError, match="downscale_kernel must be one of area"):
        _param(downscale=2.0, downscale_kernel="lanczos")
    x = astro[..., :96, :96]
    small = {k: S.apply(x, _param(downscale=4.0, downscale_kernel=k)) for k in R.RESIZE_MODES}
    assert small["area"].shape[-2:] == (24, 24)
    area = torch.nn.functional.avg_pool2d(x, 4)  # 4x4 pixel averages
    torch.testing.assert_close(small["area"], area, atol=1e-5, rtol=0)
    assert (small["bicubic"] - area).abs().mean() > 1e-3
    kernels = dataclasses.replace(_WIDE, p_downscale=0.6, downscale_kernels=["area", "bilinear"])
    drawn_kernels = []
    for seed in range(60):
        drawn, without = (
            kernels.sample(_gen(seed)),
            dataclasses.replace(_WIDE, p_downscale=0.6).sample(_gen(seed)),
        )
        assert dataclasses.replace(drawn, downscale_kernel="bicubic") == without, seed
        if drawn.mode == "parametric" and drawn.downscale > 1:
            drawn_kernels.append(drawn.downscale_kernel)
        else:
            assert drawn.downscale_kernel == "bicubic"
    assert set(drawn_kernels) == {"area", "bilinear"} and len(drawn_kernels) > 10
    with pytest.raises(ConfigError, match="downscale_kernels must be a list"):
        dataclasses.replace(_WIDE, downscale_kernels=["nearest"])


def test_distribution_clean_share_leaves_the_image_untouched() -> None:
    """``p_clean`` draws untouched images at its rate, each with its own seed, and the image
    comes back as it went in; the other draws keep the distribution's ranges."""
    assert S.DegradationDistribution().p_clean == 0.0 == _WIDE.p_clean
    dist = dataclasses.replace(_WIDE, p_clean=0.3)
    draws = [dist.sample(_gen(seed)) for seed in range(200)]
    clean = [d for d in draws if d == _param(resize_back=True, seed=d.seed)]
    assert 0.2 < len(clean) / len(draws) < 0.4
    assert len({d.seed for d in clean}) == len(clean)
    x = torch.rand(1, 3, 32, 32, generator=_gen(0))
    assert torch.equal(S.apply(x, clean[0]), x)
    others = [d for d in draws if d not in clean]
    assert {d.mode for d in others} == {m for m, p in zip(R.MODES, dist.mix, strict=True) if p}
    assert all(d.noise_sigma <= 50.0 and d.downscale <= 4.0 for d in others)
    assert dist.envelope() == _WIDE.envelope()
    assert S.DegradationDistribution.from_dict(dist.to_dict()) == dist


def test_distribution_yaml_block_roundtrip_and_defaults() -> None:
    base = S.DegradationDistribution(mix=(0.0, 0.8, 0.2), p_noise=0.6)
    dist = S.DegradationDistribution.from_dict(
        {"mix": {"preset": 0.5, "parametric": 0.5}, "jpeg_range": [40, 60]}, "x", base
    )
    assert dist.mix == (0.5, 0.5, 0.0) and dist.jpeg_range == (40, 60)
    assert dist.p_noise == 0.6  # a key left out keeps the given defaults
    block = json.loads(json.dumps(dist.to_dict()))
    assert block["mix"] == {"preset": 0.5, "parametric": 0.5, "second_order": 0.0}
    assert S.DegradationDistribution.from_dict(block) == dist
    assert S.DegradationDistribution.from_dict(None, "x", base) == base
    so = S.DegradationDistribution.from_dict({"second_order": {"final_scale": 2}})
    assert so.second_order == SO.SecondOrderConfig(final_scale=2)


@pytest.mark.parametrize(
    ("block", "needles"),
    [
        ({"p_noise": 1.5}, ("data.degradation", "p_noise", "1.5")),
        ({"noise_range": [30, 5]}, ("data.degradation", "noise_range")),
        ({"jpeg_range": [20, 101]}, ("data.degradation", "jpeg_range", "101")),
        ({"downscale_range": [0.5, 2]}, ("data.degradation", "downscale_range", "0.5")),
        ({"mix": {"preset": 0.5, "parametric": 0.6}}, ("data.degradation", "mix", "sum to 1")),
        ({"mix": {"presets": 1.0}}, ("data.degradation", "mix", "presets")),
        ({"presets": ["noise15", "nope"]}, ("data.degradation", "nope")),
        ({"resize_back": "yes"}, ("data.degradation", "resize_back")),
        ({"p_motion": 1.5}, ("data.degradation", "p_motion", "1.5")),
        ({"p_clean": -0.1}, ("data.degradation", "p_clean", "-0.1")),
        ({"motion_range": [0.5, 3.0]}, ("data.degradation", "motion_range", "0.5")),
        ({"motion_range": [3.0, 30.0]}, ("data.degradation", "motion_range", "30")),
        ({"p_second_order": 0.2}, ("data.degradation", "p_second_order", "known")),
        (
            {"second_order": {"jpeg_range": [95, 30]}},
            ("data.degradation: second_order", "jpeg_range"),
        ),
        ({"second_order": {"final_scale": 0}}, ("data.degradation", "final_scale")),
        ([0.1, 0.2], ("data.degradation", "mapping")),
    ],
)
def test_distribution_yaml_errors_name_the_key(block: object, needles: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        S.DegradationDistribution.from_dict(block, "data.degradation")
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_training_configs_share_the_block(tmp_path: Path) -> None:
    """Both trainers parse ``data.degradation`` with the one parser; bad values name the key."""
    import yaml

    from face2scene_cli.research.train.data import FADEX_DEGRADATIONS
    from face2scene_cli.research.train.scene_config import SCENE_DEGRADATIONS, load_scene_config

    assert load_train_config(CONFIGS / "fadex.yaml").data.degradation == FADEX_DEGRADATIONS
    for name in ("scene.yaml", "scene-warm.yaml", "scene-film.yaml"):
        assert load_scene_config(CONFIGS / name).data.degradation == SCENE_DEGRADATIONS
    assert FADEX_DEGRADATIONS.mix == (0.0, 0.8, 0.2) and FADEX_DEGRADATIONS.resize_back
    doc = yaml.safe_load((CONFIGS / "scene.yaml").read_text())
    doc["data"]["degradation"]["p_jpeg"] = -0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"data\.degradation: p_jpeg"):
        load_scene_config(bad)
    doc = yaml.safe_load((CONFIGS / "fadex.yaml").read_text())
    doc["data"]["degradation"] = {"p_noise": 0.1}  # partial block: FaDeX's other values
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(doc))
    loaded = load_train_config(partial).data.degradation
    assert loaded.p_noise == 0.1 and loaded.mix == FADEX_DEGRADATIONS.mix


# --------------------------------------------------------------------------- estimates


def _estimate(**changes: float) -> E.Estimate:
    base = {"noise_sigma": 12.0, "blur_sigma_px": 0.8, "downscale": 1.0, "jpeg_quality": 40.0,
            "jpeg_probability": 0.9}  # fmt: skip
    return E.Estimate(**(base | changes))


def test_estimate_describe() -> None:
    assert (
        _estimate().describe()
        == "moderate noise (sigma~12/255), mild blur (sigma~0.8 px), JPEG q~40"
    )
    clean = _estimate(noise_sigma=0.5, blur_sigma_px=0.1, jpeg_quality=90.0, jpeg_probability=0.1)
    assert clean.describe() == "no visible noise, sharp, no JPEG artefacts"
    low = _estimate(noise_sigma=20.0, blur_sigma_px=2.5, jpeg_quality=30.0, downscale=2.0)
    assert low.describe() == (
        "heavy noise (sigma~20/255), strong blur (sigma~2.5 px), heavy JPEG q~30, "
        "low resolution (~x2.0 lost)"
    )


def test_estimate_report_fields_and_old_names() -> None:
    e = _estimate(noise_sigma=12.34567, jpeg_probability=0.3)
    rep = e.to_report()
    assert rep == {
        "noise_sigma": 12.346,
        "blur_sigma_px": 0.8,
        "jpeg_quality": None,  # the estimate says no JPEG
        "jpeg_probability": 0.3,
        "downscale": 1.0,
        "motion_px": None,  # no motion head, or under E.MOTION_READ_PX
        "motion_angle_deg": None,
        "summary": e.describe(),
    }
    assert list(e.to_dict()) == [*E.ESTIMATE_FIELDS, *E.MOTION_FIELDS]
    assert "jpeg_prob" not in set(rep) | set(e.to_dict())
    # a 0.1 report / degrade-code face (``jpeg_prob``) reads back; so does the new report
    old = {k: v for k, v in e.to_dict().items() if k != "jpeg_probability"} | {"jpeg_prob": 0.3}
    assert E.Estimate.from_dict(old) == e
    assert E.Estimate.from_dict(_estimate().to_report()) == _estimate(noise_sigma=12.0)
    with pytest.raises(ConfigError, match="noise_sigma"):
        E.Estimate.from_dict({"blur_sigma_px": 1.0})
    m = E.Estimate.mean([_estimate(noise_sigma=10.0), _estimate(noise_sigma=20.0)], [0.25, 0.75])
    assert m.noise_sigma == pytest.approx(17.5) and m.blur_sigma_px == pytest.approx(0.8)


def test_estimate_motion_report_and_axial_mean() -> None:
    """A motion blur is reported from MOTION_READ_PX on; faces' directions average as axes
    (170 and 10 degrees are 0, not 90), weighted by the length each face read."""
    e = _estimate(blur_sigma_px=2.6, motion_px=8.96, motion_angle_deg=30.04)
    rep = e.to_report()
    assert e.motion and rep["motion_px"] == 8.96 and rep["motion_angle_deg"] == 30.0
    assert "motion blur (~9 px at 30 deg)" in rep["summary"]
    assert E.Estimate.from_dict(rep) == _estimate(
        blur_sigma_px=2.6, motion_px=8.96, motion_angle_deg=30.0
    )
    weak = _estimate(motion_px=E.MOTION_READ_PX - 0.1, motion_angle_deg=30.0)
    assert not weak.motion and weak.to_report()["motion_px"] is None
    assert "motion" not in weak.describe()
    assert E.Estimate.from_dict(weak.to_report()).motion_px == 0.0
    faces = [_estimate(motion_px=9.0, motion_angle_deg=a) for a in (170.0, 10.0)]
    m = E.Estimate.mean(faces, [0.5, 0.5])
    assert m.motion_px == pytest.approx(9.0)
    assert min(m.motion_angle_deg, 180.0 - m.motion_angle_deg) == pytest.approx(0.0, abs=1e-9)
    faces = [_estimate(motion_px=9.0, motion_angle_deg=40.0), _estimate(motion_angle_deg=120.0)]
    assert E.Estimate.mean(faces, [0.5, 0.5]).motion_angle_deg == pytest.approx(40.0)


def test_record_and_estimate_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, face2scene_cli.degradations.record, face2scene_cli.degradations.estimate;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_shapes_and_runs() -> None:
    x = torch.rand(2, 3, 64, 64, generator=_gen())
    xc = x.cuda()
    y = S.apply(xc, R.PRESETS["mixed"], _gen(1))  # CPU generator seeds a CUDA one
    assert y.device.type == "cuda" and y.shape == x.shape
    blur_cpu = J.jpeg_compress(O.gaussian_blur(x, 1.0), 45)
    blur_gpu = J.jpeg_compress(O.gaussian_blur(xc, 1.0), 45).cpu()
    assert (blur_cpu - blur_gpu).abs().mean() < 1e-3
    samples = SO.sample_second_order_batch(SO.SecondOrderConfig(), _gen(2), 2)
    z = SO.apply_second_order_batch(xc, samples)
    assert z.device.type == "cuda" and z.shape == x.shape
