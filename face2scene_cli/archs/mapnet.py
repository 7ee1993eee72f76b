"""MapNet: FaDeX's spatial map Z -> 21 degradation tokens for the scene restorer.

Overlap patch embedding (3x3 conv, stride 2, LayerNorm) -> ``depth`` DegAttn blocks
(differential attention, Ye et al. 2024 "Differential Transformer") -> the token map is
average-pooled to 4x4, 2x2 and 1x1 grids -> one projector (MLP + LayerNorm) per scale ->
16 + 4 + 1 = 21 tokens of width ``cross_attention_dim``, in that order (grids row-major),
ready to be concatenated with the prompt's text tokens in the UNet's cross-attention.

Blind mode: when no face gives a code, :meth:`MapNet.null_tokens` stands in. They are a
learned parameter initialised to zero, so an untrained MapNet's null tokens are exactly zero
and the scene restorer (trained with some null-token dropout) learns what "unknown
degradation" means.

Noise curve (optional, ``noise_levels``): a face code reads one noise sigma, but camera noise
grows with brightness. The photo's noise sigma at a few fixed brightness levels (read off the
whole photo, faces or not) goes through a small MLP whose output is added to every token,
coded or null (:meth:`MapNet.with_noise`); its last layer starts at zero, so a MapNet
warm-started without it begins where it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from face2scene_cli.errors import ConfigError

__all__ = ["GRIDS", "NOISE_UNIT", "DegAttn", "MapNet", "MapNetOutput", "mapnet_s", "mapnet_tiny"]

#: Pooled grid sides, in token order.
GRIDS: tuple[int, ...] = (4, 2, 1)
#: Noise sigmas (8-bit units) are divided by this before the noise MLP.
NOISE_UNIT = 50.0


@dataclass
class MapNetOutput:
    """What :meth:`MapNet.forward` returns.

    Attributes:
        tokens: :math:`(B, 21, D)` degradation tokens, D = ``cross_attention_dim``.
        lambdas: :math:`(depth,)` the effective differential-attention lambdas.
    """

    tokens: Tensor
    lambdas: Tensor


def lambda_init(depth_index: int) -> float:
    r""":math:`\lambda_{init} = 0.8 - 0.6 \exp(-0.3 (l - 1))` for the l-th block (1-based)."""
    return 0.8 - 0.6 * math.exp(-0.3 * (depth_index - 1))


class DegAttn(nn.Module):
    r"""Multi-head differential attention.

    Each head has two query/key sets; with :math:`A_i = \mathrm{softmax}(Q_i K_i^T/\sqrt{d})`,
    the head output is :math:`(A_1 - \lambda A_2) V`, RMS-normalised per head and scaled by
    :math:`1 - \lambda_{init}`. :math:`\lambda` is re-parameterised as in the Differential
    Transformer: :math:`\lambda = \exp(\lambda_{q1} \cdot \lambda_{k1}) -
    \exp(\lambda_{q2} \cdot \lambda_{k2}) + \lambda_{init}` with four learnable vectors.

    Args:
        dim: token width.
        heads: attention heads; ``dim`` must be divisible by ``2 * heads``.
        depth_index: 1-based block index (sets :math:`\lambda_{init}`).
    """

    def __init__(self, dim: int, heads: int, depth_index: int = 1) -> None:
        super().__init__()
        if dim % (2 * heads):
            raise ConfigError(f"dim ({dim}) must be divisible by 2 * heads ({2 * heads})")
        self.heads = heads
        self.head_dim = dim // heads // 2  # per query/key half
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.lambda_init = lambda_init(depth_index)
        hd = self.head_dim
        self.lambda_q1 = nn.Parameter(torch.randn(hd) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(hd) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(hd) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(hd) * 0.1)
        self.norm = nn.RMSNorm(2 * hd, eps=1e-5, elementwise_affine=True)

    def lam(self) -> Tensor:
        """The scalar :math:`\\lambda`."""
        l1 = torch.exp((self.lambda_q1 * self.lambda_k1).sum())
        l2 = torch.exp((self.lambda_q2 * self.lambda_k2).sum())
        return l1 - l2 + self.lambda_init

    def forward(self, x: Tensor) -> Tensor:
        r""":math:`(B, N, D) \to (B, N, D)`."""
        b, n, d = x.shape
        h, hd = self.heads, self.head_dim
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(b, n, 2 * h, hd).transpose(1, 2)  # (B, 2h, N, hd)
        k = k.view(b, n, 2 * h, hd).transpose(1, 2)
        v = v.view(b, n, h, 2 * hd).transpose(1, 2)  # (B, h, N, 2hd)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        attn = attn.view(b, h, 2, n, n)
        diff = attn[:, :, 0] - self.lam() * attn[:, :, 1]
        o = self.norm(diff @ v) * (1.0 - self.lambda_init)
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, depth_index: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = DegAttn(dim, heads, depth_index)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MapNet(ModelMixin, ConfigMixin):
    r"""FaDeX's Z -> 21 degradation tokens (see the module docstring).

    Args:
        in_channels: channels of Z (FaDeX-S: 96).
        dim: token width inside MapNet.
        heads: DegAttn heads (``dim`` divisible by ``2 * heads``).
        (Each scale's projector is Linear(dim, dim) -> GELU -> Linear(dim, D) -> LayerNorm.)
        depth: DegAttn blocks.
        mlp_ratio: hidden width of the blocks' MLP, relative to ``dim``.
        cross_attention_dim: width of the output tokens (the UNet's cross-attention width;
            SD-Turbo / SD2.1: 1024).
        noise_levels: brightness levels (8-bit, 0-255) at which the photo's noise sigma is
            given to :meth:`with_noise`; empty = no noise-curve input.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 96,
        dim: int = 128,
        heads: int = 4,
        depth: int = 1,
        mlp_ratio: float = 2.0,
        cross_attention_dim: int = 1024,
        noise_levels: tuple[float, ...] = (),
    ) -> None:
        super().__init__()
        if min(in_channels, dim, heads, depth, cross_attention_dim) < 1:
            raise ConfigError(
                f"MapNet sizes must be >= 1: in_channels={in_channels}, dim={dim}, "
                f"heads={heads}, depth={depth}, cross_attention_dim={cross_attention_dim}"
            )
        if dim % (2 * heads):
            raise ConfigError(f"dim ({dim}) must be divisible by 2 * heads ({2 * heads})")
        self._build_embed(in_channels, dim)
        self.blocks = nn.ModuleList([_Block(dim, heads, mlp_ratio, i + 1) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self._build_projectors(dim, cross_attention_dim)
        self.null = nn.Parameter(torch.zeros(self.num_tokens, cross_attention_dim))
        self.noise_embed = None
        if noise_levels:
            k = len(noise_levels)
            self.noise_embed = nn.Sequential(
                nn.Linear(k, dim), nn.GELU(), nn.Linear(dim, cross_attention_dim)
            )
            nn.init.zeros_(self.noise_embed[-1].weight)
            nn.init.zeros_(self.noise_embed[-1].bias)

    def _build_embed(self, in_channels: int, dim: int) -> None:
        self.patch_embed = nn.Conv2d(in_channels, dim, 3, stride=2, padding=1)
        self.embed_norm = nn.LayerNorm(dim)

    def _build_projectors(self, dim: int, out: int) -> None:
        self.projectors = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out), nn.LayerNorm(out)
                )
                for _ in GRIDS
            ]
        )

    @property
    def num_tokens(self) -> int:
        """16 + 4 + 1 = 21."""
        return sum(g * g for g in GRIDS)

    def null_tokens(self, batch: int) -> Tensor:
        """Blind-mode tokens :math:`(B, 21, D)`: the learned null parameter (zero at init)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        return self.null[None].expand(batch, -1, -1)

    def with_noise(self, tokens: Tensor, noise: Tensor) -> Tensor:
        r"""``tokens`` :math:`(B, N, D)` (coded or null) shifted by the noise-curve embedding.

        Args:
            tokens: :math:`(B, N, D)`.
            noise: :math:`(B, K)`, the photo's noise sigma in 8-bit units at each of the
                config's K ``noise_levels``.
        """
        if self.noise_embed is None:
            raise ConfigError("this MapNet takes no noise curve (noise_levels is empty)")
        k = len(self.config.noise_levels)
        if noise.ndim != 2 or noise.shape != (tokens.shape[0], k):
            raise ValueError(f"noise must be ({tokens.shape[0]}, {k}), got {tuple(noise.shape)}")
        shift = self.noise_embed(noise.to(tokens.device, tokens.dtype) / NOISE_UNIT)
        return tokens + shift[:, None].to(tokens.dtype)

    def forward(self, z: Tensor) -> MapNetOutput:
        r"""Tokens for a batch of FaDeX maps.

        Args:
            z: :math:`(B, C_{in}, h, w)`, any h, w >= 1 (FaDeX gives H/8 x W/8).

        Returns:
            :class:`MapNetOutput` with tokens :math:`(B, 21, D)`.
        """
        if z.ndim != 4 or z.shape[1] != self.config.in_channels:
            raise ValueError(
                f"z must be (B, {self.config.in_channels}, h, w), got {tuple(z.shape)}"
            )
        # 1. overlap patch embedding
        x = self.patch_embed(z)
        b, d, h, w = x.shape
        t = self.embed_norm(x.flatten(2).transpose(1, 2))  # (B, hw, D)
        # 2. DegAttn blocks
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        grid = t.transpose(1, 2).reshape(b, d, h, w)
        # 3. multi-scale pooling + one projector per scale
        tokens = []
        for side, proj in zip(GRIDS, self.projectors, strict=True):
            pooled = F.adaptive_avg_pool2d(grid, side).flatten(2).transpose(1, 2)
            tokens.append(proj(pooled))
        lambdas = torch.stack([blk.attn.lam().detach() for blk in self.blocks])
        return MapNetOutput(tokens=torch.cat(tokens, dim=1), lambdas=lambdas)


def mapnet_s(**overrides: object) -> MapNet:
    """MapNet-S for FaDeX-S (Z with 96 channels) and SD-Turbo (cross-attention 1024)."""
    cfg: dict[str, object] = {
        "in_channels": 96,
        "dim": 128,
        "heads": 4,
        "depth": 1,
        "cross_attention_dim": 1024,
    }
    cfg.update(overrides)
    return MapNet(**cfg)  # type: ignore[arg-type]


def mapnet_tiny(**overrides: object) -> MapNet:
    """A tiny MapNet for tests."""
    cfg: dict[str, object] = {
        "in_channels": 16,
        "dim": 16,
        "heads": 2,
        "depth": 1,
        "cross_attention_dim": 32,
    }
    cfg.update(overrides)
    return MapNet(**cfg)  # type: ignore[arg-type]
