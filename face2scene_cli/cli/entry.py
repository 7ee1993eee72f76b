"""The ``f2s`` console entry: picks the memory allocator before anything is imported."""

from __future__ import annotations

import os
import sys

from face2scene_cli.allocator import find_tcmalloc, preload_allowed

BATCH_COMMANDS = frozenset({"restore", "degrade", "degrade-code", "eval"})
"""The commands that run long over many images, where the allocator matters."""


def preload_tcmalloc(argv: list[str]) -> None:
    """Re-execute this process (same PID, interpreter options, arguments and environment)
    with tcmalloc in ``LD_PRELOAD`` when ``argv`` runs a batch command, the system has
    tcmalloc, no allocator is preloaded yet (a user's jemalloc stays) and ``F2S_ALLOCATOR``
    is not ``system``; else return, as when the re-execution itself fails.
    """
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command not in BATCH_COMMANDS or not preload_allowed():
        return
    library = find_tcmalloc()
    if library is None:
        return
    preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD")]))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "LD_PRELOAD": preload})
    except OSError:  # the interpreter cannot be executed again: go on as started
        return


def main() -> None:
    """Console entry point: the allocator, then the CLI (:func:`face2scene_cli.cli.app.main`)."""
    preload_tcmalloc(sys.argv[1:])
    from face2scene_cli.cli.app import main as run_cli

    run_cli()
