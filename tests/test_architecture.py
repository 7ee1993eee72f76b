"""The package's layers are a contract: imports point down, no cycles, no private names
borrowed across modules (README "Architecture"; contracts in pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "face2scene_cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The lines of ``source`` (the code of ``module``) that import another face2scene_cli
    module's private name: ``from face2scene_cli.x import _name`` or ``from .x import _name``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            origin = f"{base}.{node.module}" if node.module else base
        else:
            origin = node.module or ""
        if not origin.startswith("face2scene_cli") or origin == module:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{module}:{node.lineno}: {origin}.{alias.name}")
    return found


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_private_name_is_imported_across_modules() -> None:
    found = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        for hit in private_imports(
            path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py"
        )
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from face2scene_cli.zoo import _sha\n", 1),
        ("from .sibling import _helper, public\n", 1),
        ("from ..data import _rgb\n", 1),
        ("from face2scene_cli.zoo import __version__, public\n", 0),
        ("from face2scene_cli.research.train.scene import _own\n", 0),  # its own module
        ("import numpy as np\nfrom numpy import _private\n", 0),  # not ours
    ],
)
def test_the_private_import_check_sees_them(source: str, expected: int) -> None:
    assert len(private_imports(source, "face2scene_cli.research.train.scene")) == expected
