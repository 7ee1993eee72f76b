#!/usr/bin/env bash
# The restore benchmark and the CUDA correctness check on a lent GPU machine, from the
# repository root THERE (under 8 minutes on one H200):
#   bash scripts/device_bench.sh
# Needs carry/ from `python scripts/build_carry.py bench` (carried with the device tool's
# `carry: ["carry"]`): the diffusers wheels the device lacks and the benchmark photo; the
# models and benchmarks/sd-turbo-architecture/ travel with the working tree. Writes to $OUT:
# restore-cuda.json + restore-cuda.md (benchmarks/bench_restore.py --device cuda),
# cuda-check.json + cuda-check.txt (benchmarks/cuda_check.py), env.txt.
set -uo pipefail
: "${OUT:?OUT must be set to the device tool output folder}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site carry/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
PHOTO=carry/photos/t1.jpg
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -V;
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } \
  > "$OUT/env.txt" 2>&1
timeout 240 python3 benchmarks/cuda_check.py --device cuda --photo "$PHOTO" \
  --out "$OUT/cuda-check.json" > "$OUT/cuda-check.txt" 2>&1
echo "cuda_check exit $?" >> "$OUT/cuda-check.txt"
timeout 240 python3 benchmarks/bench_restore.py --device cuda --photo "$PHOTO" \
  --out "$OUT/restore-cuda.json" > "$OUT/restore-cuda.md" 2> "$OUT/restore-cuda.err"
echo "bench_restore exit $?" >> "$OUT/restore-cuda.md"
tail -n 5 "$OUT"/*.txt "$OUT"/restore-cuda.md
