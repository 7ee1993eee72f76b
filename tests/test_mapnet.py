"""MapNet: token shapes, differential attention, null tokens, save/load, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from face2scene_cli.archs.mapnet import DegAttn, MapNet, lambda_init, mapnet_s, mapnet_tiny
from face2scene_cli.errors import ConfigError


def _tiny(seed: int = 0) -> MapNet:
    torch.manual_seed(seed)
    return mapnet_tiny().eval()


@pytest.mark.parametrize("hw", [(16, 16), (8, 12), (1, 1), (3, 5)])
def test_tokens_shape(hw: tuple[int, int]) -> None:
    m = _tiny()
    z = torch.randn(3, 16, *hw)
    out = m(z)
    assert out.tokens.shape == (3, 21, 32)
    assert torch.isfinite(out.tokens).all()
    assert out.lambdas.shape == (1,)


def test_default_widths_match_fadex_s_and_sd_turbo() -> None:
    m = mapnet_s()
    assert m.config.in_channels == 96 and m.config.cross_attention_dim == 1024
    assert m.num_tokens == 21


def test_tokens_depend_on_scale_layout() -> None:
    """The 16 fine tokens see different regions: a map that differs only in one corner
    changes the corner's 4x4 token more than the opposite corner's."""
    m = _tiny()
    z = torch.randn(1, 16, 16, 16)
    z2 = z.clone()
    z2[..., :4, :4] += 3.0
    a, b = m(z).tokens[0], m(z2).tokens[0]
    d = (a - b).norm(dim=-1)
    assert d[0] > d[15]


def test_null_tokens() -> None:
    m = _tiny()
    n = m.null_tokens(4)
    assert n.shape == (4, 21, 32)
    assert torch.count_nonzero(n) == 0  # zero at init (learned later)
    assert n.requires_grad
    with pytest.raises(ValueError, match="batch"):
        m.null_tokens(0)


def test_lambda_reparameterisation() -> None:
    assert lambda_init(1) == pytest.approx(0.2)
    assert lambda_init(3) == pytest.approx(0.8 - 0.6 * math.exp(-0.6))
    attn = DegAttn(16, 2, depth_index=1)
    with torch.no_grad():
        for p in (attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2):
            p.zero_()
    assert float(attn.lam()) == pytest.approx(0.2)


def test_differential_attention_matches_reference() -> None:
    """(softmax(Q1K1^T) - lambda softmax(Q2K2^T)) V, per head, before the head norm."""
    torch.manual_seed(1)
    attn = DegAttn(8, 1, depth_index=2)
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    hd = attn.head_dim
    a1 = torch.softmax(q[..., :hd] @ k[..., :hd].transpose(1, 2) / math.sqrt(hd), -1)
    a2 = torch.softmax(q[..., hd:] @ k[..., hd:].transpose(1, 2) / math.sqrt(hd), -1)
    ref = attn.norm((a1 - attn.lam() * a2) @ v) * (1 - attn.lambda_init)
    assert torch.allclose(attn(x), attn.out(ref), atol=1e-5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    m = _tiny(3)
    z = torch.randn(2, 16, 8, 8)
    m.save_pretrained(str(tmp_path / "mapnet"), safe_serialization=True)
    assert (tmp_path / "mapnet" / "diffusion_pytorch_model.safetensors").is_file()
    m2 = MapNet.from_pretrained(str(tmp_path / "mapnet"), use_safetensors=True).eval()
    with torch.inference_mode():
        assert torch.equal(m(z).tokens, m2(z).tokens)


def test_deterministic() -> None:
    z = torch.randn(2, 16, 8, 8)
    with torch.inference_mode():
        assert torch.equal(_tiny(5)(z).tokens, _tiny(5)(z).tokens)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        MapNet(in_channels=8, dim=10, heads=4)
    with pytest.raises(ValueError, match="z must be"):
        _tiny()(torch.randn(1, 8, 4, 4))


def test_the_noise_curve_input_starts_at_zero_then_shifts_every_token_of_a_photo(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    m = mapnet_tiny(noise_levels=(0.0, 128.0, 255.0)).eval()
    z = torch.randn(2, 16, 6, 6)
    noise = torch.tensor([[2.0, 5.0, 8.0], [20.0, 20.0, 20.0]])
    with torch.inference_mode():
        tokens = m(z).tokens
        assert torch.equal(m.with_noise(tokens, noise), tokens)  # a warm start begins unchanged
        torch.nn.init.normal_(m.noise_embed[-1].weight, std=0.1)
        shift = m.with_noise(tokens, noise) - tokens
        assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)  # every token alike
        assert float((shift[0] - shift[1]).abs().max()) > 1e-3  # and it depends on the curve
        m.save_pretrained(str(tmp_path / "mapnet"), safe_serialization=True)
        again = MapNet.from_pretrained(str(tmp_path / "mapnet"), use_safetensors=True).eval()
        assert torch.equal(again.with_noise(tokens, noise), m.with_noise(tokens, noise))
    with pytest.raises(ValueError, match="noise must be"):
        m.with_noise(tokens, noise[:, :2])
    with pytest.raises(ConfigError, match="takes no noise curve"):
        _tiny().with_noise(tokens, noise)
