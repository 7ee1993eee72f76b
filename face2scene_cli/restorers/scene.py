"""Stage II: the scene restorer, a scene network run on a whole photo.

:class:`SceneRestorer` loads a scene model folder (``scene.json`` + the network,
:class:`~face2scene_cli.archs.scene_net.EmbeddedSceneNet` or
:class:`~face2scene_cli.archs.turbo.TurboSceneNet`, + optionally its MapNet) and runs it on an
image of any size: overlapping tiles (:mod:`face2scene_cli.restorers.tiling`), automatic tile
size, fp32 on CPU (bf16 where the model's ``cpu_bf16`` says its output stays the same and the
CPU has native bf16), fp16/bf16 autocast on CUDA with an automatic fp32 retry of a tile batch
whose output is not finite (counted in :attr:`SceneRestorer.fp32_retries`), a colour fix
(:mod:`face2scene_cli.restorers.color`) on the assembled image, optional upscaling (``scale``
2 or 4: bicubic, then restore). Gray in, gray out. No sampling anywhere, so the output is a
deterministic function of the input on a given device.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from face2scene_cli.archs.mapnet import MapNet
from face2scene_cli.archs.scene_net import EmbeddedSceneNet
from face2scene_cli.archs.turbo import TurboSceneNet
from face2scene_cli.degradations.checks import settings_block
from face2scene_cli.degradations.noise_level import NoiseCurve
from face2scene_cli.errors import ConfigError, ModelIntegrityError
from face2scene_cli.restorers.color import COLOR_FIXES, apply_color_fix
from face2scene_cli.restorers.deblur import Deblur
from face2scene_cli.restorers.guard import GuardSettings, trained_envelope
from face2scene_cli.restorers.tiling import run_tiled
from face2scene_cli.zoo import ModelFiles, load_config_model, require_model

__all__ = [
    "PRECISIONS",
    "SCENE_JSON",
    "RestoreSettings",
    "SceneRestorer",
    "available_bytes",
    "cpu_has_native_bf16",
    "fitting_tile",
    "load_scene_restorer",
    "noise_features",
    "resolve_precision",
    "run_in_precision",
]

logger = logging.getLogger(__name__)

SCENE_JSON = "scene.json"
#: ``--precision`` choices and the dtypes they compute in.
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RestoreSettings:
    """Run settings of :class:`SceneRestorer` (stored in ``scene.json``).

    Attributes:
        kind: ``embedded`` or ``sd-turbo``.
        color_fix: ``wavelet``, ``adain`` or ``none``.
        overlap: tile overlap in px (None: an eighth of the tile, at least 32).
        tile_batch: tiles per network call (None: 4 on CUDA, 1 on CPU, where a batch of two
            512 px tiles runs ~15% slower per pixel than one).
        max_tile: upper bound of the automatic tile size.
        cpu_bf16: run in bf16 by default on a CPU with native bf16 (set once the model's
            evaluation table was measured unchanged in bf16).
        fadex: zoo name of the FaDeX the tokens were trained with.
        guard: the consistency check's limits calibrated for this model
            (:class:`~face2scene_cli.restorers.guard.GuardSettings` fields); None = unchecked.
        deblur: the deconvolution of a read blur the network leaves, calibrated for this
            model (:class:`~face2scene_cli.restorers.deblur.Deblur` fields); None = none.
    """

    kind: str = "embedded"
    color_fix: str = "none"
    overlap: int | None = None
    tile_batch: int | None = None
    max_tile: int = 512
    cpu_bf16: bool = False
    fadex: str = "fadex-s"
    guard: dict[str, Any] | None = None
    deblur: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name, cls in (("guard", GuardSettings), ("deblur", Deblur)):
            block = getattr(self, name)
            if block is not None and not isinstance(block, dict):
                raise ConfigError(f"{name} must be a mapping of its settings, got {block!r}")
            settings_block(name, block, cls)
        if self.kind not in ("embedded", "sd-turbo"):
            raise ConfigError(f"kind must be embedded or sd-turbo, got {self.kind!r}")
        if self.color_fix not in COLOR_FIXES:
            raise ConfigError(
                f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}"
            )


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CUDA: free device memory; CPU: available physical
    pages, 4 GiB when the OS does not say); sizes the automatic tile."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 4 << 30


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where oneDNN runs
    bf16 convolutions faster than fp32 instead of emulating them."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str | None, device: torch.device, cpu_bf16: bool = False) -> str:
    """``precision`` checked against :data:`PRECISIONS`; None = fp16 on CUDA, on the CPU bf16
    when ``cpu_bf16`` and the CPU has native bf16 (:func:`cpu_has_native_bf16`), else fp32."""
    if precision is None:
        if device.type == "cuda":
            precision = "fp16"
        elif device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16():
            precision = "bf16"
        else:
            precision = "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def fitting_tile(bytes_per_pixel: int, batch: int, device: torch.device) -> int:
    """Side (px) of the largest square tile whose batch of ``batch`` tiles, at
    ``bytes_per_pixel`` of activations, fits a quarter of the device's free memory."""
    budget = available_bytes(device) // 4
    return int(math.sqrt(max(1, budget // (bytes_per_pixel * batch))))


def run_in_precision(
    run: Callable[[Tensor], Tensor], x: Tensor, dtype: torch.dtype
) -> tuple[Tensor, bool]:
    """``run(x)`` as float32, under autocast when ``dtype`` is fp16/bf16; a low-precision
    output with NaN/Inf is computed again in fp32.

    Returns:
        The output, and whether it had to be re-run in fp32.
    """
    if dtype == torch.float32:
        return run(x).float(), False
    with torch.autocast(x.device.type, dtype=dtype):
        out = run(x).float()
    if bool(torch.isfinite(out).all()):
        return out, False
    logger.warning("non-finite output in %s; tile batch re-run in fp32", dtype)
    return run(x).float(), True


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
        #: Tile batches re-run in fp32 because their fp16/bf16 output had NaN/Inf, over this
        #: restorer's life (the restore pipeline reports the per-image difference as
        #: ``scene.fp32_retries``).
        self.fp32_retries = 0
        #: The extremes of the degradations it was trained on (:func:`trained_envelope` of its
        #: ``training.json``; None: not known).
        self.trained_envelope: dict[str, float] | None = None
        #: The side of the crops its training codes were read from (``data.face_crop`` of its
        #: ``training.json``): scene crops of a photo without a face are cut at this size.
        self.code_crop_side: int | None = None

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
        restorer = cls(net, settings, mapnet, device)
        if files.has("training.json"):
            training = files.read_json("training.json")
            restorer.trained_envelope = trained_envelope(training)
            side = training.get("config", {}).get("data", {}).get("face_crop")
            restorer.code_crop_side = side if isinstance(side, int) and side > 0 else None
        return restorer

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
        memory of the device, within [2 * multiple, max_tile] (an upscaler's output-resolution
        activations count s^2 per input pixel)."""
        m = int(self.net.multiple)
        per_pixel = self.BYTES_PER_PIXEL[self.settings.kind] * self.upscale**2
        side = fitting_tile(per_pixel, batch, self.device)
        side = min(self.settings.max_tile, side) // m * m
        return max(2 * m, side)

    @property
    def code_fadex(self) -> str:
        """Zoo name of the FaDeX whose codes it reads (the one it was trained with)."""
        return self.settings.fadex

    @property
    def upscale(self) -> int:
        """The network's own output scale (1: an x1 restorer; ``--scale`` is then bicubic)."""
        return int(getattr(self.net, "upscale", 1))

    @property
    def guard(self) -> GuardSettings | None:
        """The consistency check calibrated for this model (None: its outputs go unchecked)."""
        return None if self.settings.guard is None else GuardSettings(**self.settings.guard)

    @property
    def deblur(self) -> Deblur | None:
        """The deconvolution calibrated for this model (None: a read blur stays as the network
        leaves it)."""
        return None if self.settings.deblur is None else Deblur(**self.settings.deblur)

    @property
    def tile_batch(self) -> int:
        """Tiles per network call."""
        return self.settings.tile_batch or (4 if self.device.type == "cuda" else 1)

    def run_settings(
        self, tile: int | None = None, precision: str | None = None
    ) -> tuple[int, str]:
        """The tile side (px) and precision :meth:`restore` runs with for these arguments.

        Args:
            tile: asked tile side (rounded down to the net's multiple, at least 2x that);
                None = automatic from free memory.
            precision: ``fp32`` | ``fp16`` | ``bf16``; None = fp16 on CUDA, on the CPU bf16
                when the model allows it (``cpu_bf16``) and the CPU has it natively, else fp32.
        """
        precision = resolve_precision(precision, self.device, self.settings.cpu_bf16)
        m = int(self.net.multiple)
        side = self.auto_tile(self.tile_batch) if tile is None else max(2 * m, int(tile) // m * m)
        return side, precision

    def _run_checked(self, x: Tensor, tokens: Tensor | None, dtype: torch.dtype) -> Tensor:
        # channels-last input: oneDNN then runs every convolution in NHWC, ~22% faster on the
        # CPU (1 MP, 2 threads: 2.30 -> 1.80 s) with the same output to ~1e-6
        out, retried = run_in_precision(
            lambda t: self.net(t.contiguous(memory_format=torch.channels_last), tokens), x, dtype
        )
        self.fp32_retries += retried
        return out

    @property
    def takes_noise(self) -> bool:
        """Whether the model reads the photo's noise curve (its MapNet has ``noise_levels``)."""
        return self.mapnet is not None and self.mapnet.noise_embed is not None

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
        r"""Restore one image of any size.

        Args:
            image: :math:`(1, C, H, W)` float in [0, 1], C in {1, 3}, on the CPU (it stays
                there; tiles are moved to the device one batch at a time).
            tokens: :math:`(1, 21, D)` MapNet tokens; None = blind (MapNet's null tokens, or
                the network's own when there is no MapNet).
            tile: tile side in px (rounded down to the net's multiple, at least 2x that);
                None = automatic from free memory.
            precision: ``fp32`` | ``fp16`` | ``bf16``; None = fp16 on CUDA, on the CPU bf16
                when the model allows it (``cpu_bf16``) and the CPU has it natively, else fp32.
                Low precision runs under autocast; a tile batch with NaN/Inf is re-run in fp32.
            scale: 1, 2 or 4, the output's size over the input's: a learned upscaler
                (:attr:`upscale` > 1) runs on the input and its output is area-resized to
                ``scale`` when that differs; an x1 network restores the bicubic-upscaled
                input (the fallback).
            noise: the input's noise curve, read at its own size; a model that
                :attr:`takes_noise` is conditioned on it, except where it runs on a
                bicubic-upscaled input (which the curve does not describe).

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
        dtype = PRECISIONS[precision]
        gray = image.shape[1] == 1
        # 2. prepare: CPU float32 RGB, optional bicubic upscaling (x1 networks)
        x = image.detach().float().cpu().clamp(0.0, 1.0)
        up = self.upscale
        if scale > 1 and up == 1:
            x = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
            x = x.clamp(0.0, 1.0)
        if gray:
            x = x.expand(1, 3, *x.shape[2:])
        if tokens is None and self.mapnet is not None:
            tokens = self.mapnet.null_tokens(1)  # blind mode: MapNet's learned null tokens
        if noise is not None and self.takes_noise and not (scale > 1 and up == 1):
            levels = self.mapnet.config.noise_levels
            tokens = self.mapnet.with_noise(tokens, noise_features([noise], levels))
        tok = None if tokens is None else tokens.to(self.device, torch.float32)
        # 3. tiles
        out = run_tiled(
            lambda tiles: self._run_checked(tiles.to(self.device), tok, dtype).cpu(),
            x,
            tile,
            int(self.net.multiple),
            self.settings.overlap,
            self.tile_batch,
            out_scale=up,
        )
        # 4. colour fix on the assembled image, the asked size, gray back to one channel
        if up > 1:
            if self.settings.color_fix != "none":
                ref = F.interpolate(x, scale_factor=up, mode="bicubic", align_corners=False)
                out = apply_color_fix(self.settings.color_fix, out, ref.clamp(0.0, 1.0))
            if up != scale:
                size = (image.shape[-2] * scale, image.shape[-1] * scale)
                if scale < up:
                    out = F.interpolate(out, size=size, mode="area")
                else:
                    out = F.interpolate(out, size=size, mode="bicubic", align_corners=False)
        else:
            out = apply_color_fix(self.settings.color_fix, out, x)
        out = out.clamp(0.0, 1.0)
        return out.mean(1, keepdim=True) if gray else out

    def tokens_from_fadex(self, fadex_out: Any) -> Tensor:
        """MapNet tokens :math:`(B, 21, D)` from a FaDeX output (needs :attr:`mapnet`)."""
        if self.mapnet is None:
            raise ConfigError("this scene model has no MapNet; use tokens=None (blind)")
        with torch.inference_mode():
            return self.mapnet(fadex_out.z.to(self.device)).tokens.float()

    def tokens_for_crops(self, z_maps: list[Tensor], weights: list[float] | None = None) -> Tensor:
        r"""One image's tokens :math:`(1, 21, D)` from the FaDeX maps of its read crops (its
        faces, or its scene crops when it has none).

        Args:
            z_maps: per crop, FaDeX's ``z`` :math:`(1, C_z, h_i, w_i)` (crops may differ in
                size).
            weights: per crop, e.g. the face restorer's confidence; None = equal weights.

        Returns:
            The weighted mean of the crops' MapNet tokens (a single crop: its tokens).
        """
        if self.mapnet is None:
            raise ConfigError("this scene model has no MapNet; use tokens=None (blind)")
        if not z_maps:
            raise ValueError("z_maps is empty: with nothing read, call restore(tokens=None)")
        w = torch.tensor(weights if weights is not None else [1.0] * len(z_maps))
        if w.shape != (len(z_maps),) or float(w.sum()) <= 0:
            raise ValueError(
                f"need {len(z_maps)} non-negative weights with a positive sum, got {weights}"
            )
        with torch.inference_mode():
            toks = torch.cat([self.mapnet(z.to(self.device)).tokens.float() for z in z_maps])
        w = (w / w.sum()).to(toks).view(-1, 1, 1)
        return (toks * w).sum(0, keepdim=True)


def noise_features(curves: Sequence[NoiseCurve], levels: Sequence[float]) -> Tensor:
    """:math:`(B, K)` float32: each curve's fitted sigma (8-bit units) at the K ``levels``,
    what :meth:`MapNet.with_noise` takes."""
    return torch.tensor([[c.at(level) for level in levels] for c in curves], dtype=torch.float32)


def load_scene_restorer(
    name: str = "scene-embedded", device: str | torch.device = "cpu", root: Path | None = None
) -> SceneRestorer:
    """The zoo's scene model ``name``, verified against its metadata (sha256) first.

    Raises:
        NotAvailableError: no such model in the zoo.
        ModelIntegrityError: its files do not match the metadata.
    """
    info = require_model(name, root)
    return SceneRestorer.from_pretrained(info.folder, device, files=info.files_reader())
