"""Training checkpoints without pickle, shared by the FaDeX and scene trainers.

A checkpoint folder holds ``model.safetensors`` (weights), ``optimizer.safetensors``
(optimizer tensors and the torch RNG state) and ``state.json`` (step, wall time, the
trainer's own fields, the optimizer's param groups and scalar state); it is replaced
atomically (written beside, then renamed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(
    folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Training state without pickle: weights + optimizer tensors in safetensors, the rest
    (step, wall time, param-group settings, RNG states) in JSON."""
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
        str(tmp / "model.safetensors"),
    )
    osd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in osd["state"].items():
        for key, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"{pid}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = val
    tensors["torch_rng"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = dict(state)
    meta["optimizer"] = {"param_groups": osd["param_groups"], "scalars": scalars}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        if old.exists():
            for p in old.iterdir():
                p.unlink()
            old.rmdir()
        folder.rename(old)
        tmp.rename(folder)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        tmp.rename(folder)


def load_checkpoint(
    folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into ``model`` (strictly) and ``opt``, and
    the torch RNG state; returns the saved ``state`` dict (with the optimizer's settings)."""
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    for key, val in meta["optimizer"]["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta
