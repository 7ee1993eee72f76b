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

SCHEMA_VERSION = "1.0"
REPORT_SUFFIX = ".json"
SUMMARY_NAME = "f2s-summary.json"


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

    @classmethod
    def new(cls, engine: str = "local") -> RunInfo:
        import torch

        from face2scene_cli import __version__

        return cls(
            run_id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            engine=engine,
            f2s_version=__version__,
            torch_version=torch.__version__,
            started_at=round(time.time(), 3),
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
    text = resources.files("face2scene_cli").joinpath(f"schemas/{name}.schema.json").read_text()
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
