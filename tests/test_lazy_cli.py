"""The CLI starts without the heavy libraries: commands are imported only when they run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from face2scene_cli.cli import options
from face2scene_cli.cli.app import COMMANDS, load_command
from face2scene_cli.faces.detect import DETECTOR_CHOICES

HEAVY = ("torch", "cv2", "diffusers", "ray", "numpy")

PROBE = """
import sys
from face2scene_cli.cli.app import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _heavy_modules_after(*argv: str) -> str:
    """What of HEAVY a fresh interpreter has imported after running ``f2s *argv``."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_cli_imports_no_heavy_library() -> None:
    code = f"import sys, face2scene_cli.cli.app; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ("--version",),
        ("--help",),
        ("restore", "--help"),
        ("doctor", "--help"),
        ("faces", "--help"),
        ("degrade-code", "--help"),
        ("degrade", "--help"),
        ("eval", "--help"),
        ("models", "--help"),
        ("report", "merge", "--help"),
        ("train", "scene", "--help"),
        ("train", "fadex", "--help"),
        ("eval-faces", "--help"),
        ("models", "analyze", "--help"),
        ("data", "--help"),
        ("demo", "--help"),
    ],
)
def test_help_imports_no_heavy_library(argv: tuple[str, ...]) -> None:
    assert _heavy_modules_after(*argv) == "[]"


def test_a_command_that_computes_does_import_torch() -> None:
    # The probe can tell: `models list` is light, `doctor` reports torch's devices.
    assert "torch" in _heavy_modules_after("doctor", "--json")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listed_summary_is_the_commands_own_first_line(name: str) -> None:
    command = load_command(name)
    assert command.name == name
    assert (command.help or "").strip().splitlines()[0] == COMMANDS[name].summary


def test_detector_names_in_help_match_the_detectors() -> None:
    assert options.DETECTOR_CHOICES == DETECTOR_CHOICES
