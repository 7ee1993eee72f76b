"""The ``f2s`` command line: assembles the commands; each lives in ``commands/``."""

from __future__ import annotations

from typing import Annotated

import typer

from face2scene_cli import __version__
from face2scene_cli.commands import (
    degrade,
    degrade_code,
    doctor,
    evaluate,
    faces,
    models,
    report,
    restore,
    train,
    train_scene,
)
from face2scene_cli.commands.runner import cli_errors

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

app = typer.Typer(
    name="f2s",
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


app.command("restore")(cli_errors(restore.restore))
app.command("degrade-code")(cli_errors(degrade_code.degrade_code))
app.command("degrade")(cli_errors(degrade.degrade))
app.command("faces")(cli_errors(faces.faces))
app.add_typer(models.app, name="models")
app.add_typer(report.app, name="report")
app.command("doctor")(cli_errors(doctor.doctor))
train.app.command("scene")(train_scene.train_scene)
app.add_typer(train.app, name="train")
app.command("eval")(cli_errors(evaluate.evaluate))


def main() -> None:
    """Console entry point."""
    app()
