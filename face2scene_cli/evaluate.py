"""Evaluation of the Stage II scene restorer against the issue's targets (``f2s eval`` can wrap it).

On the VAL photos of ``data/splits.yaml`` (area-downscaled to ``long_side``, 8-bit), under the
presets ``noise15``, ``blur-noise``, ``mixed`` and the Real-ESRGAN second-order pipeline
(fixed seeds), it reports PSNR and SSIM on RGB uint8 over the whole image for:

* ``input`` — the degraded image;
* ``nlm`` — OpenCV ``fastNlMeansDenoisingColored`` (template 7, search 21) at its best ``h`` in
  {3, 5, ..., 25} per degradation (the best mean PSNR over the val images: an oracle baseline);
* ``blind`` — the restorer with MapNet's null tokens;
* ``code`` — tokens from FaDeX on a face-sized crop of the SAME degraded image (a dlib face in
  people photos, else the centre) paired with its :class:`BlindFaceRestorer` output, as at
  inference;
* ``upper`` — tokens from FaDeX on that crop paired with the CLEAN crop (upper bound);
* ``wrong`` — tokens from the same image under ANOTHER degradation (control: must hurt).

:func:`targets` turns the table into the issue's pass/fail list; :func:`to_markdown` renders
both; :func:`measure_speed` times the restorer (s per megapixel, peak RSS).
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from face2scene_cli.metrics import psnr, ssim
from face2scene_cli.stages.face_restore import BlindFaceRestorer
from face2scene_cli.stages.scene import SceneRestorer

__all__ = [
    "EvalConfig",
    "evaluate_scene",
    "measure_speed",
    "targets",
    "to_markdown",
    "write_card",
]

logger = logging.getLogger(__name__)

#: The wrong-code control: degradation -> the degradation whose code it is given.
WRONG_CODE = {"noise15": "blur-noise", "blur-noise": "noise15", "mixed": "noise15"}
MODES = ("input", "nlm", "blind", "code", "upper", "wrong")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on (defaults = the numbers in the model card)."""

    splits: str = "data/splits.yaml"
    long_side: int = 512
    presets: tuple[str, ...] = ("noise15", "blur-noise", "mixed")
    second_order_seeds: tuple[int, ...] = (7, 8)
    face_crop: int = 96
    nlm_h: tuple[int, ...] = tuple(range(3, 26, 2))
    tile: int | None = None


def _u8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8."""
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _nlm(lq: np.ndarray, h: int) -> np.ndarray:
    bgr = cv2.cvtColor(lq, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def _scores(out: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    return {"psnr": psnr(out, clean), "ssim": ssim(out, clean)}


def evaluate_scene(
    restorer: SceneRestorer | None,
    fadex: torch.nn.Module | None,
    config: EvalConfig | None = None,
    items: list[Any] | None = None,
    nlm_cache: Path | None = None,
) -> dict[str, Any]:
    """The evaluation table (see the module docstring).

    Args:
        restorer: the scene restorer (with its MapNet for the code modes).
        fadex: the frozen FaDeX the restorer was trained with; None = blind modes only.
        config: what to evaluate on.
        items: pre-built :class:`face2scene_cli.train.scene.ValItem` list (tests); None = the
            val split.
        nlm_cache: a JSON file keeping the NLM scores between runs (they do not depend on the
            model); None = recompute. ``restorer=None`` only fills it.

    Returns:
        ``{"rows": [{"image", "degradation", "mode", "psnr", "ssim", ...}], "means":
        {degradation: {mode: {"psnr", "ssim"}}}, "nlm_h": {degradation: h}, "config": ...}``.
    """
    from face2scene_cli.train.data import load_splits
    from face2scene_cli.train.scene import ValSection, build_val_items

    cfg = config or EvalConfig()
    if items is None:
        photos = load_splits(Path(cfg.splits))["val"]
        vs = ValSection(
            long_side=cfg.long_side,
            presets=cfg.presets,
            second_order_seeds=cfg.second_order_seeds,
            face_crop=cfg.face_crop,
        )
        items = build_val_items(photos, vs, BlindFaceRestorer())
    coded = fadex is not None and restorer is not None and restorer.mapnet is not None
    tokens: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    if coded:
        with torch.inference_mode():
            for it in items:
                code = restorer.mapnet(fadex(it.face_lq, it.face_hq).z).tokens
                upper = restorer.mapnet(fadex(it.face_lq, it.face_clean).z).tokens
                tokens[(it.name, it.degradation)] = {"code": code, "upper": upper}
    rows: list[dict[str, Any]] = []
    nlm: dict[tuple[str, str, int], dict[str, float]] = {}
    stored = {}
    if nlm_cache is not None and nlm_cache.is_file():
        stored = json.loads(nlm_cache.read_text(encoding="utf-8"))
    for it in items:
        clean, lq = _u8(it.clean), _u8(it.lq)
        base = {"image": it.name, "degradation": it.degradation}
        rows.append({**base, "mode": "input", **_scores(lq, clean)})
        for h in cfg.nlm_h:
            key = f"{it.name}|{it.degradation}|{cfg.long_side}|{h}"
            if key not in stored:
                stored[key] = _scores(_nlm(lq, h), clean)
            nlm[(it.name, it.degradation, h)] = stored[key]
        if nlm_cache is not None:
            nlm_cache.parent.mkdir(parents=True, exist_ok=True)
            nlm_cache.write_text(json.dumps(stored), encoding="utf-8")
        if restorer is None:
            continue
        modes: dict[str, torch.Tensor | None] = {"blind": None}
        if coded:
            key = (it.name, it.degradation)
            wrong_deg = WRONG_CODE.get(it.degradation, "noise15")
            modes.update(
                code=tokens[key]["code"],
                upper=tokens[key]["upper"],
                wrong=tokens[(it.name, wrong_deg)]["code"],
            )
        for mode, tok in modes.items():
            out = restorer.restore(it.lq, tok, tile=cfg.tile)
            rows.append({**base, "mode": mode, **_scores(_u8(out), clean)})
    # NLM at its best h per degradation (mean PSNR over the images)
    best_h: dict[str, int] = {}
    for deg in sorted({it.degradation for it in items}):
        names = [it.name for it in items if it.degradation == deg]
        mean = {h: np.mean([nlm[(n, deg, h)]["psnr"] for n in names]) for h in cfg.nlm_h}
        best_h[deg] = int(max(mean, key=lambda h: mean[h]))
        for n in names:
            rows.append(
                {
                    "image": n,
                    "degradation": deg,
                    "mode": "nlm",
                    "h": best_h[deg],
                    **nlm[(n, deg, best_h[deg])],
                }
            )
    means: dict[str, dict[str, dict[str, float]]] = {}
    for deg in sorted({r["degradation"] for r in rows}):
        means[deg] = {}
        for mode in MODES:
            sel = [r for r in rows if r["degradation"] == deg and r["mode"] == mode]
            if sel:
                means[deg][mode] = {
                    k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "ssim")
                }
    return {"rows": rows, "means": means, "nlm_h": best_h, "config": cfg.__dict__}


def targets(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as ``[{"target", "value", "pass"}]`` (speed and tiles excluded:
    see :func:`measure_speed` and the tiling test)."""
    m, rows = table["means"], table["rows"]
    out: list[dict[str, Any]] = []
    main = "code" if any("code" in v for v in m.values()) else "blind"

    def add(name: str, value: float | str, ok: bool) -> None:
        out.append({"target": name, "value": value, "pass": bool(ok)})

    if "noise15" in m:
        gain = m["noise15"][main]["psnr"] - m["noise15"]["input"]["psnr"]
        add(f"noise15: {main} PSNR gain over input >= +3 dB", round(gain, 2), gain >= 3.0)
    for deg, v in m.items():
        d = v[main]["psnr"] - v["nlm"]["psnr"]
        add(f"{deg}: {main} better than NLM at best h ({table['nlm_h'][deg]})", round(d, 2), d > 0)
    by = {(r["image"], r["degradation"], r["mode"]): r for r in rows}
    worse = [
        f"{i}/{d}"
        for (i, d, mode), r in by.items()
        if mode == main and r["psnr"] < by[(i, d, "input")]["psnr"]
    ]
    add(f"no val image worse than its input ({main})", ", ".join(worse) or "none", not worse)
    if main == "code":
        diffs = {deg: v["code"]["psnr"] - v["blind"]["psnr"] for deg, v in m.items()}
        avg = float(np.mean(list(diffs.values())))
        add("face-code beats blind by >= 0.2 dB on average", round(avg, 3), avg >= 0.2)
        low = min(diffs.values())
        add(
            "face-code never worse than blind by > 0.1 dB on a degradation",
            round(low, 3),
            low >= -0.1,
        )
        wrong = {
            deg: v["code"]["psnr"] - v["wrong"]["psnr"] for deg, v in m.items() if deg in WRONG_CODE
        }
        wmin = min(wrong.values())
        add(
            "wrong-code control lowers PSNR by >= 0.3 dB (each preset)", round(wmin, 3), wmin >= 0.3
        )
    return out


def to_markdown(table: dict[str, Any], checks: list[dict[str, Any]] | None = None) -> str:
    """The means table (PSNR / SSIM per degradation and mode) and the target checks."""
    modes = [mo for mo in MODES if any(mo in v for v in table["means"].values())]
    lines = ["| degradation | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for deg, v in table["means"].items():
        cells = [f"{v[mo]['psnr']:.2f} / {v[mo]['ssim']:.3f}" if mo in v else "-" for mo in modes]
        lines.append(f"| {deg} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "PSNR (dB) / SSIM, RGB uint8, whole image, mean over the val photos; "
        f"NLM h per degradation: {table['nlm_h']}."
    )
    if checks:
        lines += ["", "| target | value | met |", "|---|---|---|"]
        lines += [
            f"| {c['target']} | {c['value']} | {'yes' if c['pass'] else '**no**'} |" for c in checks
        ]
    return "\n".join(lines) + "\n"


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


def write_card(folder: Path, evaluation: str, extra: str = "") -> None:
    """Write ``folder/README.md`` (the model card) from ``training.json`` and an evaluation
    section (markdown)."""
    info = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    cfg = info.get("config", {})
    net = cfg.get("network", {})
    phases = "\n".join(
        f"- `{p.get('run')}`: {p['steps']} steps, {p['wall_s'] / 60:.1f} min, "
        f"condition `{p.get('condition')}`"
        for p in info.get("phases", [])
    )
    tr, data = cfg.get("train", {}), cfg.get("data", {})
    fadex_sha = info.get("trained_with", {}).get("fadex")
    text = f"""# {folder.name}

One-step conditional UNet (diffusers `UNet2DConditionModel`, cross-attention only, 4x
pixel-unshuffled grid, residual output) **trained from scratch here** — not a pretrained
diffusion prior — with its MapNet (FaDeX degradation map -> 21 tokens). Stage II of
Face2Scene: restores the whole photo, conditioned on the degradation read off a face.

- Variant: `{net.get("variant")}` {json.dumps(net.get("overrides", {}))};
  colour fix `{net.get("color_fix")}`.
- Trained with FaDeX `{net.get("fadex")}` sha256 `{fadex_sha}` (frozen).
- Training: **{info["steps"]} steps, {info["wall_s"] / 60:.1f} min wall** on
  {info.get("hardware")}; batch {tr.get("batch")} x {tr.get("crop")} px crops.
{phases}
- Data: TRAIN photos of `data/splits.yaml` (package-shipped photos only, see ASSETS.md),
  {data.get("samples")} cached degraded regions of {data.get("region")} px (presets /
  parametric grid / Real-ESRGAN second order, mix {data.get("mix")}); the code comes from
  FaDeX on a {data.get("face_crop")} px face-sized crop of the same degraded region and its
  BlindFaceRestorer output; condition dropout {tr.get("cond_dropout")} in the code phase.
- Loss: Charbonnier + {tr.get("w_ssim")} (1 - SSIM) + {tr.get("w_grad")} gradient L1 +
  {tr.get("w_fft")} FFT-amplitude L1; lr {tr.get("lr")}, grad clip {tr.get("grad_clip")};
  EMA ({tr.get("ema")}) weights exported, stored in float16.
- Licence: Apache-2.0. Weights: safetensors (`net/`, `mapnet/`).

## Evaluation

{evaluation}
{extra}
"""
    (folder / "README.md").write_text(text, encoding="utf-8")


def _photo_tensor(name: str) -> torch.Tensor:
    from face2scene_cli.imageio import read_image, to_tensor
    from face2scene_cli.sample_data import all_photos

    for p in all_photos():
        if p.name == name:
            return to_tensor(read_image(p.path).pixels)[:, :3]
    raise SystemExit(f"photo {name!r} not available")


def _speed_check(args: Any) -> dict[str, Any]:
    """Seconds per megapixel (median of ``repeats``) and peak RSS on a real photo."""
    restorer = SceneRestorer.from_pretrained(args.model)
    x = _photo_tensor(args.photo)
    if args.megapixels:
        f = (args.megapixels * 1e6 / (x.shape[-1] * x.shape[-2])) ** 0.5
        size = (round(x.shape[-2] * f), round(x.shape[-1] * f))
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic").clamp(0, 1)
    return {
        "photo": args.photo,
        "size": list(x.shape[-2:]),
        **measure_speed(restorer, x, repeats=args.repeats),
    }


def tile_check(restorer: SceneRestorer, x: torch.Tensor, tile: int = 192) -> dict[str, float]:
    """PSNR (dB) between the tiled (``tile`` px) and the whole-image (one tile) result."""
    from face2scene_cli.metrics import psnr_torch

    side = max(x.shape[-2:])
    m = restorer.net.multiple
    whole = restorer.restore(x, None, tile=-(-side // m) * m)
    tiled = restorer.restore(x, None, tile=tile)
    return {
        "tile": tile,
        "psnr_tiled_vs_whole": float(psnr_torch(tiled, whole)[0]),
        "max_abs_diff": float((tiled - whole).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m face2scene_cli.evaluate --model models/scene-embedded [--out F] [--speed]``."""
    import argparse

    from face2scene_cli.stages.fadex import FaDeX
    from face2scene_cli.zoo import models_dir, require_model

    ap = argparse.ArgumentParser(prog="python -m face2scene_cli.evaluate")
    ap.add_argument("--model", type=Path, default=Path("models/scene-embedded"))
    ap.add_argument("--fadex", default="fadex-s")
    ap.add_argument("--out", type=Path, default=Path("runs/eval-scene.json"))
    ap.add_argument("--long-side", type=int, default=EvalConfig.long_side)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nlm-cache", type=Path, default=Path("runs/eval-nlm-cache.json"))
    ap.add_argument("--nlm-only", action="store_true", help="only fill the NLM cache")
    ap.add_argument("--speed", action="store_true", help="time the restorer on a real photo")
    ap.add_argument("--photo", default="mate/storm", help="photo for --speed")
    ap.add_argument(
        "--megapixels",
        type=float,
        default=0.0,
        help="--speed: resize the photo to this many megapixels first",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--card", action="store_true", help="write the model card (README.md)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    if args.speed:
        print(json.dumps(_speed_check(args)))
        return 0
    if args.nlm_only:
        evaluate_scene(None, None, EvalConfig(long_side=args.long_side), nlm_cache=args.nlm_cache)
        return 0
    restorer = SceneRestorer.from_pretrained(args.model)
    fadex = None
    if (models_dir() / args.fadex / "metadata.json").is_file():
        require_model(args.fadex)
        fadex = FaDeX.from_pretrained(
            str(models_dir() / args.fadex), use_safetensors=True, low_cpu_mem_usage=False
        ).eval()
    table = evaluate_scene(
        restorer, fadex, EvalConfig(long_side=args.long_side), nlm_cache=args.nlm_cache
    )
    checks = targets(table)
    tiles = tile_check(restorer, _photo_tensor("skimage/astronaut"))
    checks.append(
        {
            "target": "tiles: PSNR(tiled at 192 px, whole) >= 40 dB (astronaut)",
            "value": round(tiles["psnr_tiled_vs_whole"], 2),
            "pass": tiles["psnr_tiled_vs_whole"] >= 40,
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({**table, "targets": checks, "tiles": tiles}, indent=1), encoding="utf-8"
    )
    md = to_markdown(table, checks)
    if args.card:
        write_card(args.model, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
