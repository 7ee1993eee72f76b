#!/usr/bin/env bash
# Train the scene restorer on a lent GPU machine, from the repository root THERE:
#   bash scripts/device_train.sh [MINUTES]
# Needs carry/ from `python scripts/build_carry.py build` (carried with the device tool's
# `carry: ["carry"]`); models/scene-embedded and models/fadex-s travel with the working tree.
# Writes <= 8 files of <= 15 MiB to $OUT; merge them here with
#   python scripts/build_carry.py merge <files_at>
# then score with `f2s models analyze runs/scene-gpu/export` before
# replacing the shipped weights. Works with the device's Python 3.12 + torch 2.11.
set -euo pipefail
MINUTES=${1:-7}
: "${OUT:?OUT must be set to the device tool output folder}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site carry/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
CONDITION=$(cat carry/condition)
INIT=()
if [ -f models/scene-embedded/scene.json ]; then INIT=(--set train.init_from=models/scene-embedded); fi
python3 -m face2scene_cli train scene --config configs/scene.yaml \
  --set data.cache_from=carry/shard --device cuda --wall-limit "$MINUTES" \
  --set "train.condition=$CONDITION" --set train.batch=64 --set train.crop=128 \
  --set train.threads=8 --set train.warmup_steps=50 --set val.enabled=false \
  --set logging.run_dir=/tmp/scene-run --set logging.export_to=/tmp/scene-export \
  --set logging.checkpoint_every_s=100000 "${INIT[@]}" 2>&1 | tail -n 20 | tee "$OUT/train_tail.txt"
python3 - <<'PY'
import json, os, shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
out, src = Path(os.environ["OUT"]), Path("/tmp/scene-export")
limit = 15 * 2**20
for sub, prefix in (("net", "net-"), ("mapnet", "mapnet")):
    state = load_file(str(src / sub / "diffusion_pytorch_model.safetensors"))
    parts, cur, size = [], {}, 0
    for k, v in state.items():
        b = v.numel() * v.element_size()
        if cur and size + b > limit:
            parts.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += b
    parts.append(cur)
    for i, part in enumerate(parts):
        name = f"{prefix}{i:02d}.safetensors" if sub == "net" else "mapnet.safetensors"
        save_file(part, str(out / name))
    shutil.copy(src / sub / "config.json", out / f"{sub}_config.json")
for name in ("scene.json", "training.json"):
    shutil.copy(src / name, out / name)
print(sorted(p.name for p in out.iterdir()))
PY
