"""The one registry: kinds, "arch.tag" names, torch-free import (plugins: elsewhere)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from face2scene_cli.errors import ConfigError
from face2scene_cli.registry import KINDS, available, create, is_registered


def test_import_list_and_resolve_leave_torch_out() -> None:
    code = (
        "import sys; from face2scene_cli import registry as r; "
        "r.available('face_restorer'); r.available('detector'); r.available('scene_net'); "
        "r.is_registered('scene_net', 'scene-embedded.v1'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_builtin_target_exists() -> None:
    for kind in KINDS.values():
        for target in kind.builtins.values():
            assert isinstance(target, str)
            module, _, attr = target.partition(":")
            assert callable(getattr(__import__(module, fromlist=[attr]), attr))


def test_tagged_names_build_their_arch() -> None:
    net = create("scene_net", "scene-tiny.test-v1")
    assert type(net).__name__ == "EmbeddedSceneNet"
    assert is_registered("scene_net", "scene-tiny.test-v1", builtin_only=True)
    assert not is_registered("scene_net", "nope.v1")


def test_unknown_kind_and_name_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown registry kind 'nets'"):
        available("nets")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown face detector 'nope'; available: dlib"):
        create("detector", "nope")
