"""Scene-network throughput on a GPU versus batch size and precision (run by
``scripts/device_bench.sh``; a script, not a test).

The zoo's scene model (default ``scene-embedded``) restores batches of 1024x1024 inputs (a real
photo, resized and degraded with ``noise15``) already on the device, blind (a face code
costs the same): for each precision (fp32, fp16 and bf16 autocast) and batch size, two
warm-up calls, then ``--iters`` timed calls between CUDA synchronisations. This is the
network alone (no decode, detection, tiling or encode): the ceiling that batching whole
images could reach; the per-image pipeline is timed by ``benchmarks/bench_restore.py
--device cuda``. Writes JSON (``--out``) and prints a Markdown table of images/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from face2scene_cli.degradations.record import PRESETS
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.io.images import atomic_write_bytes
from face2scene_cli.restorers.scene import load_scene_restorer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, required=True)
    ap.add_argument("--model", default="scene-embedded")
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path("gpu-throughput.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    img = Image.open(args.photo).convert("RGB").resize((args.side, args.side), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    x = apply(x, PRESETS["noise15"], torch.Generator().manual_seed(0)).clamp(0, 1).to(device)
    scene = load_scene_restorer(args.model, device)
    net = scene.net
    rows = []
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    for precision in args.precisions:
        for b in args.batches:
            xb = x.expand(b, -1, -1, -1).contiguous()
            try:
                with (
                    torch.inference_mode(),
                    torch.autocast(
                        device.type, dtype=dtypes.get(precision), enabled=precision in dtypes
                    ),
                ):
                    for _ in range(2):
                        net(xb)
                    sync()
                    t = time.perf_counter()
                    for _ in range(args.iters):
                        net(xb)
                    sync()
                dt = (time.perf_counter() - t) / args.iters
                rows.append(
                    {
                        "precision": precision,
                        "batch": b,
                        "s_per_call": dt,
                        "images_per_s": b / dt,
                        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0,
                    }
                )
            except torch.OutOfMemoryError:
                rows.append({"precision": precision, "batch": b, "error": "out of memory"})
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
    result = {
        "model": args.model,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "side": args.side,
        "rows": rows,
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"| precision | batch | images/s ({args.side}x{args.side}) | s/call | peak GiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['precision']} | {r['batch']} | {r['error']} | | |")
        else:
            print(
                f"| {r['precision']} | {r['batch']} | {r['images_per_s']:.1f} | "
                f"{r['s_per_call']:.4f} | {r['peak_gib']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
