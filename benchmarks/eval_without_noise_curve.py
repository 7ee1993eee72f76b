"""``f2s eval`` with the scene restorer never given the photo's noise curve (an ablation).

A scene model whose MapNet has ``noise_levels`` is conditioned on the noise curve ``f2s
restore`` reads off each photo; this runs ``f2s eval`` unchanged except that
:meth:`SceneRestorer.restore` gets ``noise=None`` (the path the trainer's
``train.noise_dropout`` share of samples took), so the two tables tell what the curve adds::

    python benchmarks/eval_without_noise_curve.py runs/val-photos --suite ood \\
        --variants input,code --scene-model M --out runs/eval-without-curve
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from face2scene_cli.cli.entry import main
from face2scene_cli.restorers.scene import SceneRestorer

_restore = SceneRestorer.restore


def _without_curve(self: SceneRestorer, *args: object, **kwargs: object) -> object:
    kwargs["noise"] = None
    return _restore(self, *args, **kwargs)


if __name__ == "__main__":
    SceneRestorer.restore = _without_curve  # type: ignore[method-assign]
    sys.argv = ["f2s", "eval", *sys.argv[1:]]
    main()
