"""Release a FaDeX training run into the model zoo: weights, metadata and model card.

:func:`export_fadex` takes a run's best-validation weights (:func:`load_run_weights`),
centres the codes on training crops (:func:`estimate_code_center`), computes the held-out
table once and writes the zoo folder (``save_pretrained`` files, ``val_table.json``,
``metadata.json`` with every file pinned, ``README.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor

from face2scene_cli.archs.fadex import FaDeX
from face2scene_cli.errors import ConfigError
from face2scene_cli.research.splits import load_splits
from face2scene_cli.research.train.data import PhotoBank, make_group
from face2scene_cli.research.train.fadex_config import FaDeXTrainConfig, load_train_config
from face2scene_cli.research.train.fadex_eval import build_val_set, evaluate_fadex, table_markdown
from face2scene_cli.restorers.face.blind import BlindFaceRestorer

__all__ = ["FADEX_TASK", "estimate_code_center", "export_fadex", "load_run_weights"]

#: The ``task`` of a FaDeX release's metadata (``f2s models analyze`` dispatches on it).
FADEX_TASK = "degradation-estimation"


def load_run_weights(folder: Path) -> FaDeX:
    """A FaDeX from a ``save_pretrained`` folder of a run, tolerating a missing
    ``code_center`` buffer (weights saved before centring existed; it stays zero)."""
    folder = Path(folder)
    model = FaDeX.from_config(FaDeX.load_config(str(folder)))
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"code_center"}:
        raise ConfigError(
            f"{folder}: weights do not match FaDeX (missing {missing}, unexpected {unexpected})"
        )
    return model.eval()


@torch.inference_mode()
def estimate_code_center(
    model: FaDeX, cfg: FaDeXTrainConfig, photos: list[Any], groups: int = 48, seed: int = 99
) -> Tensor:
    """Mean unit projection ``q`` over ``groups`` x ``crops_per_group`` TRAINING crops under
    operators drawn from the training distribution (HQ as in training)."""
    rng = np.random.default_rng(seed)
    bank = PhotoBank(photos, cfg.data.base_long_side, cfg.data.crop + cfg.data.margin)
    restorer = BlindFaceRestorer()
    qs = []
    for _ in range(groups):
        g = make_group(bank, cfg.data.degradation.sample(rng), cfg.data, rng, restorer)
        qs.append(model(g.lq.float() / 255, g.hq.float() / 255).q)
    return torch.cat(qs).mean(0)


def export_fadex(
    run_dir: Path,
    dest: Path,
    *,
    command: str,
    hardware: str,
    notes: str = "",
    center_groups: int = 48,
    prior: dict[str, Any] | None = None,
) -> Path:
    """Release a run's best-validation weights into the model zoo folder ``dest``.

    The code centre is estimated on training crops (:func:`estimate_code_center`), then the
    held-out table is computed once for the released model (and once without the centre, for
    the card). Writes ``config.json`` + ``diffusion_pytorch_model.safetensors``
    (``save_pretrained``), ``metadata.json`` (:func:`face2scene_cli.zoo.write_metadata`),
    ``val_table.json`` and a ``README.md`` model card (architecture, parameters, command,
    data, steps, wall time, hardware, the validation table with the targets met or missed).
    ``prior``: an earlier training stage this run was warm-started from,
    ``{"steps", "wall_s", "description"}``; the card and metadata sum the steps and time.
    """
    from face2scene_cli.zoo import write_metadata

    run_dir, dest = Path(run_dir), Path(dest)
    best = run_dir / "best"
    best_table = json.loads((best / "val_table.json").read_text(encoding="utf-8"))
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    cfg_doc = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    tmp_cfg = run_dir / "config.export.yaml"
    tmp_cfg.write_text(yaml.safe_dump(cfg_doc), encoding="utf-8")
    tcfg = load_train_config(tmp_cfg)
    cfg = cfg_doc
    manifest = json.loads((run_dir / "data_manifest.json").read_text(encoding="utf-8"))
    model = load_run_weights(best)
    splits = load_splits(Path(tcfg.data.splits))
    val = build_val_set(tcfg, splits["val"])
    raw_table = evaluate_fadex(model, val)
    table = raw_table
    if center_groups > 0:
        model.set_code_center(estimate_code_center(model, tcfg, splits["train"], center_groups))
        table = evaluate_fadex(model, val)
    table["step"] = best_table["step"]
    if table is not raw_table:
        table["raw_q_summary"] = raw_table["summary"]
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    table_out = {k: v for k, v in table.items() if k != "crop_sources"}
    (dest / "val_table.json").write_text(json.dumps(table_out, indent=1) + "\n", encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    meta = {
        "name": dest.name,
        "version": "1",
        "task": FADEX_TASK,
        "licence": "Apache-2.0",
        "source": "trained here",
        "trained_with": {"face_restorer": table.get("hq_from", "blind-nlm/1")},
        "input": {
            "pair": "LQ face crop + HQ (restored) crop, RGB (gray replicated), float [0, 1]",
            "crop": "native resolution: axis-aligned, unrotated, unresampled; sides multiple "
            "of 8 (others cropped), trained on 64-112 px, validated at 128 px",
            "outputs": "code (unit, 128-d), Z (96 x H/8 x W/8), noise_sigma (/255), "
            "blur_sigma_px, downscale (>=1), jpeg_quality, jpeg_probability",
        },
        "architecture": "FaDeX",
        "variant": "fadex-s",
        "parameters": n_params,
        "training": {
            "steps": result["steps"] + (prior or {}).get("steps", 0),
            "best_step": table["step"],
            "wall_s": round(result["wall_s"] + (prior or {}).get("wall_s", 0.0), 1),
            "stages": ([prior] if prior else [])
            + [{"steps": result["steps"], "wall_s": round(result["wall_s"], 1)}],
        },
        "validation": table["summary"],
    }
    total_steps = result["steps"] + (prior or {}).get("steps", 0)
    total_wall = result["wall_s"] + (prior or {}).get("wall_s", 0.0)
    stages_text = f"{total_steps} in total, {total_wall / 60:.1f} min wall time" + (
        f" (stage 1: {prior['steps']} steps, {prior['wall_s'] / 60:.1f} min: "
        f"{prior['description']}; stage 2: {result['steps']} steps, "
        f"{result['wall_s'] / 60:.1f} min, best validation at stage-2 step {table['step']})"
        if prior
        else f" (best validation at step {table['step']})"
    )
    raw = raw_table["summary"]
    if center_groups > 0:
        notes = (
            f"Code centring: the released code is `normalize(q - c)`, `c` = mean of `q` over "
            f"{center_groups * tcfg.data.crops_per_group} training crops (training photos and "
            f"operators only). Without it (raw `q`): same degradation "
            f"{raw['same_degradation_cos']:.3f}, same content |cos| "
            f"{raw['same_content_abs_cos']:.3f}. The estimates do not depend on it.\n\n" + notes
        )
    files = ["config.json", "diffusion_pytorch_model.safetensors", "val_table.json"]
    train_names = ", ".join(f"`{p['name']}`" for p in manifest["train"])
    val_names = ", ".join(f"`{p['name']}`" for p in manifest["val"])
    card = f"""# fadex-s — facial degradation extractor (FaDeX-S)

Reads a degraded face crop and its restored version and returns a content-independent
degradation code (for MapNet / the scene restorer) plus estimates in physical units:
Gaussian noise sigma (/255), Gaussian blur sigma (px), resolution loss (down-then-up factor),
JPEG quality and the probability that the crop was JPEG-compressed.

## Architecture
`face2scene_cli.archs.fadex.FaDeX` ({n_params:,} parameters): (LQ, HQ, LQ-HQ) -> pixel
unshuffle x2 -> 3x3 conv -> three stages (widths {", ".join(map(str, model.config.channels))};
one residual block each, stride-2 convs between stages, LeakyReLU, no normalisation) -> Z at
1/8 resolution -> [GAP, spatial std] -> projection MLP (128-d unit code, SupCon) and a
regression MLP (five outputs).

## Input
Native-resolution, axis-aligned crops (no rotation or resampling: that would change the
noise and blur statistics and break the 8x8 JPEG grid); both crops the same size, sides
multiples of 8. The HQ crop was `{table.get("hq_from")}` (the blind baseline
`BlindFaceRestorer`) in 75% of the training pairs and the clean crop in 25%; validation
always uses the blind restorer's output.

## Training
Command: `{command}`

- Loss: supervised contrastive (temperature {cfg["train"]["temperature"]}; positives = same
  operator, {cfg["train"]["ops_per_batch"]} operators x {cfg["train"]["crops_per_op"]} crops per
  batch) + regression on parametric operators (noise, blur, downscale, JPEG quality when
  present, JPEG presence).
- Operators: blur -> downscale (down then up) -> noise -> JPEG, each present with its own
  probability, noise 0.5-30/255, blur 0.3-3 px, downscale 1.25-4, JPEG 20-95; 20% are
  Real-ESRGAN second-order samples (contrastive loss only). Applied to a region 16 px larger
  than the crop, which is then cut at a random offset (random JPEG grid phase).
- Data (`data/splits.yaml`, whole photos, sha256-pinned): training photos {train_names};
  validation (used for selection: it picks the released step; never trained on): {val_names}.
- Steps: {stages_text}; hardware: {hardware}.

## Evaluation on VAL (validation, used for selection)

{table["fig3"]["crops"]} crops of 128 px per operator.
Degraded region -> crop at an offset off the 8x8 grid -> HQ from the blind restorer ->
FaDeX. Face detection is not in this loop (the crops are face-centred regions of the held-out
people photos and regions of the held-out scenes).

{table_markdown(table)}

{notes}

## Licence
Apache-2.0; trained here from package-registry photos only (see `data/splits.yaml`).
"""
    (dest / "README.md").write_text(card, encoding="utf-8")
    write_metadata(dest, meta, files)
    return dest
