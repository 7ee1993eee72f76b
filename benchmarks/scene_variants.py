"""What capacity costs: scene-network variants (``scene_embedded`` with overrides) timed on
the CPU, for choosing a larger network within the speed budget (a script, not a test).

Each variant is built with random weights (speed does not depend on them) and timed as the
restorer runs it: one 512x512 channels-last tile per call under bf16 autocast (where the CPU
has native bf16) and in fp32, blind, after a warm-up call; then one training step (batch 12
of 96 px crops, or the next multiple of the network's input multiple: 128 px for five levels;
bf16 autocast, AdamW) as ``f2s train scene`` takes it. The variants are timed
in turn, ``--rounds`` times over, so that this machine's drift within minutes spreads over
all of them; medians are reported. Writes JSON (``--out``) and prints a Markdown table.

    python benchmarks/scene_variants.py --out benchmarks/results/scene_variants.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from face2scene_cli.archs.scene_net import scene_embedded
from face2scene_cli.io.images import atomic_write_bytes

VARIANTS: dict[str, dict] = {
    "scene-embedded": {},
    "layers2": {"layers_per_block": 2},
    "wide48": {"block_out_channels": (48, 96, 192)},
    "wide64": {"block_out_channels": (64, 128, 256)},
    "levels4": {"block_out_channels": (32, 64, 128, 256)},
    "levels4-wide48": {"block_out_channels": (48, 96, 128, 256)},
    "levels4-layers2": {"block_out_channels": (32, 64, 128, 256), "layers_per_block": 2},
    "levels4-attn2": {"block_out_channels": (32, 64, 128, 256), "attention_levels": 2},
    "levels5": {"block_out_channels": (32, 64, 128, 192, 256)},
    "refine64": {"refine_channels": 64},
}
"""Name -> ``scene_embedded`` overrides (the shipped network is the first)."""


def _seconds(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_variant(overrides: dict, repeats: int) -> dict[str, float]:
    """One round of a variant: inference s/MP (bf16, fp32), seconds per training step, that
    step's crop side and the network's parameters (millions)."""
    torch.manual_seed(0)
    net = scene_embedded(**overrides).eval()
    params_m = round(sum(p.numel() for p in net.parameters()) / 1e6, 2)
    tile = torch.rand(1, 3, 512, 512).contiguous(memory_format=torch.channels_last)
    mp = 512 * 512 / 1e6

    def infer(dtype: torch.dtype | None) -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bool(dtype)):
            net(tile)

    out = {
        "bf16_s_per_mp": _seconds(lambda: infer(torch.bfloat16), repeats) / mp,
        "fp32_s_per_mp": _seconds(lambda: infer(None), repeats) / mp,
    }
    net.train()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    crop = math.ceil(96 / net.multiple) * net.multiple
    x, y = torch.rand(12, 3, crop, crop), torch.rand(12, 3, crop, crop)

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16):
            pred = net(x)
        loss = (pred.float() - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    out["train_s_per_step"] = _seconds(step, repeats)
    return out | {"train_crop": crop, "params_m": params_m}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("scene_variants.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rounds: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            rounds[name].append(time_variant(VARIANTS[name], args.repeats))
    rows = {
        name: {"overrides": VARIANTS[name]}
        | {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        for name, runs in rounds.items()
    }
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "threads": args.threads,
        "rounds": args.rounds,
        "variants": rows,
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    base = rows[args.variants[0]]
    print("| variant | params M | bf16 s/MP | fp32 s/MP | train s/step (crop) | bf16 vs first |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = r["bf16_s_per_mp"] / base["bf16_s_per_mp"]
        print(
            f"| {name} | {r['params_m']} | {r['bf16_s_per_mp']} | {r['fp32_s_per_mp']} | "
            f"{r['train_s_per_step']} ({r['train_crop']} px) | {ratio:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
