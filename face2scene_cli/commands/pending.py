"""Commands whose stages have not landed yet: they say so and exit with their own code."""

from __future__ import annotations

import typer

from face2scene_cli.errors import NotAvailableError

SETTINGS = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": True,
}


def _not_yet(command: str, what: str) -> None:
    raise NotAvailableError(
        f"'f2s {command}' is not available yet in this version: {what}. "
        "Available now: restore, degrade, degrade-code, faces, models, train, doctor."
    )


def evaluate(ctx: typer.Context) -> None:
    """Measure restoration quality side by side. [dim](not available yet)[/dim]"""
    _not_yet("eval", "it needs the restoration stages")
