"""The ``embedded`` scene network: a one-step conditional UNet trained from scratch.

Built on diffusers' :class:`~diffusers.UNet2DConditionModel`, whose cross-attention attends
to ``[MapNet's 21 degradation tokens (projected) ‖ a learned prompt embedding]``, on a 4x
pixel-unshuffled grid, cross-attention only (the cost is linear in pixels), every GroupNorm
made position-local (so a tile sees exactly what the whole image would, up to the receptive
field), predicting a residual added to the input. It is NOT a pretrained diffusion prior;
the pretrained alternative is :class:`~face2scene_cli.archs.turbo.TurboSceneNet`.
Blind mode: ``tokens=None`` uses the learned null tokens (trained with condition dropout).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from face2scene_cli.archs.layers import N_TOKENS, NORMS, TokenConditioner, check_lq, localize_norms
from face2scene_cli.errors import ConfigError

__all__ = [
    "EmbeddedSceneNet",
    "scene_embedded",
    "scene_tiny",
]


class EmbeddedSceneNet(ModelMixin, ConfigMixin):
    r"""One-step conditional UNet, trained from scratch (the ``embedded`` configuration).

    ``out = lq + pixel_shuffle(UNet(pixel_unshuffle(lq - 0.5), t=0, context))`` (with the
    optional full-resolution head/tail: ``f = silu(head(lq - 0.5))``,
    ``out = lq + tail(silu(f + pixel_shuffle(UNet(pixel_unshuffle(f), ...))))``; and with the
    optional full-resolution refinement: ``out + refine([lq - 0.5, out - 0.5])``), every
    GroupNorm replaced by a position-local one, cross-attention only, and the UNet's last
    convolution initialised small (an untrained net is close to the identity).

    A learned upscaler (``upscale`` s = 2 or 4) keeps its trunk at the input resolution and
    shuffles out s times more pixels: ``base = bicubic(lq, s)``,
    ``out = base + pixel_shuffle(UNet(pixel_unshuffle(lq - 0.5)), r s)``, and the refinement
    runs on ``[base, out]`` at the output resolution.

    Args:
        token_dim: width of MapNet's tokens.
        n_tokens: degradation tokens per image (21).
        prompt_tokens: learned prompt-embedding tokens.
        unshuffle: pixel-unshuffle factor of the input grid (4: 48 channels at 1/4 size).
        block_out_channels: UNet widths per level (the first level is crossed by plain conv
            blocks, the others by cross-attention blocks).
        layers_per_block: ResNet layers per level.
        cross_attention_dim: width of the cross-attention context.
        attention_head_dim: per-head width of the attention layers.
        attention_levels: how many of the lowest-resolution levels (and the mid block) have
            cross-attention; the others are plain ResNet levels.
        ff_mult: width multiplier of the transformer feed-forward (diffusers builds 4x).
        head_channels: width of an optional full-resolution 3x3 conv head (before the
            unshuffle) and tail (after the shuffle); 0 = none.
        refine_channels: width of an optional full-resolution refinement: ``refine_layers``
            3x3 convs on ``[lq, coarse]`` (the UNet's output) adding a residual to ``coarse``
            (per-pixel detail a 4x-reduced grid cannot carry, e.g. noise); its last conv
            starts at zero, so a net warm-started without it begins where it was; 0 = none.
        refine_layers: convolutions of the refinement (>= 2).
        refine_film: modulate the refinement's first layer by the degradation tokens
            (``h * (1 + gamma) + beta`` from the mean projected token; zero-initialised), so
            the full-resolution part depends on the code too.
        out_init_std: standard deviation of the last layer's initial weights (small: an
            untrained net is close to the identity).
        norm_num_groups: groups of the group norms.
        upscale: output size over input size (1, 2 or 4); > 1 needs ``head_channels = 0``.
        norm: what replaces diffusers' GroupNorms: ``affine`` (:class:`ChannelAffine`, no
            normalisation, the default: cheapest, and it trained fastest here, EDSR-style) or
            ``local`` (:class:`LocalGroupNorm`, per-pixel statistics); both are position-local,
            so tiles match the whole image.
    """

    @register_to_config
    def __init__(
        self,
        token_dim: int = 128,
        n_tokens: int = N_TOKENS,
        prompt_tokens: int = 4,
        unshuffle: int = 4,
        block_out_channels: tuple[int, ...] | list[int] = (64, 128, 192),
        layers_per_block: int = 1,
        cross_attention_dim: int = 128,
        attention_head_dim: int = 32,
        norm_num_groups: int = 16,
        norm: str = "affine",
        attention_levels: int = 1,
        ff_mult: int = 2,
        head_channels: int = 0,
        out_init_std: float = 1e-3,
        refine_channels: int = 0,
        refine_layers: int = 4,
        refine_film: bool = False,
        upscale: int = 1,
    ) -> None:
        super().__init__()
        if upscale not in (1, 2, 4) or (upscale > 1 and head_channels):
            raise ConfigError(
                f"upscale must be 1, 2 or 4 (and > 1 only without head_channels), got {upscale}"
            )
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        chans = tuple(int(c) for c in block_out_channels)
        if len(chans) < 2 or any(c % norm_num_groups for c in chans):
            raise ConfigError(
                f"block_out_channels must have >= 2 widths divisible by norm_num_groups "
                f"({norm_num_groups}), got {chans}"
            )
        if not 1 <= attention_levels <= len(chans) - 1 or ff_mult < 1:
            raise ConfigError(
                f"attention_levels must be in [1, {len(chans) - 1}] and ff_mult >= 1, got "
                f"{attention_levels}, {ff_mult}"
            )
        if unshuffle not in (1, 2, 4, 8):
            raise ConfigError(f"unshuffle must be 1, 2, 4 or 8, got {unshuffle}")
        if refine_channels < 0 or refine_layers < 2:
            raise ConfigError(
                f"need refine_channels >= 0 and refine_layers >= 2, got {refine_channels}, "
                f"{refine_layers}"
            )
        self.cond = TokenConditioner(token_dim, n_tokens, prompt_tokens, cross_attention_dim)
        io = 3 * unshuffle**2
        io_out = 3 * (unshuffle * upscale) ** 2
        if head_channels:
            self.head = nn.Conv2d(3, head_channels, 3, padding=1)
            self.tail = nn.Conv2d(head_channels, 3, 3, padding=1)
            nn.init.normal_(self.tail.weight, 0.0, out_init_std)
            nn.init.zeros_(self.tail.bias)
            io = io_out = head_channels * unshuffle**2
        self._build_unet(
            chans,
            layers_per_block,
            cross_attention_dim,
            attention_head_dim,
            norm_num_groups,
            (io, io_out),
            norm,
            attention_levels,
        )
        self._slim_transformers(ff_mult)
        if refine_channels:
            self.refine = self._build_refine(refine_channels, refine_layers)
            if refine_film:
                self.refine_mod = nn.Linear(cross_attention_dim, 2 * refine_channels)
                nn.init.zeros_(self.refine_mod.weight)
                nn.init.zeros_(self.refine_mod.bias)

    @staticmethod
    def _build_refine(ch: int, layers: int) -> nn.Sequential:
        mods: list[nn.Module] = [nn.Conv2d(6, ch, 3, padding=1)]
        for _ in range(layers - 2):
            mods += [nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)]
        mods += [nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        nn.init.zeros_(mods[-1].weight)
        nn.init.zeros_(mods[-1].bias)
        return nn.Sequential(*mods)

    def _build_unet(
        self,
        chans: tuple[int, ...],
        layers: int,
        ctx: int,
        head: int,
        groups: int,
        io: tuple[int, int],
        norm: str,
        attn_levels: int,
    ) -> None:
        n = len(chans)
        plain = n - attn_levels
        self.unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=io[0],
            out_channels=io[1],
            down_block_types=("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * attn_levels,
            up_block_types=("CrossAttnUpBlock2D",) * attn_levels + ("UpBlock2D",) * plain,
            block_out_channels=chans,
            layers_per_block=layers,
            cross_attention_dim=ctx,
            attention_head_dim=head,
            norm_num_groups=groups,
            only_cross_attention=True,
            mid_block_only_cross_attention=True,
            use_linear_projection=True,
        )
        localize_norms(self.unet, norm)
        # small, not zero: a zero last layer left every other gradient at ~0 and Adam
        # (eps 1e-8) then never moved them (the net stayed the identity for 2000 steps)
        nn.init.normal_(self.unet.conv_out.weight, 0.0, self.config.out_init_std)
        nn.init.zeros_(self.unet.conv_out.bias)

    def _slim_transformers(self, ff_mult: int) -> None:
        # With only_cross_attention, attn1 already attends to the context; diffusers still
        # builds a second cross-attention (attn2) per block: drop it, and narrow the GEGLU
        # feed-forward (4x by default, most of the CPU time) to ff_mult x.
        for mod in self.unet.modules():
            if isinstance(mod, BasicTransformerBlock):
                mod.attn2, mod.norm2 = None, None
                if ff_mult != 4:
                    mod.ff = FeedForward(mod.dim, mult=ff_mult, activation_fn="geglu")

    @property
    def upscale(self) -> int:
        """Output size over input size."""
        return int(self.config.upscale)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return int(self.config.unshuffle) * 2 ** (len(self.config.block_out_channels) - 1)

    def forward(
        self, lq: Tensor, tokens: Tensor | None = None, keep: Tensor | None = None
    ) -> Tensor:
        r"""Restore a batch.

        Args:
            lq: :math:`(B, 3, H, W)` in [0, 1], H and W multiples of :attr:`multiple`.
            tokens: :math:`(B | 1, 21, D)` MapNet tokens, or None (blind: null tokens).
            keep: :math:`(B,)` bool, False = use the null tokens for that sample.

        Returns:
            :math:`(B, 3, sH, sW)`, not clamped (s = :attr:`upscale`).
        """
        check_lq(lq, self.multiple)
        # 1. context [tokens ‖ prompt]
        ctx = self.cond(tokens, lq.shape[0], keep)
        # 2. full-resolution head (weights shared across sub-pixel positions)
        r, s = int(self.config.unshuffle), self.upscale
        f = F.silu(self.head(lq - 0.5)) if self.config.head_channels else lq - 0.5
        # 3. reduced grid, one UNet pass at t = 0
        x = F.pixel_unshuffle(f, r)
        t = torch.zeros(lq.shape[0], device=lq.device)
        res = self.unet(x, t, encoder_hidden_states=ctx.to(x.dtype)).sample
        res = F.pixel_shuffle(res, r * s)
        # 4. residual on the output grid (through the full-resolution tail)
        base = lq if s == 1 else F.interpolate(lq, scale_factor=s, mode="bicubic")
        out = lq + self.tail(F.silu(f + res)) if self.config.head_channels else base + res
        # 5. output-resolution refinement of the coarse result (FiLM by the mean token)
        if self.config.refine_channels:
            h = self.refine[0](torch.cat([base - 0.5, out - 0.5], dim=1))
            if self.config.refine_film:
                gamma, beta = self.refine_mod(ctx[:, : self.cond.n_tokens].mean(1)).chunk(2, 1)
                h = h * (1 + gamma[..., None, None].to(h)) + beta[..., None, None].to(h)
            out = out + self.refine[1:](h)
        return out


# ------------------------------------------------------------------------------------------
# named variants


def scene_embedded(**overrides: Any) -> EmbeddedSceneNet:
    """The shipped ``embedded`` network: 4x unshuffle, widths (32, 64, 128), 1 layer per
    level, cross-attention at the lowest level and the mid block, no normalisation, and a
    full-resolution refinement of 4 convs x 48 channels modulated by the tokens (~3.37 M)."""
    cfg = {
        "block_out_channels": (32, 64, 128),
        "norm_num_groups": 8,
        "attention_head_dim": 32,
        "refine_channels": 48,
        "refine_layers": 4,
        "refine_film": True,
    }
    return EmbeddedSceneNet(**{**cfg, **overrides})


def scene_tiny(**overrides: Any) -> EmbeddedSceneNet:
    """A tiny ``embedded`` network for tests: widths (16, 32), 16-d context."""
    cfg = {
        "token_dim": 16,
        "block_out_channels": (16, 32),
        "cross_attention_dim": 16,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        "prompt_tokens": 2,
    }
    return EmbeddedSceneNet(**{**cfg, **overrides})
