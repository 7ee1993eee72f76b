"""The deconvolution of a read blur and the check that re-degrades by a read motion, on a real
photo (the settings are chosen on VAL: ``benchmarks/deblur_val.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from face2scene_cli.degradations.estimate import MOTION_READ_PX, Estimate
from face2scene_cli.degradations.record import Degradation, equivalent_blur
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.errors import ConfigError
from face2scene_cli.restorers.deblur import Deblur, GaussianDeblur, deconvolve, motion_kernel_for
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
    right = _psnr(Deblur(motion=0.3)(shaken, _reading(9.0, 30.0))[0], clean)
    across = _psnr(Deblur(motion=0.3)(shaken, _reading(9.0, 120.0))[0], clean)
    assert right > before + 1.0, (before, right)
    assert across < before, (before, across)


def test_nothing_is_deconvolved_without_a_stated_motion(
    photo: tuple[torch.Tensor, torch.Tensor],
) -> None:
    _, shaken = photo
    assert Deblur(motion=0.3)(shaken, _reading(MOTION_READ_PX - 0.5, 30.0)) == (shaken, None)
    tiny = shaken[..., :24, :24]  # smaller than four kernels
    assert Deblur(motion=0.3)(tiny, _reading(9.0, 30.0)) == (tiny, None)
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


_GAUSSIAN = {
    "fraction": 0.5,
    "regularization": 0.03,
    "min_px": 1.2,
    "max_downscale": 1.5,
    "max_motion_px": 2.0,
}


def test_a_gaussian_blur_comes_off_in_part_and_only_where_it_should() -> None:
    """A 1.5 px Gaussian blur read as such: taking half of it off sharpens the real photo by
    > 0.5 dB (the network, which undoes part of a blur itself, is not in this test); a light
    blur, a stated motion (without a motion weight) or a resolution loss is left alone."""
    img = skdata.astronaut()[0:288, 100:388]
    clean = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    soft = (apply(clean, Degradation("parametric", blur_sigma_px=1.5)) * 255).round() / 255
    deblur = Deblur(gaussian=_GAUSSIAN)
    read = Estimate(0.0, 1.5, 1.0, 60.0, 0.0)
    sharp, done = deblur(soft, read)
    assert done == {"kernel": "gaussian", "sigma_px": 0.75, "regularization": 0.03}
    assert _psnr(sharp, clean) > _psnr(soft, clean) + 0.5
    for other in (
        Estimate(0.0, 1.1, 1.0, 60.0, 0.0),  # under min_px
        Estimate(0.0, 3.0, 1.6, 60.0, 0.0),  # a resolution loss: not a Gaussian
        _reading(9.0, 30.0),  # a motion, and no motion weight
        Estimate(0.0, 1.5, 1.0, 60.0, 0.0, motion_px=3.0),  # a short motion, read as blur
    ):
        assert deblur(soft, other) == (soft, None), other
    assert GaussianDeblur(**_GAUSSIAN).sigma(Estimate(0.0, 2.0, 1.4, 60.0, 0.0)) == pytest.approx(
        0.5 * (2.0**2 - (0.39 * 1.4) ** 2) ** 0.5, rel=1e-2
    )


def test_deblur_settings_are_checked() -> None:
    settings = RestoreSettings(deblur={"motion": 0.3, "gaussian": _GAUSSIAN})
    assert settings.deblur is not None
    bad_gaussian = _GAUSSIAN | {"fraction": 0}
    for bad in ({"motion": 0}, {"motion": "x"}, {"strength": 1.0}, [0.3], {"gaussian": 1.0},
                {"gaussian": bad_gaussian}, {"gaussian": {"fraction": 0.5}}):  # fmt: skip
        with pytest.raises(ConfigError, match="deblur"):
            RestoreSettings(deblur=bad)  # type: ignore[arg-type]
