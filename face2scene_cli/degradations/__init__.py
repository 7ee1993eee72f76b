"""Synthetic degradations and degradation estimates: one vocabulary for the whole project.

* :mod:`~face2scene_cli.degradations.ops`: the torch operators (kernels, blur, resize, noise,
  JPEG) on :math:`(B, C, H, W)` float images in [0, 1].
* :mod:`~face2scene_cli.degradations.record`: :class:`Degradation`, one record for preset,
  parametric and Real-ESRGAN second-order degradations (torch-free).
* :mod:`~face2scene_cli.degradations.second_order`: Real-ESRGAN's second-order pipeline
  (replayable samples).
* :mod:`~face2scene_cli.degradations.sampling`: :class:`DegradationDistribution` (``sample`` /
  ``apply``), used by ``f2s degrade``, ``f2s eval`` and both trainers.
* :mod:`~face2scene_cli.degradations.estimate`: :class:`Estimate`, what FaDeX reads off faces
  (torch-free).

The package imports nothing itself: import the module you need (the CLI stays light).
"""
