"""The entry point runs batch commands on tcmalloc when the system has it (flat memory over
long batches), by re-executing itself once; everything else starts as it was started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from face2scene_cli import doctor
from face2scene_cli.allocator import find_tcmalloc
from face2scene_cli.cli import entry


class Exec(Exception):
    """Raised by the fake ``os.execve`` in place of replacing the test process."""


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict[str, str]]]:
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append((path, list(argv), dict(env)))
        raise Exec

    monkeypatch.setattr(entry.os, "execve", fake_execve)
    monkeypatch.setattr(entry, "find_tcmalloc", lambda: Path("/lib/libtcmalloc_minimal.so.4"))
    monkeypatch.delenv("F2S_ALLOCATOR", raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/lib/libother.so")
    return calls


@pytest.mark.parametrize("argv", [["restore", "in"], ["--quiet", "degrade", "x"], ["eval", "p"]])
def test_a_batch_command_re_executes_itself_with_tcmalloc(execs, argv) -> None:
    with pytest.raises(Exec):
        entry.preload_tcmalloc(argv)
    (path, args, env) = execs[0]
    assert (path, args) == (sys.executable, sys.orig_argv)
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4 /lib/libother.so"
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize("argv", [[], ["--version"], ["models", "list"], ["doctor"], ["train"]])
def test_other_commands_start_as_they_were_started(execs, argv) -> None:
    entry.preload_tcmalloc(argv)
    assert execs == []


def test_no_re_execution_when_preloaded_refused_or_missing(execs, monkeypatch) -> None:
    for preloaded in ("/usr/lib/libtcmalloc.so.4", "/x/libjemalloc.so.2 /lib/libother.so"):
        monkeypatch.setenv("LD_PRELOAD", preloaded)
        entry.preload_tcmalloc(["restore", "in"])
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setenv("F2S_ALLOCATOR", "system")
    entry.preload_tcmalloc(["restore", "in"])
    monkeypatch.delenv("F2S_ALLOCATOR")
    monkeypatch.setattr(entry, "find_tcmalloc", lambda: None)
    entry.preload_tcmalloc(["restore", "in"])
    assert execs == []


PROBE = """
import os, sys
print(os.getpid(), "libtcmalloc" in open("/proc/self/maps").read(), flush=True)
sys.argv = ["f2s", "restore", "--help"]
from face2scene_cli.cli.entry import main
main()
"""


@pytest.mark.skipif(find_tcmalloc() is None, reason="the system has no tcmalloc")
@pytest.mark.parametrize(("policy", "lines"), [("auto", ["False", "True"]), ("system", ["False"])])
def test_the_real_re_execution_keeps_the_pid_and_loads_tcmalloc(policy, lines) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {"F2S_ALLOCATOR": policy}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    probes = [line.split() for line in done.stdout.splitlines()[: len(lines)]]
    assert len({pid for pid, _ in probes}) == 1  # exec: the same process, cron's PID holds
    assert [loaded for _, loaded in probes] == lines
    assert done.stdout.count("Usage:") == 1


def test_a_failed_re_execution_goes_on_as_started(monkeypatch) -> None:
    def failing_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(entry.os, "execve", failing_execve)
    monkeypatch.setattr(entry, "find_tcmalloc", lambda: Path("/lib/libtcmalloc_minimal.so.4"))
    monkeypatch.delenv("F2S_ALLOCATOR", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    entry.preload_tcmalloc(["restore", "in"])  # returns: the run goes on, on glibc


@pytest.mark.parametrize(
    ("found", "policy", "preload", "gets"),
    [
        (True, "auto", "", "tcmalloc"),
        (True, "system", "", "system"),
        (False, "auto", "", "system"),
        (True, "auto", "/x/libjemalloc.so.2", "jemalloc"),
        (False, "system", "/x/libmimalloc.so", "mimalloc"),
    ],
)
def test_doctor_names_the_allocator_batch_commands_get(monkeypatch, found, policy, preload, gets):
    library = Path("/lib/libtcmalloc_minimal.so.4") if found else None
    monkeypatch.setattr(doctor, "find_tcmalloc", lambda: library)
    monkeypatch.setenv("F2S_ALLOCATOR", policy)
    monkeypatch.setenv("LD_PRELOAD", preload)
    facts = doctor.allocator_facts()
    assert facts["batch_commands"] == gets
    assert facts["tcmalloc"] == (str(library) if found else None)
