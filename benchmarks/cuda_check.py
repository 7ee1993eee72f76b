"""CUDA correctness of ``f2s restore``'s networks (run by ``scripts/device_bench.sh``).

On a real photo degraded with the ``noise15`` preset (seed 0), long side ``--long-side``:

1. FaDeX + MapNet tokens read off the faces on the CPU and on ``--device`` (cosine >= 0.999);
2. the scene restorer (blind and face-code tokens), CPU fp32 vs device fp32 (PSNR >= 50 dB);
3. device fp16 and bf16 (autocast) vs device fp32 (PSNR >= 40 dB and >= 35 dB; tile batches
   re-run in fp32 because of NaN/Inf are counted);
4. device tiled (192 px) vs whole image (PSNR >= 40 dB);
5. device run twice (max abs difference <= 1e-5);
6. Real-ESRGAN x4plus (``--scene-model realesrgan-x4plus``) on a 128 px crop at x4: CPU fp32
   vs device fp32 (>= 50 dB), device fp16 vs fp32 (>= 40 dB, fp32 re-runs counted), device
   tiled (64 px) vs whole (>= 40 dB).

Writes a JSON ``{"checks": [{"check", "value", "threshold", "pass"}], ...}`` to ``--out`` and
exits 1 when a check fails. ``--device cpu`` runs the same code on the CPU (a dry run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from face2scene_cli.io.images import atomic_write_bytes
from face2scene_cli.research.metrics import psnr_torch


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr_torch(a.clamp(0, 1), b.clamp(0, 1))[0])


def _check_realesrgan(x: torch.Tensor, device: str, check: Any) -> None:
    """Step 6: Real-ESRGAN x4plus on the centre 128 px crop of ``x``, at x4."""
    from face2scene_cli.restorers.upscaler import load_upscale_restorer

    h, w = x.shape[-2:]
    crop = x[..., (h - 128) // 2 : (h + 128) // 2, (w - 128) // 2 : (w + 128) // 2]
    sr_cpu, sr = load_upscale_restorer(device="cpu"), load_upscale_restorer(device=device)
    out32 = sr.restore(crop, precision="fp32", scale=4)
    check(
        "realesrgan: PSNR(CPU fp32, device fp32) dB",
        _psnr(sr_cpu.restore(crop, precision="fp32", scale=4), out32),
        50.0,
    )
    before = sr.fp32_retries
    low = sr.restore(crop, precision="fp16", scale=4)
    check("realesrgan: PSNR(device fp16, device fp32) dB", _psnr(low, out32), 40.0)
    check("realesrgan: fp16 tile batches re-run in fp32", sr.fp32_retries - before, 0, False)
    tiled = sr.restore(crop, tile=64, precision="fp32", scale=4)
    check("realesrgan: PSNR(tiled 64 px, whole) dB", _psnr(tiled, out32), 40.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--photo", type=Path, help="default: insightface's t1.jpg")
    ap.add_argument("--long-side", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("cuda-check.json"))
    ap.add_argument(
        "--no-realesrgan", action="store_true", help="skip step 6 (its weights did not travel)"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_restore import bench_input

    from face2scene_cli.io.tensors import to_tensor
    from face2scene_cli.pipelines.restore import Face2ScenePipeline

    started = time.perf_counter()
    lq = bench_input(1.0, args.photo)
    h, w = lq.shape[:2]
    f = args.long_side / max(h, w)
    lq = lq[: int(h * f) // 8 * 8, : int(w * f) // 8 * 8] if f < 1 else lq
    x = to_tensor(lq)
    pipes = {
        dev: Face2ScenePipeline.from_pretrained(
            detector="mtcnn", face_restorer="blind", device=dev, batch_size=8
        )
        for dev in ("cpu", args.device)
    }
    faces = [ff.face for ff in pipes["cpu"].finder.find(lq)]
    if not faces:
        raise SystemExit(
            f"no face found in the {x.shape[-1]}x{x.shape[-2]} input: raise --long-side"
        )
    runs: dict[str, dict[str, Any]] = {}
    for dev, pipe in pipes.items():
        scene = pipe.scene
        reading = pipe.reader.read(lq, faces)
        z, wts = [r.z for r in reading.faces], [r.weight for r in reading.faces]
        runs[dev] = {"scene": scene, "tokens": scene.tokens_for_crops(z, wts).cpu()}
    curve = reading.noise_curve  # read on the CPU: the same for every device
    cpu, dev = runs["cpu"], runs[args.device]
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float, threshold: float, higher: bool = True) -> None:
        ok = value >= threshold if higher else value <= threshold
        checks.append({"check": name, "value": value, "threshold": threshold, "pass": ok})

    cos = torch.nn.functional.cosine_similarity(
        cpu["tokens"].flatten(), dev["tokens"].flatten(), dim=0
    )
    check("tokens: cosine(CPU, device)", float(cos), 0.999)
    scene_d = dev["scene"]
    for mode, tok in (("blind", None), ("code", dev["tokens"])):
        ref = cpu["scene"].restore(x, tok, precision="fp32", noise=curve)
        out32 = scene_d.restore(x, tok, precision="fp32", noise=curve)
        check(f"{mode}: PSNR(CPU fp32, device fp32) dB", _psnr(ref, out32), 50.0)
        for prec, floor in (("fp16", 40.0), ("bf16", 35.0)):
            before = scene_d.fp32_retries
            low = scene_d.restore(x, tok, precision=prec, noise=curve)
            check(f"{mode}: PSNR(device {prec}, device fp32) dB", _psnr(low, out32), floor)
            check(
                f"{mode}: {prec} tile batches re-run in fp32",
                scene_d.fp32_retries - before,
                0,
                False,
            )
        again = scene_d.restore(x, tok, precision="fp32", noise=curve)
        check(
            f"{mode}: device fp32 run twice, max abs diff",
            float((again - out32).abs().max()),
            1e-5,
            False,
        )
    side = max(x.shape[-2:])
    m = scene_d.net.multiple
    whole = scene_d.restore(x, None, tile=-(-side // m) * m, precision="fp32")
    tiled = scene_d.restore(x, None, tile=192, precision="fp32")
    check("tiles: PSNR(tiled 192 px, whole) dB", _psnr(tiled, whole), 40.0)
    if not args.no_realesrgan:
        _check_realesrgan(x, args.device, check)
    result = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "input": [int(x.shape[-1]), int(x.shape[-2])],
        "faces": len(faces),
        "realesrgan_checked": not args.no_realesrgan,
        "seconds": round(time.perf_counter() - started, 1),
        "checks": checks,
        "all_pass": all(c["pass"] for c in checks),
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    for c in checks:
        print(
            f"{'ok  ' if c['pass'] else 'FAIL'} {c['check']}: {c['value']:.6g} ({c['threshold']})"
        )
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
