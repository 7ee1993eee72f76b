"""Face restorer plugins: entry points of the ``face2scene.face_restorers`` group.

Each test installs a small distribution into ``tmp_path`` (a ``*.dist-info`` folder with
``entry_points.txt``, plus its module) and puts it on ``sys.path``, which is all
``importlib.metadata`` needs to find it, as it would after ``pip install``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from skimage import data as skdata

from face2scene_cli.errors import ConfigError
from face2scene_cli.registry import KINDS, available, create
from face2scene_cli.research.metrics import psnr
from face2scene_cli.restorers.face.base import FaceRestorer

ENTRY_POINT_GROUP = KINDS["face_restorer"].group

PLUGIN = '''
import torch
import torch.nn.functional as F

from face2scene_cli.restorers.face.base import FaceRestorer, RestoredFaces


class BoxRestorer(FaceRestorer):
    """A 3x3 box filter: enough to be a (weak) denoiser."""

    name = "box"
    version = "0.1"

    def __init__(self, radius: int = 1) -> None:
        self.radius = radius

    def restore(self, lq, references=None):
        k = 2 * self.radius + 1
        x = F.pad(lq, (self.radius,) * 4, mode="reflect")
        hq = F.avg_pool2d(x, k, stride=1)
        return RestoredFaces(hq, torch.full((lq.shape[0],), 0.5), self.method)


def make_box(**kwargs):
    return BoxRestorer(**kwargs)


def not_a_restorer(**kwargs):
    return "hello"


NOT_CALLABLE = 42
'''

ENTRY_POINTS = f"""
[{ENTRY_POINT_GROUP}]
myplugin = f2s_test_plugin:BoxRestorer
myfactory = f2s_test_plugin:make_box
blind = f2s_test_plugin:BoxRestorer
wrongtype = f2s_test_plugin:not_a_restorer
notcallable = f2s_test_plugin:NOT_CALLABLE
missing = f2s_test_plugin_gone:Restorer
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dist = tmp_path / "f2s_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: f2s-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    (tmp_path / "f2s_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("f2s_test_plugin", None)


def _noisy_face() -> tuple[torch.Tensor, torch.Tensor]:
    clean = torch.from_numpy(skdata.astronaut()[57:185, 156:284].copy()).permute(2, 0, 1)
    clean = clean[None].float() / 255
    g = torch.Generator().manual_seed(0)
    noisy = (clean + torch.randn(clean.shape, generator=g) * 20 / 255).clamp(0, 1)
    return clean, noisy


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return psnr(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy(), data_range=1.0)


def test_plugin_class_and_factory_restore_a_crop(plugin: Path) -> None:
    clean, noisy = _noisy_face()
    for name in ("myplugin", "myfactory"):
        r = create("face_restorer", name, radius=1)
        assert isinstance(r, FaceRestorer) and type(r).__name__ == "BoxRestorer"
        out = r.restore(noisy)
        assert out.method == "box/0.1" and out.hq.shape == noisy.shape
        assert _psnr(out.hq, clean) > _psnr(noisy, clean) + 2.0


def test_listed_and_builtins_win(plugin: Path) -> None:
    found = available("face_restorer")
    assert found["blind"] == found["ref-guided"] == "built-in"
    assert found["myplugin"] == "plugin f2s_test_plugin:BoxRestorer (f2s-test-plugin 0.1)"
    assert type(create("face_restorer", "blind")).__name__ == "BlindFaceRestorer"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", r"'missing' \(f2s_test_plugin_gone:Restorer\) failed to load: ModuleNotFound"),
        ("wrongtype", r"'wrongtype' .* gave a str, not a .*FaceRestorer"),
        ("notcallable", r"'notcallable' .* is a int, not a FaceRestorer class or factory"),
        ("myplugin", r"'myplugin' .* failed to build: TypeError"),
    ],
)
def test_broken_plugins_are_named(plugin: Path, name: str, message: str) -> None:
    kwargs = {"bogus": 1} if name == "myplugin" else {}
    with pytest.raises(ConfigError, match=message):
        create("face_restorer", name, **kwargs)


def test_unknown_name_lists_what_exists(plugin: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown face restorer 'nope'; available: .*myplugin"):
        create("face_restorer", "nope")


def test_without_plugins() -> None:
    found = available("face_restorer")
    assert "myplugin" not in found and {"blind", "ref-guided"} <= set(found)
