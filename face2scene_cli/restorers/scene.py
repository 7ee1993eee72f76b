"""Stage II: the one-step scene restorer conditioned on degradation tokens.

One code path, two configurations of a network built on diffusers'
:class:`~diffusers.UNet2DConditionModel`, whose cross-attention attends to
``[MapNet's 21 degradation tokens (projected) ‖ a learned prompt embedding]``:

* ``embedded`` (:class:`EmbeddedSceneNet`, the default, trained from scratch here): a
  one-step conditional UNet on a 4x pixel-unshuffled grid, cross-attention only (the cost is
  linear in pixels), every GroupNorm made per-pixel (so a tile sees exactly what the whole
  image would, up to the receptive field), predicting a residual added to the input. It is
  NOT a pretrained diffusion prior.
* ``sd-turbo`` (:class:`TurboSceneNet`): ``AutoencoderKL`` + ``UNet2DConditionModel`` loaded
  from a local folder or hub id, LoRA (rank 16) on the VAE encoder and (rank 32) on the UNet,
  frozen VAE decoder; the LQ latent (distribution mode, no sampling) is taken as x_t at a fixed
  timestep and one step gives x0 (OSEDiff-style).

:class:`SceneRestorer` runs either on an image of any size: overlapping tiles blended with
raised-cosine weights, batched, streamed (only the current tile batch is on the device),
automatic tile size, fp32 on CPU, fp16/bf16 autocast on CUDA with an automatic fp32 retry of a
tile batch whose output is not finite, a colour fix (wavelet or AdaIN) on the assembled image,
optional upscaling (``scale`` 2 or 4: bicubic, then restore). Gray in, gray out. No sampling
anywhere, so the output is a deterministic function of the input on a given device.

Blind mode: ``tokens=None`` uses the learned null tokens (trained with condition dropout).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import save_file
from torch import Tensor

from face2scene_cli.archs.mapnet import MapNet
from face2scene_cli.errors import ConfigError, ModelIntegrityError
from face2scene_cli.zoo import ModelFiles, load_config_model

__all__ = [
    "N_TOKENS",
    "SCENE_VARIANTS",
    "EmbeddedSceneNet",
    "LoRAConv2d",
    "LoRALinear",
    "LocalGroupNorm",
    "RestoreSettings",
    "SceneRestorer",
    "TokenConditioner",
    "TurboSceneNet",
    "adain_color_fix",
    "blend_window",
    "create_scene_net",
    "inject_lora",
    "load_scene_restorer",
    "scene_embedded",
    "scene_tiny",
    "tile_starts",
    "wavelet_color_fix",
]

logger = logging.getLogger(__name__)

#: MapNet's token count: 4x4 + 2x2 + 1x1 pooled grids.
N_TOKENS = 21
SCENE_JSON = "scene.json"
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_COLOR_FIXES = ("wavelet", "adain", "none")


# ------------------------------------------------------------------------------------------
# building blocks


class LocalGroupNorm(nn.GroupNorm):
    r"""GroupNorm whose statistics are taken per pixel (over the channels of each group only).

    Same parameters and state-dict keys as :class:`torch.nn.GroupNorm`, but position-local:
    the output at a pixel depends on that pixel's features only, so a tile is normalised
    exactly as the whole image would be (plain GroupNorm's statistics depend on the tile).
    Input :math:`(B, C, *)`.
    """

    def forward(self, x: Tensor) -> Tensor:
        # every pixel is a "sample" of F.group_norm: channels-last, (B*H*W, C, 1); ~3x faster
        # on the CPU than var_mean over a (B, G, C/G, H, W) view
        b, c = x.shape[:2]
        t = x.movedim(1, -1).reshape(-1, c, 1)
        t = F.group_norm(t, self.num_groups, self.weight, self.bias, self.eps)
        return t.reshape(b, *x.shape[2:], c).movedim(-1, 1)


class ChannelAffine(nn.GroupNorm):
    r"""A GroupNorm without normalisation: ``x * weight + bias`` per channel.

    Same parameters and state-dict keys as :class:`torch.nn.GroupNorm`; position-local and
    nearly free on the CPU (the per-pixel statistics of :class:`LocalGroupNorm` cost as much
    as the convolutions). Networks trained from scratch without normalisation (EDSR-style)
    use it. Input :math:`(B, C, *)`.
    """

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        return torch.addcmul(self.bias.view(shape), x, self.weight.view(shape))


_NORMS = {"local": LocalGroupNorm, "affine": ChannelAffine}


def localize_norms(module: nn.Module, kind: str = "local") -> int:
    """Replace every :class:`nn.GroupNorm` below ``module`` by a :class:`LocalGroupNorm`
    (``kind="local"``) or a :class:`ChannelAffine` (``"affine"``), weights kept; returns how
    many were replaced."""
    cls = _NORMS[kind]
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.GroupNorm:
            new = cls(child.num_groups, child.num_channels, child.eps, child.affine)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
            count += 1
        else:
            count += localize_norms(child, kind)
    return count


class LoRALinear(nn.Module):
    """``base(x) + B(A(x)) * alpha / rank`` with ``base`` frozen; B starts at zero (peft's
    key names: ``lora_A``, ``lora_B``)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = float(alpha) / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


class LoRAConv2d(nn.Module):
    """LoRA for a convolution: A has the base's kernel, stride and padding, B is 1x1."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Conv2d(
            base.in_channels,
            rank,
            base.kernel_size,
            base.stride,
            base.padding,  # type: ignore[arg-type]
            base.dilation,
            bias=False,
        )
        self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = float(alpha) / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


#: Module-name endings that get LoRA (OSEDiff's lists).
LORA_UNET_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv",
    "conv_in",
    "conv_out",
)
LORA_VAE_TARGETS = (
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv",
    "conv_in",
    "conv_out",
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
)


def inject_lora(
    module: nn.Module,
    targets: tuple[str, ...],
    rank: int,
    alpha: float | None = None,
    prefix: str = "",
) -> list[str]:
    """Wrap every Linear / Conv2d of ``module`` whose qualified name (below ``prefix``) ends
    with one of ``targets`` (a whole dotted component) in a LoRA adapter.

    Returns:
        The qualified names of the wrapped layers, in module order.
    """
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    alpha = float(rank if alpha is None else alpha)
    wrapped: list[str] = []
    for name, child in list(module.named_modules()):
        if not isinstance(child, (nn.Linear, nn.Conv2d)) or "lora_" in name:
            continue
        if not name.startswith(prefix) or not any(
            name == t or name.endswith("." + t) for t in targets
        ):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        cls = LoRALinear if isinstance(child, nn.Linear) else LoRAConv2d
        setattr(parent, attr, cls(child, rank, alpha))  # type: ignore[arg-type]
        wrapped.append(name)
    return wrapped


class TokenConditioner(nn.Module):
    r"""Builds the cross-attention context ``[proj(tokens) ‖ prompt]``.

    Args:
        token_dim: width D of MapNet's tokens.
        n_tokens: number of degradation tokens (21).
        prompt_tokens: number of learned prompt-embedding tokens appended after them.
        context_dim: the UNet's cross-attention width.

    ``null_tokens`` :math:`(N, D)` replace the tokens of blind samples (``tokens=None`` or
    ``keep[b] == False``).
    """

    def __init__(self, token_dim: int, n_tokens: int, prompt_tokens: int, context_dim: int):
        super().__init__()
        self.n_tokens, self.token_dim = n_tokens, token_dim
        self.null_tokens = nn.Parameter(torch.randn(n_tokens, token_dim) * 0.02)
        self.proj = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, context_dim))
        self.prompt = nn.Parameter(torch.randn(prompt_tokens, context_dim) * 0.02)

    def forward(self, tokens: Tensor | None, batch: int, keep: Tensor | None = None) -> Tensor:
        r"""Context :math:`(B, N + P, C_{ctx})` for ``tokens`` :math:`(B | 1, N, D)` or None."""
        null = self.null_tokens.unsqueeze(0).expand(batch, -1, -1)
        if tokens is None:
            tok = null
        else:
            if tokens.ndim != 3 or tokens.shape[1:] != (self.n_tokens, self.token_dim):
                raise ValueError(
                    f"tokens must be (B, {self.n_tokens}, {self.token_dim}), "
                    f"got {tuple(tokens.shape)}"
                )
            tok = tokens.to(null.dtype).expand(batch, -1, -1)
            if keep is not None:
                tok = torch.where(keep.view(-1, 1, 1).to(tok.device), tok, null)
        ctx = self.proj(tok)
        prompt = self.prompt.unsqueeze(0).expand(batch, -1, -1).to(ctx.dtype)
        return torch.cat([ctx, prompt], dim=1)


def _check_lq(lq: Tensor, multiple: int) -> None:
    if lq.ndim != 4 or lq.shape[1] != 3:
        raise ValueError(f"lq must be (B, 3, H, W), got {tuple(lq.shape)}")
    if lq.shape[2] % multiple or lq.shape[3] % multiple:
        raise ValueError(f"lq sides must be multiples of {multiple}, got {tuple(lq.shape[2:])}")


# ------------------------------------------------------------------------------------------
# the two configurations


class EmbeddedSceneNet(ModelMixin, ConfigMixin):
    r"""One-step conditional UNet, trained from scratch (the ``embedded`` configuration).

    ``out = lq + pixel_shuffle(UNet(pixel_unshuffle(lq - 0.5), t=0, context))`` (with the
    optional full-resolution head/tail: ``f = silu(head(lq - 0.5))``,
    ``out = lq + tail(silu(f + pixel_shuffle(UNet(pixel_unshuffle(f), ...))))``; and with the
    optional full-resolution refinement: ``out + refine([lq - 0.5, out - 0.5])``), every
    GroupNorm replaced by a position-local one, cross-attention only, and the UNet's last
    convolution initialised small (an untrained net is close to the identity).

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
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ConfigError(f"norm must be one of {', '.join(_NORMS)}, got {norm!r}")
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
        if head_channels:
            self.head = nn.Conv2d(3, head_channels, 3, padding=1)
            self.tail = nn.Conv2d(head_channels, 3, 3, padding=1)
            nn.init.normal_(self.tail.weight, 0.0, out_init_std)
            nn.init.zeros_(self.tail.bias)
            io = head_channels * unshuffle**2
        self._build_unet(
            chans,
            layers_per_block,
            cross_attention_dim,
            attention_head_dim,
            norm_num_groups,
            io,
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
        io: int,
        norm: str,
        attn_levels: int,
    ) -> None:
        n = len(chans)
        plain = n - attn_levels
        self.unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=io,
            out_channels=io,
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
            :math:`(B, 3, H, W)`, not clamped.
        """
        _check_lq(lq, self.multiple)
        # 1. context [tokens ‖ prompt]
        ctx = self.cond(tokens, lq.shape[0], keep)
        # 2. full-resolution head (weights shared across sub-pixel positions)
        r = int(self.config.unshuffle)
        f = F.silu(self.head(lq - 0.5)) if self.config.head_channels else lq - 0.5
        # 3. reduced grid, one UNet pass at t = 0
        x = F.pixel_unshuffle(f, r)
        t = torch.zeros(lq.shape[0], device=lq.device)
        res = F.pixel_shuffle(self.unet(x, t, encoder_hidden_states=ctx.to(x.dtype)).sample, r)
        # 4. residual on the full grid (through the full-resolution tail)
        out = lq + self.tail(F.silu(f + res)) if self.config.head_channels else lq + res
        # 5. full-resolution refinement of the coarse result (FiLM by the mean token)
        if self.config.refine_channels:
            h = self.refine[0](torch.cat([lq - 0.5, out - 0.5], dim=1))
            if self.config.refine_film:
                gamma, beta = self.refine_mod(ctx[:, : self.cond.n_tokens].mean(1)).chunk(2, 1)
                h = h * (1 + gamma[..., None, None].to(h)) + beta[..., None, None].to(h)
            out = out + self.refine[1:](h)
        return out


class TurboSceneNet(ModelMixin, ConfigMixin):
    r"""SD-Turbo (or any SD-family AutoencoderKL + UNet) with LoRA, one step (OSEDiff-style).

    ``z = VAE_enc(2 lq - 1).mode() * s``; ``pred = UNet(z, t, context)``;
    ``x0 = (z - sqrt(1 - a_t) pred) / sqrt(a_t)`` (epsilon; v and sample prediction too);
    ``out = (VAE_dec(x0 / s) + 1) / 2``. Only the LoRA weights and the conditioner are
    trainable and saved; the base weights are loaded from ``base`` each time.

    Args:
        base: folder (with ``vae/`` and ``unet/``, optionally ``scheduler/``) or hub id.
        token_dim, n_tokens, prompt_tokens: as :class:`EmbeddedSceneNet`.
        timestep: the fixed timestep at which the LQ latent is taken as x_t.
        lora_rank_vae, lora_rank_unet: LoRA ranks (VAE encoder, UNet).
    """

    ADAPTER_NAME = "scene_adapter.safetensors"

    @register_to_config
    def __init__(
        self,
        base: str = "stabilityai/sd-turbo",
        token_dim: int = 128,
        n_tokens: int = N_TOKENS,
        prompt_tokens: int = 4,
        timestep: int = 999,
        lora_rank_vae: int = 16,
        lora_rank_unet: int = 32,
    ) -> None:
        super().__init__()
        self.vae = AutoencoderKL.from_pretrained(
            base, subfolder="vae", use_safetensors=True, low_cpu_mem_usage=False
        )
        self.unet = UNet2DConditionModel.from_pretrained(
            base, subfolder="unet", use_safetensors=True, low_cpu_mem_usage=False
        )
        sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        local = Path(base).is_dir()
        if not local or (Path(base) / "scheduler").is_dir():
            sched = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
        prediction = sched.config.prediction_type
        if not 0 <= timestep < len(sched.alphas_cumprod):
            raise ConfigError(
                f"timestep must be in [0, {len(sched.alphas_cumprod)}), got {timestep}"
            )
        self.prediction_type = str(prediction)
        self.register_buffer("alpha_t", sched.alphas_cumprod[timestep].clone().float(), False)
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        inject_lora(self.vae, LORA_VAE_TARGETS, lora_rank_vae, prefix="encoder.")
        inject_lora(self.vae, ("quant_conv",), lora_rank_vae)
        inject_lora(self.unet, LORA_UNET_TARGETS, lora_rank_unet)
        ctx = int(self.unet.config.cross_attention_dim)
        self.cond = TokenConditioner(token_dim, n_tokens, prompt_tokens, ctx)

    @property
    def multiple(self) -> int:
        vae_f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return vae_f * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The trainable weights: LoRA layers and the conditioner."""
        return {k: v for k, v in self.state_dict().items() if "lora_" in k or k.startswith("cond.")}

    def save_pretrained(self, folder: str | os.PathLike, **_: Any) -> None:  # type: ignore[override]
        """Write ``config.json`` and the adapter weights (not the base model)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        state = {k: v.detach().contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        save_file(state, str(folder / self.ADAPTER_NAME))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        folder: str | os.PathLike,
        base: str | None = None,
        files: ModelFiles | None = None,
        **_: Any,
    ):
        """Rebuild from :meth:`save_pretrained` output; ``base`` overrides the recorded base.

        ``files`` reads the folder (a zoo model's pinned reader); default: ``folder`` as is.
        The base model's own weights (``base``) lie outside the model folder.
        """
        files = files or ModelFiles(Path(folder))
        config = files.read_json("config.json")
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        if base is not None:
            kwargs["base"] = base
        net = cls(**kwargs)
        state = files.load_safetensors(cls.ADAPTER_NAME)
        expected = net.adapter_state_dict()
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        shapes = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
        if missing or unexpected or shapes:
            raise ModelIntegrityError(
                f"{files.name(cls.ADAPTER_NAME)}: adapter weights do not fit: "
                f"{len(missing)} missing (e.g. {sorted(missing)[:2]}), {len(unexpected)} "
                f"unexpected (e.g. {sorted(unexpected)[:2]}), {len(shapes)} of another "
                f"shape (e.g. {sorted(shapes)[:2]})"
            )
        net.load_state_dict(state, strict=False)  # the base's tensors come from ``base``
        return net.eval()

    def forward(
        self, lq: Tensor, tokens: Tensor | None = None, keep: Tensor | None = None
    ) -> Tensor:
        r"""Restore a batch: :math:`(B, 3, H, W)` in [0, 1] -> :math:`(B, 3, H, W)` (not clamped).

        H and W must be multiples of :attr:`multiple`; ``tokens``/``keep`` as
        :meth:`EmbeddedSceneNet.forward`.
        """
        _check_lq(lq, self.multiple)
        # 1. context
        ctx = self.cond(tokens, lq.shape[0], keep)
        # 2. LQ latent (distribution mode: deterministic) as x_t
        s = float(self.vae.config.scaling_factor)
        z = self.vae.encode(lq * 2.0 - 1.0).latent_dist.mode() * s
        # 3. one step to x0
        t = torch.full((lq.shape[0],), int(self.config.timestep), device=lq.device)
        pred = self.unet(z, t, encoder_hidden_states=ctx.to(z.dtype)).sample
        a = self.alpha_t.to(z.dtype)
        if self.prediction_type == "epsilon":
            x0 = (z - (1 - a).sqrt() * pred) / a.sqrt()
        elif self.prediction_type == "v_prediction":
            x0 = a.sqrt() * z - (1 - a).sqrt() * pred
        else:
            x0 = pred
        # 4. decode (frozen decoder)
        return (self.vae.decode(x0 / s).sample + 1.0) / 2.0


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


SCENE_VARIANTS = {"scene-embedded": scene_embedded, "scene-tiny": scene_tiny}


def create_scene_net(name: str, **overrides: Any) -> nn.Module:
    """``scene-embedded``, ``scene-tiny`` or ``sd-turbo`` (needs ``base=``); a ``.tag`` suffix
    is ignored. Raises ConfigError on an unknown name."""
    arch = name.split(".", 1)[0]
    if arch == "sd-turbo":
        return TurboSceneNet(**overrides)
    if arch not in SCENE_VARIANTS:
        known = ", ".join([*SCENE_VARIANTS, "sd-turbo"])
        raise ConfigError(f"unknown scene network {name!r}; known: {known}")
    return SCENE_VARIANTS[arch](**overrides)


def load_scene_restorer(
    name: str = "scene-embedded", device: str | torch.device = "cpu", root: Path | None = None
) -> SceneRestorer:
    """The zoo's scene model ``name``, verified against its metadata (sha256) first.

    Raises:
        NotAvailableError: no such model in the zoo.
        ModelIntegrityError: its files do not match the metadata.
    """
    from face2scene_cli.zoo import require_model

    info = require_model(name, root)
    return SceneRestorer.from_pretrained(info.folder, device, files=info.files_reader())


# ------------------------------------------------------------------------------------------
# tiling and colour fix (pure functions)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least
    ``overlap`` px between neighbours; the last tile ends at ``length``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def blend_window(
    tile: int, overlap: int, first: bool, last: bool, device: torch.device | None = None
) -> Tensor:
    r"""1-D raised-cosine weights :math:`(T,)`: 1 inside, ramping smoothly to ~0 over
    ``overlap`` px at an edge shared with a neighbour (not at an image border)."""
    w = torch.ones(tile, dtype=torch.float32, device=device)
    if overlap > 0:
        i = torch.arange(overlap, dtype=torch.float32, device=device)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / overlap)
        if not first:
            w[:overlap] = ramp
        if not last:
            w[tile - overlap :] = ramp.flip(0)
    return w


def _low_pass(x: Tensor, levels: int) -> Tensor:
    """Repeated dilated 3x3 binomial blurs (the wavelet residual), replicate padding."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    k2 = (k[:, None] * k[None, :] / 16.0).expand(x.shape[1], 1, 3, 3)
    for i in range(levels):
        d = 2**i
        x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), k2, dilation=d, groups=x.shape[1])
    return x


def wavelet_color_fix(out: Tensor, ref: Tensor, levels: int = 5) -> Tensor:
    r"""Keep ``out``'s high frequencies and ``ref``'s low ones (StableSR's wavelet fix).

    ``out + lowpass(ref - out)`` (equal to ``high(out) + low(ref)``, the low pass is linear).
    Shapes :math:`(B, C, H, W)`, same for both; returns ``out``'s shape.
    """
    return out + _low_pass(ref - out, levels)


def adain_color_fix(out: Tensor, ref: Tensor) -> Tensor:
    """Match per-channel mean and standard deviation of ``out`` to ``ref``
    (:math:`(B, C, H, W)`)."""
    om, os_ = out.mean((2, 3), keepdim=True), out.std((2, 3), keepdim=True)
    rm, rs = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    return (out - om) / (os_ + 1e-6) * rs + rm


# ------------------------------------------------------------------------------------------
# the restorer


@dataclass(frozen=True)
class RestoreSettings:
    """Run settings of :class:`SceneRestorer` (stored in ``scene.json``).

    Attributes:
        kind: ``embedded`` or ``sd-turbo``.
        color_fix: ``wavelet``, ``adain`` or ``none``.
        overlap: tile overlap in px (None: an eighth of the tile, at least 32).
        tile_batch: tiles per network call (None: 4 on CUDA, 2 on CPU).
        max_tile: upper bound of the automatic tile size.
        fadex: zoo name of the FaDeX the tokens were trained with.
    """

    kind: str = "embedded"
    color_fix: str = "none"
    overlap: int | None = None
    tile_batch: int | None = None
    max_tile: int = 512
    fadex: str = "fadex-s"

    def __post_init__(self) -> None:
        if self.kind not in ("embedded", "sd-turbo"):
            raise ConfigError(f"kind must be embedded or sd-turbo, got {self.kind!r}")
        if self.color_fix not in _COLOR_FIXES:
            raise ConfigError(
                f"color_fix must be one of {', '.join(_COLOR_FIXES)}, got {self.color_fix!r}"
            )


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 4 << 30


class SceneRestorer:
    """The Stage II restorer: a scene network (+ optionally its MapNet) and the tiled runner.

    Args:
        net: an :class:`EmbeddedSceneNet` or :class:`TurboSceneNet`.
        settings: run settings.
        mapnet: the MapNet trained with ``net`` (turns FaDeX output into tokens), or None.
        device: where the network runs (the image stays on the CPU).
    """

    #: Activation bytes per input pixel (fp32, one tile), measured; for the auto tile size.
    BYTES_PER_PIXEL: ClassVar[dict[str, int]] = {"embedded": 2_500, "sd-turbo": 60_000}

    def __init__(
        self,
        net: nn.Module,
        settings: RestoreSettings | None = None,
        mapnet: nn.Module | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.settings = settings or RestoreSettings()
        self.device = torch.device(device)
        # nn.Module.to, float32: diffusers' ModelMixin.to may import optional peft hooks
        self.net = nn.Module.to(net, self.device, torch.float32).eval()
        self.mapnet = (
            None if mapnet is None else nn.Module.to(mapnet, self.device, torch.float32).eval()
        )
        self.fallbacks = 0  # tile batches re-run in fp32 because of NaN/Inf

    # -- persistence ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str | torch.device = "cpu",
        base: str | None = None,
        files: ModelFiles | None = None,
    ) -> SceneRestorer:
        """Load ``folder/scene.json``, ``folder/net/`` and (if present) ``folder/mapnet/``.

        ``base`` overrides the SD-Turbo base folder / hub id of an ``sd-turbo`` model.
        ``files`` reads the folder: a zoo model's pinned reader
        (:meth:`face2scene_cli.zoo.ModelInfo.files_reader`, see :func:`load_scene_restorer`);
        default: :meth:`face2scene_cli.zoo.ModelFiles.for_folder` (pinned by the folder's
        ``metadata.json`` if it has one).

        Raises:
            ModelIntegrityError: a file is unreadable, not pinned or not the pinned bytes, or
                a config or state dict does not fit its network (the file is named).
        """
        files = files or ModelFiles.for_folder(Path(folder))
        raw = files.read_json(SCENE_JSON)
        try:
            settings = RestoreSettings(**raw)
        except (TypeError, ConfigError) as err:
            raise ModelIntegrityError(f"{files.name(SCENE_JSON)}: {err}") from err
        if settings.kind == "embedded":
            net: nn.Module = load_config_model(EmbeddedSceneNet, files.sub("net"))
        else:
            net = TurboSceneNet.from_pretrained(
                Path(folder) / "net", base=base, files=files.sub("net")
            )
        mapnet = None
        if files.has("mapnet"):
            mapnet = load_config_model(MapNet, files.sub("mapnet"))
        return cls(net, settings, mapnet, device)

    def save_pretrained(self, folder: str | os.PathLike, half: bool = False) -> list[str]:
        """Write the model folder; returns the weight files written (relative paths).

        ``half`` stores the weights in float16 (half the size; they are loaded back into
        float32 and computed in the requested precision).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SCENE_JSON).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")
        parts = {"net": self.net, "mapnet": self.mapnet}
        files: list[str] = []
        for sub, module in parts.items():
            if module is None:
                continue
            if half:
                module = copy.deepcopy(module).half()
            module.save_pretrained(folder / sub)
            files += [str(p.relative_to(folder)) for p in (folder / sub).glob("*.safetensors")]
        return sorted(files)

    # -- running --------------------------------------------------------------------------

    def auto_tile(self, batch: int) -> int:
        """Largest tile (multiple of the net's multiple) whose batch fits a quarter of the free
        memory of the device, within [2 * multiple, max_tile]."""
        m = int(self.net.multiple)
        bpp = self.BYTES_PER_PIXEL[self.settings.kind]
        budget = _available_bytes(self.device) // 4
        side = int(math.sqrt(max(1, budget // (bpp * batch))))
        side = min(self.settings.max_tile, side) // m * m
        return max(2 * m, side)

    @property
    def tile_batch(self) -> int:
        """Tiles per network call."""
        return self.settings.tile_batch or (4 if self.device.type == "cuda" else 2)

    def run_settings(
        self, tile: int | None = None, precision: str | None = None
    ) -> tuple[int, str]:
        """The tile side (px) and precision :meth:`restore` runs with for these arguments.

        Args:
            tile: asked tile side (rounded down to the net's multiple, at least 2x that);
                None = automatic from free memory.
            precision: ``fp32`` | ``fp16`` | ``bf16``; None = fp32 on CPU, fp16 on CUDA.
        """
        precision = precision or ("fp16" if self.device.type == "cuda" else "fp32")
        if precision not in _PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}"
            )
        m = int(self.net.multiple)
        side = self.auto_tile(self.tile_batch) if tile is None else max(2 * m, int(tile) // m * m)
        return side, precision

    def _run(self, x: Tensor, tokens: Tensor | None, dtype: torch.dtype) -> Tensor:
        if dtype == torch.float32:
            return self.net(x, tokens).float()
        with torch.autocast(self.device.type, dtype=dtype):
            return self.net(x, tokens).float()

    def _run_checked(self, x: Tensor, tokens: Tensor | None, dtype: torch.dtype) -> Tensor:
        out = self._run(x, tokens, dtype)
        if dtype != torch.float32 and not bool(torch.isfinite(out).all()):
            self.fallbacks += 1
            logger.warning("non-finite output in %s; tile batch re-run in fp32", dtype)
            out = self._run(x, tokens, torch.float32)
        return out

    @torch.inference_mode()
    def restore(
        self,
        image: Tensor,
        tokens: Tensor | None = None,
        tile: int | None = None,
        precision: str | None = None,
        scale: int = 1,
    ) -> Tensor:
        r"""Restore one image of any size.

        Args:
            image: :math:`(1, C, H, W)` float in [0, 1], C in {1, 3}, on the CPU (it stays
                there; tiles are moved to the device one batch at a time).
            tokens: :math:`(1, 21, D)` MapNet tokens; None = blind (MapNet's null tokens, or
                the network's own when there is no MapNet).
            tile: tile side in px (rounded down to the net's multiple, at least 2x that);
                None = automatic from free memory.
            precision: ``fp32`` | ``fp16`` | ``bf16``; None = fp32 on CPU, fp16 on CUDA.
                Low precision runs under autocast; a tile batch with NaN/Inf is re-run in fp32.
            scale: 1, 2 or 4: bicubic upscaling before restoring.

        Returns:
            :math:`(1, C, H \cdot s, W \cdot s)` float32 in [0, 1] on the CPU.
        """
        # 1. check inputs
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
            raise ValueError(
                f"image must be (1, C, H, W) with C in {{1, 3}}, got {tuple(image.shape)}"
            )
        if scale not in (1, 2, 4):
            raise ConfigError(f"scale must be 1, 2 or 4, got {scale}")
        tile, precision = self.run_settings(tile, precision)
        dtype = _PRECISIONS[precision]
        gray = image.shape[1] == 1
        # 2. prepare: CPU float32 RGB, optional upscaling
        x = image.detach().float().cpu().clamp(0.0, 1.0)
        if scale > 1:
            x = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
            x = x.clamp(0.0, 1.0)
        if gray:
            x = x.expand(1, 3, *x.shape[2:])
        if tokens is None and self.mapnet is not None:
            tokens = self.mapnet.null_tokens(1)  # blind mode: MapNet's learned null tokens
        tok = None if tokens is None else tokens.to(self.device, torch.float32)
        # 3. tiles
        out = self._restore_tiled(x, tok, tile, dtype)
        # 4. colour fix on the assembled image, gray back to one channel
        if self.settings.color_fix == "wavelet":
            out = wavelet_color_fix(out, x)
        elif self.settings.color_fix == "adain":
            out = adain_color_fix(out, x)
        out = out.clamp(0.0, 1.0)
        return out.mean(1, keepdim=True) if gray else out

    def _restore_tiled(
        self, x: Tensor, tokens: Tensor | None, t: int, dtype: torch.dtype
    ) -> Tensor:
        m = int(self.net.multiple)
        h, w = x.shape[2:]
        batch = self.tile_batch
        # pad (reflect, replicate when too small) to multiples of m, at least one tile if small
        th, tw = min(t, math.ceil(h / m) * m), min(t, math.ceil(w / m) * m)
        ph, pw = max(th, math.ceil(h / m) * m) - h, max(tw, math.ceil(w / m) * m) - w
        mode = "reflect" if ph < h and pw < w else "replicate"
        xp = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
        hp, wp = xp.shape[2:]
        ov = self.settings.overlap
        ov = max(32, t // 8) if ov is None else int(ov)
        ys, xs = tile_starts(hp, th, min(ov, th // 2)), tile_starts(wp, tw, min(ov, tw // 2))
        acc = torch.zeros(1, 3, hp, wp)
        wsum = torch.zeros(1, 1, hp, wp)
        boxes = [(y, xx) for y in ys for xx in xs]
        for i in range(0, len(boxes), batch):
            chunk = boxes[i : i + batch]
            tiles = torch.cat([xp[..., y : y + th, xx : xx + tw] for y, xx in chunk])
            res = self._run_checked(tiles.to(self.device), tokens, dtype).cpu()
            for j, (y, xx) in enumerate(chunk):
                oy, ox = min(ov, th // 2), min(ov, tw // 2)
                wy = blend_window(th, oy if len(ys) > 1 else 0, y == ys[0], y == ys[-1])
                wx = blend_window(tw, ox if len(xs) > 1 else 0, xx == xs[0], xx == xs[-1])
                wt = wy[:, None] * wx[None, :]
                acc[..., y : y + th, xx : xx + tw] += res[j] * wt
                wsum[..., y : y + th, xx : xx + tw] += wt
        return (acc / wsum)[..., :h, :w]

    def tokens_from_fadex(self, fadex_out: Any) -> Tensor:
        """MapNet tokens :math:`(B, 21, D)` from a FaDeX output (needs :attr:`mapnet`)."""
        if self.mapnet is None:
            raise ConfigError("this scene model has no MapNet; use tokens=None (blind)")
        with torch.inference_mode():
            return self.mapnet(fadex_out.z.to(self.device)).tokens.float()

    def tokens_for_faces(self, z_maps: list[Tensor], weights: list[float] | None = None) -> Tensor:
        r"""One image's tokens :math:`(1, 21, D)` from the FaDeX maps of its faces.

        Args:
            z_maps: per face, FaDeX's ``z`` :math:`(1, C_z, h_i, w_i)` (crops may differ in
                size).
            weights: per face, e.g. the face restorer's confidence; None = equal weights.

        Returns:
            The weighted mean of the faces' MapNet tokens (a single face: its tokens).
        """
        if self.mapnet is None:
            raise ConfigError("this scene model has no MapNet; use tokens=None (blind)")
        if not z_maps:
            raise ValueError("z_maps is empty: with no face, call restore(tokens=None)")
        w = torch.tensor(weights if weights is not None else [1.0] * len(z_maps))
        if w.shape != (len(z_maps),) or float(w.sum()) <= 0:
            raise ValueError(
                f"need {len(z_maps)} non-negative weights with a positive sum, got {weights}"
            )
        with torch.inference_mode():
            toks = torch.cat([self.mapnet(z.to(self.device)).tokens.float() for z in z_maps])
        w = (w / w.sum()).to(toks).view(-1, 1, 1)
        return (toks * w).sum(0, keepdim=True)
