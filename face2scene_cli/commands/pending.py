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
        "Available now: f2s degrade, f2s degrade-code, f2s faces, f2s models, f2s doctor."
    )


def restore(ctx: typer.Context) -> None:
    """Restore photos: faces with references, then the scene. [dim](not available yet)[/dim]"""
    _not_yet("restore", "the face and scene restoration stages are still being built")


def train(ctx: typer.Context) -> None:
    """Train f2s networks from a YAML config. [dim](not available yet)[/dim]"""
    _not_yet("train", "there is no trainable network in this version")


def evaluate(ctx: typer.Context) -> None:
    """Measure restoration quality side by side. [dim](not available yet)[/dim]"""
    _not_yet("eval", "it needs the restoration stages")
