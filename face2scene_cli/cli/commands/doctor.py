"""``f2s doctor``: what this installation can do."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from face2scene_cli.cli.options import Json

stdout = Console(highlight=False)


def doctor(json_output: Json = False) -> None:
    """Show Python, torch, devices (CUDA/MPS/CPU), optional backends and model status."""
    from face2scene_cli.doctor import environment_report

    facts = environment_report()
    if json_output:
        typer.echo(json.dumps(facts, indent=2))
        return
    torch = facts["torch"]
    stdout.print(f"f2s {facts['f2s']}  Python {facts['python']}  {facts['platform']}")
    cuda = ", ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in torch["cuda"]) or "none"
    stdout.print(
        f"torch {torch['version']}  threads {torch['threads']}  CUDA: {cuda}  "
        f"MPS: {'yes' if torch['mps'] else 'no'}  default device: {torch['default_device']}"
    )
    alloc = facts["allocator"]
    why = (
        f"found {alloc['tcmalloc']}"
        if alloc["tcmalloc"]
        else "not found: install libtcmalloc-minimal4 for flat memory over long batches"
    )
    stdout.print(f"batch commands' allocator: {alloc['batch_commands']} ({why}; {alloc['policy']})")
    table = Table("backend", "available", "version", "used for", title="Optional backends")
    for b in facts["backends"]:
        note = b["purpose"]
        if "buffalo_l" in b:
            note += (
                f" — pack: {b['buffalo_l'] or 'not on disk (f2s never downloads it implicitly)'}"
            )
        table.add_row(b["name"], "yes" if b["available"] else "no", b["version"] or "-", note)
    stdout.print(table)
    restorers = ", ".join(f"{k} ({v})" for k, v in facts["face_restorers"].items())
    stdout.print(f"Face restorers (plugins: entry points face2scene.face_restorers): {restorers}")
    table = Table("model", "version", "task", "verified", title=f"Models in {facts['models_dir']}")
    for m in facts["models"]:
        status = "yes" if m["verified"] else "NO: " + "; ".join(m["problems"])
        table.add_row(m.get("name") or "?", m.get("version") or "-", m.get("task") or "-", status)
    if not facts["models"]:
        table.add_row("(none shipped in this version)", "", "", "")
    stdout.print(table)
