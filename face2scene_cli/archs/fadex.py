"""FaDeX: the facial degradation extractor (Face2Scene, Stage II conditioning).

FaDeX reads a degraded face crop (LQ) together with its restored version (HQ) and returns a
degradation code (unit vector, content-independent), a spatial feature map Z for MapNet, and
estimates of the degradation in physical units.

Input convention (the "native crop"): axis-aligned, unrotated, unresampled crops cut from the
photo at its native resolution, 64-160 px, any size divisible by 8 (others are cropped to the
next multiple of 8, top-left anchored). Resampling (rotation/scaling to a canonical frame)
changes noise and blur statistics and destroys the 8x8 JPEG grid, so FaDeX never sees
aligned/resampled crops.

Units of the estimates (all in SOURCE-image pixels of that native crop):

* ``noise_sigma``: standard deviation of additive white Gaussian noise, /255 units.
* ``blur_sigma_px``: sigma of the isotropic Gaussian blur equivalent to all the low-pass the
  crop went through (optical blur and resolution loss, which a crop cannot tell apart:
  :func:`~face2scene_cli.research.train.fadex.effective_blur`), pixels; a linear motion blur
  counts as the Gaussian of the same spread
  (:func:`~face2scene_cli.degradations.record.equivalent_blur`), which a model with a motion
  head (:mod:`face2scene_cli.archs.motion`) adds in quadrature.
* ``downscale``: factor s >= 1 of a resolution loss simulated as bicubic (antialiased)
  downsampling by s followed by bicubic upsampling back to the same size (the face is seen at
  native resolution, so a low-resolution source shows as missing detail, not as fewer pixels);
  1 = full resolution.
* ``jpeg_quality``: IJG/libjpeg quality 1-100 of the last JPEG compression;
  ``jpeg_probability``: the probability that the crop was JPEG-compressed at all (quality is only
  meaningful when it is high). Where the crop still carries the JPEG quantisation grid, both
  come from measuring it (:mod:`face2scene_cli.archs.jpeg_trace`, exact for libjpeg tables),
  otherwise from the regression head.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from face2scene_cli.archs.jpeg_trace import JpegTrace, trace_jpeg
from face2scene_cli.archs.motion import NUM_MOTION, motion_direction, motion_features
from face2scene_cli.archs.resampling import NUM_RESAMPLING, luma, resampling_features
from face2scene_cli.degradations.estimate import ESTIMATE_FIELDS, MOTION_FIELDS, Estimate
from face2scene_cli.degradations.record import MOTION_SIGMA_PER_PX
from face2scene_cli.errors import ConfigError

__all__ = [
    "FADEX_VARIANTS",
    "NUM_EDGE",
    "NUM_STATS",
    "NUM_TRACE",
    "FaDeX",
    "FaDeXOutput",
    "create_fadex",
    "degradation_stats",
    "edge_widths",
    "fadex_s",
    "fadex_tiny",
    "prepare_pair",
]

# Output scaling of the regression heads: the network predicts value / scale.
NOISE_SCALE = 10.0  # /255 units
BLUR_SCALE = 1.0  # px
JPEG_SCALE = 25.0  # quality units


@dataclass
class FaDeXOutput:
    """What :meth:`FaDeX.forward` returns (B = batch size).

    Attributes:
        code: :math:`(B, D)` unit-norm degradation code: ``normalize(q - code_center)``, the
            projection centred on its mean over the training degradations (see
            :meth:`FaDeX.set_code_center`; equal to ``q`` while the centre is zero).
        z: :math:`(B, C_z, H/8, W/8)` spatial feature map Z (MapNet's input); None from
            :meth:`FaDeX.heads` without it.
        noise_sigma: :math:`(B,)` Gaussian noise sigma, /255 units, >= 0.
        blur_sigma_px: :math:`(B,)` equivalent Gaussian blur sigma in source pixels, >= 0.
        downscale: :math:`(B,)` resolution-loss factor, >= 1 (see module docstring).
        jpeg_quality: :math:`(B,)` JPEG quality estimate in [1, 100] (meaningful when
            ``jpeg_probability`` is high).
        jpeg_probability: :math:`(B,)` probability in [0, 1] that the crop was JPEG-compressed.
        jpeg_logit: :math:`(B,)` the logit of ``jpeg_probability`` (for training).
        q: :math:`(B, D)` the unit-norm SupCon projection (the training loss uses it).
        motion_px: :math:`(B,)` the motion head's linear motion blur, the segment's length in
            px (its equivalent sigma times √12; small, not 0, on crops without
            one); None without a motion head.
        motion_angle_deg: :math:`(B,)` the segment's direction in degrees, [0, 180)
            (:func:`~face2scene_cli.archs.motion.motion_direction`; :meth:`FaDeX.forward` only,
            with a motion head).
    """

    code: Tensor
    z: Tensor | None
    noise_sigma: Tensor
    blur_sigma_px: Tensor
    downscale: Tensor
    jpeg_quality: Tensor
    jpeg_probability: Tensor
    jpeg_logit: Tensor
    q: Tensor | None = None
    motion_px: Tensor | None = None
    motion_angle_deg: Tensor | None = None

    def estimates(self) -> list[Estimate]:
        """Per crop, the estimates as an :class:`Estimate` of plain floats (no motion where
        the model has no motion head)."""
        names = [*ESTIMATE_FIELDS, *(k for k in MOTION_FIELDS if getattr(self, k) is not None)]
        columns = {k: getattr(self, k).detach().float().cpu().tolist() for k in names}
        return [
            Estimate(**{k: float(v[i]) for k, v in columns.items()})
            for i in range(self.code.shape[0])
        ]


def prepare_pair(lq: Tensor, hq: Tensor) -> Tensor:
    r"""Stack an (LQ, HQ) pair into FaDeX's 6-channel input.

    Gray crops (C=1) are replicated to 3 channels; both are cropped to a multiple of 8
    (top-left anchored, so the JPEG grid of a grid-aligned crop is kept).

    Args:
        lq: :math:`(B, C, H, W)` float in [0, 1], C in {1, 3}.
        hq: same shape as ``lq``.

    Returns:
        :math:`(B, 6, 8\lfloor H/8 \rfloor, 8\lfloor W/8 \rfloor)` float32.

    Raises:
        ValueError: shapes differ, C not in {1, 3}, or a side below 16 px.
    """
    if lq.ndim != 4 or lq.shape[1] not in (1, 3):
        raise ValueError(f"lq must be (B, C, H, W) with C in {{1, 3}}, got {tuple(lq.shape)}")
    if hq.shape != lq.shape:
        raise ValueError(f"hq must match lq's shape {tuple(lq.shape)}, got {tuple(hq.shape)}")
    h, w = (lq.shape[2] // 8) * 8, (lq.shape[3] // 8) * 8
    if h < 16 or w < 16:
        raise ValueError(f"crops must be at least 16x16 px, got {tuple(lq.shape[2:])}")
    x = torch.cat([lq[..., :h, :w], hq[..., :h, :w]], dim=1).float()
    if lq.shape[1] == 1:
        x = x.repeat_interleave(3, dim=1)
    return x


#: Number of values :func:`degradation_stats` returns per crop.
NUM_STATS = 16


def _grid_strength(y: Tensor) -> Tensor:
    """(B, 1, H, W) -> (B, 4): the two strongest 8-periodic step ratios along x and y."""
    out = []
    for d in ((y[..., :, 1:] - y[..., :, :-1]).abs().mean(2),
              (y[..., 1:, :] - y[..., :-1, :]).abs().mean(3)):  # fmt: skip
        d = d.flatten(1)
        n = (d.shape[1] // 8) * 8
        per = d[:, :n].reshape(d.shape[0], n // 8, 8).mean(1)
        ratio = per / per.median(dim=1, keepdim=True).values.clamp_min(1e-4) - 1.0
        out.append(ratio.sort(dim=1, descending=True).values[:, :2])
    return torch.cat(out, dim=1)


def quantile_rows(x: Tensor, q: float, keepdim: bool = False) -> Tensor:
    """``torch.quantile(x, q, dim=1)`` of a (B, N) tensor (linear interpolation), bit for bit,
    by two selections instead of a full sort: ~2.5x faster on a face crop's N ~ 1e5 values."""
    n = x.shape[1]
    rank = torch.tensor(q, dtype=x.dtype) * (n - 1)  # as torch.quantile rounds it
    below = int(rank)
    lo = x.kthvalue(below + 1, dim=1, keepdim=keepdim).values
    hi = x.kthvalue(min(below + 2, n), dim=1, keepdim=keepdim).values
    return torch.lerp(lo, hi, rank - below)


def _sharpness(y: Tensor) -> Tensor:
    """(B, 1, H, W) -> (B, 3): log gradient-energy ratios between scales 0, 1 and 2 px."""
    from face2scene_cli.degradations.ops import gaussian_blur

    def grad(t: Tensor) -> Tensor:
        gx = (t[..., :, 1:] - t[..., :, :-1]).abs().flatten(1)
        gy = (t[..., 1:, :] - t[..., :-1, :]).abs().flatten(1)
        return torch.cat([gx, gy], dim=1)

    g0, g1, g2 = grad(y), grad(gaussian_blur(y, 1.0)), grad(gaussian_blur(y, 2.0))
    m0, m1, m2 = (g.mean(1).clamp_min(1e-5) for g in (g0, g1, g2))
    p0 = quantile_rows(g0, 0.99).clamp_min(1e-5)
    p1 = quantile_rows(g1, 0.99).clamp_min(1e-5)
    return torch.stack([(m0 / m1).log(), (m1 / m2).log(), (p0 / p1).log()], dim=1)


def _mad_noise(y: Tensor) -> Tensor:
    """(B, 1, H, W) -> (B, 1): MAD sigma of the finest diagonal Haar band, /255 / 10."""
    h, w = (y.shape[2] // 2) * 2, (y.shape[3] // 2) * 2
    y = y[..., :h, :w]
    hh = (y[..., 0::2, 0::2] - y[..., 0::2, 1::2] - y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2
    return (hh.abs().flatten(1).median(dim=1).values / 0.6745 * 25.5)[:, None]


@torch.no_grad()
def degradation_stats(lq: Tensor, hq: Tensor) -> Tensor:
    r"""Fixed (not learned) statistics that FaDeX's heads can read beside GAP(Z).

    Per crop, for LQ then for HQ luminance: JPEG grid strength (the two largest ratios of the
    mean absolute step at one of the 8 column phases to the median phase, minus 1, along x and
    along y: phase-invariant, ~0 without blocking), multi-scale sharpness (log ratios of the
    mean gradient magnitude at 0/1/2 px Gaussian scales and of the 99th percentile at 0/1 px:
    small for blurred crops) and the MAD noise estimate (/255, divided by 10).

    Args:
        lq, hq: :math:`(B, 3, H, W)` in [0, 1].

    Returns:
        :math:`(B, 16)` float32.
    """
    feats = []
    for x in (lq, hq):
        y = luma(x.float())
        feats += [_grid_strength(y), _sharpness(y), _mad_noise(y)]
    return torch.cat(feats, dim=1)


#: Number of values :func:`edge_widths` returns per crop.
NUM_EDGE = 4
#: Number of JPEG-trace values the heads read with ``trace_features``.
NUM_TRACE = 2


def _window_max(y: Tensor, win: int) -> Tensor:
    """``F.max_pool2d(y, win, 1, win // 2)`` as a row pass then a column pass: the same
    values (a max is exact), ~4x faster for a 9 px window."""
    rows = F.max_pool2d(y, (1, win), 1, (0, win // 2))
    return F.max_pool2d(rows, (win, 1), 1, (win // 2, 0))


def _edge_width(y: Tensor, quantiles: tuple[float, ...] = (0.95, 0.99), win: int = 9) -> Tensor:
    """(B, 1, H, W) -> (B, len(quantiles)): median edge sigma (px) over the strongest edges.

    A step edge of contrast C blurred by a Gaussian of sigma s has a peak gradient of
    ``C / (s sqrt(2 pi))``; per pixel, ``s = C_local / (|grad| sqrt(2 pi))`` with C_local the
    max - min over a ``win`` window, taken over the pixels above the gradient quantile
    (and with a gradient and C_local > 0.05; 4 px where none is). Sharp content reads ~1 px
    (sampling), whatever its texture.
    """
    gx = (y[..., 1:-1, 2:] - y[..., 1:-1, :-2]) / 2
    gy = (y[..., 2:, 1:-1] - y[..., :-2, 1:-1]) / 2
    g = (gx.square() + gy.square()).sqrt().flatten(1)
    mx = _window_max(y, win)[..., 1:-1, 1:-1]
    mn = -_window_max(-y, win)[..., 1:-1, 1:-1]
    c = (mx - mn).flatten(1)
    width = c / (g.clamp_min(1e-6) * math.sqrt(2 * math.pi))
    out = []
    for q in quantiles:
        sel = (g >= quantile_rows(g, q, keepdim=True)) & (g > 1e-3) & (c > 0.05)
        med = torch.where(sel, width, torch.nan).nanmedian(dim=1).values
        out.append(torch.nan_to_num(med, nan=4.0).clamp(0.0, 4.0))
    return torch.stack(out, dim=1)


@torch.no_grad()
def edge_widths(lq: Tensor, hq: Tensor) -> Tensor:
    r"""Blur-sensitive edge widths of the LQ and HQ luminance (see :func:`_edge_width`): the
    HQ crop is denoised, so its widths survive noise that shortens the LQ's.

    Args:
        lq, hq: :math:`(B, 3, H, W)` in [0, 1].

    Returns:
        :math:`(B, 4)` float32, px.
    """
    return torch.cat([_edge_width(luma(x.float())) for x in (lq, hq)], dim=1)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


def _statistics_head(features: int, hidden: int, hidden_layers: int) -> nn.Sequential:
    """A head on fixed image statistics: batch-norm running statistics (the training set's
    mean and variance, no affine part), then an MLP with ``hidden_layers`` ReLU layers to one
    output."""
    layers: list[nn.Module] = [nn.BatchNorm1d(features, affine=False)]
    width = features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.act = _act()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class FaDeX(ModelMixin, ConfigMixin):
    r"""Light conv encoder on the (LQ, HQ) pair -> Z -> code + degradation estimates.

    Architecture: the pair and its residual ``LQ - HQ`` (9 channels, residual amplified by
    ``residual_gain``) -> pixel-unshuffle by 2 (lossless, keeps every high frequency) ->
    3x3 conv -> per stage: [3x3 conv stride 2 (not on the first stage), ``blocks_per_stage``
    residual blocks] with LeakyReLU(0.1) and no normalisation (absolute signal levels matter)
    -> Z at 1/8 of the input size with ``channels[-1]`` channels. Heads on GAP(Z)
    concatenated with the spatial standard deviation of Z (and, with ``stat_features``, the
    16 fixed statistics of :func:`degradation_stats`): a 2-layer MLP projection to
    ``code_dim`` (unit-normalised), and a 2-layer MLP regressing the five outputs.

    Args:
        channels: widths of the three stages (Z has ``channels[-1]`` channels).
        blocks_per_stage: residual blocks per stage.
        code_dim: width of the unit-norm code (SupCon projection).
        head_dim: hidden width of the projection and regression MLPs.
        residual_gain: multiplier of the ``LQ - HQ`` residual channels.
        stat_features: append the :data:`NUM_STATS` fixed image statistics of
            :func:`degradation_stats` (JPEG grid strength, multi-scale sharpness, MAD noise,
            of LQ and of HQ) to the heads' input; 0 = off (``fadex-s`` v1: on).
        edge_features: append the :data:`NUM_EDGE` edge widths of :func:`edge_widths` (a
            blur measure that does not depend on texture) to the heads' input (v2: on).
        trace_features: append what the JPEG quantisation trace found (found, quality / 100)
            to the heads' input, so the code separates JPEG qualities (v2: on).
        downscale_head: estimate the downscale factor with a head of its own
            (:meth:`read_downscale`): the :data:`NUM_RESAMPLING` spectral statistics of the LQ
            luminance (:func:`~face2scene_cli.archs.resampling.resampling_features`), which
            tell a down-then-up resampling from an optical blur, standardised, into a 2-layer
            MLP; the code and the other estimates stay the regression head's.
        motion_head: estimate a linear motion blur with a head of its own
            (:meth:`read_motion`): the :data:`NUM_MOTION` directional spectral statistics of
            the LQ luminance (:func:`~face2scene_cli.archs.motion.motion_features`),
            standardised, into a 3-layer MLP; its equivalent Gaussian sigma is added in
            quadrature to the regression head's blur, the code and the other estimates stay
            as they were.
    """

    @register_to_config
    def __init__(
        self,
        channels: tuple[int, ...] | list[int] = (32, 64, 96),
        blocks_per_stage: int = 1,
        code_dim: int = 128,
        head_dim: int = 256,
        residual_gain: float = 4.0,
        stat_features: bool = False,
        edge_features: bool = False,
        trace_features: bool = False,
        downscale_head: bool = False,
        motion_head: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 3 or min(channels) < 1:
            raise ConfigError(f"channels must be 3 positive widths, got {channels}")
        if blocks_per_stage < 0 or code_dim < 2 or head_dim < 1:
            raise ConfigError(
                f"need blocks_per_stage >= 0, code_dim >= 2, head_dim >= 1; got "
                f"{blocks_per_stage}, {code_dim}, {head_dim}"
            )
        self._build_encoder(channels, blocks_per_stage)
        self._build_heads(
            2 * channels[-1]
            + (NUM_STATS if stat_features else 0)
            + (NUM_EDGE if edge_features else 0)
            + (NUM_TRACE if trace_features else 0),
            code_dim,
            head_dim,
        )
        if downscale_head:
            self.downscale_reg = _statistics_head(NUM_RESAMPLING, head_dim, hidden_layers=1)
        if motion_head:
            self.motion_reg = _statistics_head(NUM_MOTION, head_dim, hidden_layers=2)
        self._init_weights()
        # Mean projection over the training degradations (set after training, 0 = none).
        self.register_buffer("code_center", torch.zeros(code_dim))

    def _init_weights(self) -> None:
        """He init for the LeakyReLU convs (keeps the signal's scale through the unnormalised
        encoder; PyTorch's default shrinks it layer by layer), residual branches start small."""
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, a=0.1, nonlinearity="leaky_relu")
                nn.init.zeros_(mod.bias)
        for mod in self.modules():
            if isinstance(mod, _ResBlock):
                mod.conv2.weight.data.mul_(0.1)

    def _build_encoder(self, channels: tuple[int, ...], blocks: int) -> None:
        self.stem = nn.Conv2d(9 * 4, channels[0], 3, padding=1)
        stages = []
        prev = channels[0]
        for i, ch in enumerate(channels):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [nn.Conv2d(prev, ch, 3, stride=2, padding=1), _act()]
            layers += [_ResBlock(ch) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
            prev = ch
        self.stages = nn.ModuleList(stages)
        self.act = _act()

    def _build_heads(self, in_dim: int, code_dim: int, head_dim: int) -> None:
        self.proj = nn.Sequential(
            nn.Linear(in_dim, head_dim), nn.ReLU(inplace=True), nn.Linear(head_dim, code_dim)
        )
        self.reg = nn.Sequential(
            nn.Linear(in_dim, head_dim), nn.ReLU(inplace=True), nn.Linear(head_dim, 5)
        )

    @torch.no_grad()
    def set_code_center(self, center: Tensor) -> None:
        r"""Set the code centre :math:`(D,)`: the mean of ``q`` over training degradations.

        Centring makes the cosine of two codes measure how their degradations differ from
        the typical training degradation; without it every code shares a large common
        component and unrelated degradations have cosines well above 0.
        """
        if center.shape != self.code_center.shape:
            raise ValueError(
                f"center must have shape {tuple(self.code_center.shape)}, got {tuple(center.shape)}"
            )
        self.code_center.copy_(center.to(self.code_center))

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The weights Z depends on (stem and stages), in state-dict order."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("stem.", "stages."))}

    def encoder_sha256(self) -> str:
        """sha256 of :meth:`encoder_state_dict` (names and fp32 bytes): two FaDeX models with
        the same value give the same Z, whatever their heads."""
        digest = hashlib.sha256()
        for name, t in self.encoder_state_dict().items():
            digest.update(name.encode())
            digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def z_channels(self) -> int:
        """Channels of the spatial map Z."""
        return int(self.config.channels[-1])

    def encode(self, x: Tensor) -> Tensor:
        r"""The spatial map Z of a prepared pair.

        Args:
            x: :math:`(B, 6, H, W)` from :func:`prepare_pair`, H and W multiples of 8.

        Returns:
            :math:`(B, C_z, H/8, W/8)`.
        """
        if x.ndim != 4 or x.shape[1] != 6:
            raise ValueError(f"FaDeX input must be (B, 6, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 8 or x.shape[3] % 8:
            raise ValueError(f"FaDeX input sides must be multiples of 8, got {tuple(x.shape)}")
        lq, hq = x[:, :3], x[:, 3:]
        res = (lq - hq) * float(self.config.residual_gain)
        h = torch.cat([lq - 0.5, hq - 0.5, res], dim=1)
        h = self.act(self.stem(F.pixel_unshuffle(h, 2)))
        for stage in self.stages:
            h = stage(h)
        return h

    def encode_pair(self, lq: Tensor, hq: Tensor) -> Tensor:
        r"""Z alone for an (LQ, HQ) pair as :meth:`forward` takes it, without the heads' image
        statistics, edge widths and JPEG trace (what the scene model reads is Z only).

        Returns:
            :math:`(B, C_z, H/8, W/8)`, equal to ``forward(lq, hq).z``.
        """
        return self.encode(prepare_pair(lq, hq))

    def features(
        self, lq: Tensor, hq: Tensor, trace: JpegTrace | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Z and the pooled descriptor the heads read.

        Args:
            lq, hq: as :meth:`forward`.
            trace: ``trace_jpeg(lq)`` if already computed (``trace_features`` reads it).

        Returns:
            ``z`` :math:`(B, C_z, H/8, W/8)` and ``pooled`` :math:`(B, F)`: spatial mean and
            standard deviation of Z (and, as configured, the :func:`degradation_stats`, the
            :func:`edge_widths`, the JPEG trace, the resampling statistics and the directional
            spectrum, in that order).
        """
        x = prepare_pair(lq, hq)
        z = self.encode(x)
        flat = z.flatten(2)
        pooled = torch.cat([flat.mean(2), flat.std(2, unbiased=False)], dim=1)
        extra = []
        if self.config.stat_features:
            extra.append(degradation_stats(x[:, :3], x[:, 3:]))
        if self.config.edge_features:
            extra.append(edge_widths(x[:, :3], x[:, 3:]))
        if self.config.trace_features:
            trace = trace_jpeg(lq) if trace is None else trace
            found = trace.found.to(pooled)
            extra.append(torch.stack([found, found * trace.quality.to(pooled) / 100], dim=1))
        # last: the code and regression heads read the columns before them
        if self.config.downscale_head:
            extra.append(resampling_features(x[:, :3]))
        if self.config.motion_head:
            extra.append(motion_features(x[:, :3]))
        return z, torch.cat([pooled, *extra], dim=1)

    def heads(
        self, pooled: Tensor, z: Tensor | None = None, trace: JpegTrace | None = None
    ) -> FaDeXOutput:
        r"""Code and estimates from the pooled descriptor :math:`(B, F)` of :meth:`features`
        (the resampling statistics and directional spectrum at its end, with
        ``downscale_head`` / ``motion_head``, feed those heads only).

        ``z`` is passed through to the output; with ``trace`` (``trace_jpeg`` of the LQ
        crops), the JPEG estimates come from the quantisation trace where one was found.
        """
        shared = pooled[:, : self.reg[0].in_features].contiguous()
        q = F.normalize(self.proj(shared), dim=1)
        code = F.normalize(q - self.code_center, dim=1)
        r = self.reg(shared)
        end = pooled.shape[1]
        blur_sigma_px = F.softplus(r[:, 1]) * BLUR_SCALE
        motion_px = None
        if self.config.motion_head:
            end -= NUM_MOTION
            motion = self.read_motion(pooled[:, end:])
            blur_sigma_px = torch.hypot(blur_sigma_px, motion)
            motion_px = motion / MOTION_SIGMA_PER_PX
        downscale = (
            self.read_downscale(pooled[:, end - NUM_RESAMPLING : end])
            if self.config.downscale_head
            else 1.0 + F.softplus(r[:, 2])
        )
        jpeg_quality = (r[:, 3] * JPEG_SCALE + 60.0).clamp(1.0, 100.0)
        jpeg_probability = torch.sigmoid(r[:, 4])
        if trace is not None:
            found = trace.found.to(r.device)
            jpeg_quality = torch.where(found, trace.quality.to(r), jpeg_quality)
            ones = torch.ones_like(jpeg_probability)
            jpeg_probability = torch.where(found, ones, jpeg_probability)
        return FaDeXOutput(
            code=code,
            z=z,
            noise_sigma=F.softplus(r[:, 0]) * NOISE_SCALE,
            blur_sigma_px=blur_sigma_px,
            downscale=downscale,
            jpeg_quality=jpeg_quality,
            jpeg_probability=jpeg_probability,
            jpeg_logit=r[:, 4],
            q=q,
            motion_px=motion_px,
        )

    def read_downscale(self, resampling: Tensor) -> Tensor:
        r"""The downscale head's factor (>= 1) from :math:`(B, N_{resampling})`
        :func:`~face2scene_cli.archs.resampling.resampling_features` of the LQ crops
        (``downscale_head`` only)."""
        return 1.0 + F.softplus(self.downscale_reg(resampling)[:, 0])

    def read_motion(self, directional: Tensor) -> Tensor:
        r"""The motion head's equivalent Gaussian sigma (px, >= 0; a segment of L px reads
        :math:`L/\sqrt{12}`) from :math:`(B, N_{motion})`
        :func:`~face2scene_cli.archs.motion.motion_features` of the LQ crops (``motion_head``
        only)."""
        return F.softplus(self.motion_reg(directional)[:, 0])

    def forward(self, lq: Tensor, hq: Tensor, read_jpeg_trace: bool = True) -> FaDeXOutput:
        r"""Code, Z and estimates for a batch of (LQ, HQ) native crops.

        Args:
            lq: :math:`(B, C, H, W)` float in [0, 1], C in {1, 3}, H, W >= 16.
            hq: the restored crops, same shape.
            read_jpeg_trace: where the LQ crop still carries a JPEG quantisation grid
                (:func:`~face2scene_cli.archs.jpeg_trace.trace_jpeg`), report the quality
                measured from it (and ``jpeg_probability`` 1) instead of the regression head's;
                training turns it off so the heads get their gradients.

        Returns:
            :class:`FaDeXOutput`.
        """
        trace = trace_jpeg(lq) if read_jpeg_trace or self.config.trace_features else None
        z, pooled = self.features(lq, hq, trace)
        out = self.heads(pooled, z, trace if read_jpeg_trace else None)
        if self.config.motion_head:
            out.motion_angle_deg = motion_direction(lq[:, :3].float())
        return out


# ------------------------------------------------------------------------------------------
# named variants (timm-style)


def fadex_s(**overrides: object) -> FaDeX:
    """FaDeX-S: channels (32, 64, 96), 1 residual block per stage, 128-d code; the heads read
    the fixed image statistics, the edge widths and the JPEG trace; the downscale factor has a
    head of its own on the resampling statistics, a motion blur one on the directional
    spectrum (~0.60 M parameters)."""
    cfg: dict[str, object] = {
        "channels": (32, 64, 96),
        "blocks_per_stage": 1,
        "code_dim": 128,
        "stat_features": True,
        "edge_features": True,
        "trace_features": True,
        "downscale_head": True,
        "motion_head": True,
    }
    cfg.update(overrides)
    return FaDeX(**cfg)  # type: ignore[arg-type]


def fadex_tiny(**overrides: object) -> FaDeX:
    """A tiny FaDeX for tests: channels (8, 12, 16), no residual blocks, 16-d code."""
    cfg: dict[str, object] = {
        "channels": (8, 12, 16),
        "blocks_per_stage": 0,
        "code_dim": 16,
        "head_dim": 16,
    }
    cfg.update(overrides)
    return FaDeX(**cfg)  # type: ignore[arg-type]


FADEX_VARIANTS = {"fadex-s": fadex_s, "fadex-tiny": fadex_tiny}


def create_fadex(name: str, **overrides: object) -> FaDeX:
    """Build a FaDeX variant by name (``fadex-s``, ``fadex-tiny``); a ``.tag`` suffix naming
    weights (``fadex-s.insc-v1``) is ignored here. Raises ConfigError on an unknown name."""
    arch = name.split(".", 1)[0]
    if arch not in FADEX_VARIANTS:
        raise ConfigError(f"unknown FaDeX variant {name!r}; known: {', '.join(FADEX_VARIANTS)}")
    return FADEX_VARIANTS[arch](**overrides)
