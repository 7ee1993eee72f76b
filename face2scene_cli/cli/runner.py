"""What every file-walking command does around the engine: settings, progress, summary, exit."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from face2scene_cli.config import (
    BatchConfig,
    build_config,
    check_file_keys,
    config_as_dict,
    file_section,
    read_config_file,
)
from face2scene_cli.engine.report import RunSummary, display_path, summary_name
from face2scene_cli.errors import ExitCode, F2SError

if TYPE_CHECKING:
    from face2scene_cli.engine.job import ImageJob, ItemEvent
    from face2scene_cli.engine.plan import Plan

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
logger = logging.getLogger(__name__)

# C0/C1 controls, DEL and the Unicode marks that reorder or hide text (bidi overrides, ZWSP).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``, ``\\u202e``), so a
    file name can neither forge a log line nor colour the terminal (JSON output escapes them
    by itself)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))


def say(text: str) -> None:
    """One line on stderr, control characters escaped."""
    print(printable(text), file=sys.stderr, flush=True)


def cli_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn an F2SError raised by a command into one stderr line and its exit code.

    Tracebacks only with ``--debug`` (or ``F2S_DEBUG=1``).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except F2SError as err:
            if kwargs.get("debug") or os.environ.get("F2S_DEBUG", "").lower() in ("1", "true"):
                logger.error("traceback", exc_info=True)
            say(f"f2s: error: {err}")
            raise typer.Exit(int(err.exit_code)) from None

    return wrapper


@dataclass(frozen=True)
class LogOptions:
    """How a run talks to the user (never changes an output)."""

    quiet: bool = False
    log_json: bool = False
    report_jsonl: str | None = None
    debug: bool = False

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> LogOptions:
        """From a command's parameters (its ``locals()``)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def configure_logging(debug: bool) -> None:
    """Library logs go to stderr; debug level only with --debug."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def research_logging() -> None:
    """Training and evaluation runs last long: their progress (the ``research`` package's
    INFO logs) goes to stderr, other libraries' at WARNING."""
    configure_logging(False)
    logging.getLogger("face2scene_cli.research").setLevel(logging.INFO)


# Command parameters named differently from the settings field they set.
_PARAM_ALIASES = {"fmt": "format"}


def load_settings(
    command: str,
    config_file: Path | None,
    classes: list[type[Any]],
    values: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> list[Any]:
    """Build each settings dataclass from defaults < file < env/flags (env arrives as flags).

    Args:
        values: the command's parameters (its ``locals()``); those named like a settings
            field (``fmt`` sets ``format``) and not None are the flags.
        defaults: replaces class defaults for this command (e.g. ``format: png`` for degrade).
    """
    flags = {_PARAM_ALIASES.get(k, k): v for k, v in values.items()}
    data = read_config_file(config_file)
    check_file_keys(data, command, classes)
    out = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        own = {k: v for k, v in (defaults or {}).items() if k in names}
        out.append(build_config(cls, file_section(data, command, cls), flags, own))
    return out


def print_config(*configs: Any) -> None:
    """``--print-config``: the effective settings as YAML on stdout."""
    typer.echo(yaml.safe_dump(config_as_dict(*configs), sort_keys=True).rstrip())


class _Rate(ProgressColumn):
    """Images per second over the finished items."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} img/s" if speed else "-- img/s", style="progress.data.speed")


class ProgressObserver:
    """Turns engine events into a rich bar (TTY), plain lines (cron logs) or JSON lines."""

    def __init__(self, plan: Plan, log: LogOptions, jsonl: IO[str] | None) -> None:
        self.log, self.jsonl = log, jsonl
        self.total = len(plan.items)
        self.progress: Progress | None = None
        self.task = None
        if not log.quiet and not log.log_json and stderr.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=stderr,
                transient=False,
            )
            self.task = self.progress.add_task("f2s", total=self.total)

    def __enter__(self) -> ProgressObserver:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, event: ItemEvent) -> None:
        report = event.report
        path = display_path(event.item.source)
        if self.jsonl is not None and report is not None:
            self.jsonl.write(report.to_line() + "\n")
            self.jsonl.flush()
        error = (report.error or {}) if report else {}
        if self.log.log_json:
            line = {
                "event": "item",
                "index": event.index,
                "total": event.total,
                "status": event.status,
                "path": path,
            }
            if error:
                line["error"] = error
            if report and report.output:
                line["output"] = report.output["path"]
            print(json.dumps(line), file=sys.stderr, flush=True)
            return
        if self.progress is not None:
            self.progress.advance(self.task)
            if event.status == "failed":
                self.progress.console.print(
                    Text.assemble(("failed", "red"), printable(f" {path}: {error.get('message')}"))
                )
            return
        if event.status == "failed":
            say(f"f2s: [{event.index}/{event.total}] failed {path}: {error.get('message')}")
        elif not self.log.quiet:
            seconds = (report.run.get("timings") or {}).get("total") if report else None
            took = f" ({seconds:.2f} s)" if seconds is not None else ""
            say(f"f2s: [{event.index}/{event.total}] {event.status} {path}{took}")


@contextlib.contextmanager
def step_progress(total: int, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """Progress over ``total`` steps of a command that does not walk files: a bar on a TTY,
    one stderr line per step otherwise, nothing with ``quiet``. Yields the per-step callback
    (its argument labels the step just done)."""
    if quiet:
        yield lambda _label: None
        return
    if not stderr.is_terminal:
        count = iter(range(1, total + 1))
        yield lambda label: print(
            f"f2s: [{next(count)}/{total}] {label}", file=sys.stderr, flush=True
        )
        return
    columns = (TextColumn("[bold]f2s"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.description}"), console=stderr) as progress:
        task = progress.add_task("", total=total)
        yield lambda label: progress.update(task, advance=1, description=label)


def run_files(inputs: list[str], job_factory: Any, batch_cfg: BatchConfig, log: LogOptions) -> None:
    """Plan, run the job over the inputs, print the summary and exit with the run's code.

    ``job_factory`` builds the job after planning, so a bad input path is reported before
    models load.
    """
    from face2scene_cli.engine import ray as ray_engine
    from face2scene_cli.engine.job import build_job
    from face2scene_cli.engine.local import StopFlag, SummaryWriteError, run_batch
    from face2scene_cli.engine.lock import check_writable
    from face2scene_cli.engine.plan import plan_inputs

    started = time.perf_counter()
    if batch_cfg.engine == "ray":
        ray_engine.require_ray()
    plan = plan_inputs(inputs, batch_cfg)
    for warning in plan.warnings:
        diag("warning", warning, log)
    if not plan.found:  # a shard may be empty: it still writes its (empty) summary
        diag("error", "no images found in the inputs", log)
        raise typer.Exit(ExitCode.USAGE)
    check_writable(plan.out)
    # Ray workers build their own job; locally it is built before the progress bar starts.
    job: ImageJob | None = build_job(job_factory) if batch_cfg.engine == "local" else None
    for warning in job.warnings() if job is not None else []:
        diag("warning", warning, log)
    jsonl = _open_jsonl(log.report_jsonl)
    written = True
    try:
        with ProgressObserver(plan, log, jsonl) as observer, StopFlag().installed() as stop:
            if job is None:
                summary = ray_engine.run_ray(plan, job_factory, batch_cfg, observer, stop)
            else:
                summary = run_batch(plan, job, batch_cfg, observer=observer, stop=stop)
    except SummaryWriteError as err:  # the fallback: the summary goes to stderr
        summary, written = err.summary, False
        diag("error", str(err), log)
        text = summary.to_json()
        if log.log_json:  # one JSON line, like every other event
            text = json.dumps({"event": "run_summary", "summary": json.loads(text)}) + "\n"
        print(text, end="", file=sys.stderr, flush=True)
    finally:
        if jsonl not in (None, sys.stdout):
            jsonl.close()
    if job is None:  # the Ray job was built on the cluster: its warnings come with the summary
        for warning in summary.warnings[len(plan.warnings) :]:
            diag("warning", warning, log)
    _print_summary(summary, plan, log, time.perf_counter() - started, written)
    raise typer.Exit(summary.exit_code)


def _open_jsonl(target: str | None) -> IO[str] | None:
    if target is None:
        return None
    if target == "-":
        return sys.stdout
    return open(target, "a", encoding="utf-8")


def diag(level: str, message: str, log: LogOptions | None = None) -> None:
    """One diagnostic line on stderr (``f2s: <level>: <message>``, or JSON with --log-json)."""
    log = log or LogOptions()
    if log.log_json:
        print(json.dumps({"event": level, "message": message}), file=sys.stderr, flush=True)
    elif level != "warning" or not log.quiet:
        say(f"f2s: {level}: {message}")


def _print_summary(
    summary: RunSummary, plan: Plan, log: LogOptions, seconds: float, written: bool
) -> None:
    c = summary.counts
    if log.log_json:
        print(
            json.dumps(
                {
                    "event": "summary",
                    "counts": c,
                    "exit_code": summary.exit_code,
                    "out": summary.out,
                    "seconds": round(seconds, 3),
                }
            ),
            file=sys.stderr,
            flush=True,
        )
        return
    if summary.interrupted:
        diag(
            "warning",
            f"stopped by {summary.interrupted}; {c['pending']} image(s) left "
            "for the next run (it resumes where this one stopped)",
            log,
        )
    if not log.quiet:
        where = display_path(plan.out / summary_name(plan.shard)) if written else "stderr, above"
        say(
            f"f2s: {c['done']} done, {c['skipped']} skipped, {c['failed']} failed "
            f"of {c['total']} in {seconds:.1f} s -> {summary.out} (summary: {where})"
        )
