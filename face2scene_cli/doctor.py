"""Facts about this installation for ``f2s doctor``: Python, torch, devices, backends, models."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any

from face2scene_cli import __version__
from face2scene_cli.allocator import (
    POLICY_ENV,
    allocator,
    find_tcmalloc,
    policy,
    preload_allowed,
)
from face2scene_cli.external import insightface_pack
from face2scene_cli.registry import available
from face2scene_cli.zoo import ModelInfo, list_models, models_dir, verify_model

# (distribution, import name, what f2s uses it for)
OPTIONAL_BACKENDS: tuple[tuple[str, str, str], ...] = (
    ("insightface", "insightface", "SCRFD detector + ArcFace identity (needs the buffalo_l pack)"),
    ("onnxruntime", "onnxruntime", "runs the insightface models"),
    ("dlib-bin", "dlib", "offline face detector, landmarks and identity embeddings"),
    ("face-recognition-models", "face_recognition_models", "dlib model files"),
    ("mediapipe", "mediapipe", "BlazeFace / FaceMesh"),
    ("peft", "peft", "LoRA for the sd-turbo scene restorer"),
    ("ray", "ray", "--engine ray"),
    ("piq", "piq", "f2s eval's MS-SSIM, GMSD, HaarPSI (pip install --no-deps piq==0.8.0)"),
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_facts() -> dict[str, Any]:
    """torch version, thread count and the accelerators it can see."""
    import torch

    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda.append(
                {
                    "index": i,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "bf16": torch.cuda.is_bf16_supported(),
                }
            )
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": cuda,
        "mps": mps,
        "default_device": "cuda" if cuda else ("mps" if mps else "cpu"),
    }


def backend_facts() -> list[dict[str, Any]]:
    """Which optional backends are importable, with their versions."""
    facts = []
    for dist, module, purpose in OPTIONAL_BACKENDS:
        available = importlib.util.find_spec(module) is not None
        entry: dict[str, Any] = {
            "name": dist,
            "available": available,
            "version": _version(dist),
            "purpose": purpose,
        }
        if dist == "insightface":
            pack = insightface_pack()
            entry["buffalo_l"] = str(pack) if pack else None
        facts.append(entry)
    return facts


def model_facts() -> list[dict[str, Any]]:
    """Each zoo model with its verification result."""
    facts = []
    for entry in list_models():
        if isinstance(entry, ModelInfo):
            problems = verify_model(entry)
            facts.append(
                {
                    "name": entry.name,
                    "version": entry.version,
                    "task": entry.task,
                    "verified": not problems,
                    "problems": problems,
                }
            )
        else:
            facts.append({"name": None, "verified": False, "problems": [str(entry)]})
    return facts


def allocator_facts() -> dict[str, Any]:
    """The allocator batch commands run on: one already in ``LD_PRELOAD``, else tcmalloc
    where the system has it (unless ``F2S_ALLOCATOR=system``), else the system's."""
    library = find_tcmalloc()
    return {
        "batch_commands": "tcmalloc" if library and preload_allowed() else allocator(),
        "tcmalloc": str(library) if library else None,
        "policy": f"{POLICY_ENV}={policy()}",
    }


def environment_report() -> dict[str, Any]:
    """Everything ``f2s doctor`` shows, as JSON-ready data."""
    return {
        "f2s": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch_facts(),
        "allocator": allocator_facts(),
        "backends": backend_facts(),
        "models_dir": str(models_dir()),
        "models": model_facts(),
        "face_restorers": available("face_restorer"),
    }
