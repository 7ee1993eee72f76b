"""Helpers shared by the tests: running ``f2s``, reading its reports, the missing-data guard."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import jsonschema
import pytest

from face2scene_cli.engine.report import REPORT_SUFFIX, SUMMARY_NAME, is_summary_name, load_schema

REPORT_VALIDATOR = jsonschema.Draft202012Validator(load_schema("report"))
SUMMARY_VALIDATOR = jsonschema.Draft202012Validator(load_schema("summary"))
TESTS = os.path.dirname(os.path.abspath(__file__))


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` (the conversion scripts, not a package) imported as a module."""
    path = Path(TESTS).parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def missing_data(msg: str) -> NoReturn:
    """Fail in CI (``CI=true``), skip elsewhere: CI never skips silently for missing data."""
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def run_f2s(
    *args: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    fault: str | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``f2s`` in a fresh process, as a user or a cron job would (stdout not a TTY);
    ``fault`` (``exit-after:N`` | ``signal-after:N`` | ``interrupt-after:N`` |
    ``crash-on:REL``, see :mod:`faults`)
    makes the engine in that process die or be signalled at that point."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("F2S_")}
    full_env["F2S_DATA_DIR"] = os.environ.get("F2S_DATA_DIR", "")
    full_env.update(env or {})
    entry = ["face2scene_cli"]
    if fault is not None:  # tests/ on the path for ``python -m faults``
        entry = ["faults", fault]
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [TESTS, os.environ.get("PYTHONPATH")])
        )
    return subprocess.run(
        [sys.executable, "-m", *entry, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        **kwargs,
    )


def reports_in(out: Path) -> dict[Path, dict[str, Any]]:
    """Every per-image report under ``out`` (validated against the shipped schema)."""
    found = {}
    for path in sorted(out.rglob("*" + REPORT_SUFFIX)):
        if is_summary_name(path.name):
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        REPORT_VALIDATOR.validate(data)
        found[path] = data
    return found


def summary_of(out: Path) -> dict[str, Any]:
    """The run summary in ``out`` (validated against the shipped schema)."""
    data = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    SUMMARY_VALIDATOR.validate(data)
    return data


def temp_files(root: Path) -> list[Path]:
    """Leftover temp files of atomic writes."""
    return [p for p in root.rglob("*") if ".f2s-tmp" in p.name]
