"""The Ray engine: the local engine's plan, lock, resume and report rules, with the images
spread over a Ray Data actor pool (``--engine ray``).

The driver (this process) plans the inputs, holds the output lock and streams the workers'
results into the progress observer and the run summary. Ray Data carries the planned items'
indices to the workers: actors that build the command's job once (models loaded on their own
device) and load, compute and write each batch with the local engine's steps, so outputs,
reports, atomic writes and the skip-done rule are the same.

Exactly once: Ray retries the batch of a worker that died on a restarted worker, which finds
the images the dead one finished (their report carries this run's id) and reports them done
without writing them again. The images of a batch that killed its worker on every try go
through a second pass, one image per call on plain actors; an image that still kills its
worker is reported failed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from face2scene_cli.config import BatchConfig
from face2scene_cli.engine.job import ImageJob, ItemEvent, Observer, build_job
from face2scene_cli.engine.local import BatchRun, write_summary
from face2scene_cli.engine.lock import locked_output, remove_stale_temp_files
from face2scene_cli.engine.plan import Plan, WorkItem
from face2scene_cli.engine.report import ImageReport, RunInfo, RunSummary, read_report
from face2scene_cli.errors import F2SError, NotAvailableError

INSTALL_HINT = "pip install 'face2scene[ray]'"
TASK_RETRIES = 1  # tries of a batch after its worker died, in each of the two passes
MAX_BLOCKS = 10_000
# Ray Data's driver-side threads (ray 2.60: the streaming executor and its metadata fetcher)
_RAY_DATA_THREADS = ("StreamingExecutor-", "ray-data-metadata-prefetch")
_RAY_DATA_JOIN_S = 30.0


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data).

    Raises:
        NotAvailableError: Ray is not installed; the message says how to install it.
    """
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise NotAvailableError(
            f"--engine ray needs Ray, which is not installed here: {INSTALL_HINT}"
        ) from err
    return ray


class JobInfo:
    """A job's name, device, settings, models and warnings, as the driver sees a job that runs
    on the workers (it never processes images). Built once per run: the workers' own copies of
    the job never report their warnings."""

    def __init__(self, job: ImageJob) -> None:
        self.command, self.device = job.command, job.device
        self._settings, self._models = job.settings(), job.models()
        self._warnings = job.warnings()

    def settings(self) -> dict[str, Any]:
        return self._settings

    def models(self) -> list[dict[str, str]]:
        return self._models

    def warnings(self) -> list[str]:
        return self._warnings


def _describe(job_factory: Callable[[], ImageJob]) -> JobInfo:
    return JobInfo(job_factory())


class _Worker:
    """A Ray actor (in the Ray Data pool, or alone in the second pass): builds the job once,
    then loads, computes and writes batches."""

    def __init__(
        self,
        job_factory: Callable[[], ImageJob],
        items: list[Any],
        out: Any,
        cfg: BatchConfig,
        run_info: RunInfo,
    ) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, cfg.threads))
        self.items: list[WorkItem] = ray.get(items[0])  # a list, so Ray leaves the ref to us
        self.index = {item.key: i for i, item in enumerate(self.items)}
        with warnings.catch_warnings():  # Ray deprecates a property this one reads, not it
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self.events: list[ItemEvent] = []
        plan = Plan(items=self.items, out=out)
        stop = lambda: None  # noqa: E731  # the driver stops the run
        self.run = BatchRun(plan, build_job(job_factory), cfg, self.events.append, stop, run_info)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.process(batch)

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Load, compute and write the batch's items; one result row per item."""
        self.events.clear()
        self.run.run_items([self.items[int(i)] for i in batch["index"]])
        return {
            "index": np.array([self.index[e.item.key] for e in self.events], dtype=np.int64),
            "status": np.array([e.status for e in self.events], dtype=object),
            "report": np.array(
                [e.report.to_json() if e.report else "" for e in self.events], dtype=object
            ),
            "recovered": np.array([e.recovered for e in self.events], dtype=bool),
            "worker": np.array([self.name] * len(self.events), dtype=object),
            "restarted": np.array([self.restarted] * len(self.events), dtype=bool),
        }


def run_ray(
    plan: Plan,
    job_factory: Callable[[], ImageJob],
    cfg: BatchConfig,
    observer: Observer | None = None,
    stop: Callable[[], str | None] = lambda: None,
) -> RunSummary:
    """Process every item of ``plan`` on a Ray Data actor pool, under the output lock.

    Joins ``cfg.ray_address`` (or the Ray already initialised in this process, or starts one
    here). Returns the run summary (also written to the output folder, one per shard).

    Raises:
        NotAvailableError: Ray is not installed.
        LockError: another run holds the output folder (or this shard of it).
        OutputFolderError: the output folder cannot be created, locked or written.
        SummaryWriteError: the run finished, but its summary could not be written.
        F2SError: a worker cannot build the job (e.g. a missing model).
    """
    ray = require_ray()
    started = time.perf_counter()
    ours = not ray.is_initialized()  # a Ray started (or joined) here is shut down here
    if ours:
        _init(ray, cfg)
    try:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # our observer reports progress
        cpus, gpus = max(1, cfg.threads), cfg.gpus_per_worker
        try:
            info = ray.get(
                ray.remote(_describe).options(num_cpus=cpus, num_gpus=gpus).remote(job_factory)
            )
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, F2SError):
                raise err.cause from None
            raise
        run_info = RunInfo.new("ray", str(plan.shard) if plan.shard else None)
        with locked_output(plan, info.command):
            run = BatchRun(plan, info, cfg, observer, stop, run_info)  # type: ignore[arg-type]
            stats, interrupted, settled = _execute(ray, run, plan, job_factory, cfg, run_info)
            if interrupted:
                if ours:  # stops its workers before the disk is read
                    _join_ray_data_threads(_RAY_DATA_JOIN_S)
                    ray.shutdown()
                _settle_from_disk(run, plan, settled)
            else:  # every worker is done: temp files left now are dead workers'
                remove_stale_temp_files(plan.out, plan.items if plan.shard else None)
            summary = run.summary(interrupted, time.perf_counter() - started)
            summary.run.update(stats)
            write_summary(plan, summary)
    finally:
        if ours:
            ray.shutdown()
    return summary


def _join_ray_data_threads(timeout: float) -> None:
    """Wait up to ``timeout`` s for Ray Data's executor threads to end after an iteration was
    left early. The executor gives its scheduling loop only 2 s to stop; a Ray Data thread
    still talking to the core worker when ``ray.shutdown`` runs makes Ray end the process
    with status 1 ("The core worker has already been shutdown"), seen once under load in
    CI."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith(_RAY_DATA_THREADS):
            thread.join(max(0.0, deadline - time.monotonic()))


def _init(ray: Any, cfg: BatchConfig) -> None:
    """Join ``cfg.ray_address`` or start Ray here, keeping the caller's SIGTERM handler
    (``ray.init`` replaces it with a ``sys.exit``, which would kill the run mid-batch)."""
    handler = signal.getsignal(signal.SIGTERM)
    # A Ray started here for this run alone skips the dashboard (CPU better spent on images).
    local = {"include_dashboard": False} if cfg.ray_address is None else {}
    ray.init(address=cfg.ray_address, logging_level=logging.WARNING, **local)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _settle_from_disk(run: BatchRun, plan: Plan, settled: set[int]) -> None:
    """After a stop: settle the items this run's workers finished but the driver never
    received (their report carries this run's id), so the summary matches the disk."""
    for i, item in enumerate(plan.items):
        report = None if i in settled or item.report is None else read_report(item.report)
        if report and (report.get("run") or {}).get("run_id") == run.run_info.run_id:
            run.settled(ItemEvent(item, report["status"], ImageReport(**report), 0, 0, True))


def _execute(
    ray: Any,
    run: BatchRun,
    plan: Plan,
    job_factory: Callable[[], ImageJob],
    cfg: BatchConfig,
    run_info: RunInfo,
) -> tuple[dict[str, int], str | None, set[int]]:
    """Both passes; returns the pool's statistics (workers, restarts, images recovered from
    dead workers), the signal that stopped the run and the indices of the items settled."""
    worker_args = {
        "job_factory": job_factory,
        "items": [ray.put(plan.items)],
        "out": plan.out,
        "cfg": cfg,
        "run_info": run_info,
    }
    stats = {"workers": _worker_count(ray, cfg), "worker_restarts": 0, "recovered": 0}
    restarted: set[str] = set()
    settled: set[int] = set()

    def settle(rows: dict[str, Any]) -> None:
        columns = ("index", "status", "report", "recovered", "worker", "restarted")
        for i, status, text, recovered, worker, again in zip(
            *(rows[c] for c in columns), strict=True
        ):
            settled.add(int(i))
            report = ImageReport(**json.loads(text)) if text else None
            run.settled(ItemEvent(plan.items[int(i)], status, report, 0, 0, bool(recovered)))
            stats["recovered"] += bool(recovered)
            if again:
                restarted.add(worker)

    lost = _first_pass(ray, plan, cfg, worker_args, stats["workers"], settle, run.stop)
    if lost and not run.stop():
        lost = _second_pass(ray, lost, cfg, worker_args, stats["workers"], settle, run.stop)
    stats["worker_restarts"] = len(restarted)
    if run.stop():
        return stats, run.stop(), settled
    error = F2SError(
        f"its worker died on each of the {TASK_RETRIES + 1} tries to process it alone "
        "(a crash while processing this image)"
    )
    for i in lost:
        run.write_failed(plan.items[i], error, {})
    return stats, None, settled


def _first_pass(
    ray: Any,
    plan: Plan,
    cfg: BatchConfig,
    worker_args: dict[str, Any],
    workers: int,
    settle: Callable[[dict[str, Any]], None],
    stop: Callable[[], str | None],
) -> list[int]:
    """Every item, in batches, through Ray Data; returns the indices of the batches lost with
    a worker that died on each try."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.max_errored_blocks, ctx.enable_progress_bars
    ctx.max_errored_blocks, ctx.enable_progress_bars = -1, False  # lost blocks: second pass
    blocks = min(MAX_BLOCKS, math.ceil(len(plan.items) / cfg.batch_size))
    left = set(range(len(plan.items)))
    try:
        dataset = ray.data.from_items([{"index": i} for i in left], override_num_blocks=blocks)
        with warnings.catch_warnings():  # Ray 2.60 has no named parameter for the retries
            warnings.simplefilter("ignore", DeprecationWarning)
            results = dataset.map_batches(
                _Worker,
                fn_constructor_kwargs=worker_args,
                batch_size=cfg.batch_size,
                compute=ray.data.ActorPoolStrategy(size=min(workers, blocks)),
                num_cpus=max(1, cfg.threads),
                num_gpus=cfg.gpus_per_worker or None,
                max_restarts=-1,
                max_task_retries=TASK_RETRIES,
            )
        # prefetch_batches=0: the rows are small reports, and no Ray Data thread of this
        # process then fetches blocks that a stop's ray.shutdown could pull from under it
        for rows in results.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            settle(rows)
            left.difference_update(int(i) for i in rows["index"])
            if stop():
                break
    finally:
        ctx.max_errored_blocks, ctx.enable_progress_bars = saved
    return sorted(left)


def _second_pass(
    ray: Any,
    lost: list[int],
    cfg: BatchConfig,
    worker_args: dict[str, Any],
    workers: int,
    settle: Callable[[dict[str, Any]], None],
    stop: Callable[[], str | None],
) -> list[int]:
    """Each lost item alone, one call at a time per worker (so a poison image cannot spend
    the retries of the images queued behind it); returns those whose worker died on each try."""
    actor = ray.remote(_Worker).options(
        num_cpus=max(1, cfg.threads),
        num_gpus=cfg.gpus_per_worker or None,
        max_restarts=-1,
        max_task_retries=TASK_RETRIES,
    )
    free = [actor.remote(**worker_args) for _ in range(min(workers, len(lost)))]
    todo, in_flight, failed = list(lost), {}, []
    while (todo and not stop()) or in_flight:
        while free and todo and not stop():
            worker, index = free.pop(), todo.pop(0)
            in_flight[worker.process.remote({"index": np.array([index])})] = (worker, index)
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        worker, index = in_flight.pop(ready[0])
        free.append(worker)
        try:
            settle(ray.get(ready[0]))
        except ray.exceptions.RayActorError:
            failed.append(index)
    for worker in free:
        ray.kill(worker)
    return failed


def _worker_count(ray: Any, cfg: BatchConfig) -> int:
    """``--workers``, or as many workers as the cluster's GPUs (or CPUs) hold."""
    if cfg.workers:
        return cfg.workers
    resources = ray.cluster_resources()
    if cfg.gpus_per_worker:
        return max(1, int(resources.get("GPU", 0) // cfg.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // max(1, cfg.threads)))
