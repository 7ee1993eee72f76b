"""Zoo loaders of the networks in :mod:`face2scene_cli.archs` (which holds modules only).

Each loader verifies the zoo model against its ``metadata.json`` (sha256 of every file) and
loads it strictly; the scene restorer's own loader is
:func:`face2scene_cli.restorers.scene.load_scene_restorer`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from face2scene_cli.archs.fadex import FaDeX
from face2scene_cli.archs.rrdbnet import RRDBNet
from face2scene_cli.zoo import load_config_model, require_model

__all__ = ["load_fadex", "load_realesrgan"]


def load_fadex(name: str = "fadex-s", root: Path | None = None) -> FaDeX:
    """The verified shipped FaDeX ``name`` from the model zoo, in eval mode.

    Its ``config.json`` and weights are read through the zoo's pinned reader and loaded
    strictly (a config key or tensor FaDeX does not expect, or one it lacks, is refused).

    Raises:
        NotAvailableError / ModelIntegrityError: as :func:`face2scene_cli.zoo.require_model`
            and :func:`face2scene_cli.zoo.load_config_model` (the file is named).
    """
    info = require_model(name, root)
    return load_config_model(FaDeX, info.files_reader())


def load_realesrgan(
    name: str = "realesrgan-x4plus",
    device: str | torch.device = "cpu",
    root: Path | None = None,
) -> RRDBNet:
    """The verified RRDBNet ``name`` from the model zoo, float32 on ``device``, in eval mode.

    The zoo stores the weights in float16; they are upcast to float32 here (cast with
    ``.half()`` for fp16 inference on CUDA).

    Raises:
        NotAvailableError / ModelIntegrityError: as :func:`face2scene_cli.zoo.require_model`.
    """
    info = require_model(name, root)
    net = RRDBNet.from_pretrained(
        str(info.folder), use_safetensors=True, low_cpu_mem_usage=False, torch_dtype=torch.float32
    )
    # nn.Module.to: diffusers' ModelMixin.to may import optional peft hooks
    return nn.Module.to(net, torch.device(device), torch.float32).eval()
