"""The contract between the engine and a command's compute: the :class:`ImageJob` protocol,
what it is fed (:class:`LoadedImage`) and returns (:class:`Processed`), and the progress
events (:class:`ItemEvent`) the engine hands to its observer, and :func:`build_job`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from face2scene_cli.engine.plan import WorkItem
from face2scene_cli.engine.report import ImageReport
from face2scene_cli.errors import F2SError
from face2scene_cli.io.images import Image


@dataclass
class LoadedImage:
    """A decoded input handed to a job's compute stage."""

    item: WorkItem
    image: Image
    sha256: str
    nbytes: int
    timings: dict[str, float]


@dataclass
class ExtraOutput:
    """A file a job writes beside an image's output (face crops, a comparison image)."""

    path: Path
    image: Image
    format: str  # png | jpg | webp | tiff


@dataclass
class Processed:
    """What a job returns for one image: the output image and the report fields it fills."""

    image: Image
    fields: dict[str, Any] = field(
        default_factory=dict
    )  # faces / degradation / applied_degradation
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extras: list[ExtraOutput] = field(default_factory=list)  # encoded and written atomically


class ImageJob(Protocol):
    """The compute side of a command: the engine feeds it batches of decoded images."""

    command: str
    device: str

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output pixels (hashed to decide what is done)."""
        ...

    def models(self) -> list[dict[str, str]]:
        """Models used, as ``{"name", "sha256"}``."""
        ...

    def warnings(self) -> list[str]:
        """Warnings about the run as a whole (e.g. reference photos skipped), reported once
        per run (stderr and the run summary), not per image."""
        ...

    def process(self, batch: list[LoadedImage], seed: int) -> list[Processed | F2SError]:
        """Outputs for a batch, one per input, in order; an F2SError marks one failed image."""
        ...


@dataclass
class ItemEvent:
    """Progress event for one finished item: status is done | skipped | failed; ``recovered``:
    done by an earlier try of this run (a worker that died after writing it)."""

    item: WorkItem
    status: str
    report: ImageReport | None
    index: int
    total: int
    recovered: bool = False


Observer = Callable[[ItemEvent], None]


def build_job(job_factory: Callable[[], ImageJob]) -> ImageJob:
    """Build a job with Python's cyclic garbage collector paused, then freeze what exists.

    A restore job's build imports torch and diffusers and loads its models: ~660,000
    long-lived objects. Each collection during the build walks them again (0.6 s of the 3.3 s
    that the imports take on 2 cores), and so does the interpreter's last collection at exit
    (0.8 s after the last image). Frozen (``gc.freeze``), they stay out of every later
    collection; garbage made while images are processed is collected as before.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return job_factory()
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
