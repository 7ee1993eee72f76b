"""``f2s eval`` on tiny real datasets; its numbers recomputed independently (numpy, OpenCV,
scikit-image), not only its files checked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import missing_data, run_f2s
from PIL import Image
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from face2scene_cli.cli.app import app
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import apply, image_seed
from face2scene_cli.errors import ConfigError
from face2scene_cli.research import sample_data
from face2scene_cli.research.metrics import piq_metric

# (photo, left, top, side): square crops around one face, resized to 112 px
CROPS = {"skimage/astronaut": (110, 0, 240), "insightface/t1": (820, 0, 280)}
SIDE = 112
SEED = 3


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    by_name = {p.name: p for p in sample_data.package_photos()}
    if any(n not in by_name for n in CROPS):
        missing_data("scikit-image / insightface sample photos not installed")
    root = tmp_path_factory.mktemp("eval") / "clean"
    root.mkdir()
    for name, (x, y, side) in CROPS.items():
        with Image.open(by_name[name].path) as im:
            crop = im.convert("RGB").crop((x, y, x + side, y + side))
            crop.resize((SIDE, SIDE), Image.Resampling.LANCZOS).save(root / f"{name[-2:]}.png")
    return root


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = d[mask].mean() if mask is not None else d.mean()
    return 10 * math.log10(255.0**2 / mse)


def _luma(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return 16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255


def _nlm(lq: np.ndarray, h: int) -> np.ndarray:
    bgr = cv2.fastNlMeansDenoisingColored(lq[..., ::-1].copy(), None, h, h, 7, 21)
    return bgr[..., ::-1]


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _usm(img: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    x = img.astype(np.float32)
    soft = cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    return np.clip(np.rint(x + amount * (x - soft)), 0, 255).astype(np.uint8)


def _sobel_energy(img: np.ndarray) -> float:
    """mean(gx² + gy²) of the luma, 3x3 Sobel with a reflected border, in numpy."""
    y = np.pad(_luma(img), 1, mode="reflect")
    gx = (y[:-2, 2:] + 2 * y[1:-1, 2:] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[1:-1, :-2] + y[2:, :-2])
    gy = (y[2:, :-2] + 2 * y[2:, 1:-1] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[:-2, 1:-1] + y[:-2, 2:])
    return float(np.mean(gx**2 + gy**2))


def _piq(module: str, name: str, a: np.ndarray, b: np.ndarray) -> float:
    """piq's own metric function on two uint8 images."""
    fn = piq_metric(module, name)
    x, y = (torch.from_numpy(i.astype(np.float32) / 255).permute(2, 0, 1)[None] for i in (a, b))
    return float(fn(x, y, data_range=1.0))


USM_GRID = [(s, a) for s in (0.5, 1.0, 1.5, 2.0, 3.0) for a in (0.25, 0.5, 1.0, 1.5, 2.0)]


def test_eval_numbers_match_an_independent_computation(clean_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    presets = ("noise15", "mixed")
    args = ["--second-order", "0", "--seed", str(SEED), "--nlm-h", "5", "--nlm-h", "15"]
    args += ["--variants", "input,nlm,usm,blind,code,upper,wrong"]
    for p in presets:
        args += ["--preset", p]
    res = run_f2s("eval", clean_dir, "--out", out, "--quiet", "--threads", "1", *args)
    assert res.returncode == 0, res.stderr
    table = json.loads((out / "results.json").read_text())
    assert res.stdout == (out / "results.md").read_text() and "| code |" in res.stdout
    rows = {(r["image"], r["degradation"]): r for r in table["items"]}
    assert set(rows) == {(f"{n[-2:]}.png", p) for n in CROPS for p in presets}

    nlm_psnr: dict[tuple[str, int], list[float]] = {}
    usm_psnr: dict[tuple[str, tuple[float, float]], list[float]] = {}
    for (image, preset), row in rows.items():
        clean = _load(clean_dir / image)
        # the degradation as documented: preset noise seeded by image_seed(seed, "name|preset")
        g = torch.Generator().manual_seed(image_seed(SEED, f"{image}|{preset}"))
        x = torch.from_numpy(clean * np.float32(1 / 255)).permute(2, 0, 1)[None]  # as f2s reads
        y = apply(x, Degradation.from_preset(preset), g)
        lq = (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        got = row["variants"]["input"]
        assert got["psnr"] == pytest.approx(_psnr(lq, clean), abs=1e-6)
        assert got["psnr_y"] == pytest.approx(_psnr(_luma(lq), _luma(clean)), abs=1e-6)
        ref_ssim = structural_similarity(
            lq,
            clean,
            channel_axis=2,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert got["ssim"] == pytest.approx(ref_ssim, abs=1e-6)
        # face region: the clean image's face boxes, pixel [floor(x0), ceil(x1))
        assert len(row["faces_clean"]) == 1 and row["code_source"] == "face"
        x0, y0, x1, y1 = row["faces_clean"][0]
        mask = np.zeros(clean.shape[:2], bool)
        mask[max(0, math.floor(y0)) : math.ceil(y1), max(0, math.floor(x0)) : math.ceil(x1)] = True
        assert got["psnr_face"] == pytest.approx(_psnr(lq, clean, mask), abs=1e-3)
        assert got["psnr_rest"] == pytest.approx(_psnr(lq, clean, ~mask), abs=1e-3)
        # piq's metrics and the sharpness ratio (MS-SSIM needs >= 161 px: None at 112)
        assert got["ms_ssim"] is None
        assert got["gmsd"] == pytest.approx(_piq("gmsd", "gmsd", lq, clean), abs=1e-5)
        assert got["haarpsi"] == pytest.approx(_piq("haarpsi", "haarpsi", lq, clean), abs=1e-5)
        ratio = _sobel_energy(lq) / _sobel_energy(clean)
        assert got["sharpness"] == pytest.approx(ratio, rel=1e-6)
        for h in (5, 15):
            nlm_psnr.setdefault((preset, h), []).append(_psnr(_nlm(lq, h), clean))
        for s, a in [*USM_GRID, (1.0, 0.0)]:
            sharp = _usm(lq, s, a) if a else lq
            usm_psnr.setdefault((preset, (s, a)), []).append(_psnr(sharp, clean))
        # FaDeX's error against the preset's own parameters
        truth = Degradation.from_preset(preset, image_seed(SEED, f"{image}|{preset}"))
        assert Degradation.from_dict(row["truth"]) == truth  # the applied record, replayable
        err = row["estimate_error"]
        assert err["noise_sigma"] == pytest.approx(
            abs(row["estimate"]["noise_sigma"] - truth.noise_sigma)
        )
        assert row["wrong_from"] == next(p for p in presets if p != preset)
        assert set(row["variants"]) == {"input", "nlm", "usm", "blind", "code", "upper", "wrong"}
        assert 0 <= row["variants"]["code"]["identity_distance"] < 1.5

    for preset in presets:
        best = max((5, 15), key=lambda h: np.mean(nlm_psnr[(preset, h)]))
        assert table["nlm_h"][preset] == best
        got = [r["variants"]["nlm"]["psnr"] for (_, p), r in rows.items() if p == preset]
        assert got == pytest.approx(nlm_psnr[(preset, best)], abs=1e-6)
        grid = [(s, a) for (p, (s, a)) in usm_psnr if p == preset]
        best_usm = max(grid, key=lambda k: np.mean(usm_psnr[(preset, k)]))
        assert tuple(table["usm"][preset]) == best_usm
        got = [r["variants"]["usm"]["psnr"] for (_, p), r in rows.items() if p == preset]
        assert got == pytest.approx(usm_psnr[(preset, best_usm)], abs=1e-6)
        # the restorer with the code read off the face: far above the input, and the other
        # degradation's code (the control) must cost PSNR
        by = table["by_degradation"][preset]
        # (measured: noise15 +7.1 dB, wrong -1.6 dB; mixed +1.0 dB, wrong -0.7 dB)
        assert by["code"]["psnr"] > by["input"]["psnr"] + {"noise15": 5.0, "mixed": 0.5}[preset]
        assert by["wrong"]["psnr"] < by["code"]["psnr"] - 0.3
    mean_input = np.mean([r["variants"]["input"]["psnr"] for r in rows.values()])
    assert table["variants"]["input"]["psnr"] == pytest.approx(mean_input)
    assert table["variants"]["input"]["n"] == 4
    # noise sigma 15 is what NLM at h 15 is for: it must beat the input there
    assert np.mean(nlm_psnr[("noise15", 15)]) > np.mean(
        [r["variants"]["input"]["psnr"] for (_, p), r in rows.items() if p == "noise15"]
    )
    grid = _load(out / "grid-best.png")
    assert grid.shape == (256 + 24, 8 * 256, 3)  # input, 6 variants, clean
    assert _load(out / "grid.png").shape == (2 * (160 + 24), 8 * 160, 3)  # a row per preset
    assert (out / "grid-worst.png").is_file() and (out / "oracle-cache.json").is_file()


def test_restore_variant_is_what_f2s_restore_writes(clean_dir: Path, tmp_path: Path) -> None:
    """``restore`` gives a photo read as clean back as it is (the network's ``code`` output
    alters it: 54-55 dB on these crops) and restores a noisy one like ``code`` does, unless
    the check falls back; each item says which."""
    out = tmp_path / "out"
    args = ["--preset", "clean", "--preset", "noise15", "--seed", str(SEED)]
    args += ["--second-order", "0", "--variants", "input,code,restore"]
    res = run_f2s("eval", clean_dir, "--out", out, "--quiet", "--threads", "1", *args)
    assert res.returncode == 0, res.stderr
    table = json.loads((out / "results.json").read_text())
    assert len(table["items"]) == 2 * len(CROPS)
    kept = []
    for row in table["items"]:
        v, fallback = row["variants"], row["restore_fallback"]
        assert v["code"]["psnr"] is not None and v["code"]["psnr"] < 70  # never exact
        if any(f["reason"].startswith("nothing to restore") for f in fallback):
            kept.append((row["image"], row["degradation"]))
            assert len(fallback) == 1 and fallback[0]["to"] == "input"
            assert v["restore"]["psnr"] == v["input"]["psnr"]  # None: identical to clean
        elif not fallback:
            assert v["restore"]["psnr"] == pytest.approx(v["code"]["psnr"], abs=0.01)
        if row["degradation"] == "noise15":
            assert v["restore"]["psnr"] > v["input"]["psnr"] + 3, (row["image"], v)
    # measured: t1 reads clean (FaDeX noise 0.0, its noise curve 0.6); the 112 px astronaut
    # crop's noise curve reads its texture over the 2/255 limit, so it is restored
    assert ("t1.png", "clean") in kept and all(d == "clean" for _, d in kept), kept


def test_eval_paired_folder(clean_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    (pairs / "degraded").mkdir(parents=True)
    (pairs / "clean").mkdir()
    expected = {}
    rng = np.random.default_rng(0)
    for path in sorted(clean_dir.glob("*.png")):
        clean = _load(path)
        (pairs / "clean" / path.name).write_bytes(path.read_bytes())
        noisy = np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).round().astype(np.uint8)
        jpg = pairs / "degraded" / (path.stem + ".jpg")
        Image.fromarray(noisy).save(jpg, quality=40)
        expected[path.stem] = _psnr(_load(jpg), clean)
    out = tmp_path / "out"
    res = run_f2s("eval", pairs, "--out", out, "--quiet", "--threads", "1", "--nlm-h", "5")
    assert res.returncode == 0, res.stderr
    table = json.loads((out / "results.json").read_text())
    rows = {r["image"]: r for r in table["items"]}
    assert set(rows) == set(expected)
    for key, row in rows.items():
        assert row["degradation"] == "paired" and row["estimate_error"] is None
        assert row["variants"]["input"]["psnr"] == pytest.approx(expected[key], abs=1e-6)
        # one degradation per image: no wrong-code control; every other variant by default
        assert set(row["variants"]) == {
            *("input", "nlm", "usm", "realesrgan", "blind", "code", "restore", "upper")
        }
    assert table["nlm_h"] == {"paired": 5}
    # Real-ESRGAN x4plus as users run it (x4, area-resized back to x1), recomputed here
    from face2scene_cli.restorers.upscaler import load_upscale_restorer

    key = sorted(rows)[0]
    clean = _load(pairs / "clean" / f"{key}.png")
    lq = torch.from_numpy(_load(pairs / "degraded" / f"{key}.jpg").astype(np.float32) / 255)
    y = load_upscale_restorer().restore(lq.permute(2, 0, 1)[None], scale=1)
    ours = (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    got = rows[key]["variants"]["realesrgan"]["psnr"]
    assert got == pytest.approx(_psnr(ours, clean), abs=1e-6)


def test_eval_refuses_presets_on_a_paired_folder(tmp_path: Path) -> None:
    (tmp_path / "clean").mkdir()
    (tmp_path / "degraded").mkdir()
    res = CliRunner().invoke(app, ["eval", str(tmp_path), "--preset", "mixed"])
    assert res.exit_code == ConfigError.exit_code
    assert "paired folder" in res.output


def test_eval_scale_two_scores_bicubic_and_upscaled(clean_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--preset", "noise15", "--second-order", "0", "--scale", "2", "--nlm-h", "5"]
    args += ["--variants", "bicubic,blind,code", "--seed", str(SEED)]
    res = run_f2s("eval", clean_dir, "--out", out, "--quiet", "--threads", "1", *args)
    assert res.returncode == 0, res.stderr
    table = json.loads((out / "results.json").read_text())
    assert table["config"]["scale"] == 2
    for row in table["items"]:
        clean = _load(clean_dir / row["image"])
        assert row["size"] == [SIDE, SIDE] and set(row["variants"]) == {"bicubic", "blind", "code"}
        # the low-resolution input: noise15 after a bicubic x2 downscale, as documented
        g = torch.Generator().manual_seed(image_seed(SEED, f"{row['image']}|noise15"))
        x = torch.from_numpy(clean * np.float32(1 / 255)).permute(2, 0, 1)[None]
        low = Degradation("parametric", noise_sigma=15.0, downscale=2.0)
        lq = (apply(x, low, g)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert lq.shape == (SIDE // 2, SIDE // 2, 3)
        up = torch.nn.functional.interpolate(
            torch.from_numpy(lq.astype(np.float32) / 255).permute(2, 0, 1)[None],
            scale_factor=2,
            mode="bicubic",
            align_corners=False,
        )
        bicubic = (up[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        assert row["variants"]["bicubic"]["psnr"] == pytest.approx(_psnr(bicubic, clean), abs=1e-6)
        assert row["truth"] is None
    assert "| bicubic |" in res.stdout and "scale x2" in res.stdout


def test_eval_refuses_unknown_variants_and_ood_upscaling(clean_dir: Path) -> None:
    res = CliRunner().invoke(app, ["eval", str(clean_dir), "--variants", "input,magic"])
    assert res.exit_code == ConfigError.exit_code and "magic" in res.output
    res = CliRunner().invoke(app, ["eval", str(clean_dir), "--suite", "odd"])
    assert res.exit_code == ConfigError.exit_code and "unknown suite" in res.output
    args = ["eval", str(clean_dir), "--preset", "noise30", "--scale", "2"]
    res = CliRunner().invoke(app, [*args, "--variants", "input"])
    assert res.exit_code == ConfigError.exit_code and "scale 1 only" in res.output
