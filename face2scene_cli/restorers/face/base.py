"""Stage I: the face restorer interface, batched over face crops.

Every restorer implements :class:`FaceRestorer`: it takes low-quality (LQ) face crops
:math:`(B, C, H, W)`, float in [0, 1], C in {1, 3} (RGB order), optionally with reference
faces of the same person, and returns restored (HQ) crops of the same shape together with a
per-crop confidence in [0, 1] that downstream stages use as a weight (FaDeX's per-image code
is a confidence-weighted mean over faces).

Backends: :mod:`face2scene_cli.restorers.face.blind` (``"blind"``, the non-learned baseline)
and :mod:`face2scene_cli.restorers.face.ref_guided` (``"ref-guided"``); they and plugins
(entry points of the ``face2scene.face_restorers`` group) are built by name with
``face2scene_cli.registry.create("face_restorer", name)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor

__all__ = ["FaceRestorer", "RestoredFaces", "check_crops"]


@dataclass(frozen=True)
class RestoredFaces:
    """What a :class:`FaceRestorer` returns.

    Attributes:
        hq: restored crops :math:`(B, C, H, W)`, same shape, dtype and device as the input,
            values in [0, 1].
        confidence: :math:`(B,)` float32 in [0, 1]: how much the restorer trusts each output.
        method: the restorer's name and version, e.g. ``"blind-nlm/1"``; reports record it.
        references_used: per crop, how many references shaped the output (0: restored blind,
            e.g. no references or none that agreed with the face); None = the restorer does
            not use references.
    """

    hq: Tensor
    confidence: Tensor
    method: str
    references_used: tuple[int, ...] | None = None


def check_crops(lq: Tensor, references: list[list[Tensor]] | None = None) -> None:
    """Raise TypeError / ValueError unless ``lq`` is a float (B, C, H, W) batch, C in {1, 3},
    and ``references`` (if given) has one list per crop."""
    if not isinstance(lq, Tensor):
        raise TypeError(f"lq must be a torch.Tensor, got {type(lq).__name__}")
    if lq.ndim != 4 or lq.shape[1] not in (1, 3):
        raise ValueError(
            f"lq must have shape (B, C, H, W) with C in {{1, 3}}, got {tuple(lq.shape)}"
        )
    if not lq.is_floating_point():
        raise TypeError(f"lq must be a floating point tensor in [0, 1], got {lq.dtype}")
    if lq.shape[0] < 1 or min(lq.shape[2:]) < 8:
        raise ValueError(f"lq must hold at least one crop of at least 8x8, got {tuple(lq.shape)}")
    if references is not None and len(references) != lq.shape[0]:
        raise ValueError(
            f"references must have one list per crop: {lq.shape[0]} crops, {len(references)} lists"
        )


class FaceRestorer(ABC):
    """Restores face crops (Stage I); backends subclass this.

    Subclasses set ``name`` and ``version`` and implement :meth:`restore`. ``uses_references``
    says whether the backend reads ``references`` at all (the blind baseline does not).
    ``identity_encoder`` names the identity encoder (:attr:`IdentityEncoder.name`) whose
    embeddings of the references :meth:`restore` also takes, as ``reference_embeddings``, so
    that it need not embed them again (None: it takes none, and is never given any).
    """

    name: str = "base"
    version: str = "0"
    uses_references: bool = False
    identity_encoder: str | None = None

    @property
    def method(self) -> str:
        """``"<name>/<version>"``, recorded in :class:`RestoredFaces` and in reports."""
        return f"{self.name}/{self.version}"

    @abstractmethod
    def restore(self, lq: Tensor, references: list[list[Tensor]] | None = None) -> RestoredFaces:
        r"""Restore a batch of face crops.

        Args:
            lq: LQ crops :math:`(B, C, H, W)`, float in [0, 1], C in {1, 3} (RGB).
            references: per crop, a (possibly empty) list of clean reference faces of the same
                person, each :math:`(C, H_r, W_r)` in [0, 1]; None = no references at all.

        Returns:
            :class:`RestoredFaces` with ``hq`` of the same shape as ``lq``.
        """
