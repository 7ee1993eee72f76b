"""Synthetic degradations: statistics of each step, libjpeg agreement, determinism, replay."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli import degrade as D
from face2scene_cli.errors import ConfigError


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


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
    y = D.degrade_parametric(x, D.PRESETS["noise15"], _gen(1))
    assert y.shape == x.shape
    std = (y - x).std().item()
    assert std == pytest.approx(15 / 255, rel=0.05)
    assert abs((y - x).mean().item()) < 0.002


def test_gray_noise_is_shared_across_channels() -> None:
    x = torch.full((2, 3, 64, 64), 0.5)
    y = D.add_gaussian_noise(x, 10.0, _gen(), gray=True)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    y = D.add_gaussian_noise(x, torch.tensor([0.0, 20.0]), _gen())  # per-image sigma
    assert torch.equal(y[0], x[0])
    assert (y[1] - x[1]).std().item() == pytest.approx(20 / 255, rel=0.1)


def test_poisson_noise(astro: torch.Tensor) -> None:
    x = astro[:, :, :128, :128]
    weak = D.add_poisson_noise(x, 0.5, _gen(), clip=False)
    strong = D.add_poisson_noise(x, 2.0, _gen(), clip=False)
    assert 0 < (weak - x).std().item() < (strong - x).std().item()
    gray = D.add_poisson_noise(x, 1.0, _gen(), gray=True, clip=False) - x
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
    y = D.gaussian_blur(x, sigma)
    assert y.sum().item() == pytest.approx(1.0, rel=1e-5)
    var_x, var_y = _second_moments(y[0, 0])
    assert math.sqrt(var_x) == pytest.approx(sigma, rel=0.03)
    assert math.sqrt(var_y) == pytest.approx(sigma, rel=0.03)
    # the separable fast path equals the 2-D convolution
    k = D.gaussian_kernel2d(2 * math.ceil(3 * sigma) + 1 if sigma > 1 else 7, sigma)
    assert torch.allclose(y, D.blur(x, k), atol=1e-6)


def test_anisotropic_kernel_moments_and_rotation() -> None:
    k = D.gaussian_kernel2d(21, 2.0, 1.0, 0.0)
    var_x, var_y = _second_moments(k)
    assert var_x == pytest.approx(4.0, rel=0.03) and var_y == pytest.approx(1.0, rel=0.03)
    kr = D.gaussian_kernel2d(21, 2.0, 1.0, math.pi / 2)
    assert torch.allclose(kr, k.T, atol=1e-7)
    x = torch.zeros(1, 3, 31, 31)
    x[..., 15, 15] = 1.0
    y = D.blur(x, k)
    assert torch.allclose(y[0, 0, 5:26, 5:26], k, atol=1e-7)


def test_other_kernels_are_normalised_and_shaped() -> None:
    g = D.gaussian_kernel2d(15, 1.5)
    gen_heavy = D.generalized_gaussian_kernel2d(15, 1.5, 1.5, 0.0, beta=0.5)
    gen_flat = D.generalized_gaussian_kernel2d(15, 1.5, 1.5, 0.0, beta=4.0)
    plateau = D.plateau_kernel2d(15, 1.5, 2.0, 0.3, beta=1.5)
    sinc = D.sinc_kernel2d(13, math.pi / 3, pad_to=21)
    for k in (g, gen_heavy, gen_flat, plateau, sinc):
        assert k.dtype == torch.float32
        assert k.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert sinc.shape == (21, 21) and sinc[0].abs().sum() == 0
    assert (sinc < 0).any()  # ringing lobes
    # beta = 1 is the Gaussian; beta < 1 has heavier tails than beta > 1
    assert torch.allclose(D.generalized_gaussian_kernel2d(15, 1.5, beta=1.0), g, atol=1e-7)
    assert gen_heavy[7, 0] > g[7, 0] > gen_flat[7, 0]


def test_blur_preset_reduces_high_frequencies(astro: torch.Tensor) -> None:
    def hf_energy(t: torch.Tensor) -> float:
        """Energy of the discrete Laplacian (a high-pass filter) away from the borders."""
        g = t.mean(1)[0].double()
        lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        return float((lap[8:-8, 8:-8] ** 2).mean())

    x = astro[:, :, :256, :256]
    y = D.degrade_parametric(x, D.PRESETS["blur-noise"], _gen())
    blurred = D.gaussian_blur(x, 1.5)
    assert hf_energy(blurred) < 0.1 * hf_energy(x)
    assert hf_energy(y) < 0.5 * hf_energy(x)


def test_blur_small_image_and_per_image_kernels() -> None:
    x = torch.rand(2, 1, 5, 6, generator=_gen())
    y = D.gaussian_blur(x, 2.0)  # radius 6 > size: replicate padding
    assert y.shape == x.shape
    k = torch.stack([D.gaussian_kernel2d(7, 1.0), torch.zeros(7, 7)])
    k[1, 3, 3] = 1.0
    z = D.blur(torch.rand(2, 3, 20, 20, generator=_gen()), k)
    assert z.shape == (2, 3, 20, 20)
    with pytest.raises(ValueError, match="per-image kernels"):
        D.blur(torch.rand(3, 3, 20, 20), k)


# ------------------------------------------------------------------------------ resize


def test_downscale_output_shape() -> None:
    x = torch.rand(2, 3, 101, 64, generator=_gen())
    y = D.degrade_parametric(x, D.DegradationParams(scale=2.0), _gen())
    assert y.shape == (2, 3, round(101 / 2), 32)
    y = D.degrade_parametric(x, D.DegradationParams(scale=3.0, blur_sigma=1.0), _gen())
    assert y.shape == (2, 3, 34, 21)
    assert D.DegradationParams(scale=3.0).output_size(101, 64) == (34, 21)
    for mode in D.RESIZE_MODES:
        assert D.resize(x, (40, 30), mode).shape == (2, 3, 40, 30)
        assert D.resize(x, (202, 128), mode).shape == (2, 3, 202, 128)


def test_downscale_is_antialiased() -> None:
    # a 1-px checkerboard has its energy at Nyquist; antialiased downscale makes it flat grey
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    x = ((xx + yy) % 2).float()[None, None]
    y = D.resize(x, (21, 21), "bicubic")
    assert (y - 0.5).abs().max().item() < 0.1


# -------------------------------------------------------------------------------- JPEG


def test_jpeg_quant_tables_libjpeg() -> None:
    luma, chroma = D.jpeg_quant_tables(50)
    assert luma[0, 0] == 16 and luma[7, 7] == 99 and chroma[0, 0] == 17
    luma, chroma = D.jpeg_quant_tables(75)  # scale 50: (16 * 50 + 50) // 100 = 8
    assert luma[0, 0] == 8 and chroma[7, 7] == 50
    luma, _ = D.jpeg_quant_tables(10)  # scale 500
    assert luma[0, 0] == 80 and luma.max() == 255
    luma, chroma = D.jpeg_quant_tables(100)
    assert luma.max() == 1 and chroma.max() == 1


def test_torch_jpeg_agrees_with_libjpeg(astro_u8: np.ndarray, astro: torch.Tensor) -> None:
    errors = []
    for q in (10, 30, 45, 70, 90):
        ours = _to_u8(D.jpeg_compress(astro, q))
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
    ours = _to_u8(D.jpeg_compress(x, 50))[..., 0]
    assert ours.shape == gray.shape
    assert _psnr(ours, _cv2_jpeg(gray, 50)) > 35.0
    rgb = np.ascontiguousarray(astro_u8[:203, :301])
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    assert _psnr(_to_u8(D.jpeg_compress(x, 50)), _cv2_jpeg(rgb, 50)) > 35.0


def test_jpeg_per_sample_quality(astro: torch.Tensor) -> None:
    x = astro[:, :, :64, :64].expand(3, 3, 64, 64)
    y = D.jpeg_compress(x, torch.tensor([20.0, 50.0, 90.0]))
    for i, q in enumerate((20, 50, 90)):
        assert torch.equal(y[i : i + 1], D.jpeg_compress(x[i : i + 1], q))
    err = [(y[i] - x[i]).abs().mean().item() for i in range(3)]
    assert err[0] > err[1] > err[2]


# ------------------------------------------------------------------- parametric pipeline


def test_parametric_determinism(astro: torch.Tensor) -> None:
    x = astro[:, :, :96, :96]
    for name, params in D.PRESETS.items():
        a = D.degrade_parametric(x, params, _gen(7))
        b = D.degrade_parametric(x, params, _gen(7))
        c = D.degrade_parametric(x, params, _gen(8))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name
        assert a.min() >= 0 and a.max() <= 1


def test_presets_and_params_roundtrip() -> None:
    assert D.PRESETS["noise15"] == D.DegradationParams(noise_sigma=15.0)
    assert D.PRESETS["blur-noise"] == D.DegradationParams(blur_sigma=1.5, noise_sigma=5.0)
    assert D.PRESETS["mixed"] == D.DegradationParams(
        blur_sigma=1.0, noise_sigma=10.0, jpeg_quality=45
    )
    assert all(p.scale == 1 for p in D.PRESETS.values())
    p = D.DegradationParams(blur_sigma=0.7, noise_sigma=3.5, jpeg_quality=60, scale=2.5)
    assert D.DegradationParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    desc = D.describe(D.PRESETS["mixed"], preset="mixed")
    assert desc == {"mode": "preset", "preset": "mixed", "params": D.PRESETS["mixed"].to_dict()}
    assert D.describe(p)["mode"] == "parametric"
    json.dumps(desc, allow_nan=False)
    with pytest.raises(ConfigError, match="nope"):
        D.get_preset("nope")


def test_gray_input_supported_everywhere(astro: torch.Tensor) -> None:
    x = astro[:, 1:2, :48, :40]
    g = _gen()
    for name, params in D.PRESETS.items():
        assert D.degrade_parametric(x, params, g).shape == x.shape, name
    assert D.degrade_parametric(x, D.DegradationParams(scale=2), g).shape == (1, 1, 24, 20)
    assert D.gaussian_blur(x, 1.0).shape == x.shape
    assert D.blur(x, D.plateau_kernel2d(9, 1.0, 2.0, 0.5, 1.5)).shape == x.shape
    assert D.resize(x, (20, 21), "area").shape == (1, 1, 20, 21)
    assert D.add_gaussian_noise(x, 5.0, g, gray=True).shape == x.shape
    assert D.add_poisson_noise(x, 1.0, g, gray=True).shape == x.shape
    assert D.jpeg_compress(x, 40).shape == x.shape
    cfg = D.SecondOrderConfig()
    for seed in range(4):
        s = D.sample_second_order(cfg, _gen(seed))
        assert D.apply_second_order(x, s).shape == x.shape


def test_bad_parameters_raise_config_error() -> None:
    cases = [
        (lambda: D.DegradationParams(noise_sigma=-3.0), "-3.0"),
        (lambda: D.DegradationParams(blur_sigma=55.0), "55.0"),
        (lambda: D.DegradationParams(jpeg_quality=101), "101"),
        (lambda: D.DegradationParams(jpeg_quality=0), "0"),
        (lambda: D.DegradationParams(scale=0.5), "0.5"),
        (lambda: D.DegradationParams(scale=float("nan")), "nan"),
        (lambda: D.DegradationParams.from_dict({"noise": 3}), "noise"),
        (lambda: D.jpeg_compress(torch.rand(1, 3, 8, 8), 150), "150"),
        (lambda: D.gaussian_kernel2d(8, 1.0), "8"),
        (lambda: D.gaussian_kernel2d(7, -1.0), "-1.0"),
        (lambda: D.sinc_kernel2d(7, 4.0), "4.0"),
        (lambda: D.resize(torch.rand(1, 3, 8, 8), (4, 4), "lanczos"), "lanczos"),
        (lambda: D.SecondOrderConfig(kernel_size_range=(7, 23)), "23"),
        (lambda: D.SecondOrderConfig(resize_prob=(0.5, 0.7, 0.1)), "0.7"),
        (lambda: D.SecondOrderConfig(jpeg_range=(95, 30)), "95"),
        (lambda: D.SecondOrderConfig(kernel_list=("iso", "box"), kernel_prob=(0.5, 0.5)), "box"),
        (lambda: D.SecondOrderConfig(final_scale=0), "0"),
        (lambda: D.add_gaussian_noise(torch.rand(1, 3, 8, 8), -2.0, _gen()), "-2.0"),
    ]
    for fn, needle in cases:
        with pytest.raises(ConfigError) as info:
            fn()
        assert needle in str(info.value), (needle, str(info.value))


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        D.degrade_parametric(torch.rand(3, 8, 8), D.PRESETS["noise15"], _gen())
    with pytest.raises(ValueError, match="1 or 3 channels"):
        D.jpeg_compress(torch.rand(1, 4, 8, 8), 50)
    with pytest.raises(TypeError, match="floating"):
        D.gaussian_blur(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match="generator"):
        D.degrade_parametric(torch.rand(1, 3, 8, 8), D.PRESETS["noise15"])


def test_image_generator() -> None:
    a = torch.rand(4, generator=D.image_generator(3, "dir/a.png"))
    b = torch.rand(4, generator=D.image_generator(3, "dir/a.png"))
    c = torch.rand(4, generator=D.image_generator(3, "dir/b.png"))
    d = torch.rand(4, generator=D.image_generator(4, "dir/a.png"))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"3:dir/a.png").digest()[:8], "big") & (2**63 - 1)
    assert D.image_seed(3, "dir/a.png") == expected
    assert D.image_generator(3, "dir/a.png").initial_seed() == expected


# ---------------------------------------------------------------- second-order pipeline


def test_second_order_sample_roundtrip_replays_bit_exact() -> None:
    cfg = D.SecondOrderConfig()
    x = torch.rand(1, 3, 64, 64, generator=_gen(99))
    seen: set[str] = set()
    for seed in range(8):
        s = D.sample_second_order(cfg, _gen(seed))
        text = json.dumps(s.to_dict(), allow_nan=False)
        s2 = D.SecondOrderSample.from_dict(json.loads(text))
        assert s2 == s
        y = D.apply_second_order(x, s)
        assert torch.equal(y, D.apply_second_order(x, s2))
        assert torch.equal(y, D.apply_second_order(x.clone(), s))  # pure
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, torch.round(y * 255) / 255)  # 8-bit levels
        seen.update({s.noise1.kind, s.noise2.kind, s.final_order, s.kernel1.kind})
    assert {"gaussian", "poisson", "resize_then_jpeg", "jpeg_then_resize"} <= seen
    # same generator seed -> same sample; different seed -> different sample
    assert D.sample_second_order(cfg, _gen(5)) == D.sample_second_order(cfg, _gen(5))
    assert D.sample_second_order(cfg, _gen(5)) != D.sample_second_order(cfg, _gen(6))
    desc = D.describe(cfg, sample=s)
    assert desc["mode"] == "second-order" and desc["params"]["sample"] == s.to_dict()
    back = D.SecondOrderConfig.from_dict(json.loads(json.dumps(desc))["params"]["config"])
    assert back == cfg


def test_second_order_sample_ranges() -> None:
    cfg = D.SecondOrderConfig()
    for seed in range(40):
        s = D.sample_second_order(cfg, _gen(seed))
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
    cfg = D.SecondOrderConfig(final_scale=4)
    s = D.sample_second_order(cfg, _gen(3))
    y = D.apply_second_order(torch.rand(1, 3, 64, 72, generator=_gen()), s)
    assert y.shape == (1, 3, 16, 18)


def test_second_order_batch_mixed_samples() -> None:
    cfg = D.SecondOrderConfig()
    x = torch.rand(4, 3, 64, 64, generator=_gen(1))
    for seed in range(3):
        samples = D.sample_second_order_batch(cfg, _gen(seed), 4)
        assert len(samples) == 4
        assert len({s.kernel1 for s in samples}) == 4  # per-image kernels
        assert len({s.noise1.seed for s in samples}) == 4
        assert len({(s.resize1, s.resize2, s.final_order) for s in samples}) == 1
        y = D.apply_second_order_batch(x, samples)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, D.apply_second_order_batch(x, samples))
        # each image is close to applying its own sample alone (same ops, other batching)
        for i in (0, 3):
            alone = D.apply_second_order(x[i : i + 1], samples[i])
            assert (alone - y[i : i + 1]).abs().mean().item() < 2e-3
    with pytest.raises(ValueError, match="share"):
        D.apply_second_order_batch(x[:2], [D.sample_second_order(cfg, _gen(i)) for i in (0, 2)])
    with pytest.raises(ValueError, match="one sample per image"):
        D.apply_second_order_batch(x, samples[:2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_shapes_and_runs() -> None:
    x = torch.rand(2, 3, 64, 64, generator=_gen())
    xc = x.cuda()
    y = D.degrade_parametric(xc, D.PRESETS["mixed"], _gen(1))  # CPU generator seeds a CUDA one
    assert y.device.type == "cuda" and y.shape == x.shape
    blur_cpu = D.jpeg_compress(D.gaussian_blur(x, 1.0), 45)
    blur_gpu = D.jpeg_compress(D.gaussian_blur(xc, 1.0), 45).cpu()
    assert (blur_cpu - blur_gpu).abs().mean() < 1e-3
    samples = D.sample_second_order_batch(D.SecondOrderConfig(), _gen(2), 2)
    z = D.apply_second_order_batch(xc, samples)
    assert z.device.type == "cuda" and z.shape == x.shape
