"""The f2s command line: commands, config precedence, logging modes, model zoo, packaging."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import REPORT_VALIDATOR, reports_in, run_f2s, summary_of
from safetensors.torch import save_file
from typer.testing import CliRunner

from face2scene_cli import __version__
from face2scene_cli.allocator import find_tcmalloc
from face2scene_cli.cli.app import app
from face2scene_cli.errors import ModelIntegrityError, NotAvailableError
from face2scene_cli.zoo import require_model, write_metadata

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def test_version_and_help() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"f2s {__version__}"
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for command in (
        "restore",
        "degrade-code",
        "degrade",
        "faces",
        "models",
        "doctor",
        "train",
        "eval",
    ):
        assert command in res.output
    assert "Examples" in res.output


def test_config_precedence_defaults_file_env_flags(tmp_path: Path, small_photo_dir: Path) -> None:
    cfg = tmp_path / "f2s.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 3, "quality": 50, "degrade": {"noise_sigma": 7}}))

    def effective(*args: str, env: dict[str, str] | None = None) -> dict:
        res = runner.invoke(
            app, ["degrade", str(small_photo_dir), "--print-config", *args], env=env or {}
        )
        assert res.exit_code == 0, res.output
        return yaml.safe_load(res.output)

    base = effective()
    assert (base["seed"], base["quality"], base["format"], base["noise_sigma"]) == (
        0,
        95,
        "png",
        None,
    )
    from_file = effective("--config", str(cfg))
    assert (from_file["seed"], from_file["quality"], from_file["noise_sigma"]) == (3, 50, 7.0)
    from_env = effective("--config", str(cfg), env={"F2S_SEED": "5", "F2S_NOISE_SIGMA": "9"})
    assert (from_env["seed"], from_env["quality"], from_env["noise_sigma"]) == (5, 50, 9.0)
    from_flag = effective("--config", str(cfg), "--seed", "7", env={"F2S_SEED": "5"})
    assert from_flag["seed"] == 7


def test_degrade_downscale_and_its_deprecated_scale_alias(
    tmp_path: Path, small_photo_dir: Path
) -> None:
    def effective(*args: str, env: dict[str, str] | None = None) -> tuple[dict, str]:
        res = runner.invoke(
            app, ["degrade", str(small_photo_dir), "--print-config", *args], env=env or {}
        )
        assert res.exit_code == 0, res.output
        return yaml.safe_load(res.stdout), res.stderr

    assert effective("--downscale", "2")[0]["downscale"] == 2.0
    assert effective(env={"F2S_DOWNSCALE": "3"})[0]["downscale"] == 3.0
    assert effective(env={"F2S_SCALE": "4"})[0]["downscale"] is None  # restore's upscale only
    shown, warned = effective("--scale", "2")
    assert shown["downscale"] == 2.0 and "--scale is deprecated" in warned
    out = tmp_path / "out"
    res = runner.invoke(
        app, ["degrade", str(small_photo_dir), "--out", str(out), "--downscale", "2", "-q"]
    )
    assert res.exit_code == 0, res.output
    for report in reports_in(out).values():
        for side in ("width", "height"):  # second-order mode: half, floored
            assert report["output"][side] == report["input"][side] // 2, report["input"]["path"]


def test_degrade_downscale_kernel_shrinks_as_photo_apps_do(
    tmp_path: Path, small_photo_dir: Path
) -> None:
    """``--downscale 4 --downscale-kernel area`` alone is a plain parametric resize whose
    output is OpenCV's INTER_AREA shrink of the photo (pixel averages): the same to within
    0.1 levels where the sides divide by 4, and closer to it than the default bicubic on every
    photo; the report carries the kernel; bad uses are refused."""
    import cv2

    from face2scene_cli.io.images import read_image

    errors: dict[str, dict[str, float]] = {}
    exact = set()
    for kernel in ("area", "bicubic"):
        out = tmp_path / kernel
        args = ["degrade", str(small_photo_dir), "--out", str(out), "--downscale", "4"]
        res = runner.invoke(app, [*args, "--downscale-kernel", kernel, "-q"])
        assert res.exit_code == 0, res.output
        for report in reports_in(out).values():
            assert report["applied_degradation"]["mode"] == "parametric"
            assert report["applied_degradation"]["downscale_kernel"] == kernel
            name = Path(report["input"]["path"]).name
            src = read_image(Path(report["input"]["path"])).pixels
            got = read_image(Path(report["output"]["path"])).pixels.astype(np.float64)
            want = cv2.resize(src, got.shape[1::-1], interpolation=cv2.INTER_AREA)
            err = np.abs(got - want.reshape(got.shape)).mean()
            errors.setdefault(name, {})[kernel] = float(err)
            if src.shape[0] % 4 == 0 and src.shape[1] % 4 == 0:
                exact.add(name)
    assert len(errors) >= 5 and len(exact) >= 2, (errors, exact)
    for name, err in errors.items():
        assert err["area"] < err["bicubic"], (name, err)
        assert name not in exact or err["area"] < 0.1 < err["bicubic"], (name, err)
    bad = {
        "--downscale-kernel needs --downscale": ["--downscale-kernel", "area"],
        "downscale_kernel must be one of": ["--downscale", "2", "--downscale-kernel", "nearest"],
    }
    for needle, extra in bad.items():
        res = runner.invoke(app, ["degrade", str(small_photo_dir), "--out", str(tmp_path), *extra])
        assert res.exit_code == 2 and needle in res.output, res.output


def test_degrade_motion_blur_smears_along_its_direction(
    tmp_path: Path, small_photo_dir: Path
) -> None:
    """``--motion-px 9``: horizontal (default) motion wipes out the horizontal gradients of
    real photos much more than the vertical ones, ``--motion-angle 90`` the other way round;
    the report carries the record, which replays the output."""
    from face2scene_cli.degradations.record import Degradation
    from face2scene_cli.degradations.sampling import apply
    from face2scene_cli.io.images import read_image
    from face2scene_cli.io.tensors import from_tensor, to_tensor

    def energies(pixels: np.ndarray) -> tuple[float, float]:
        y = pixels[..., :3].astype(np.float64).mean(axis=2)[8:-8, 8:-8]
        return float(np.square(np.diff(y, axis=1)).mean()), float(
            np.square(np.diff(y, axis=0)).mean()
        )

    ratios = {}
    for angle in ("0", "90"):
        out = tmp_path / f"motion{angle}"
        args = ["--motion-px", "9"] + (["--motion-angle", angle] if angle != "0" else [])
        res = runner.invoke(app, ["degrade", str(small_photo_dir), "--out", str(out), "-q", *args])
        assert res.exit_code == 0, res.output
        reports = reports_in(out)
        assert len(reports) == 6
        for report in reports.values():
            record = Degradation.from_dict(report["applied_degradation"])
            assert (record.motion_px, record.motion_angle_deg) == (9.0, float(angle))
            assert record.blur_sigma_px == 0.0 and record.noise_sigma == 0.0
            clean = read_image(Path(report["input"]["path"])).pixels
            lq = read_image(Path(report["output"]["path"])).pixels
            replay = from_tensor(apply(to_tensor(clean[..., :3]), record), clean.dtype)
            assert np.array_equal(replay, lq[..., :3]), report["input"]["path"]
            (gx, gy), (cx, cy) = energies(lq), energies(clean)
            ratios.setdefault(angle, []).append((gx / cx, gy / cy))
    for h, v in zip(ratios["0"], ratios["90"], strict=True):
        assert h[0] < 0.5 * h[1] and v[1] < 0.5 * v[0], (h, v)
    res = runner.invoke(app, ["degrade", str(small_photo_dir), "--motion-angle", "30"])
    assert res.exit_code == 2 and "--motion-angle needs --motion-px" in res.output
    res = runner.invoke(app, ["degrade", str(small_photo_dir), "--motion-px", "0.5"])
    assert res.exit_code == 2 and "motion_px" in res.output
    res = runner.invoke(app, ["degrade", "--help"])
    assert "--motion-px" in res.output and "--motion-angle" in res.output


def test_degrade_camera_noise_rises_with_brightness_and_gray_noise_is_shared(
    tmp_path: Path, small_photo_dir: Path
) -> None:
    """``--shot-noise 2 --noise-sigma 2``: the residual grows with the clean photo's
    brightness (sigma^2 = 4 + 4 x level), ``--gray-noise`` puts one field in every channel;
    the report carries the record, which replays the output."""
    from face2scene_cli.degradations.record import Degradation
    from face2scene_cli.degradations.sampling import apply
    from face2scene_cli.io.images import read_image
    from face2scene_cli.io.tensors import from_tensor, to_tensor

    checked = 0
    for gray in (False, True):
        out = tmp_path / f"camera-{gray}"
        args = ["--shot-noise", "2", "--noise-sigma", "2"] + (["--gray-noise"] if gray else [])
        res = runner.invoke(app, ["degrade", str(small_photo_dir), "--out", str(out), "-q", *args])
        assert res.exit_code == 0, res.output
        for report in reports_in(out).values():
            record = Degradation.from_dict(report["applied_degradation"])
            assert (record.poisson_scale, record.noise_sigma, record.gray_noise) == (2, 2, gray)
            clean = read_image(Path(report["input"]["path"])).pixels
            lq = read_image(Path(report["output"]["path"])).pixels
            replay = from_tensor(apply(to_tensor(clean[..., :3]), record), clean.dtype)
            assert np.array_equal(replay, lq[..., :3]), report["input"]["path"]
            if clean.ndim == 2 or clean.shape[-1] < 3 or clean.dtype != np.uint8:
                continue
            residual = lq[..., :3].astype(np.float64) - clean[..., :3]
            level = clean[..., :3].astype(np.float64).mean(axis=2)
            inside = (level > 20) & (level < 200)  # away from clipping
            dark = inside & (level < np.quantile(level[inside], 0.3))
            bright = inside & (level > np.quantile(level[inside], 0.7))
            assert residual[bright].std() > 1.4 * residual[dark].std()
            shared = np.abs(residual[..., 0] - residual[..., 1])[inside].mean()
            assert (shared < 1.0) if gray else (shared > 5.0), report["input"]["path"]
            checked += 1
    assert checked >= 6  # colour 8-bit photos, both runs
    res = runner.invoke(app, ["degrade", str(small_photo_dir), "--gray-noise"])
    assert res.exit_code == 2 and "--gray-noise needs" in res.output
    res = runner.invoke(app, ["degrade", str(small_photo_dir), "-p", "mixed", "--shot-noise", "1"])
    assert res.exit_code == 2 and "--shot-noise" in res.output


def test_config_errors_are_usage_errors(tmp_path: Path, small_photo_dir: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sede: 3\n")
    res = runner.invoke(app, ["degrade", str(small_photo_dir), "--config", str(cfg)])
    assert res.exit_code == 2 and "sede" in res.output
    res = runner.invoke(
        app, ["degrade", str(small_photo_dir), "--preset", "mixed", "--noise-sigma", "3"]
    )
    assert res.exit_code == 2 and "cannot be combined" in res.output
    res = runner.invoke(app, ["degrade", str(small_photo_dir), "--preset", "nope"])
    assert res.exit_code == 2 and "unknown preset" in res.output
    for section in ("5", "[1, 2]"):  # a section that is not a mapping of settings
        cfg.write_text(f"degrade: {section}\n")
        res = runner.invoke(app, ["degrade", str(small_photo_dir), "--config", str(cfg)])
        assert res.exit_code == 2 and "section 'degrade' must be a mapping" in res.output
    res = runner.invoke(app, ["degrade", str(small_photo_dir)], env={"F2S_THREADS": "100000"})
    assert res.exit_code == 2 and "threads must be <= 1024" in res.output


def test_ctrl_c_while_a_command_loads_exits_130_without_traceback(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    # f2s eval loads its models and scores for many seconds: interrupt it early.
    cmd = [sys.executable, "-m", "face2scene_cli", "eval", str(small_photo_dir)]
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "eval")], stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "f2s: interrupted" in err


def test_control_characters_in_file_names_cannot_forge_log_lines(
    small_photo_dir: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "odd"
    photos.mkdir()
    source = next(p for p in small_photo_dir.rglob("*.png"))
    forged = "x.png\nf2s: 99 done, 0 skipped, 0 failed of 99\x1b[31m.png"
    shutil.copyfile(source, photos / forged)
    (photos / "broken\r\x1b[2K.png").write_bytes(b"not a png")
    res = run_f2s("degrade", photos, "--out", tmp_path / "out", "--preset", "noise15")
    assert res.returncode == 1  # the broken file
    assert "\x1b" not in res.stderr and "\r" not in res.stderr
    assert not any(line.startswith("f2s: 99 done") for line in res.stderr.splitlines())
    assert "x.png\\nf2s: 99 done" in res.stderr and "broken\\r\\x1b[2K.png" in res.stderr


def test_jsonl_stream_and_plain_progress(small_photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_f2s(
        "degrade", small_photo_dir, "--out", out, "--preset", "noise15", "--report-jsonl", "-"
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 6
    for line in lines:
        REPORT_VALIDATOR.validate(line)
        assert line["applied_degradation"]["preset"] == "noise15"
    # Not a TTY: one plain progress line per image, then the summary line.
    assert sum(line.startswith("f2s: [") for line in res.stderr.splitlines()) == 6
    assert "6 done, 0 skipped, 0 failed" in res.stderr
    on_disk = {r["input"]["relative_path"]: r for r in reports_in(out).values()}
    assert {line["input"]["relative_path"] for line in lines} == set(on_disk)
    summary = summary_of(out)
    assert summary["counts"] == {"total": 6, "done": 6, "skipped": 0, "failed": 0, "pending": 0}


def test_log_json_and_quiet(small_photo_dir: Path, tmp_path: Path) -> None:
    res = run_f2s(
        "degrade", small_photo_dir, "--out", tmp_path / "a", "--preset", "noise15", "--log-json"
    )
    events = [json.loads(line) for line in res.stderr.splitlines()]
    assert [e["event"] for e in events].count("item") == 6 and events[-1]["event"] == "summary"
    res = run_f2s(
        "degrade", small_photo_dir, "--out", tmp_path / "b", "--preset", "noise15", "--quiet"
    )
    assert res.returncode == 0 and res.stderr == "" and res.stdout == ""


def test_reports_do_not_vary_outside_run(small_photo_dir: Path, tmp_path: Path) -> None:
    """Two runs on the same input give reports that differ only under ``run``."""
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run_f2s("degrade", small_photo_dir, "--out", out, "--seed", "4").returncode == 0
    for path, rep in reports_in(a).items():
        other = json.loads((b / path.relative_to(a)).read_text())
        for r in (rep, other):
            r.pop("run")
            r["output"].pop("path")
            r["input"].pop("path")
        assert rep == other
        assert rep["applied_degradation"]["mode"] == "second-order"


def _tiny_model(root: Path) -> Path:
    folder = root / "tiny-net"
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(6, dtype=torch.float32)}, folder / "model.safetensors")
    (folder / "README.md").write_text("# tiny-net\nTest model.\n")
    write_metadata(
        folder,
        {
            "name": "tiny-net",
            "version": "1",
            "task": "test",
            "licence": "Apache-2.0",
            "source": "made by the test",
            "input": {"size": 8},
            "trained_with": {},
        },
        ["model.safetensors"],
    )
    return folder


def test_models_list_verify_and_refuse_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _tiny_model(tmp_path / "zoo")
    monkeypatch.setenv("F2S_MODELS_DIR", str(tmp_path / "zoo"))
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0
    listed = json.loads(res.output)["models"]
    assert [m["name"] for m in listed] == ["tiny-net"]
    res = runner.invoke(app, ["models", "verify", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["models"][0]["verified"] is True
    assert require_model("tiny-net").name == "tiny-net"

    save_file({"w": torch.zeros(6)}, folder / "model.safetensors")  # same size, other bytes
    res = runner.invoke(app, ["models", "verify", "--json"])
    assert res.exit_code == ModelIntegrityError.exit_code
    assert "sha256" in json.loads(res.output)["models"][0]["problems"][0]
    with pytest.raises(ModelIntegrityError):
        require_model("tiny-net")
    with pytest.raises(NotAvailableError, match="tiny-net"):
        require_model("missing-net")


def test_doctor_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_model(tmp_path / "zoo")
    monkeypatch.setenv("F2S_MODELS_DIR", str(tmp_path / "zoo"))
    monkeypatch.delenv("F2S_ALLOCATOR", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    res = runner.invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0
    facts = json.loads(res.output)
    tcmalloc = find_tcmalloc()
    assert facts["allocator"] == {
        "batch_commands": "tcmalloc" if tcmalloc else "system",
        "tcmalloc": str(tcmalloc) if tcmalloc else None,
        "policy": "F2S_ALLOCATOR=auto",
    }
    assert facts["torch"]["version"] == torch.__version__
    assert facts["torch"]["default_device"] in ("cpu", "cuda", "mps")
    assert {b["name"] for b in facts["backends"]} >= {"insightface", "dlib-bin", "peft"}
    assert facts["models"] == [
        {"name": "tiny-net", "version": "1", "task": "test", "verified": True, "problems": []}
    ]
    assert facts["face_restorers"]["ref-guided"] == facts["face_restorers"]["blind"] == "built-in"
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 0 and "tiny-net" in res.output and "ref-guided (built-in)" in res.output
    assert "batch commands' allocator" in res.output


def test_wheel_contains_models_and_schemas(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "dist",
            "build",
            "__pycache__",
            "*.egg-info",
            "runs",
            "demo_out",
            ".*_cache",
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("face2scene-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tracked = [p.relative_to(ROOT).as_posix() for p in (ROOT / "models").rglob("*") if p.is_file()]
    assert tracked, "models/ must not be empty"
    for rel in tracked:
        assert f"face2scene_cli/{rel}" in names
    assert "face2scene_cli/engine/schemas/report.schema.json" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "f2s = face2scene_cli.cli.entry:main" in scripts


def test_models_fetch_insightface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The explicit fetch reports a failed download clearly and finds a good pack."""
    from insightface.utils import storage

    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))

    def offline(url: str, path: str, overwrite: bool = False) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(storage, "download_file", offline)
    res = runner.invoke(app, ["models", "fetch", "insightface"])
    assert res.exit_code == 1
    assert "could not download insightface pack 'buffalo_l'" in res.output
    assert "Network is unreachable" in res.output

    def fake_release(url: str, path: str, overwrite: bool = False) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("det_10g.onnx", b"not a real model")

    monkeypatch.setattr(storage, "download_file", fake_release)
    res = runner.invoke(app, ["models", "fetch", "insightface"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "if" / "models" / "buffalo_l" / "det_10g.onnx").is_file()
    res = runner.invoke(app, ["models", "fetch", "nope"])
    assert res.exit_code == 2
