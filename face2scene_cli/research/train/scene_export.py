"""Release the scene trainer's EMA weights as a model folder (``logging.export_to``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from face2scene_cli.archs.mapnet import MapNet
from face2scene_cli.research.eval.tables import write_card
from face2scene_cli.research.train.scene_config import SceneTrainConfig
from face2scene_cli.restorers.scene import RestoreSettings, SceneRestorer
from face2scene_cli.zoo import write_metadata

__all__ = ["SCENE_TASK", "export_model"]

#: The ``task`` of a scene model's metadata (``f2s models analyze`` dispatches on it).
SCENE_TASK = "scene restoration (Stage II), conditioned on MapNet degradation tokens"


def export_model(
    folder: Path,
    net: torch.nn.Module,
    mapnet: MapNet,
    config: SceneTrainConfig,
    info: dict[str, Any],
    half: bool = True,
) -> list[str]:
    """Write the release folder: weights and configs (``save_pretrained``), ``scene.json``,
    ``metadata.json`` (``trained_with`` the FaDeX sha256; every file pinned, configs included)
    and ``training.json``; the model card (:func:`~face2scene_cli.research.eval.tables.write_card`)
    shows the training-time validation until ``f2s models analyze NAME --card`` replaces it."""

    kind = "sd-turbo" if config.network.variant.startswith("sd-turbo") else "embedded"
    settings = RestoreSettings(
        kind=kind, color_fix=config.network.color_fix, fadex=config.network.fadex
    )
    files = SceneRestorer(copy.deepcopy(net), settings, copy.deepcopy(mapnet)).save_pretrained(
        folder, half=half
    )
    (folder / "training.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    val = info.get("val", {})
    lines = [
        "Training-time validation (EMA weights; VAL photos at long side "
        f"{config.val.long_side} px; PSNR dB / SSIM, RGB uint8):",
        "",
        "| degradation | input | " + " | ".join(m for m in ("blind", "code") if m in val) + " |",
        "|---|---|" + "---|" * sum(m in val for m in ("blind", "code")),
    ]
    for deg, base in info.get("val_input", {}).items():
        cells = [f"{base['psnr']:.2f} / {base['ssim']:.3f}"]
        cells += [
            f"{val[m][deg]['psnr']:.2f} / {val[m][deg]['ssim']:.3f}"
            for m in ("blind", "code")
            if m in val
        ]
        lines.append(f"| {deg} | " + " | ".join(cells) + " |")
    write_card(folder, "\n".join(lines) + "\n")
    meta = {
        "name": config.name,  # not the folder's: a run may export elsewhere
        "version": "1",
        "task": SCENE_TASK,
        "licence": "Apache-2.0",
        "source": "trained here",
        "input": {"range": [0, 1], "channels": "RGB (gray replicated)", "any_size": True},
        "trained_with": info.get("trained_with", {}),
        "training": {k: info[k] for k in ("steps", "wall_s", "hardware", "phases") if k in info},
    }
    write_metadata(folder, meta, [*files, "scene.json", "training.json"])
    return files
