"""The ``f2s`` command line: commands registered by name, imported only when they run.

``f2s --version`` and ``f2s --help`` import no command module; ``f2s restore --help`` imports
only ``commands/restore.py``, which keeps torch, cv2 and the models out until the command runs.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from face2scene_cli import __version__
from face2scene_cli.errors import ExitCode

EPILOG = """[bold]Examples[/bold]

  f2s restore ./photos --refs ./refs            restore a folder (outputs in ./photos_f2s)
  f2s degrade-code img.jpg --json               what is wrong with this photo
  f2s degrade ./clean --out ./noisy --preset mixed --seed 1
  f2s restore ./photos --engine ray --gpus-per-worker 1    on every GPU of a Ray cluster
  f2s models verify                             check the shipped weights
  f2s doctor                                    Python, torch, devices, backends, models
  f2s eval ./clean --out ./eval --preset noise15  every restorer side by side, scored

Exit codes: 0 all done, 1 some files failed, 2 usage/config error, 3 output folder locked,
4 not available, 5 no face found, 6 model files corrupt, 130 SIGINT, 143 SIGTERM.
"""


@dataclass(frozen=True)
class CommandEntry:
    """A command by name: where it lives (``"module:attribute"``, a function or a Typer app)
    and the one-line summary ``f2s --help`` shows without importing it."""

    target: str
    summary: str


COMMANDS: dict[str, CommandEntry] = {
    "restore": CommandEntry(
        "face2scene_cli.cli.commands.restore:restore",
        "Restore photos: read the degradation off each photo's faces, restore the whole scene.",
    ),
    "degrade-code": CommandEntry(
        "face2scene_cli.cli.commands.degrade_code:degrade_code",
        "Estimate each photo's degradation from its faces: noise, blur, JPEG, resolution loss.",
    ),
    "degrade": CommandEntry(
        "face2scene_cli.cli.commands.degrade:degrade",
        "Make degraded copies of clean photos (second-order, preset or explicit parameters).",
    ),
    "faces": CommandEntry(
        "face2scene_cli.cli.commands.faces:faces",
        "List the faces in photos: box, score, matched person, similarity, chosen references.",
    ),
    "models": CommandEntry(
        "face2scene_cli.cli.commands.models:app",
        "List, verify and analyze the shipped models.",
    ),
    "report": CommandEntry(
        "face2scene_cli.cli.commands.report:app", "Work with run reports and summaries."
    ),
    "doctor": CommandEntry(
        "face2scene_cli.cli.commands.doctor:doctor",
        "Show Python, torch, devices (CUDA/MPS/CPU), optional backends and model status.",
    ),
    "data": CommandEntry(
        "face2scene_cli.cli.commands.data:app",
        "Fetch, verify, list and export the real photos f2s tests and trains on.",
    ),
    "demo": CommandEntry(
        "face2scene_cli.cli.commands.demo:demo",
        "Run f2s on sample photos as a user would and print PSNR/SSIM before and after.",
    ),
    "train": CommandEntry(
        "face2scene_cli.cli.commands.train:app", "Train f2s networks from YAML configs."
    ),
    "eval": CommandEntry(
        "face2scene_cli.cli.commands.evaluate:evaluate",
        "Score every restorer side by side on the same degraded photos.",
    ),
    "eval-faces": CommandEntry(
        "face2scene_cli.cli.commands.eval_faces:eval_faces",
        "Measure blind vs reference-guided face restoration on the shipped people photos.",
    ),
}
"""Every ``f2s`` command. A test checks each summary against the loaded command's help."""


def load_command(name: str) -> TyperCommand | TyperGroup:
    """Import command ``name`` and build its click command (F2SError -> one line + exit code)."""
    entry = COMMANDS[name]
    module_name, attribute = entry.target.split(":")
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):
        group = typer.main.get_group(target)  # a group even when it holds one command
        group.name = name
        return group
    from face2scene_cli.cli.runner import cli_errors

    single = typer.Typer(rich_markup_mode="rich", add_completion=False)
    single.command(name)(cli_errors(target))
    return typer.main.get_command(single)


class LazyGroup(TyperGroup):
    """The top-level group: lists :data:`COMMANDS` from their summaries and imports a
    command's module only when that command is resolved (run or asked for its help)."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        return TyperCommand(cmd_name, help=entry.summary)  # for the listing only

    def resolve_command(
        self, ctx: typer.Context, args: list[str]
    ) -> tuple[str | None, TyperCommand | TyperGroup | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        return name, (load_command(name) if name in COMMANDS else cmd), rest


app = typer.Typer(
    name="f2s",
    cls=LazyGroup,
    help="[bold]face2scene[/bold]: restore degraded photos of people, guided by the degradation "
    "their faces reveal.",
    epilog=EPILOG,
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"f2s {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """face2scene: batch restoration of photos of people."""


def _interrupted(signum: int, frame: object) -> None:
    print("f2s: interrupted", file=sys.stderr, flush=True)
    raise SystemExit(ExitCode.INTERRUPTED)


def main() -> None:
    """Console entry point. Ctrl-C while a command loads, or in a command that does not walk
    files, exits 130 with one line and no traceback (a batch run installs its own handler
    that finishes the file in flight)."""
    signal.signal(signal.SIGINT, _interrupted)
    # oneDNN keeps up to 1024 compiled primitives, one per layer and input shape; face crops
    # come in a new size with nearly every photo, so with that cache the RSS kept growing
    # (~20% from photo 10 to photo 87 of benchmarks/bench_batch.py's folder); with 256 the
    # peak at 100 photos is 15% over that at 10. 256 keeps the shapes a folder repeats
    # (tiles, detector pyramid); an environment that sets it wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
    app()
