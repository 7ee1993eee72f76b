"""The batch engine's CPU defaults: torch gets every usable core, I/O workers 1 or 2."""

from __future__ import annotations

import os

import pytest

from face2scene_cli import config
from face2scene_cli.config import BatchConfig, default_io_workers, usable_cores


@pytest.mark.parametrize(("cores", "io"), [(1, 1), (2, 1), (4, 1), (5, 2), (64, 2)])
def test_io_workers_default_follows_the_cores(monkeypatch, cores, io):
    monkeypatch.setattr(config, "usable_cores", lambda: cores)
    assert default_io_workers() == io
    cfg = BatchConfig()
    assert (cfg.io_workers, cfg.torch_threads) == (io, cores)


def test_explicit_values_override_the_defaults(monkeypatch):
    monkeypatch.setattr(config, "usable_cores", lambda: 2)
    cfg = BatchConfig(threads=3, io_workers=4)
    assert (cfg.torch_threads, cfg.io_workers) == (3, 4)


def test_batch_size_default_follows_the_device():
    # on the CPU one photo per batch: the first result is written after one photo's compute
    assert BatchConfig().resolved("cpu").batch_size == 1
    assert BatchConfig().resolved("cuda:0").batch_size == 4
    assert BatchConfig(batch_size=3).resolved("cpu").batch_size == 3  # asked for: kept


def test_usable_cores_honours_the_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert usable_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert usable_cores() == 16
