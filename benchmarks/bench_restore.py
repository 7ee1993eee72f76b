"""``make bench``, restoration part: where the time of ``f2s restore`` goes, versus pixels.

On one real group photo (insightface's ``t1.jpg``, 6 faces; or ``--photo``) resized to each
size of ``--sizes`` (megapixels) and degraded with the ``noise15`` preset (seed 0), it times
the stages of ``f2s restore`` in one pass, as the pipeline runs them: face detection
(``detect``), Stage I + FaDeX on every face and the photo's noise curve (``degradation``),
MapNet tokens (``tokens``), the tiled scene restorer (``scene``), and their sum
(``end_to_end``); then OpenCV NLM (h 9, the
baseline) on the same input. Each size runs in a fresh process (``--one``), so its peak RSS
(and on CUDA its peak GPU memory) is its own.

At 0.25 MP only (a 512x512 input), also in a fresh process: the SD-Turbo architecture
one-step restorer (:class:`~face2scene_cli.archs.turbo.TurboSceneNet`: VAE encoder + UNet +
VAE decoder with LoRA) built with RANDOM weights from the diffusers configs in
``benchmarks/sd-turbo-architecture/`` (cost only: its output means nothing).

Real-ESRGAN x4plus (torch, the shipped ``realesrgan-x4plus`` as ``f2s restore --scene-model
realesrgan-x4plus`` runs it: tiled x4, fp32 on CPU), in a fresh process too, on a small
centre crop of the 0.25 MP input (``--realesrgan-side``, default 128x128, so 512x512 out;
it costs about 45 s per output MP on 2 CPU cores): seconds, and seconds per output and per
input megapixel.

Times are wall seconds and, beside them, this process's CPU seconds (``time.process_time``,
all its threads): on a machine shared with other jobs the CPU seconds are the stable number.
Writes ``benchmarks/results/restore.json`` (or ``--out``) and prints Markdown tables
(``--markdown-from JSON`` prints them again): per size, seconds per stage, images/s, s/MP,
peak RSS; the least-squares fits of end-to-end and scene seconds against megapixels (linear
cost: R² near 1, s/MP flat); and the ratios of SD-Turbo and NLM to our scene restorer on the
same 0.25 MP input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from face2scene_cli.io.images import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (0.25, 1.0, 4.0, 12.0)
TURBO_CONFIGS = Path(__file__).resolve().parent / "sd-turbo-architecture"
STAGES = ("detect", "degradation", "tokens", "scene")
REALESRGAN_SIDE = 128


def bench_input(megapixels: float, photo: Path | None = None) -> np.ndarray:
    """The degraded input: (H, W, 3) uint8 of about ``megapixels`` MP (aspect kept; 0.25 MP is
    exactly 512x512 so the SD-Turbo restorer needs no tiling)."""
    import cv2

    from face2scene_cli.degradations.record import PRESETS
    from face2scene_cli.degradations.sampling import apply, image_generator
    from face2scene_cli.io.images import read_image
    from face2scene_cli.io.tensors import to_tensor
    from face2scene_cli.research.sample_data import package_photos

    if photo is None:
        photo = next(p.path for p in package_photos() if p.name == "insightface/t1")
    rgb = read_image(photo).pixels[..., :3]
    if megapixels == 0.25:
        h, w = rgb.shape[:2]
        s = min(h, w)
        rgb, size = rgb[:s, (w - s) // 2 : (w - s) // 2 + s], (512, 512)
    else:
        f = (megapixels * 1e6 / (rgb.shape[0] * rgb.shape[1])) ** 0.5
        size = (round(rgb.shape[1] * f), round(rgb.shape[0] * f))
    interp = cv2.INTER_AREA if size[0] < rgb.shape[1] else cv2.INTER_CUBIC
    clean = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=interp)
    y = apply(to_tensor(clean), PRESETS["noise15"], image_generator(0, "b"))
    return (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peaks(device: str) -> dict[str, float]:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_one(megapixels: float, device: str, repeats: int, photo: Path | None) -> dict[str, Any]:
    """Stage times (median over ``repeats`` passes, after a warm-up pass below 4 MP) on one
    size, NLM on the same input, peak memory."""
    from face2scene_cli.io.tensors import to_tensor
    from face2scene_cli.pipelines.restore import Face2ScenePipeline

    lq = bench_input(megapixels, photo)
    pipe = Face2ScenePipeline.from_pretrained(
        detector="mtcnn", face_restorer="blind", device=device, batch_size=8
    )
    finder, scene, reader = pipe.finder, pipe.scene, pipe.reader
    passes: list[dict[str, float]] = []
    faces = 0
    for i in range(repeats + (megapixels < 4)):
        marks = [_clock(device)]
        found = finder.find(lq)
        marks.append(_clock(device))
        reading = reader.read(lq, [f.face for f in found])
        marks.append(_clock(device))
        tokens = None
        if reading.faces:
            tokens = scene.tokens_for_crops(
                [r.z for r in reading.faces], [r.weight for r in reading.faces]
            )
        marks.append(_clock(device))
        scene.restore(to_tensor(lq), tokens, noise=reading.noise_curve)
        marks.append(_clock(device))
        t = {}
        for j, k in enumerate(STAGES):
            t[k] = marks[j + 1][0] - marks[j][0]
            t[f"{k}_cpu"] = marks[j + 1][1] - marks[j][1]
        t["end_to_end"] = marks[-1][0] - marks[0][0]
        t["end_to_end_cpu"] = marks[-1][1] - marks[0][1]
        faces = len(reading.faces)
        if i or megapixels >= 4:
            passes.append(t)
    stages = {k: statistics.median(p[k] for p in passes) for k in passes[0]}
    nlm = _nlm_seconds(lq)
    mp = lq.shape[0] * lq.shape[1] / 1e6
    return {
        "megapixels": round(mp, 4),
        "size": [int(lq.shape[1]), int(lq.shape[0])],
        "faces_read": faces,
        "repeats": len(passes),
        "stage_s": {k: round(v, 4) for k, v in stages.items()},
        "images_per_s": round(1 / stages["end_to_end"], 4),
        "s_per_mp": round(stages["end_to_end"] / mp, 4),
        "cpu_s_per_mp": round(stages["end_to_end_cpu"] / mp, 4),
        "nlm_s": nlm,
        "tile": scene.auto_tile(scene.settings.tile_batch or (4 if device != "cpu" else 2)),
        **{k: round(v, 1) for k, v in _peaks(device).items()},
    }


def _clock(device: str) -> tuple[float, float]:
    """(wall, this process's CPU) seconds, after the device's queued work is done."""
    _sync(device)
    return time.perf_counter(), time.process_time()


def _nlm_seconds(lq: np.ndarray) -> dict[str, float]:
    """Wall and CPU seconds of OpenCV NLM (h 9, template 7, search 21) on ``lq`` (RGB uint8)."""
    import cv2

    t0 = _clock("cpu")
    cv2.fastNlMeansDenoisingColored(cv2.cvtColor(lq, cv2.COLOR_RGB2BGR), None, 9, 9, 7, 21)
    t1 = _clock("cpu")
    return {"wall": round(t1[0] - t0[0], 4), "cpu": round(t1[1] - t0[1], 4)}


def random_turbo(configs: Path) -> torch.nn.Module:
    """:class:`TurboSceneNet` (LoRA included) with random weights built from the diffusers
    ``vae_config.json`` / ``unet_config.json`` in ``configs`` (no weights are read: each
    ``from_pretrained`` of the base becomes a ``from_config``)."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from face2scene_cli.archs.turbo import TurboSceneNet

    base = Path(tempfile.mkdtemp(prefix="f2s-turbo-"))
    for sub in ("vae", "unet"):
        (base / sub).mkdir()
        (base / sub / "config.json").write_text((configs / f"{sub}_config.json").read_text())

    def from_config(cls: Any, folder: str, subfolder: str, **_: Any) -> Any:
        return cls.from_config(cls.load_config(Path(folder) / subfolder))

    torch.manual_seed(0)
    with (
        mock.patch.object(AutoencoderKL, "from_pretrained", classmethod(from_config)),
        mock.patch.object(UNet2DConditionModel, "from_pretrained", classmethod(from_config)),
    ):
        return TurboSceneNet(base=str(base))


def run_turbo(device: str, configs: Path, photo: Path | None) -> dict[str, Any]:
    """The SD-Turbo-architecture restorer (one 512 px tile), our scene restorer and NLM on the
    same 0.25 MP input, timed in this process (wall and CPU seconds)."""
    from face2scene_cli.io.tensors import to_tensor
    from face2scene_cli.restorers.scene import RestoreSettings, SceneRestorer, load_scene_restorer

    lq = bench_input(0.25, photo)
    x = to_tensor(lq)
    turbo = SceneRestorer(random_turbo(configs), RestoreSettings(kind="sd-turbo"), device=device)
    ours = load_scene_restorer("scene-embedded", device=device)
    ours.restore(x, None, tile=512)  # warm-up

    def timed(restorer: SceneRestorer) -> dict[str, float]:
        t0 = _clock(device)
        restorer.restore(x, None, tile=512)
        t1 = _clock(device)
        return {"wall": round(t1[0] - t0[0], 4), "cpu": round(t1[1] - t0[1], 4)}

    runs = [timed(turbo) for _ in range(1 if device == "cpu" else 3)]
    params = sum(p.numel() for p in turbo.net.parameters())
    return {
        "megapixels": round(x.shape[-1] * x.shape[-2] / 1e6, 4),
        "turbo": min(runs, key=lambda r: r["wall"]),
        "turbo_params_m": round(params / 1e6, 1),
        "scene_embedded": timed(ours),
        "nlm": _nlm_seconds(lq),
        **{k: round(v, 1) for k, v in _peaks(device).items()},
    }


def run_realesrgan(device: str, side: int, photo: Path | None) -> dict[str, Any]:
    """Real-ESRGAN x4plus (the scene restorer ``--scene-model realesrgan-x4plus`` builds) on
    the centre ``side`` x ``side`` crop of the 0.25 MP input, at x4: wall and CPU seconds
    (the better of 1 pass on CPU, 3 on CUDA after a warm-up), per output and input MP."""
    from face2scene_cli.io.tensors import to_tensor
    from face2scene_cli.restorers.upscaler import load_upscale_restorer

    lq = bench_input(0.25, photo)
    o = (lq.shape[0] - side) // 2
    x = to_tensor(np.ascontiguousarray(lq[o : o + side, o : o + side]))
    sr = load_upscale_restorer(device=device)
    tile, precision = sr.run_settings()
    if device != "cpu":
        sr.restore(x, scale=4)  # warm-up (kernels, autotuning)
    runs = []
    for _ in range(1 if device == "cpu" else 3):
        t0 = _clock(device)
        sr.restore(x, scale=4)
        t1 = _clock(device)
        runs.append({"wall": round(t1[0] - t0[0], 4), "cpu": round(t1[1] - t0[1], 4)})
    best = min(runs, key=lambda r: r["wall"])
    mp_in = side * side / 1e6
    return {
        "input": [side, side],
        "output": [4 * side, 4 * side],
        "tile": tile,
        "precision": precision,
        "s": best,
        "s_per_output_mp": round(best["wall"] / (16 * mp_in), 2),
        "cpu_s_per_output_mp": round(best["cpu"] / (16 * mp_in), 2),
        "s_per_input_mp": round(best["wall"] / mp_in, 1),
        **{k: round(v, 1) for k, v in _peaks(device).items()},
    }


def _child(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def linear_fit(mp: list[float], seconds: list[float]) -> dict[str, float]:
    """Least squares ``seconds = a + b * mp``: slope b (s/MP), intercept a (s), R²."""
    b, a = np.polyfit(mp, seconds, 1)
    pred = a + b * np.asarray(mp)
    ss = float(np.sum((np.asarray(seconds) - np.mean(seconds)) ** 2))
    r2 = 1 - float(np.sum((np.asarray(seconds) - pred) ** 2)) / ss if ss else 1.0
    return {"slope_s_per_mp": round(float(b), 4), "intercept_s": round(float(a), 4), "r2": r2}


def _fits(sizes: list[dict[str, Any]], stage: str) -> dict[str, dict[str, float]]:
    mp = [r["megapixels"] for r in sizes]
    return {
        "wall": linear_fit(mp, [r["stage_s"][stage] for r in sizes]),
        "cpu": linear_fit(mp, [r["stage_s"][f"{stage}_cpu"] for r in sizes]),
    }


def to_markdown(result: dict[str, Any]) -> str:
    """The tables of the README's Results section."""
    cuda = result["cuda"]
    head = [
        "MP",
        "faces",
        *(f"{k} s" for k in STAGES),
        "end-to-end s (CPU s)",
        "images/s",
        "s/MP (CPU s/MP)",
        "NLM s",
        "peak RSS MiB",
    ]
    head += ["peak GPU MiB"] if cuda else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["sizes"]:
        s = r["stage_s"]
        cells = [
            f"{r['megapixels']:.2f}",
            str(r["faces_read"]),
            *(f"{s[k]:.3f}" for k in STAGES),
            f"{s['end_to_end']:.2f} ({s['end_to_end_cpu']:.2f})",
            f"{r['images_per_s']:.3f}",
            f"{r['s_per_mp']:.2f} ({r['cpu_s_per_mp']:.2f})",
            f"{r['nlm_s']['wall']:.2f}",
            f"{r['peak_rss_mib']:.0f}",
        ]
        cells += [f"{r['peak_gpu_mib']:.0f}"] if cuda else []
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for label, key in (("end to end", "fit_end_to_end"), ("scene restorer", "fit_scene")):
        f = result[key]
        lines.append(
            f"Cost versus pixels, {label} (least squares over the sizes): wall "
            f"{f['wall']['slope_s_per_mp']:.3f} s/MP + {f['wall']['intercept_s']:.3f} s "
            f"(R² {f['wall']['r2']:.4f}); CPU {f['cpu']['slope_s_per_mp']:.3f} s/MP + "
            f"{f['cpu']['intercept_s']:.3f} s (R² {f['cpu']['r2']:.4f})."
        )
    t = result.get("turbo")
    if t:
        ours = t["scene_embedded"]
        lines += [
            "",
            "| same 0.25 MP input (512x512), same process | wall s | CPU s "
            "| ratio to ours (wall / CPU) |",
            "|---|---|---|---|",
        ]
        for name, r in (
            ("scene-embedded (ours)", ours),
            (
                f"SD-Turbo architecture, random weights ({t['turbo_params_m']:.0f} M params)",
                t["turbo"],
            ),
            ("OpenCV NLM (h 9)", t["nlm"]),
        ):
            ratio = f"{r['wall'] / ours['wall']:.1f}x / {r['cpu'] / ours['cpu']:.1f}x"
            lines.append(f"| {name} | {r['wall']:.3f} | {r['cpu']:.3f} | {ratio} |")
        lines += [
            "",
            f"SD-Turbo / NLM: {t['turbo']['wall'] / t['nlm']['wall']:.0f}x wall, "
            f"{t['turbo']['cpu'] / t['nlm']['cpu']:.0f}x CPU; peak RSS of that process "
            f"{t['peak_rss_mib']:.0f} MiB"
            + (f", peak GPU {t['peak_gpu_mib']:.0f} MiB." if cuda else "."),
        ]
    r = result.get("realesrgan")
    if r:
        (w, h), (ow, oh) = r["input"], r["output"]
        lines += [
            "",
            f"Real-ESRGAN x4plus (torch, `--scene-model realesrgan-x4plus`, {r['precision']}, "
            f"tile {r['tile']}), {w}x{h} crop of the same input to {ow}x{oh}: "
            f"{r['s']['wall']:.2f} s wall ({r['s']['cpu']:.2f} s CPU), "
            f"**{r['s_per_output_mp']:.1f} s per output MP** ({r['cpu_s_per_output_mp']:.1f} CPU "
            f"s), {r['s_per_input_mp']:.0f} s per input MP; peak RSS "
            f"{r['peak_rss_mib']:.0f} MiB"
            + (f", peak GPU {r['peak_gpu_mib']:.0f} MiB." if cuda else "."),
        ]
    lines += _ratio_lines(result)
    return "\n".join(lines) + "\n"


def _ratio_lines(result: dict[str, Any]) -> list[str]:
    """Issue 16's ratios to our end-to-end time on the same 512x512 input (the 0.25 MP size):
    the SD-Turbo architecture (goal >= 45x), Real-ESRGAN x4plus per input MP (>= 50x), NLM."""
    same = [r for r in result["sizes"] if r["size"] == [512, 512]]
    if not same:
        return []
    ours = same[0]["stage_s"]["end_to_end"] / same[0]["megapixels"]
    rows = []
    if result.get("turbo"):
        turbo = result["turbo"]["turbo"]["wall"] / same[0]["megapixels"]
        rows.append(f"SD-Turbo architecture {turbo / ours:.1f}x (goal >= 45x)")
    if result.get("realesrgan"):
        rows.append(
            f"Real-ESRGAN x4plus {result['realesrgan']['s_per_input_mp'] / ours:.0f}x per input "
            "MP (goal >= 50x)"
        )
    rows.append(f"OpenCV NLM {same[0]['nlm_s']['wall'] / same[0]['stage_s']['end_to_end']:.2f}x")
    return [
        "",
        f"Ratios to our end to end ({ours:.2f} s/MP on the 512x512 input): "
        + "; ".join(rows)
        + ".",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=list(SIZES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes below 4 MP")
    ap.add_argument("--photo", type=Path, help="input photo (default insightface's t1.jpg)")
    ap.add_argument("--turbo-configs", type=Path, default=TURBO_CONFIGS)
    ap.add_argument("--no-turbo", action="store_true")
    ap.add_argument(
        "--realesrgan-side",
        type=int,
        default=REALESRGAN_SIDE,
        help=f"side of the input crop Real-ESRGAN x4plus is timed on [{REALESRGAN_SIDE}]",
    )
    ap.add_argument("--no-realesrgan", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "restore.json")
    ap.add_argument("--markdown-from", type=Path, help="print the tables of a results JSON")
    ap.add_argument("--one", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--turbo", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--realesrgan", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.markdown_from:
        print(to_markdown(json.loads(args.markdown_from.read_text())))
        return
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if args.one is not None or args.turbo or args.realesrgan:
        import cv2

        cv2.setNumThreads(threads)
        if args.turbo:
            result = run_turbo(args.device, args.turbo_configs, args.photo)
        elif args.realesrgan:
            result = run_realesrgan(args.device, args.realesrgan_side, args.photo)
        else:
            repeats = args.repeats if args.one < 4 else 1
            result = run_one(args.one, args.device, repeats, args.photo)
        print(json.dumps(result))
        return
    common = ["--device", args.device, "--threads", str(threads), "--repeats", str(args.repeats)]
    if args.photo:
        common += ["--photo", str(args.photo)]
    load = os.getloadavg()[0]
    sizes = []
    for mp in args.sizes:
        sizes.append(_child(["--one", str(mp), *common]))
        print(f"{mp} MP: {json.dumps(sizes[-1])}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": args.device,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "threads": threads,
            "load_average_at_start": round(load, 2),
        },
        "date": time.strftime("%Y-%m-%d"),
        "cuda": args.device.startswith("cuda"),
        "sizes": sizes,
        "fit_end_to_end": _fits(sizes, "end_to_end"),
        "fit_scene": _fits(sizes, "scene"),
    }
    if not args.no_turbo:
        turbo_args = ["--turbo", *common, "--turbo-configs", str(args.turbo_configs)]
        result["turbo"] = _child(turbo_args)
    if not args.no_realesrgan:
        sr_args = ["--realesrgan", *common, "--realesrgan-side", str(args.realesrgan_side)]
        result["realesrgan"] = _child(sr_args)
    result["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(to_markdown(result))


if __name__ == "__main__":
    main()
