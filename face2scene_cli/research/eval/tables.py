"""The evaluation's reports: Markdown table, case grids, the scene targets, the model card.

:func:`to_markdown` and :func:`write_results` show an evaluation
(:func:`face2scene_cli.research.eval.scene.evaluate`); :func:`targets` turns its table into
the scene issue's pass/fail list;
:func:`write_card` writes a scene model's ``README.md`` from its ``training.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from face2scene_cli.io.images import atomic_write_bytes
from face2scene_cli.research.eval.items import EvalItem
from face2scene_cli.research.eval.scene import Evaluation

__all__ = ["case_grid", "suite_grid", "targets", "to_markdown", "write_card", "write_results"]


def _gain(row: dict[str, Any]) -> float:
    v = row["variants"]
    main = next((k for k in ("code", "blind", "realesrgan", "nlm", "usm") if k in v), None)
    base = "input" if "input" in v else "bicubic"
    if main is None:
        return 0.0
    return float(v[main]["psnr"] or 0.0) - float(v[base]["psnr"] or 0.0)


def case_grid(
    item: EvalItem,
    outputs: dict[str, np.ndarray],
    scores: dict[str, dict[str, Any]] | None = None,
    height: int = 256,
) -> np.ndarray:
    """input | variants | ground truth side by side, each scaled to ``height`` px with its
    name (and PSNR from ``scores``) above: (height + 24, W, 3) uint8 RGB."""
    tiles = [*outputs.items(), ("clean", item.clean)]
    h, w = item.clean.shape[:2]
    tw = max(1, round(w * height / h))
    cols = []
    for name, img in tiles:
        interp = cv2.INTER_AREA if h > height else cv2.INTER_NEAREST
        t = cv2.resize(img, (tw, height), interpolation=interp)
        label = np.full((24, tw, 3), 255, np.uint8)
        if scores and name in scores and scores[name]["psnr"] is not None:
            name = f"{name} {scores[name]['psnr']:.2f} dB"
        cv2.putText(label, name, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cols.append(np.concatenate([label, t], axis=0))
    return np.concatenate(cols, axis=1)


def suite_grid(evaluation: Evaluation, height: int = 160) -> np.ndarray:
    """One photo under every degradation: a :func:`case_grid` row per degradation, stacked
    (the first photo with a face code, else the first photo); (N * (height + 24), W, 3) uint8
    RGB, rows padded white to the widest."""
    rows = evaluation.table["items"]
    coded = [r["image"] for r in rows if r["code_source"] == "face"]
    name = coded[0] if coded else rows[0]["image"]
    strips = [
        case_grid(evaluation.items[i], evaluation.outputs[i], rows[i]["variants"], height)
        for i, r in enumerate(rows)
        if r["image"] == name
    ]
    for strip, r in zip(strips, (r for r in rows if r["image"] == name), strict=True):
        cv2.putText(
            strip, r["degradation"], (4, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1
        )
    width = max(s.shape[1] for s in strips)
    padded = [
        np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips
    ]
    return np.concatenate(padded, axis=0)


def _cell(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def to_markdown(table: dict[str, Any], checks: list[dict[str, Any]] | None = None) -> str:
    """The evaluation as Markdown: for all items, then for the items whose code was read off a
    face, variants x metrics and PSNR / SSIM per degradation; the estimate errors; optional
    target checks."""
    cfg = table["config"]
    cols = [
        ("PSNR", "psnr", ".2f"),
        ("SSIM", "ssim", ".4f"),
        ("MS-SSIM", "ms_ssim", ".4f"),
        ("GMSD ↓", "gmsd", ".4f"),
        ("HaarPSI", "haarpsi", ".4f"),
        ("sharpness", "sharpness", ".2f"),
        ("PSNR face", "psnr_face", ".2f"),
        ("PSNR rest", "psnr_rest", ".2f"),
        ("identity dist. ↓", "identity_distance", ".3f"),
    ]
    per_degradation = (("PSNR", "psnr", ".2f"), ("PSNR face", "psnr_face", ".2f"))
    per_degradation += (("sharpness ratio", "sharpness", ".2f"),)
    lines: list[str] = []
    subsets = (
        ("All items", "variants", "by_degradation"),
        ("Items whose code was read off a face", "variants_faces", "by_degradation_faces"),
    )
    for title, key, by_key in subsets:
        means = table[key]
        if not means:
            continue
        n = next(iter(means.values()))["n"]
        lines += [f"**{title}** ({n})", ""]
        lines.append("| variant | " + " | ".join(c[0] for c in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for v, m in means.items():
            lines.append(f"| {v} | " + " | ".join(_cell(m[k], f) for _, k, f in cols) + " |")
        for label, k, f in per_degradation:
            rows = [(d, by) for d, by in table[by_key].items() if by]
            if not any(by[v][k] is not None for _, by in rows for v in by):
                continue
            lines += ["", f"| {label} | " + " | ".join(means) + " |"]
            lines.append("|---|" + "---|" * len(means))
            for d, by in rows:
                n = next(iter(by.values()))["n"]
                cells = [_cell(by[v][k], f) if v in by else "" for v in means]
                lines.append(f"| {d} ({n}) | " + " | ".join(cells) + " |")
        lines.append("")
    controls = [r["variants"] for r in table["items"] if "wrong" in r["variants"]]
    if controls:
        d = [v["code"]["psnr"] - v["wrong"]["psnr"] for v in controls]
        lines += [
            f"Wrong-code control ({len(d)} items whose code came from a face and that have "
            f"another degradation's code): code − wrong = {np.mean(d):+.2f} dB PSNR on average "
            f"(min {min(d):+.2f}, max {max(d):+.2f}); > 0 means the code carries the "
            "degradation.",
            "",
        ]
    e = table["estimate_error"]
    if e["n"]:
        lines += [
            f"FaDeX estimate error (mean absolute, {e['n']} items with a face and a known "
            f"degradation): noise σ {_cell(e['noise_sigma'], '.2f')}/255, blur σ "
            f"{_cell(e['blur_sigma_px'], '.2f')} px, downscale {_cell(e['downscale'], '.2f')}, "
            f"JPEG quality {_cell(e['jpeg_quality'], '.1f')}, JPEG detected right "
            f"{_cell(e['jpeg_detected'], '.0%')}.",
            "",
        ]
    usm = {d: f"σ {p[0]} a {p[1]}" for d, p in table.get("usm", {}).items()}
    lines.append(
        f"{cfg['items']} items (suite {cfg.get('suite', 'standard')}, scale "
        f"x{cfg.get('scale', 1)}, long side {cfg['long_side'] or 'kept'}, seed {cfg['seed']}); "
        "8-bit, whole image unless said. Face = the union of the faces "
        "detected on the clean image (face, rest and identity columns: items with such a "
        "face); identity distance = dlib ResNet, euclidean, clean face vs the same box in the "
        "output (same person < 0.6). MS-SSIM, GMSD, HaarPSI: piq 0.8.0 on RGB in [0, 1]; "
        "sharpness = mean squared Sobel gradient of the output's luma / the clean photo's (1 "
        "= as sharp as the truth, > 1 = noise or artefacts left or invented, < 1 = "
        f"over-smoothed). NLM at its best h per degradation: {table['nlm_h']}; unsharp mask "
        f"at its best σ / amount: {usm}."
    )
    if checks:
        lines += ["", "| target | value | met |", "|---|---|---|"]
        lines += [
            f"| {c['target']} | {c['value']} | {'yes' if c['pass'] else '**no**'} |" for c in checks
        ]
    return "\n".join(lines) + "\n"


def write_results(folder: Path, evaluation: Evaluation) -> list[Path]:
    """``results.json``, ``results.md``, ``grid.png`` (:func:`suite_grid`) and
    ``grid-best.png`` / ``grid-worst.png`` (the items with the largest and smallest PSNR gain of
    the face-code variant over the input, among the items whose code was read off a face when
    there are any), written atomically; returns the paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = evaluation.table["items"]
    paths = [folder / "results.json", folder / "results.md"]
    atomic_write_bytes(paths[0], (json.dumps(evaluation.table, indent=1) + "\n").encode())
    atomic_write_bytes(paths[1], to_markdown(evaluation.table).encode())
    coded = [i for i, r in enumerate(rows) if r["code_source"] == "face"]
    order = sorted(coded or range(len(rows)), key=lambda i: _gain(rows[i]))
    grids = {"grid.png": suite_grid(evaluation)}
    for label, i in (("best", order[-1]), ("worst", order[0])):
        item, outs = evaluation.items[i], evaluation.outputs[i]
        grids[f"grid-{label}.png"] = case_grid(item, outs, rows[i]["variants"])
    for name, grid in grids.items():
        atomic_write_bytes(folder / name, _png(Image.fromarray(grid)))
        paths.append(folder / name)
    return paths


def _png(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def targets(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The scene issue's targets as ``[{"target", "value", "pass"}]`` (speed and tiles
    excluded: see :mod:`~face2scene_cli.research.eval.scene_card`). Code-vs-blind targets use the
    items whose code came from a face."""
    m, rows = table["by_degradation"], table["items"]
    out: list[dict[str, Any]] = []
    main = "code" if table["variants_faces"] else "blind"

    def add(name: str, value: float | str, ok: bool) -> None:
        out.append({"target": name, "value": value, "pass": bool(ok)})

    if "noise15" in m:
        gain = m["noise15"][main]["psnr"] - m["noise15"]["input"]["psnr"]
        add(f"noise15: {main} PSNR gain over input >= +3 dB", round(gain, 2), gain >= 3.0)
    for deg, v in m.items():
        d = v[main]["psnr"] - v["nlm"]["psnr"]
        add(f"{deg}: {main} better than NLM at best h ({table['nlm_h'][deg]})", round(d, 2), d > 0)
    worse = [
        f"{r['image']}/{r['degradation']}"
        for r in rows
        if r["variants"][main]["psnr"] < r["variants"]["input"]["psnr"]
    ]
    add(f"no item worse than its input ({main})", ", ".join(worse) or "none", not worse)
    faces = {d: v for d, v in table["by_degradation_faces"].items() if "code" in v}
    if main == "code" and faces:
        diffs = {d: v["code"]["psnr"] - v["blind"]["psnr"] for d, v in faces.items()}
        avg = float(np.mean(list(diffs.values())))
        add("face-code beats blind by >= 0.2 dB on average (face items)", round(avg, 3), avg >= 0.2)
        low = min(diffs.values())
        add(
            "face-code never worse than blind by > 0.1 dB on a degradation (face items)",
            round(low, 3),
            low >= -0.1,
        )
        wrong = {
            d: v["code"]["psnr"] - v["wrong"]["psnr"] for d, v in faces.items() if "wrong" in v
        }
        if wrong:
            wmin = min(wrong.values())
            add(
                "wrong-code control lowers PSNR by >= 0.3 dB (each degradation)",
                round(wmin, 3),
                wmin >= 0.3,
            )
    return out


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
    degradation = data.get("degradation", {})
    mix = degradation.get("mix", data.get("mix"))  # 0.1 runs: data.mix
    p_clean = degradation.get("p_clean", 0.0)
    shares = f"; {p_clean:.0%} of the regions left untouched" if p_clean else ""
    for key, what in (("p_poisson", "with camera shot noise"), ("p_gray_noise", "gray noise")):
        if degradation.get(key):
            shares += f"; {degradation[key]:.0%} of the parametric draws {what}"
    fadex_sha = info.get("trained_with", {}).get("fadex")
    levels = net.get("mapnet", {}).get("noise_levels")
    noise = (
        f"\n- MapNet also reads the photo's noise curve: its fitted σ at brightness {levels}, "
        f"added to every token (left out for {tr.get('noise_dropout', 0):.0%} of the samples)."
        if levels
        else ""
    )
    text = f"""# {cfg.get("name") or folder.name}

One-step conditional UNet (diffusers `UNet2DConditionModel`, cross-attention only, 4x
pixel-unshuffled grid, residual output) **trained from scratch here** — not a pretrained
diffusion prior — with its MapNet (FaDeX degradation map -> 21 tokens). Stage II of
Face2Scene: restores the whole photo, conditioned on the degradation read off a face.

- Variant: `{net.get("variant")}` {json.dumps(net.get("overrides", {}))};
  colour fix `{net.get("color_fix")}`.
- Trained with FaDeX `{net.get("fadex")}` sha256 `{fadex_sha}` (frozen).{noise}
- Training: **{info["steps"]} steps, {info["wall_s"] / 60:.1f} min wall** on
  {info.get("hardware")}; batch {tr.get("batch")} x {tr.get("crop")} px crops.
{phases}
- Data: TRAIN photos of `data/splits.yaml` (package-shipped photos only, see `data/ASSETS.md`),
  {data.get("samples")} cached degraded regions of {data.get("region")} px (presets /
  parametric grid / Real-ESRGAN second order, mix {mix}{shares}); the code comes from
  FaDeX on a {data.get("face_crop")} px face-sized crop of the same degraded region and its
  BlindFaceRestorer output; condition dropout {tr.get("cond_dropout")} in the code phase.
- Loss: Charbonnier + {tr.get("w_ssim")} (1 - SSIM) + {tr.get("w_grad")} gradient L1 +
  {tr.get("w_fft")} FFT-amplitude L1; lr {tr.get("lr")}, grad clip {tr.get("grad_clip")};
  EMA ({tr.get("ema")}) weights exported, stored in float16.
- Licence: Apache-2.0. Weights: safetensors (`net/`, `mapnet/`).

## Evaluation on VAL (validation, used for selection)

{evaluation}
{extra}
"""
    (folder / "README.md").write_text(text, encoding="utf-8")
