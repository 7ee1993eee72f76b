"""The deconvolution of a read motion blur and the check that re-degrades by it, on a real
photo (the strength is chosen on VAL: ``benchmarks/motion_deblur_val.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.degradations.estimate import MOTION_READ_PX, Estimate
from face2scene_cli.degradations.record import Degradation, equivalent_blur
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.errors import ConfigError
from face2scene_cli.restorers.deblur import MotionDeblur, deconvolve, motion_kernel_for
from face2scene_cli.restorers.guard import consistency_residual
from face2scene_cli.restorers.scene import RestoreSettings


@pytest.fixture(scope="module")
def photo() -> tuple[torch.Tensor, torch.Tensor]:
    """A 288 px region of the astronaut, clean and under a 9 px camera shake at 30 degrees
    (rounded to 8 bits)."""
    img = skdata.astronaut()[0:288, 100:388]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    y = apply(x, Degradation("parametric", motion_px=9.0, motion_angle_deg=30.0))
    return x, (y.clamp(0, 1) * 255).round() / 255


def _reading(motion_px: float, angle: float) -> Estimate:
    blur = equivalent_blur(0.0, motion_px)
    return Estimate(0.0, blur, 1.0, 60.0, 0.0, motion_px=motion_px, motion_angle_deg=angle)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    inner = (a - b)[..., 16:-16, 16:-16]  # away from the borders
    return float(10 * torch.log10(1 / inner.square().mean()))


def test_the_read_motion_comes_off_and_only_in_its_direction(
    photo: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Deconvolving the shake it was read as sharpens the photo back by > 1 dB; the same
    kernel across the shake makes it worse than the blurred photo."""
    clean, shaken = photo
    before = _psnr(shaken, clean)
    right = _psnr(MotionDeblur(0.3)(shaken, _reading(9.0, 30.0)), clean)
    across = _psnr(MotionDeblur(0.3)(shaken, _reading(9.0, 120.0)), clean)
    assert right > before + 1.0, (before, right)
    assert across < before, (before, across)


def test_nothing_is_deconvolved_without_a_stated_motion(
    photo: tuple[torch.Tensor, torch.Tensor],
) -> None:
    _, shaken = photo
    assert MotionDeblur(0.3)(shaken, _reading(MOTION_READ_PX - 0.5, 30.0)) is shaken
    tiny = shaken[..., :24, :24]  # smaller than four kernels
    assert MotionDeblur(0.3)(tiny, _reading(9.0, 30.0)) is tiny
    # the mean is kept: the regulariser is zero at DC
    flat = torch.full((1, 3, 64, 64), 0.4)
    torch.testing.assert_close(deconvolve(flat, motion_kernel_for(_reading(9.0, 0.0)), 0.3), flat)


def test_the_check_re_degrades_by_the_read_motion(
    photo: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """The clean photo explains its shaken copy under the motion kernel read (residual
    < 0.2/255); one Gaussian of the same spread, or the kernel across, does not (> 4/255)."""
    clean, shaken = photo

    def rms(reading: Estimate) -> float:
        return float(consistency_residual(shaken, clean, reading, 1.5).square().mean().sqrt())

    assert rms(_reading(9.0, 30.0)) < 0.2
    gaussian = Estimate(0.0, equivalent_blur(0.0, 9.0), 1.0, 60.0, 0.0)
    assert rms(gaussian) > 4.0 and rms(_reading(9.0, 120.0)) > 4.0


def test_motion_deblur_settings_are_checked() -> None:
    assert RestoreSettings(motion_deblur={"regularization": 0.3}).motion_deblur is not None
    for bad in ({"regularization": 0}, {"regularization": "x"}, {"strength": 1.0}, [0.3]):
        with pytest.raises(ConfigError, match="motion_deblur"):
            RestoreSettings(motion_deblur=bad)  # type: ignore[arg-type]
