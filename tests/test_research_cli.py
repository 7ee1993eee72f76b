"""The research commands' options: ``f2s train --set / --wall-limit``, ``f2s models analyze``
and ``f2s eval-faces`` (the training and evaluation runs themselves are stubbed out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from face2scene_cli.cli.app import app

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _capture(monkeypatch: pytest.MonkeyPatch, module: str, name: str, result: Any) -> dict:
    """Replace ``module.name`` (a training entry point) by a stub that records its arguments."""
    import importlib

    seen: dict[str, Any] = {}

    def stub(*args: Any, **kwargs: Any) -> Any:
        seen.update(args=args, kwargs=kwargs)
        return result

    monkeypatch.setattr(importlib.import_module(module), name, stub)
    return seen


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train", "fadex", "--set", "train.stepz=3"], "stepz"),
        (["train", "fadex", "--set", "trian.steps=3"], "trian.steps"),
        (["train", "fadex", "--set", "steps=3"], "steps"),
        (["train", "fadex", "--set", "train.steps"], "train.steps"),
        (["train", "scene", "--set", "val.bogus=1"], "bogus"),
        (["train", "fadex-heads", "--set", "viewz=4"], "viewz"),
    ],
)
def test_set_with_a_bad_key_exits_2_naming_it(argv: list[str], named: str) -> None:
    config = REPO / "configs" / ("scene.yaml" if "scene" in argv else "fadex.yaml")
    res = runner.invoke(app, [*argv, "--config", str(config)])
    assert res.exit_code == 2, res.output
    assert named in res.output


def test_train_fadex_set_and_wall_limit_reach_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from face2scene_cli.research.train.fadex import TrainResult

    done = TrainResult(Path("runs/x"), 3, 1.0, 3, 0.5, None)
    seen = _capture(monkeypatch, "face2scene_cli.research.train.fadex", "train_fadex", done)
    argv = ["train", "fadex", "--config", str(REPO / "configs" / "fadex.yaml")]
    argv += ["--set", "train.steps=3", "--set", "val.every_steps=2", "--set", "train.sizes=[64]"]
    res = runner.invoke(app, [*argv, "--steps", "5", "--wall-limit", "1.5"])
    assert res.exit_code == 0, res.output
    cfg = seen["args"][0]
    # the named flag wins over --set; the YAML value is parsed (a list becomes a tuple)
    assert (cfg.train.steps, cfg.val.every_steps, cfg.train.sizes) == (5, 2, (64,))
    assert seen["kwargs"]["wall_limit_s"] == 90.0


def test_train_scene_wall_limit_and_deprecated_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, "face2scene_cli.research.train.scene", "train_scene", {"steps": 0})
    base = ["train", "scene", "--config", str(REPO / "configs" / "scene.yaml")]
    res = runner.invoke(app, [*base, "--wall-limit", "3", "--set", "train.steps=3"])
    assert res.exit_code == 0, res.output
    cfg = seen["args"][0]
    assert (cfg.train.max_minutes, cfg.train.steps) == (3.0, 3)
    res = runner.invoke(app, [*base, "--minutes", "2"])
    assert res.exit_code == 0, res.output
    assert "--minutes is deprecated" in res.output
    assert seen["args"][0].train.max_minutes == 2.0
    assert "--minutes" not in runner.invoke(app, [*base[:2], "--help"]).output


def test_train_fadex_heads_set_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, "face2scene_cli.research.train.fadex_heads", "run_heads", {})
    argv = ["train", "fadex-heads", "--from", str(REPO / "models" / "fadex-s")]
    res = runner.invoke(app, [*argv, "--set", "views=4", "--set", "steps=9", "--steps", "7"])
    assert res.exit_code == 0, res.output
    _config, _source, _run_dir, heads, threads = seen["args"]
    assert (heads.views, heads.steps, threads) == (4, 7, 1)


def test_eval_faces_help() -> None:
    res = runner.invoke(app, ["eval-faces", "--help"])
    assert res.exit_code == 0, res.output
    assert "--ablation" in res.output and "--json" in res.output


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [
        (["no-such-model"], 4, "not in the zoo"),
        (["mtcnn"], 2, "face-detection"),  # a model of another task
        (["fadex-s", "--card"], 2, "--card"),  # a scene-only option on a FaDeX
    ],
)
def test_models_analyze_refuses(argv: list[str], code: int, said: str) -> None:
    res = runner.invoke(app, ["models", "analyze", *argv])
    assert res.exit_code == code, res.output
    assert said in res.output


def test_models_analyze_refuses_a_folder_without_metadata(tmp_path: Path) -> None:
    res = runner.invoke(app, ["models", "analyze", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "no metadata.json" in res.output
