"""The ``sd-turbo`` scene network: SD-Turbo with LoRA adapters, one step (OSEDiff-style).

``AutoencoderKL`` + ``UNet2DConditionModel`` loaded from a local folder or hub id, LoRA
(rank 16) on the VAE encoder and (rank 32) on the UNet, frozen VAE decoder; the LQ latent
(distribution mode, no sampling) is taken as x_t at a fixed timestep and one step gives x0.
Only the adapter (LoRA layers + token conditioner) is saved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import save_file
from torch import Tensor

from face2scene_cli.archs.layers import N_TOKENS, TokenConditioner, check_lq, inject_lora
from face2scene_cli.errors import ConfigError, ModelIntegrityError
from face2scene_cli.zoo import ModelFiles

__all__ = ["LORA_UNET_TARGETS", "LORA_VAE_TARGETS", "TurboSceneNet"]

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
        check_lq(lq, self.multiple)
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
