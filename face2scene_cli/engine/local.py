"""The local engine: one run of a command's job over a plan, in this process.

It locks the output folder, skips images that are already done (output + valid report whose
input hash and settings match), decodes and encodes on worker threads while the compute stage
runs batches, writes every output and report atomically, records per-file failures and goes
on, and stops cleanly on SIGINT/SIGTERM after the work in flight. It never prints: it reports
progress through an observer callback owned by the caller. :class:`BatchRun` also holds the
steps a Ray worker and its driver share (see :mod:`face2scene_cli.engine.ray`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from face2scene_cli.config import BatchConfig
from face2scene_cli.engine.job import ImageJob, ItemEvent, LoadedImage, Observer, Processed
from face2scene_cli.engine.lock import locked_output
from face2scene_cli.engine.plan import Plan, WorkItem, os_error_reason
from face2scene_cli.engine.report import (
    ImageReport,
    RunInfo,
    RunSummary,
    display_path,
    read_report,
    summary_name,
)
from face2scene_cli.errors import ExitCode, F2SError, InputError
from face2scene_cli.hashing import file_sha256, json_sha256
from face2scene_cli.io.images import atomic_write_bytes, encode_image, read_image

logger = logging.getLogger(__name__)


class StopFlag:
    """Records SIGINT/SIGTERM so the engine can finish the file in flight, then stop."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self) -> str | None:
        return self.signal_name

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Catch SIGINT/SIGTERM while the block runs (main thread only); a second signal
        falls through to the previous handler."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum: int, frame: Any) -> None:
            self.signal_name = signal.Signals(signum).name
            signal.signal(signum, previous[signum])

        for s in previous:
            signal.signal(s, handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class BatchRun:
    """State of one run: the local loop, and the steps a Ray worker and its driver share."""

    def __init__(
        self,
        plan: Plan,
        job: ImageJob,
        cfg: BatchConfig,
        observer: Observer | None,
        stop: Callable[[], str | None],
        run_info: RunInfo,
    ) -> None:
        self.plan, self.job, self.cfg = plan, job, cfg
        self.observer, self.stop = observer, stop
        self.run_info = run_info
        self.settings = {
            **job.settings(),
            "command": job.command,
            "format": cfg.format,
            "quality": cfg.quality,
            "seed": cfg.seed,
            "models": job.models(),
        }
        self.hash = json_sha256(self.settings)
        self.counts = {"total": len(plan.items), "done": 0, "skipped": 0, "failed": 0, "pending": 0}
        self.failures: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.finished = 0

    # ----- per-item steps (reader threads)

    def load(self, item: WorkItem) -> LoadedImage | ItemEvent | tuple[WorkItem, F2SError, dict]:
        """Read, hash and decode one input: the decoded image, an event for an image already
        done (skipped, or recovered from an earlier try of this run), or its failure."""
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        if item.error is not None:
            return item, item.error, info
        try:
            data = item.source.read_bytes()
        except OSError as err:
            return item, InputError(f"cannot read: {os_error_reason(err)}"), info
        sha = hashlib.sha256(data).hexdigest()
        info = {"sha256": sha, "bytes": len(data)}
        done = None if self.cfg.overwrite else self._done_report(item, sha)
        if done is not None:
            if done["run"]["run_id"] == self.run_info.run_id:  # an earlier try of a retried batch
                return ItemEvent(item, "done", ImageReport(**done), 0, 0, recovered=True)
            return ItemEvent(item, "skipped", None, 0, len(self.plan.items))
        t1 = time.perf_counter()
        try:
            image = read_image(item.source, max_pixels=self.cfg.max_pixels, data=data)
        except F2SError as err:
            return item, err, info
        t2 = time.perf_counter()
        return LoadedImage(item, image, sha, len(data), {"read": t1 - t0, "decode": t2 - t1})

    def _done_report(self, item: WorkItem, input_sha: str) -> dict[str, Any] | None:
        """The report of an image already done with these settings and this input, whose
        output is intact; None when the image must be (re)done."""
        report = read_report(item.report)
        if not report or report.get("status") != "done" or report.get("settings_hash") != self.hash:
            return None
        if (report.get("input") or {}).get("sha256") != input_sha:
            return None
        output = report.get("output") or {}
        try:
            if item.output.stat().st_size != output.get("bytes"):
                return None
            return report if file_sha256(item.output) == output.get("sha256") else None
        except OSError:
            return None

    # ----- compute (main thread)

    def compute(self, batch: list[LoadedImage]) -> list[Processed | F2SError]:
        """Run the job on a batch, one result per image; when the batch fails, each image is
        retried alone so one bad image does not fail the others."""
        try:
            results = self.job.process(batch, self.cfg.seed)
        except F2SError as err:
            return [err] * len(batch) if len(batch) == 1 else [self._single(b) for b in batch]
        except Exception as err:  # an unexpected failure: isolate the image that causes it
            if len(batch) == 1:
                logger.debug("processing %s failed", batch[0].item.source, exc_info=True)
                return [F2SError(f"internal error: {type(err).__name__}: {err}")]
            return [self._single(b) for b in batch]
        if len(results) != len(batch):
            raise RuntimeError(
                f"{self.job.command} job returned {len(results)} results for {len(batch)}"
            )
        return results

    def _single(self, loaded: LoadedImage) -> Processed | F2SError:
        return self.compute([loaded])[0]

    # ----- writing (writer threads)

    def write(self, loaded: LoadedImage, result: Processed | F2SError) -> None:
        """Write the output and report of one computed image, or its failure report."""
        if isinstance(result, F2SError):
            info = {"sha256": loaded.sha256, "bytes": loaded.nbytes}
            self.write_failed(loaded.item, result, info, loaded)
        else:
            self.write_done(loaded, result)

    def write_done(self, loaded: LoadedImage, result: Processed) -> None:
        """Encode and atomically write an image's output, extras and report (a write error
        fails the image)."""
        item = loaded.item
        t0 = time.perf_counter()
        try:
            data = encode_image(result.image, item.format, self.cfg.quality)
            t1 = time.perf_counter()
            if os.path.realpath(item.output) == os.path.realpath(item.source):
                raise InputError("refusing to overwrite the input file")
            item.output.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(item.output, data)
            for extra in result.extras:
                extra.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(
                    extra.path, encode_image(extra.image, extra.format, self.cfg.quality)
                )
        except (OSError, F2SError) as err:
            error = (
                err
                if isinstance(err, F2SError)
                else InputError(f"cannot write output: {os_error_reason(err)}")
            )
            self.write_failed(
                item, error, {"sha256": loaded.sha256, "bytes": loaded.nbytes}, loaded
            )
            return
        t2 = time.perf_counter()
        timings = {**loaded.timings, **result.timings, "encode": t1 - t0, "write": t2 - t1}
        img = result.image
        output = {
            "path": display_path(item.output),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "format": item.format,
            "width": img.width,
            "height": img.height,
            "channels": img.channels,
            "bit_depth": img.bit_depth,
        }
        report = self._report(
            item,
            "done",
            self._input_info(loaded),
            output,
            None,
            loaded.image.warnings + result.warnings,
            timings,
            result.fields,
        )
        self._finish(item, report)

    def write_failed(
        self, item: WorkItem, error: F2SError, info: dict, loaded: LoadedImage | None = None
    ) -> None:
        """Write the failure report of one image (``info``: its input hash and size, if read)."""
        input_info = (
            self._input_info(loaded)
            if loaded
            else {
                "path": display_path(item.source),
                "relative_path": item.key,
                "sha256": info.get("sha256"),
                "bytes": info.get("bytes"),
            }
        )
        err = {"type": type(error).__name__, "message": str(error) or type(error).__name__}
        warnings = loaded.image.warnings if loaded else []
        report = self._report(item, "failed", input_info, None, err, warnings, {}, {})
        self._finish(item, report)

    def _input_info(self, loaded: LoadedImage) -> dict[str, Any]:
        img = loaded.image
        return {
            "path": display_path(loaded.item.source),
            "relative_path": loaded.item.key,
            "sha256": loaded.sha256,
            "bytes": loaded.nbytes,
            "format": img.source_format,
            "width": img.width,
            "height": img.height,
            "channels": img.channels,
            "bit_depth": img.bit_depth,
        }

    def _report(
        self,
        item: WorkItem,
        status: str,
        input_info: dict,
        output: dict | None,
        error: dict | None,
        warnings: list[str],
        timings: dict[str, float],
        fields: dict[str, Any],
    ) -> ImageReport:
        run = asdict(self.run_info)
        run["timings"] = {k: round(v, 4) for k, v in timings.items()}
        if timings:
            run["timings"]["total"] = round(sum(timings.values()), 4)
        return ImageReport(
            command=self.job.command,
            status=status,
            input=input_info,
            output=output,
            error=error,
            warnings=list(warnings),
            settings_hash=self.hash,
            settings=self.settings,
            models=self.job.models(),
            seed=self.cfg.seed,
            device=self.job.device,
            run=run,
            **fields,
        )

    def _finish(self, item: WorkItem, report: ImageReport) -> None:
        try:
            if item.report is not None:  # None: refused by the planner, named in the summary only
                item.report.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(item.report, report.to_json().encode())
        except OSError as err:
            report.status = "failed"
            report.error = {
                "type": "OutputError",
                "message": f"cannot write report: {os_error_reason(err)}",
            }
        self.settled(ItemEvent(item, report.status, report, 0, 0))

    def settled(self, event: ItemEvent) -> None:
        """Count a finished item (written, skipped, or done by an earlier try of this run)
        and tell the observer."""
        with self.lock:
            self.counts[event.status] += 1
            if event.status == "failed" and event.report is not None:
                error = event.report.error or {}
                self.failures.append({"path": display_path(event.item.source), **error})
            self.finished += 1
            event.index, event.total = self.finished, len(self.plan.items)
            if self.observer is not None:
                self.observer(event)

    # ----- the loop

    def execute(self) -> RunSummary:
        """The local loop: prefetch and decode on reader threads, compute batches here, encode
        and write on writer threads; stops after the work in flight when ``stop`` says so."""
        started = time.perf_counter()
        cfg = self.cfg
        items = self.plan.items
        prefetch = cfg.batch_size + 2 * cfg.io_workers
        interrupted: str | None = None
        with (
            ThreadPoolExecutor(cfg.io_workers, thread_name_prefix="f2s-read") as readers,
            ThreadPoolExecutor(cfg.io_workers, thread_name_prefix="f2s-write") as writers,
        ):
            queue: deque[Future] = deque()
            writes: deque[Future] = deque()
            next_item = 0
            batch: list[LoadedImage] = []

            def flush() -> None:
                results = self.compute(batch)
                for loaded, result in zip(batch, results, strict=True):
                    writes.append(writers.submit(self.write, loaded, result))
                batch.clear()
                while len(writes) > prefetch:  # bound memory held by pending encodes
                    writes.popleft().result()

            while next_item < len(items) or queue:
                while next_item < len(items) and len(queue) < prefetch:
                    queue.append(readers.submit(self.load, items[next_item]))
                    next_item += 1
                if self.stop():
                    interrupted = self.stop()
                    break
                outcome = queue.popleft().result()
                if isinstance(outcome, ItemEvent):
                    self.settled(outcome)
                elif isinstance(outcome, LoadedImage):
                    batch.append(outcome)
                else:
                    item, error, info = outcome
                    writes.append(writers.submit(self.write_failed, item, error, info))
                inputs_left = bool(queue) or next_item < len(items)
                if len(batch) >= cfg.batch_size or (batch and not inputs_left):
                    flush()
            for fut in queue:
                fut.cancel()
            for fut in writes:
                fut.result()
            interrupted = interrupted or self.stop()
        return self.summary(interrupted, time.perf_counter() - started)

    def run_items(self, items: list[WorkItem]) -> None:
        """Load, compute and write ``items`` as one batch (a Ray worker's unit of work); every
        item reaches the observer."""
        with ThreadPoolExecutor(self.cfg.io_workers, thread_name_prefix="f2s-io") as pool:
            batch: list[LoadedImage] = []
            for outcome in pool.map(self.load, items):
                if isinstance(outcome, ItemEvent):
                    self.settled(outcome)
                elif isinstance(outcome, LoadedImage):
                    batch.append(outcome)
                else:
                    self.write_failed(*outcome)
            if batch:
                list(pool.map(self.write, batch, self.compute(batch)))

    def summary(self, interrupted: str | None, seconds: float) -> RunSummary:
        """The run summary from the counts so far (images not settled are pending)."""
        self.counts["pending"] = (
            self.counts["total"]
            - self.counts["done"]
            - self.counts["skipped"]
            - self.counts["failed"]
        )
        if interrupted == "SIGTERM":
            code = ExitCode.TERMINATED
        elif interrupted:
            code = ExitCode.INTERRUPTED
        elif self.counts["failed"]:
            code = ExitCode.FAILED_FILES
        else:
            code = ExitCode.OK
        run = asdict(self.run_info)
        run["timings"] = {"total": round(seconds, 4)}
        return RunSummary(
            command=self.job.command,
            out=display_path(self.plan.out),
            counts=dict(self.counts),
            failures=self.failures,
            warnings=[*self.plan.warnings, *self.job.warnings()],  # the planner's, then the job's
            settings_hash=self.hash,
            settings=self.settings,
            models=self.job.models(),
            exit_code=int(code),
            interrupted=interrupted,
            run=run,
        )


def run_batch(
    plan: Plan,
    job: ImageJob,
    cfg: BatchConfig,
    observer: Observer | None = None,
    stop: Callable[[], str | None] = lambda: None,
) -> RunSummary:
    """Process every item of ``plan`` with ``job`` under a lock on the output folder.

    Returns the run summary (also written to the output folder, one per shard).

    Raises:
        LockError: another run holds the output folder (or this shard of it).
        OutputFolderError: the output folder cannot be created, locked or written.
        SummaryWriteError: the run finished, but its summary could not be written.
    """
    import torch

    torch.set_num_threads(cfg.torch_threads)
    with locked_output(plan, job.command):
        run_info = RunInfo.new("local", str(plan.shard) if plan.shard else None)
        summary = BatchRun(plan, job, cfg, observer, stop, run_info).execute()
        write_summary(plan, summary)
    return summary


class SummaryWriteError(F2SError):
    """The run finished but its summary could not be written (a full or read-only disk);
    ``summary`` is the run's, its exit code at least 1, for the caller to show instead."""

    def __init__(self, path: Path, err: OSError, summary: RunSummary) -> None:
        super().__init__(f"cannot write the summary {display_path(path)}: {os_error_reason(err)}")
        summary.exit_code = max(summary.exit_code, int(ExitCode.FAILED_FILES))
        self.summary = summary


def write_summary(plan: Plan, summary: RunSummary) -> Path:
    """Write the run summary (``f2s-summary.json``, or the shard's) atomically; its path.

    Raises:
        SummaryWriteError: the summary cannot be written (it carries the summary).
    """
    path = plan.out / summary_name(plan.shard)
    try:
        atomic_write_bytes(path, summary.to_json().encode())
    except OSError as err:
        raise SummaryWriteError(path, err, summary) from None
    return path
