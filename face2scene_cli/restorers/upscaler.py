"""A blind x4 upscaler (Real-ESRGAN x4plus, :class:`~face2scene_cli.archs.rrdbnet.RRDBNet`)
as a Stage II scene restorer: ``f2s restore --scene-model realesrgan-x4plus``.

:class:`UpscaleRestorer` has the interface the restore pipeline uses for
:class:`~face2scene_cli.restorers.scene.SceneRestorer` (``restore``, ``run_settings``,
``fp32_retries``, ``tokens_for_crops``, ``code_fadex``), but takes no degradation code
(``code_fadex`` is None): it always runs blind. It runs the network on overlapping tiles
(:func:`~face2scene_cli.restorers.tiling.run_tiled`, each tile with 10 px of context, mirrored
at the image border, as :func:`~face2scene_cli.archs.rrdbnet.upscale_image` and the ncnn
runtime do), fp32 on CPU, fp16/bf16 autocast on CUDA with an fp32 retry of a tile batch whose
output is not finite; the x4 output is then area-downscaled to the asked ``scale`` (1 or 2),
as Real-ESRGAN users run ``--outscale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.archs.rrdbnet import NCNN_PREPADDING, RRDBNet
from face2scene_cli.degradations.noise_level import NoiseCurve
from face2scene_cli.errors import ConfigError
from face2scene_cli.restorers.loading import load_realesrgan
from face2scene_cli.restorers.scene import (
    PRECISIONS,
    fitting_tile,
    resolve_precision,
    run_in_precision,
)
from face2scene_cli.restorers.tiling import run_tiled

__all__ = ["UPSCALER_TASK", "UpscaleRestorer", "load_upscale_restorer"]

#: The zoo ``task`` of models :class:`UpscaleRestorer` runs (``metadata.json``).
UPSCALER_TASK = "super-resolution-x4"


class UpscaleRestorer:
    """A blind RRDBNet upscaler behind the scene restorer's interface.

    Args:
        net: an x4 :class:`RRDBNet` (float32, eval mode).
        name: the zoo name (warnings and errors name it).
        device: where the network runs (the image stays on the CPU).
    """

    #: Activation bytes per input pixel of one fp32 tile (its x4 output's features
    #: dominate), rounded up from a measured peak; for the automatic tile size.
    BYTES_PER_PIXEL: ClassVar[int] = 20_000
    #: Upper bound of the automatic tile side (input px; the output tile is 4x that).
    MAX_TILE: ClassVar[int] = 256
    #: The FaDeX whose codes it reads: none (blind).
    code_fadex: ClassVar[str | None] = None
    #: No consistency check is calibrated for it (its outputs go unchecked).
    guard: ClassVar[None] = None
    #: Nor a deconvolution (it reads no code, so no blur either).
    deblur: ClassVar[None] = None
    #: The degradations it was trained on are not recorded (a converted model).
    trained_envelope: ClassVar[None] = None
    #: A blind network: it reads no noise curve either.
    takes_noise: ClassVar[bool] = False

    def __init__(self, net: RRDBNet, name: str, device: str | torch.device = "cpu") -> None:
        if int(net.config.scale) != 4:
            raise ConfigError(f"{name}: an x4 RRDBNet is needed, got x{net.config.scale}")
        self.name = name
        self.device = torch.device(device)
        # nn.Module.to: diffusers' ModelMixin.to may import optional peft hooks
        self.net = nn.Module.to(net, self.device, torch.float32).eval()
        #: Tile batches re-run in fp32 because their fp16/bf16 output had NaN/Inf.
        self.fp32_retries = 0

    @property
    def tile_batch(self) -> int:
        """Tiles per network call (2 on CUDA, 1 on CPU)."""
        return 2 if self.device.type == "cuda" else 1

    def run_settings(
        self, tile: int | None = None, precision: str | None = None
    ) -> tuple[int, str]:
        """The tile side (input px) and precision :meth:`restore` runs with.

        Args:
            tile: asked tile side (at least 32); None = the largest tile whose batch fits a
                quarter of the device's free memory, within [32, :attr:`MAX_TILE`].
            precision: ``fp32`` | ``fp16`` | ``bf16``; None = fp32 on CPU, fp16 on CUDA.
        """
        precision = resolve_precision(precision, self.device)
        if tile is None:
            tile = fitting_tile(self.BYTES_PER_PIXEL, self.tile_batch, self.device)
            tile = min(self.MAX_TILE, tile)
        return max(32, int(tile)), precision

    def _run_checked(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        out, retried = run_in_precision(lambda t: self.net(t).sample, x, dtype)
        self.fp32_retries += retried
        return out

    @torch.inference_mode()
    def restore(
        self,
        image: Tensor,
        tokens: Tensor | None = None,
        tile: int | None = None,
        precision: str | None = None,
        scale: int = 1,
        noise: NoiseCurve | None = None,
    ) -> Tensor:
        r"""Upscale one image x4 (tiled), then area-resize it to ``scale``.

        Args:
            image: :math:`(1, C, H, W)` float in [0, 1], C in {1, 3}, on the CPU.
            tokens: must be None (the network takes no degradation code).
            tile: tile side in input px (at least 32); None = automatic.
            precision: as :meth:`run_settings`; fp16/bf16 tile batches with NaN/Inf are
                re-run in fp32.
            scale: 1, 2 or 4: the output's size over the input's.
            noise: the input's noise curve; not used (the interface of
                :meth:`SceneRestorer.restore`).

        Returns:
            :math:`(1, C, H \cdot s, W \cdot s)` float32 in [0, 1] on the CPU.
        """
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
            raise ValueError(
                f"image must be (1, C, H, W) with C in {{1, 3}}, got {tuple(image.shape)}"
            )
        if tokens is not None:
            raise ConfigError(f"{self.name} takes no degradation code (tokens must be None)")
        if scale not in (1, 2, 4):
            raise ConfigError(f"scale must be 1, 2 or 4, got {scale}")
        tile, precision = self.run_settings(tile, precision)
        dtype = PRECISIONS[precision]
        gray = image.shape[1] == 1
        x = image.detach().float().cpu().clamp(0.0, 1.0)
        if gray:
            x = x.expand(1, 3, *x.shape[2:])
        out = run_tiled(
            lambda tiles: self._run_checked(tiles.to(self.device), dtype).cpu(),
            x,
            tile,
            1,
            None,
            self.tile_batch,
            out_scale=4,
            context=NCNN_PREPADDING,
        )
        if scale < 4:
            out = F.avg_pool2d(out, 4 // scale)  # area resize by an integer factor
        out = out.clamp(0.0, 1.0)
        return out.mean(1, keepdim=True) if gray else out

    def tokens_for_crops(self, z_maps: list[Tensor], weights: list[float] | None = None) -> Tensor:
        """Never usable: the upscaler reads no code (the pipeline checks :attr:`code_fadex`)."""
        raise ConfigError(f"{self.name} takes no degradation code; use tokens=None (blind)")


def load_upscale_restorer(
    name: str = "realesrgan-x4plus", device: str | torch.device = "cpu", root: Path | None = None
) -> UpscaleRestorer:
    """The zoo's upscaler ``name`` (verified against its metadata) as a scene restorer."""
    return UpscaleRestorer(load_realesrgan(name, device, root), name, device)
