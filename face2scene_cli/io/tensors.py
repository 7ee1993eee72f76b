"""Pixel arrays to and from torch tensors: the only part of :mod:`face2scene_cli.io` that
imports torch (reading and writing images stay torch-free)."""

from __future__ import annotations

import numpy as np
import torch


def _max_value(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise ValueError(f"dtype must be uint8 or uint16, got {dtype}")


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8/uint16 -> (1, C, H, W) float32 in [0, 1], channel order kept."""
    if pixels.ndim != 3:
        raise ValueError(f"pixels must have shape (H, W, C), got {pixels.shape}")
    scale = np.float32(1.0 / _max_value(pixels.dtype))
    arr = pixels.transpose(2, 0, 1).astype(np.float32, order="C")
    arr *= scale
    return torch.from_numpy(arr).unsqueeze(0)


def from_tensor(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) float in [0, 1] -> (H, W, C) uint8/uint16, rounded and clipped
    (NaN -> 0)."""
    dt = np.dtype(dtype)
    max_value = _max_value(dt)
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a batch of 1, got shape {tuple(t.shape)}")
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"expected (1, C, H, W) or (C, H, W), got shape {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float32)
    t = torch.nan_to_num(t, nan=0.0).clamp_(0.0, 1.0).mul_(max_value).round_()
    return np.ascontiguousarray(t.permute(1, 2, 0).numpy().astype(dt))
