"""Which memory allocator a process runs on, and where the system keeps tcmalloc.

On glibc's malloc a batch of photos grows its peak memory photo after photo: face crops come
in new sizes with nearly every photo, and the buffers sized by them fragment the heap (+21-28%
from photo 10 to photo 100 of ``benchmarks/bench_batch.py``'s folder); with tcmalloc
the same run stays within 6-8% at the same speed. An allocator is fixed when a process starts
(``LD_PRELOAD``), so the ``f2s`` entry point (:mod:`face2scene_cli.cli.entry`) re-executes a
batch command with it; ``F2S_ALLOCATOR=system`` turns that off.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

POLICY_ENV = "F2S_ALLOCATOR"
"""``auto`` (the default: tcmalloc for batch commands when the system has it) or ``system``."""

TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")


def find_tcmalloc() -> Path | None:
    """The first tcmalloc library in the system's library folders (``libtcmalloc-minimal4``
    on Debian/Ubuntu, ``gperftools-libs`` on Fedora), or None: not Linux, or not installed.
    Plain path checks, so every start stays cheap (no ``ldconfig`` subprocess)."""
    if not sys.platform.startswith("linux"):
        return None
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    folders = [f"/usr/lib/{arch}", f"/lib/{arch}"] if arch else []
    for folder in [*folders, "/usr/lib64", "/usr/lib", "/usr/local/lib"]:
        for name in TCMALLOC_NAMES:
            if (path := Path(folder) / name).is_file():
                return path
    return None


PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def allocator() -> str:
    """The allocator this process runs on: the name of one in ``LD_PRELOAD`` (``tcmalloc``,
    ``jemalloc``, ``mimalloc``), else ``system``."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in PRELOADED_ALLOCATORS if name in preload), "system")


def policy() -> str:
    """``F2S_ALLOCATOR``: ``auto`` or ``system`` (anything else counts as ``auto``)."""
    return "system" if os.environ.get(POLICY_ENV, "auto") == "system" else "auto"


def preload_allowed() -> bool:
    """Whether a batch command may be started on tcmalloc: ``F2S_ALLOCATOR`` is ``auto`` and
    no allocator is preloaded yet (a user's jemalloc stays)."""
    return policy() == "auto" and allocator() == "system"
