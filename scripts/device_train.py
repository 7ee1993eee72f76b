"""Train several scene restorers at once on a lent GPU, from photos carried to that machine.

Run THERE by ``scripts/device_train.sh`` (the device has no package registry and no photo
packages; ``python scripts/build_carry.py build`` puts the train split's photo files and the
wheels it lacks in ``carry/``)::

    python3 scripts/device_train.py --plan configs/gpu-plan.yaml --carry carry \
        --end-by 480 --out /tmp/gpu-runs

1. The carried photos stand in for the photo packages (same names, same sha256: the split
   manifest still verifies every file).
2. One training cache per distinct ``data`` section of the plan's runs, built in parallel
   chunks of ``--chunk`` samples on ``--workers`` processes (chunk ``i`` draws with seed
   ``data.seed * 1000 + i``, so a cache does not depend on the number of workers).
3. Every run trains at once on the one GPU, in its own process, from that cache
   (``data.cache_from``) until ``--end-by`` seconds after the start (a wall-clock budget that
   the cache building eats into); each exports its EMA weights to ``<out>/<run>/export``.
   A run starts from scratch unless the plan gives it an ``init_from`` (a carried model
   folder); a config's own ``train.init_from`` is ignored there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.research.sample_data import Photo  # noqa: E402
from face2scene_cli.research.train.scene_config import (  # noqa: E402
    SceneTrainConfig,
    load_scene_config,
)


def carried_photos(carry: Path) -> list[Photo]:
    """The photos listed in ``carry/photos/manifest.json`` (written by build_carry.py), with no
    pinned hash: the split loader then hashes each carried file against the split manifest."""
    entries = json.loads((carry / "photos" / "manifest.json").read_text(encoding="utf-8"))
    return [
        Photo(e["name"], carry / "photos" / e["file"], e["source"], e["people"], None)
        for e in entries
    ]


def use_carried_photos(carry: Path) -> None:
    """Make the split loader see the carried files instead of the photo packages."""
    import face2scene_cli.research.splits as splits

    photos = carried_photos(carry)
    splits.all_photos = lambda: photos


def run_config(plan: dict[str, Any], name: str, extra: dict[str, Any]) -> SceneTrainConfig:
    """The run's config: its YAML, the plan's ``set`` overrides, then ``extra``."""
    run = plan["runs"][name]
    return load_scene_config(ROOT / run["config"], {**run.get("set", {}), **extra})


def data_key(cfg: SceneTrainConfig) -> str:
    """What makes two runs' caches equal: their ``data`` section (bar ``cache_from``)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "cache_from"}
    return json.dumps(fields, sort_keys=True, default=str)


def _init_worker(carry: str) -> None:
    torch.set_num_threads(1)
    use_carried_photos(Path(carry))


def _chunk(task: tuple[SceneTrainConfig, int, int]) -> dict[str, Any]:
    from face2scene_cli.research.splits import load_splits
    from face2scene_cli.research.train.scene_data import build_cache
    from face2scene_cli.restorers.face.blind import BlindFaceRestorer

    cfg, index, count = task
    data = dataclasses.replace(cfg.data, samples=count, seed=cfg.data.seed * 1000 + index)
    train = load_splits(ROOT / cfg.data.splits)["train"]
    return build_cache(data, train, BlindFaceRestorer())


def build_caches(
    configs: dict[str, SceneTrainConfig], dest: Path, carry: Path, workers: int, chunk: int
) -> dict[str, Path]:
    """One cache folder per distinct data section; returns run name -> cache folder."""
    from face2scene_cli.research.train.scene_data import save_cache

    groups: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        groups.setdefault(data_key(cfg), []).append(name)
    tasks, owners = [], []
    for key, names in groups.items():
        cfg = configs[names[0]]
        for i in range(0, cfg.data.samples, chunk):
            tasks.append((cfg, i // chunk, min(chunk, cfg.data.samples - i)))
            owners.append(key)
    parts: dict[str, list[dict[str, Any]]] = {key: [] for key in groups}
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(carry),)) as pool:
        for key, part in zip(owners, pool.imap(_chunk, tasks), strict=True):
            parts[key].append(part)
    where: dict[str, Path] = {}
    for key, names in groups.items():
        folder = dest / hashlib.sha256(key.encode()).hexdigest()[:12]
        chunks = parts[key]
        cache = {
            k: torch.cat([c[k] for c in chunks]) for k in ("lq", "clean", "face_lq", "face_hq")
        }
        cache["degradations"] = [d for c in chunks for d in c["degradations"]]
        cache["photos"] = [p for c in chunks for p in c["photos"]]
        save_cache(folder, cache)
        (folder / "key.json").write_text(key, encoding="utf-8")
        for name in names:  # a folder per run: each writes its own FaDeX code file there
            own = dest / name
            own.mkdir(parents=True, exist_ok=True)
            for f in folder.iterdir():
                (own / f.name).symlink_to(f.resolve())
            where[name] = own
    return where


def train_one(args: argparse.Namespace) -> int:
    """One run of the plan (a child process of :func:`main`)."""
    from face2scene_cli.research.train.scene import train_scene

    use_carried_photos(Path(args.carry))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    plan = yaml.safe_load(Path(args.plan).read_text(encoding="utf-8"))
    run = Path(args.out) / args.run
    cfg = run_config(
        plan,
        args.run,
        {
            "data.cache_from": args.cache,
            "data.samples": args.samples,
            "train.device": args.device,
            "train.max_minutes": args.minutes,
            "train.init_from": plan["runs"][args.run].get("init_from"),
            "val.enabled": False,
            "logging.run_dir": str(run),
            "logging.export_to": str(run / "export"),
            "logging.checkpoint_every_s": 100000,
        },
    )
    print(json.dumps({args.run: train_scene(cfg)}), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=str(ROOT / "configs/gpu-plan.yaml"))
    ap.add_argument("--carry", default=str(ROOT / "carry"))
    ap.add_argument("--out", default="/tmp/gpu-runs")
    ap.add_argument(
        "--end-by", type=float, default=480.0, help="seconds after start at which training ends"
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=12, help="cache-building processes")
    ap.add_argument("--chunk", type=int, default=2000, help="samples per cache chunk")
    ap.add_argument("--samples-scale", type=float, default=1.0, help="x data.samples (dry runs)")
    ap.add_argument("--only", nargs="*", help="train these runs of the plan only")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--minutes", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        return train_one(args)
    use_carried_photos(Path(args.carry))
    if importlib.util.find_spec("dlib") is None:
        print("warning: dlib is not importable: no face-centred regions (p_face does nothing)")
    plan = yaml.safe_load(Path(args.plan).read_text(encoding="utf-8"))
    names = args.only or list(plan["runs"])
    configs = {}
    for name in names:
        cfg = run_config(plan, name, {})
        samples = max(args.chunk // 4, round(cfg.data.samples * args.samples_scale))
        configs[name] = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, samples=samples)
        )
    t0 = time.monotonic()
    caches = build_caches(
        configs, Path(args.out) / "caches", Path(args.carry), args.workers, args.chunk
    )
    built = time.monotonic() - t0
    minutes = max(0.5, (args.end_by - built) / 60)
    print(f"caches built in {built:.0f} s; training for {minutes:.2f} min", flush=True)
    procs = {}
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "--plan",
            args.plan,
            "--carry",
            args.carry,
            "--out",
            args.out,
            "--minutes",
            f"{minutes:.3f}",
            "--device",
            args.device,
            "--run",
            name,
            "--cache",
            str(caches[name]),
            "--samples",
            str(configs[name].data.samples),
        ]
        procs[name] = subprocess.Popen(cmd)
    codes = {name: p.wait() for name, p in procs.items()}
    print(json.dumps({"exit_codes": codes}), flush=True)
    return int(any(codes.values()))


if __name__ == "__main__":
    raise SystemExit(main())
