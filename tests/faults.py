"""Test-only fault injection: make the batch engine die, or be signalled, at a chosen point.

The product has no fault switch; the tests patch :class:`BatchRun` from outside. A fault is
one of:

* ``exit-after:N``: ``os._exit(137)`` (what ``kill -9`` leaves behind) once this process has
  finished N images;
* ``signal-after:N``: SIGTERM to this process once it has finished N images;
* ``interrupt-after:N``: SIGINT (Ctrl-C) to this process once it has finished N images;
* ``crash-on:REL``: ``os._exit(137)`` whenever the image with relative path REL reaches the
  compute stage (a poison image).

Local runs: ``helpers.run_f2s(..., fault=SPEC)`` runs ``python -m faults SPEC ARGS...``, which
arms the fault in a child process and runs ``f2s ARGS...`` there. Ray runs:
:func:`inject_into_ray_workers` wraps the job factory the Ray engine sends to its workers, so
each worker arms the fault when it builds its job (the workers must be able to import this
module: the Ray fixture puts ``tests/`` on their ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from face2scene_cli.engine.job import ImageJob, ItemEvent, LoadedImage, Processed
from face2scene_cli.engine.local import BatchRun
from face2scene_cli.errors import F2SError

if TYPE_CHECKING:
    import pytest

KINDS = ("exit-after", "signal-after", "interrupt-after", "crash-on")
SIGNALS = {"signal-after": signal.SIGTERM, "interrupt-after": signal.SIGINT}
KILLED = 137  # the exit status of a process killed by SIGKILL, as a shell reports it


@dataclass(frozen=True)
class Fault:
    """Where to fail: ``kind`` is one of :data:`KINDS`; ``arg`` a count or a relative path."""

    kind: str
    arg: str

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``exit-after:N`` | ``signal-after:N`` | ``interrupt-after:N`` | ``crash-on:REL``."""
        kind, _, arg = spec.partition(":")
        counted = kind != "crash-on"
        if kind not in KINDS or not arg or (counted and not arg.isdigit()):
            raise ValueError(f"bad fault {spec!r}: expected one of {', '.join(KINDS)} with :ARG")
        return cls(kind, arg)


_armed: Fault | None = None
_done: dict[int, int] = {}  # id(BatchRun) -> images it finished "done"
_count_lock = threading.Lock()
_real_settled = BatchRun.settled
_real_compute = BatchRun.compute


def arm(fault: Fault | None) -> None:
    """Arm ``fault`` in this process (None disarms); patches :class:`BatchRun` once."""
    global _armed
    _armed = fault
    BatchRun.settled = _settled  # type: ignore[method-assign]
    BatchRun.compute = _compute  # type: ignore[method-assign]


def _settled(run: BatchRun, event: ItemEvent) -> None:
    _real_settled(run, event)
    fault = _armed
    if fault is None or fault.kind == "crash-on" or event.status != "done":
        return
    with _count_lock:  # settled runs on writer threads: exactly one of them sees N
        _done[id(run)] = count = _done.get(id(run), 0) + 1
    if count != int(fault.arg):
        return
    if fault.kind == "exit-after":
        os._exit(KILLED)
    os.kill(os.getpid(), SIGNALS[fault.kind])


def _compute(run: BatchRun, batch: list[LoadedImage]) -> list[Processed | F2SError]:
    fault = _armed
    poisoned = fault is not None and fault.kind == "crash-on"
    if poisoned and any(loaded.item.key == fault.arg for loaded in batch):  # type: ignore[union-attr]
        os._exit(KILLED)
    return _real_compute(run, batch)


@dataclass(frozen=True)
class FaultyJobFactory:
    """A Ray worker's job factory that arms ``fault`` in the worker first. A restarted worker
    is not armed again for ``exit-after``/``signal-after`` (they fire once per worker, so the
    retried batch can finish); a poison image kills every worker that computes it."""

    job_factory: Callable[[], ImageJob]
    fault: Fault

    def __call__(self) -> ImageJob:
        import ray

        context = ray.get_runtime_context()
        if context.get_actor_id() is not None:  # a worker, not the driver's describe task
            with warnings.catch_warnings():  # Ray deprecates this property, without a successor
                warnings.simplefilter("ignore", DeprecationWarning)
                restarted = bool(context.was_current_actor_reconstructed)
            once = self.fault.kind != "crash-on"
            arm(None if restarted and once else self.fault)
        return self.job_factory()


def inject_into_ray_workers(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    """Make every ``--engine ray`` run of this test arm ``spec`` in its workers."""
    from face2scene_cli.engine import ray as ray_engine

    fault, run_ray = Fault.parse(spec), ray_engine.run_ray

    def run_ray_with_fault(plan: Any, job_factory: Any, *args: Any, **kwargs: Any) -> Any:
        return run_ray(plan, FaultyJobFactory(job_factory, fault), *args, **kwargs)

    monkeypatch.setattr(ray_engine, "run_ray", run_ray_with_fault)


def main(argv: list[str]) -> None:
    """``python -m faults SPEC ARGS...``: ``f2s ARGS...`` with the fault armed."""
    from face2scene_cli.cli.app import main as f2s_main

    spec, *args = argv
    arm(Fault.parse(spec))
    sys.argv = ["f2s", *args]
    f2s_main()


if __name__ == "__main__":
    main(sys.argv[1:])
