#!/usr/bin/env bash
# The GPU benchmarks and the CUDA correctness check, from the repository root THERE (about
# 2 minutes on one H200; scripts/device_train.sh runs it beside the cache building):
#   BENCH_OUT=DIR bash scripts/device_bench.sh      (default DIR: the device tool's $OUT)
# Needs carry/ from `python scripts/build_carry.py build` (wheels, carry/photos/t1.jpg) with
# PYTHONPATH set as device_train.sh sets it. The Real-ESRGAN weights (32 MiB) do not fit the
# lease beside the training photos, so its checks are skipped when they did not travel.
# Writes env.txt, cuda-check.{json,txt} (benchmarks/cuda_check.py), gpu-throughput.{json,md}
# (benchmarks/gpu_throughput.py: the network vs batch size and precision) and
# restore-cuda.{json,md} (benchmarks/bench_restore.py --device cuda: the pipeline per stage).
set -uo pipefail
DIR=${BENCH_OUT:-${OUT:?set BENCH_OUT or OUT}}
PHOTO=carry/photos/t1.jpg
NO_ESRGAN=()
[ -f models/realesrgan-x4plus/diffusion_pytorch_model.safetensors ] || NO_ESRGAN=(--no-realesrgan)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -V;
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)';
  nproc; } > "$DIR/env.txt" 2>&1
timeout 150 python3 benchmarks/cuda_check.py --device cuda --photo "$PHOTO" \
  --out "$DIR/cuda-check.json" "${NO_ESRGAN[@]}" > "$DIR/cuda-check.txt" 2>&1
echo "cuda_check exit $?" >> "$DIR/cuda-check.txt"
timeout 120 python3 benchmarks/gpu_throughput.py --photo "$PHOTO" \
  --out "$DIR/gpu-throughput.json" > "$DIR/gpu-throughput.md" 2>&1
echo "gpu_throughput exit $?" >> "$DIR/gpu-throughput.md"
timeout 200 python3 benchmarks/bench_restore.py --device cuda --photo "$PHOTO" --sizes 1 4 \
  --repeats 3 "${NO_ESRGAN[@]}" \
  --out "$DIR/restore-cuda.json" > "$DIR/restore-cuda.md" 2> "$DIR/restore-cuda.err"
echo "bench_restore exit $?" >> "$DIR/restore-cuda.md"
tail -n 4 "$DIR"/*.txt "$DIR"/*.md
