"""Tiled running of a position-local network on an image of any size.

Overlapping tiles blended with raised-cosine weights, batched and streamed: only the current
tile batch goes through ``run`` (which moves it to the device and back), the image and the
accumulators stay on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["blend_window", "fitted_tile", "run_tiled", "tile_starts"]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least
    ``overlap`` px between neighbours; the last tile ends at ``length``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def fitted_tile(length: int, tile: int, overlap: int, multiple: int) -> int:
    """The tile side along one axis of ``length`` px: no larger than ``tile`` (a multiple of
    ``multiple``), covering it with as few tiles as ``tile`` needs, each as small as that
    count allows (rounded up to ``multiple``), so the tiles share little more than ``overlap``
    instead of the last one's slack. A 1202 px side at ``tile`` 512, overlap 64: three tiles
    of 448 px instead of three of 512 (1.12x the side's pixels instead of 1.28x)."""
    padded = math.ceil(length / multiple) * multiple
    if padded <= tile:
        return padded
    n = math.ceil((padded - tile) / (tile - overlap)) + 1
    side = math.ceil(math.ceil((padded + (n - 1) * overlap) / n) / multiple) * multiple
    return min(tile, side)


def blend_window(
    tile: int, overlap: int, first: bool, last: bool, device: torch.device | None = None
) -> Tensor:
    r"""1-D raised-cosine weights :math:`(T,)`: 1 inside, ramping smoothly to ~0 over
    ``overlap`` px at an edge shared with a neighbour (not at an image border)."""
    w = torch.ones(tile, dtype=torch.float32, device=device)
    if overlap > 0:
        i = torch.arange(overlap, dtype=torch.float32, device=device)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / overlap)
        if not first:
            w[:overlap] = ramp
        if not last:
            w[tile - overlap :] = ramp.flip(0)
    return w


def run_tiled(
    run: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int,
    multiple: int,
    overlap: int | None,
    batch: int,
    out_scale: int = 1,
    context: int = 0,
) -> Tensor:
    r"""Run ``run`` over overlapping tiles of ``x`` and blend the results.

    Args:
        run: maps a CPU tile batch :math:`(N, 3, T_h + 2c, T_w + 2c)` to a CPU float32
            result :math:`(N, 3, s(T_h + 2c), s(T_w + 2c))` (N <= ``batch``; s =
            ``out_scale``, c = ``context``).
        x: :math:`(1, 3, H, W)` float32 on the CPU.
        tile: tile side in px, a multiple of ``multiple``; an image side smaller than it is
            padded (reflect, replicate when too small) to a multiple of ``multiple`` instead.
        multiple: the sides ``run`` accepts are multiples of this.
        overlap: px shared by neighbouring tiles (None: an eighth of the tile, at least 32;
            at most half the tile).
        batch: tiles per ``run`` call.
        out_scale: s, the output's size over the input's (4 for an x4 upscaler).
        context: c, input px of context around every tile, cut from the image (mirrored,
            ``reflect``, at its border; at most the image side - 1) and cropped off the
            result again, as the realesrgan-ncnn runtime pads its tiles.

    Returns:
        :math:`(1, 3, sH, sW)` float32 on the CPU.
    """
    m = multiple
    h, w = x.shape[2:]
    ov = max(32, tile // 8) if overlap is None else int(overlap)
    # pad (reflect, replicate when too small) to multiples of m, at least one tile if small
    th = fitted_tile(h, tile, min(ov, tile // 2), m)
    tw = fitted_tile(w, tile, min(ov, tile // 2), m)
    ph, pw = max(th, math.ceil(h / m) * m) - h, max(tw, math.ceil(w / m) * m) - w
    mode = "reflect" if ph < h and pw < w else "replicate"
    xp = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
    hp, wp = xp.shape[2:]
    c = max(0, min(context, hp - 1, wp - 1))
    xc = F.pad(xp, (c, c, c, c), mode="reflect") if c else xp
    s = out_scale
    ys, xs = tile_starts(hp, th, min(ov, th // 2)), tile_starts(wp, tw, min(ov, tw // 2))
    acc = torch.zeros(1, 3, hp * s, wp * s)
    wsum = torch.zeros(1, 1, hp * s, wp * s)
    boxes = [(y, xx) for y in ys for xx in xs]
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        tiles = torch.cat([xc[..., y : y + th + 2 * c, xx : xx + tw + 2 * c] for y, xx in chunk])
        res = run(tiles)
        if c:
            res = res[..., c * s : (c + th) * s, c * s : (c + tw) * s]
        for j, (y, xx) in enumerate(chunk):
            oy, ox = min(ov, th // 2) * s, min(ov, tw // 2) * s
            wy = blend_window(th * s, oy if len(ys) > 1 else 0, y == ys[0], y == ys[-1])
            wx = blend_window(tw * s, ox if len(xs) > 1 else 0, xx == xs[0], xx == xs[-1])
            wt = wy[:, None] * wx[None, :]
            acc[..., y * s : (y + th) * s, xx * s : (xx + tw) * s] += res[j] * wt
            wsum[..., y * s : (y + th) * s, xx * s : (xx + tw) * s] += wt
    return (acc / wsum)[..., : h * s, : w * s]
