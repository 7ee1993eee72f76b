"""A scene model's card numbers: the VAL evaluation with its targets, the tile check, speed.

What ``f2s models analyze SCENE_MODEL`` runs: :func:`card_evaluation` evaluates the model on
the VAL photos of the split manifest with the default
:class:`~face2scene_cli.research.eval.items.EvalConfig`, checks the scene issue's targets
and that tiling does not show (:func:`tile_check`); :func:`speed_check` times it on a real
photo (:func:`measure_speed`).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from face2scene_cli.config import EVAL_VARIANTS, EvalConfig
from face2scene_cli.errors import InputError
from face2scene_cli.io.images import read_image
from face2scene_cli.io.tensors import to_tensor
from face2scene_cli.research.eval.items import degraded_items, split_sources
from face2scene_cli.research.eval.scene import evaluate, load_models
from face2scene_cli.research.eval.tables import targets, to_markdown
from face2scene_cli.research.metrics import psnr_torch
from face2scene_cli.restorers.scene import SceneRestorer

__all__ = ["card_evaluation", "measure_speed", "photo_tensor", "speed_check", "tile_check"]

#: The photo of the tile check (a person and fine texture).
TILE_PHOTO = "skimage/astronaut"


def measure_speed(
    restorer: SceneRestorer, image: torch.Tensor, repeats: int = 3, tile: int | None = None
) -> dict[str, float]:
    """Median seconds per megapixel of :meth:`SceneRestorer.restore` on ``image``
    :math:`(1, C, H, W)`, and this process's peak RSS (GiB) afterwards."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        restorer.restore(image, None, tile=tile)
        times.append(time.perf_counter() - t)
    mp = image.shape[-1] * image.shape[-2] / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "megapixels": mp,
        "s_per_mp": float(np.median(times)) / mp,
        "peak_rss_gib": peak,
        "threads": torch.get_num_threads(),
        "runs_s": times,
    }


def photo_tensor(name: str) -> torch.Tensor:
    """The sample photo ``name`` (``f2s data list``) as :math:`(1, 3, H, W)` in [0, 1].

    Raises:
        InputError: no such photo here (a Debian photo needs ``f2s data fetch``).
    """
    from face2scene_cli.research.sample_data import all_photos

    for p in all_photos():
        if p.name == name:
            return to_tensor(read_image(p.path).pixels)[:, :3]
    raise InputError(f"photo {name!r} not available (see f2s data list)")


def speed_check(
    restorer: SceneRestorer, photo: str, megapixels: float = 0.0, repeats: int = 3
) -> dict[str, Any]:
    """Seconds per megapixel (median of ``repeats``) and peak RSS on the sample photo
    ``photo``, resized (bicubic) to ``megapixels`` first unless 0."""
    x = photo_tensor(photo)
    if megapixels:
        f = (megapixels * 1e6 / (x.shape[-1] * x.shape[-2])) ** 0.5
        size = (round(x.shape[-2] * f), round(x.shape[-1] * f))
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic").clamp(0, 1)
    return {"photo": photo, "size": list(x.shape[-2:]), **measure_speed(restorer, x, repeats)}


def tile_check(restorer: SceneRestorer, x: torch.Tensor, tile: int = 192) -> dict[str, float]:
    """PSNR (dB) between the tiled (``tile`` px) and the whole-image (one tile) result."""
    side = max(x.shape[-2:])
    m = restorer.net.multiple
    whole = restorer.restore(x, None, tile=-(-side // m) * m)
    tiled = restorer.restore(x, None, tile=tile)
    return {
        "tile": tile,
        "psnr_tiled_vs_whole": float(psnr_torch(tiled, whole)[0]),
        "max_abs_diff": float((tiled - whole).abs().max()),
    }


def card_evaluation(
    scene_model: str,
    splits: Path = Path("data/splits.yaml"),
    long_side: int | None = None,
    oracle_cache: Path | None = None,
) -> tuple[dict[str, Any], str]:
    """The model card's numbers for ``scene_model`` (a zoo name or model folder): the evaluation on
    the VAL photos of ``splits`` (the default :class:`EvalConfig`, but ``long_side`` when given),
    its targets and the tile check.

    Returns:
        The JSON-able document (the evaluation table with ``targets`` and ``tiles``) and its
        Markdown (the card's evaluation section).
    """
    variants = tuple(v for v in EVAL_VARIANTS if v != "realesrgan")  # hours on a CPU
    cfg = EvalConfig(variants=variants, **({} if long_side is None else {"long_side": long_side}))
    items = degraded_items(split_sources("val", splits), cfg)
    models = load_models(scene_model, upscaler=None)
    table = evaluate(items, models, cfg, oracle_cache=oracle_cache).table
    checks = targets(table)
    tiles = tile_check(models.scene, photo_tensor(TILE_PHOTO))
    checks.append(
        {
            "target": "tiles: PSNR(tiled at 192 px, whole) >= 40 dB (astronaut)",
            "value": round(tiles["psnr_tiled_vs_whole"], 2),
            "pass": tiles["psnr_tiled_vs_whole"] >= 40,
        }
    )
    return {**table, "targets": checks, "tiles": tiles}, to_markdown(table, checks)
