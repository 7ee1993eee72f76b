"""Stage II scene restorer: both configurations at tiny size, tiling, precision, colour fix."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from helpers import missing_data

from face2scene_cli.archs.layers import ChannelAffine, LocalGroupNorm
from face2scene_cli.archs.mapnet import mapnet_tiny
from face2scene_cli.archs.scene_net import EmbeddedSceneNet, scene_tiny
from face2scene_cli.archs.turbo import TurboSceneNet
from face2scene_cli.degradations.noise_level import estimate_noise_curve
from face2scene_cli.errors import ConfigError
from face2scene_cli.io.images import read_image
from face2scene_cli.io.tensors import to_tensor
from face2scene_cli.registry import create
from face2scene_cli.research.metrics import psnr_torch
from face2scene_cli.restorers.color import adain_color_fix, wavelet_color_fix
from face2scene_cli.restorers.scene import RestoreSettings, SceneRestorer, noise_features
from face2scene_cli.restorers.tiling import blend_window, fitted_tile, tile_starts


def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Perturb every parameter (an untrained residual net is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def tiny_restorer() -> SceneRestorer:
    torch.manual_seed(0)
    net = scene_tiny(token_dim=32)
    mapnet = mapnet_tiny(cross_attention_dim=32)
    _randomise(net)
    _randomise(mapnet, 1)
    return SceneRestorer(net, RestoreSettings(), mapnet)


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    from face2scene_cli.research.sample_data import package_photos

    for p in package_photos():
        if p.name == "skimage/astronaut":
            return to_tensor(read_image(p.path).pixels)[:, :3]
    missing_data("scikit-image astronaut not available")


def test_untrained_embedded_net_stays_close_to_its_input() -> None:
    net = scene_tiny()
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        out = net(x, None)
    assert out.shape == x.shape and 0 < float((out - x).abs().max()) < 0.05
    assert all(
        isinstance(m, ChannelAffine) for m in net.modules() if isinstance(m, torch.nn.GroupNorm)
    )


def test_local_group_norm_is_position_local() -> None:
    norm = LocalGroupNorm(4, 16)
    x = torch.randn(1, 16, 20, 20)
    # the output at a pixel ignores the rest of the image (plain GroupNorm does not)
    assert torch.allclose(norm(x)[..., 5:10, 5:10], norm(x[..., 5:10, 5:10]), atol=1e-6)
    ref = torch.nn.functional.group_norm(x[..., :1, :1], 4, eps=norm.eps)
    assert torch.allclose(norm(x)[..., :1, :1], ref, atol=1e-5)


def test_config_errors_name_the_values() -> None:
    with pytest.raises(ConfigError, match="divisible by norm_num_groups"):
        EmbeddedSceneNet(block_out_channels=(10, 20), norm_num_groups=8)
    with pytest.raises(ConfigError, match="unknown scene network 'nope'"):
        create("scene_net", "nope")
    with pytest.raises(ConfigError, match="color_fix"):
        RestoreSettings(color_fix="lab")


def test_tiles_cover_and_blend_to_one() -> None:
    for length, tile, ov in ((500, 192, 48), (192, 192, 48), (1000, 256, 64)):
        starts = tile_starts(length, tile, ov)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(b - a <= tile - ov for a, b in itertools.pairwise(starts))
    w = blend_window(64, 16, first=False, last=False)
    assert w[0] < 0.01 and w[32] == 1 and torch.allclose(w[:16] + w[-16:], torch.ones(16))


def test_fitted_tiles_cover_with_the_same_count_and_less_area() -> None:
    for length in (300, 513, 832, 1202, 1920, 4000):
        padded = -(-length // 16) * 16
        side = fitted_tile(length, 512, 64, 16)
        assert side % 16 == 0 and side <= 512
        starts = tile_starts(padded, side, 64)
        assert starts[-1] + side == max(padded, side)  # covers the padded side
        assert all(b - a <= side - 64 for a, b in itertools.pairwise(starts))
        assert len(starts) <= len(tile_starts(padded, 512, 64))
    # 1202 x 832 (1 MP): 3 x 2 tiles of 448 px, 1.20 MP run instead of 1.57 MP
    assert fitted_tile(1202, 512, 64, 16) == fitted_tile(832, 512, 64, 16) == 448


def test_tiled_equals_whole_image_on_a_real_photo(tiny_restorer, astronaut) -> None:
    x = astronaut[..., :400, :448]
    tokens = tiny_restorer.mapnet(torch.randn(1, 16, 12, 12)).tokens
    whole = tiny_restorer.restore(x, tokens, tile=512)
    tiled = tiny_restorer.restore(x, tokens, tile=192)
    assert not torch.equal(whole, x.clamp(0, 1))  # the randomised net changes the image
    assert float(psnr_torch(tiled, whole)[0]) >= 40.0
    # no seam: the error at the tile borders is no larger than elsewhere
    err = (tiled - whole).abs().mean(dim=(0, 1))
    assert float(err.max()) < 0.02


@pytest.mark.parametrize("film", [False, True])
def test_refinement_is_position_local_so_tiles_still_match(astronaut, film: bool) -> None:
    torch.manual_seed(0)
    net = scene_tiny(token_dim=32, refine_channels=8, refine_film=film)
    _randomise(net, 2)
    restorer = SceneRestorer(net, RestoreSettings(), mapnet_tiny(cross_attention_dim=32))
    x = astronaut[..., :320, :384]
    tokens = restorer.mapnet(torch.randn(1, 16, 12, 12)).tokens
    whole = restorer.restore(x, tokens, tile=512)
    assert float(psnr_torch(restorer.restore(x, tokens, tile=192), whole)[0]) >= 40.0
    if film:  # the modulation reads the tokens: the blind result differs by more than before
        blind = restorer.restore(x, None, tile=512)
        with torch.no_grad():
            net.refine_mod.weight.zero_()
            net.refine_mod.bias.zero_()
        unmodulated = restorer.restore(x, tokens, tile=512) - restorer.restore(x, None, tile=512)
        assert float(((whole - blind) - unmodulated).abs().max()) > 1e-4
    with torch.no_grad():  # the refinement changes the result
        net.refine[-1].weight.zero_()
        assert float((restorer.restore(x, tokens, tile=512) - whole).abs().max()) > 1e-3


def test_blind_mode_uses_mapnet_null_tokens_and_codes_matter(tiny_restorer, astronaut) -> None:
    x = astronaut[..., 100:228, 150:278]
    blind = tiny_restorer.restore(x, None)
    null = tiny_restorer.restore(x, tiny_restorer.mapnet.null_tokens(1))
    coded = tiny_restorer.restore(x, tiny_restorer.mapnet(torch.randn(1, 16, 12, 12)).tokens)
    assert torch.equal(blind, null)
    assert float((coded - blind).abs().mean()) > 1e-4


def test_restore_is_deterministic(tiny_restorer, astronaut) -> None:
    x = astronaut[..., :200, :300]
    a = tiny_restorer.restore(x, None, tile=128)
    b = tiny_restorer.restore(x, None, tile=128)
    assert torch.equal(a, b)


def test_low_precision_nan_falls_back_to_fp32(tiny_restorer, astronaut) -> None:
    x = astronaut[..., :128, :128]
    ref = tiny_restorer.restore(x, None, precision="fp32")

    def poison(_mod, _inp, out):  # what an fp16 overflow looks like
        return out * float("nan") if out.dtype == torch.bfloat16 else out

    handle = tiny_restorer.net.unet.conv_in.register_forward_hook(poison)
    try:
        before = tiny_restorer.fp32_retries
        out = tiny_restorer.restore(x, None, precision="bf16")
    finally:
        handle.remove()
    assert tiny_restorer.fp32_retries == before + 1
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=1e-5)


def test_gray_in_gray_out(tiny_restorer, astronaut) -> None:
    gray = astronaut[..., :96, :160].mean(1, keepdim=True)
    out = tiny_restorer.restore(gray, None)
    assert out.shape == gray.shape
    rgb = tiny_restorer.restore(gray.expand(1, 3, 96, 160), None)
    assert torch.allclose(out, rgb.mean(1, keepdim=True), atol=1e-6)


def test_a_model_with_noise_levels_reads_the_curve_of_the_input_it_restores(
    tiny_restorer, astronaut
) -> None:
    x = astronaut[..., 100:228, 150:278]
    noisy = (x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 0.08).clamp(
        0, 1
    )
    curve = estimate_noise_curve(noisy[0])
    torch.manual_seed(0)
    levels = (0.0, 128.0, 255.0)
    net, mapnet = scene_tiny(token_dim=32), mapnet_tiny(cross_attention_dim=32, noise_levels=levels)
    _randomise(net)
    _randomise(mapnet, 1)  # the noise MLP's last layer starts at zero
    r = SceneRestorer(net, RestoreSettings(), mapnet)
    assert r.takes_noise and not tiny_restorer.takes_noise
    read = r.restore(noisy, None, noise=curve)
    assert float((read - r.restore(noisy, None)).abs().mean()) > 1e-4
    shifted = mapnet.with_noise(mapnet.null_tokens(1), noise_features([curve], levels))
    assert torch.equal(read, r.restore(noisy, shifted))  # the curve moves the (null) tokens
    # x1 net at scale 2: the curve does not describe the bicubic-upscaled input it restores
    assert torch.equal(
        r.restore(noisy, None, scale=2, noise=curve), r.restore(noisy, None, scale=2)
    )
    # a model without noise levels ignores it
    assert torch.equal(
        tiny_restorer.restore(noisy, None, noise=curve), tiny_restorer.restore(noisy)
    )


def test_scale_upsamples_then_restores(tiny_restorer) -> None:
    x = torch.rand(1, 3, 40, 56)
    assert tiny_restorer.restore(x, None, scale=2).shape == (1, 3, 80, 112)
    with pytest.raises(ConfigError, match="scale must be 1, 2 or 4"):
        tiny_restorer.restore(x, None, scale=3)


@pytest.mark.parametrize("up", [2, 4])
def test_a_learned_upscaler_runs_at_the_input_resolution_and_tiles_match(
    astronaut, up: int, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    net = scene_tiny(token_dim=32, refine_channels=8, refine_film=True, upscale=up)
    restorer = SceneRestorer(net, RestoreSettings(), mapnet_tiny(cross_attention_dim=32))
    x = astronaut[..., :96, :128]
    bicubic = torch.nn.functional.interpolate(x, scale_factor=up, mode="bicubic").clamp(0, 1)
    # untrained: close to bicubic (the residual starts small and the refinement at zero)
    assert float(psnr_torch(restorer.restore(x, None, scale=up), bicubic)[0]) > 35
    _randomise(net, 3)
    tokens = restorer.mapnet(torch.randn(1, 16, 12, 12)).tokens
    whole = restorer.restore(x, tokens, tile=512, scale=up)
    assert whole.shape == (1, 3, 96 * up, 128 * up)
    assert float(psnr_torch(whole, bicubic)[0]) < 40  # the network's own pixels, not bicubic
    assert float(psnr_torch(restorer.restore(x, tokens, tile=64, scale=up), whole)[0]) >= 40
    # another --scale: the network's output resized (x1: area; the other factor: bicubic)
    assert restorer.restore(x, tokens, scale=1).shape == (1, 3, 96, 128)
    other = 2 if up == 4 else 4
    assert restorer.restore(x, tokens, scale=other).shape == (1, 3, 96 * other, 128 * other)
    restorer.save_pretrained(tmp_path / "m")
    loaded = SceneRestorer.from_pretrained(tmp_path / "m")
    assert loaded.upscale == up
    assert torch.allclose(loaded.restore(x, tokens, scale=up), whole, atol=1e-6)
    with pytest.raises(ConfigError, match="upscale must be 1, 2 or 4"):
        scene_tiny(upscale=3)


def test_color_fixes_remove_a_colour_cast(astronaut) -> None:
    x = astronaut[..., :128, :128]
    cast = (x + torch.tensor([0.08, -0.05, 0.03]).view(1, 3, 1, 1)).clamp(0, 1)
    for fix in (wavelet_color_fix, adain_color_fix):
        fixed = fix(cast, x)
        assert float(psnr_torch(fixed.clamp(0, 1), x)[0]) > float(psnr_torch(cast, x)[0]) + 5


def test_save_load_round_trip(tiny_restorer, tmp_path: Path, astronaut) -> None:
    files = tiny_restorer.save_pretrained(tmp_path / "m")
    assert "net/diffusion_pytorch_model.safetensors" in files
    assert not list((tmp_path / "m").rglob("*.bin"))
    loaded = SceneRestorer.from_pretrained(tmp_path / "m")
    x = astronaut[..., :64, :96]
    tok = tiny_restorer.mapnet(torch.randn(1, 16, 12, 12)).tokens
    assert torch.allclose(loaded.restore(x, tok), tiny_restorer.restore(x, tok), atol=1e-6)
    assert torch.allclose(loaded.restore(x, None), tiny_restorer.restore(x, None), atol=1e-6)


def test_auto_tile_is_a_valid_multiple(tiny_restorer) -> None:
    t = tiny_restorer.auto_tile(2)
    m = tiny_restorer.net.multiple
    assert t % m == 0 and 2 * m <= t <= tiny_restorer.settings.max_tile


# ------------------------------------------------------------------------------------------
# sd-turbo configuration with tiny random diffusers models


@pytest.fixture(scope="module")
def tiny_turbo_base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_turbo")
    AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).save_pretrained(d / "vae")
    UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=24,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
        sample_size=8,
    ).save_pretrained(d / "unet")
    return d


def test_turbo_trains_only_lora_and_conditioner(tiny_turbo_base: Path) -> None:
    net = TurboSceneNet(base=str(tiny_turbo_base), token_dim=16, lora_rank_vae=2, lora_rank_unet=4)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("cond.") for n in trainable)
    assert not any(n.startswith("vae.decoder") for n in trainable)  # frozen decoder
    assert any(n.startswith("vae.encoder") for n in trainable)
    assert any(n.startswith("unet.") for n in trainable)
    assert net.cond.proj[1].out_features == 24  # tokens projected to the UNet's width

    x, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    tokens = torch.randn(2, 21, 16)
    frozen = net.vae.decoder.conv_out.weight.clone()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    before = net(x, tokens).detach()
    loss = torch.nn.functional.mse_loss(net(x, tokens), target)
    loss.backward()
    opt.step()
    after = net(x, tokens).detach()
    assert torch.isfinite(loss) and float((after - before).abs().mean()) > 0
    assert torch.equal(net.vae.decoder.conv_out.weight, frozen)


def test_turbo_adapter_round_trip_and_tiled_restore(tiny_turbo_base: Path, tmp_path: Path) -> None:
    net = TurboSceneNet(base=str(tiny_turbo_base), token_dim=16, lora_rank_vae=2, lora_rank_unet=4)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    r = SceneRestorer(net, RestoreSettings(kind="sd-turbo", color_fix="wavelet"))
    r.save_pretrained(tmp_path / "turbo")
    saved = {p.name for p in (tmp_path / "turbo" / "net").iterdir()}
    assert saved == {"config.json", "scene_adapter.safetensors"}  # no base weights copied
    loaded = SceneRestorer.from_pretrained(tmp_path / "turbo")
    x = torch.rand(1, 3, 50, 70)
    a, b = r.restore(x, None, tile=48), loaded.restore(x, None, tile=48)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not math.isnan(float(a.sum()))
    assert np.isfinite(a.numpy()).all()


def test_tokens_for_crops_is_the_confidence_weighted_mean(tiny_restorer) -> None:
    za, zb = torch.randn(1, 16, 12, 12), torch.randn(1, 16, 8, 10)  # crops of different sizes
    ta = tiny_restorer.mapnet(za).tokens
    tb = tiny_restorer.mapnet(zb).tokens
    assert torch.allclose(tiny_restorer.tokens_for_crops([za]), ta, atol=1e-6)
    mixed = tiny_restorer.tokens_for_crops([za, zb], [0.75, 0.25])
    assert torch.allclose(mixed, 0.75 * ta + 0.25 * tb, atol=1e-5)
    with pytest.raises(ValueError, match="nothing read"):
        tiny_restorer.tokens_for_crops([])
