"""Per-image reports and run summaries: dataclasses, JSON Schema, validation of existing reports.

Reports are the machine-readable contract of f2s: one JSON per image next to its output and a
run summary per run (per shard once runs are sharded). Fields that vary from run to run
(timings, host, run id, engine) live under ``run`` so comparisons can drop that one key.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from face2scene_cli.errors import ConfigError

SCHEMA_VERSION = "1.0"
REPORT_SUFFIX = ".json"
SUMMARY_NAME = "f2s-summary.json"
LOCK_NAME = ".f2s.lock"  # the output folder's lock file (engine.lock)
SHARD_SUMMARY_GLOB = "f2s-summary.shard-*-of-*.json"


def summary_name(shard: Any = None) -> str:
    """The summary's file name: ``f2s-summary.json``, or one per shard (``I/N``)."""
    if shard is None:
        return SUMMARY_NAME
    index, count = str(shard).split("/")
    return f"f2s-summary.shard-{index}-of-{count}.json"


def is_summary_name(name: str) -> bool:
    """Whether a file in an output folder is a run summary (not a per-image report)."""
    return name == SUMMARY_NAME or Path(name).match(SHARD_SUMMARY_GLOB)


def display_path(path: Path | str) -> str:
    """A path as text that is always valid UTF-8 (undecodable bytes shown as \\xNN escapes)."""
    raw = str(path).encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


@dataclass
class RunInfo:
    """What differs between two runs that produce the same outputs; compare reports without it."""

    run_id: str
    host: str
    engine: str
    f2s_version: str
    torch_version: str
    started_at: float
    timings: dict[str, float] = field(default_factory=dict)
    shard: str | None = None

    @classmethod
    def new(cls, engine: str = "local", shard: str | None = None) -> RunInfo:
        import torch

        from face2scene_cli import __version__

        return cls(
            run_id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            engine=engine,
            f2s_version=__version__,
            torch_version=torch.__version__,
            started_at=round(time.time(), 3),
            shard=shard,
        )


@dataclass
class ImageReport:
    """The report of one input image (``<output>.json``); see ``schemas/report.schema.json``."""

    command: str
    status: str  # "done" | "failed"
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: dict[str, str] | None
    warnings: list[str]
    settings_hash: str
    settings: dict[str, Any]
    models: list[dict[str, str]]
    seed: int
    device: str
    run: dict[str, Any]
    faces: list[dict[str, Any]] = field(default_factory=list)
    degradation: dict[str, Any] | None = None
    applied_degradation: dict[str, Any] | None = None
    scene: dict[str, Any] | None = None  # restore: tile and precision used
    schema_version: str = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def to_line(self) -> str:
        """The report as one JSON line (for ``--report-jsonl``)."""
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)


@dataclass
class RunSummary:
    """The summary of one run over a batch of inputs (``f2s-summary.json`` in the output folder)."""

    command: str
    out: str
    counts: dict[str, int]
    failures: list[dict[str, str]]
    warnings: list[str]
    settings_hash: str
    settings: dict[str, Any]
    models: list[dict[str, str]]
    exit_code: int
    interrupted: str | None
    run: dict[str, Any]
    schema_version: str = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n"


def load_schema(name: str = "report") -> dict[str, Any]:
    """The shipped JSON Schema ``name`` (``report`` or ``summary``)."""
    schemas = resources.files("face2scene_cli.engine").joinpath("schemas")
    text = schemas.joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


def read_report(path: Path) -> dict[str, Any] | None:
    """An existing report as a dict, or None when it is missing, unreadable or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return None
    return data


def merge_summaries(summaries: list[dict[str, Any]]) -> RunSummary:
    """One summary for runs over parts of the same inputs (the shards of an array job).

    Counts add up, failures and warnings are joined; each part's ``run`` is kept under
    ``run.parts``.

    Raises:
        ConfigError: no summary, summaries of different commands or settings, or an
            incomplete or repeated set of shards.
    """
    if not summaries:
        raise ConfigError("no summary to merge")
    first = summaries[0]
    for s in summaries:
        if (s["command"], s["settings_hash"]) != (first["command"], first["settings_hash"]):
            raise ConfigError(
                f"cannot merge summaries of different runs: {first['command']} "
                f"{first['settings_hash'][:12]} vs {s['command']} {s['settings_hash'][:12]}"
            )
    shards = [s["run"].get("shard") for s in summaries]
    if any(shards):
        counts = {str(x).split("/")[1] for x in shards if x}
        if None in shards or len(counts) != 1:
            raise ConfigError(f"cannot merge shards of different splits: {shards}")
        total = int(counts.pop())
        missing = [f"{i}/{total}" for i in range(total) if f"{i}/{total}" not in shards]
        repeated = sorted({x for x in shards if shards.count(x) > 1})
        if missing or repeated:
            raise ConfigError(
                f"incomplete set of shards: missing {missing or 'none'}, "
                f"repeated {repeated or 'none'}"
            )
    keys = ("total", "done", "skipped", "failed", "pending")
    interrupted = next((s["interrupted"] for s in summaries if s["interrupted"]), None)
    warnings = list(dict.fromkeys(w for s in summaries for w in s["warnings"]))
    return RunSummary(
        command=first["command"],
        out=first["out"],
        counts={k: sum(s["counts"][k] for s in summaries) for k in keys},
        failures=[f for s in summaries for f in s["failures"]],
        warnings=warnings,
        settings_hash=first["settings_hash"],
        settings=first["settings"],
        models=first["models"],
        exit_code=max(s["exit_code"] for s in summaries),
        interrupted=interrupted,
        run={
            "run_id": uuid.uuid4().hex[:12],
            "host": socket.gethostname(),
            "engine": "merged",
            "started_at": min(s["run"]["started_at"] for s in summaries),
            "timings": {"total": max(s["run"]["timings"].get("total", 0) for s in summaries)},
            "parts": [s["run"] for s in summaries],
        },
    )
