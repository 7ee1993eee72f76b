"""Building blocks of the scene networks: position-local norms, LoRA adapters, the token
conditioner.

Position-local means the output at a pixel depends on that pixel's features only, so a tile is
normalised exactly as the whole image would be (what lets :mod:`face2scene_cli.restorers.tiling`
blend tiles without seams). The LoRA layers use peft's key names (``lora_A``, ``lora_B``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.errors import ConfigError

__all__ = [
    "NORMS",
    "N_TOKENS",
    "ChannelAffine",
    "LoRAConv2d",
    "LoRALinear",
    "LocalGroupNorm",
    "TokenConditioner",
    "check_lq",
    "inject_lora",
    "localize_norms",
]

#: MapNet's token count: 4x4 + 2x2 + 1x1 pooled grids.
N_TOKENS = 21


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


#: What replaces diffusers' GroupNorms, by the ``norm`` config value of the scene networks.
NORMS = {"local": LocalGroupNorm, "affine": ChannelAffine}


def localize_norms(module: nn.Module, kind: str = "local") -> int:
    """Replace every :class:`nn.GroupNorm` below ``module`` by a :class:`LocalGroupNorm`
    (``kind="local"``) or a :class:`ChannelAffine` (``"affine"``), weights kept; returns how
    many were replaced."""
    cls = NORMS[kind]
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


def check_lq(lq: Tensor, multiple: int) -> None:
    """Raise ValueError unless ``lq`` is an RGB batch :math:`(B, 3, H, W)` with H and W
    multiples of ``multiple`` (what the scene networks' ``forward`` accepts)."""
    if lq.ndim != 4 or lq.shape[1] != 3:
        raise ValueError(f"lq must be (B, 3, H, W), got {tuple(lq.shape)}")
    if lq.shape[2] % multiple or lq.shape[3] % multiple:
        raise ValueError(f"lq sides must be multiples of {multiple}, got {tuple(lq.shape[2:])}")
