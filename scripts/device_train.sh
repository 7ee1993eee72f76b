#!/usr/bin/env bash
# One GPU lease, from the repository root THERE (the device tool's $OUT set):
#   bash scripts/device_train.sh [END_BY_S [device_train.py options]]
# Needs carry/ from `python scripts/build_carry.py build` (the device tool's carry: ["carry"]).
# The tree must be shrunk for the call: `python scripts/build_carry.py shrink` before, `unshrink` after.
# 1. installs the wheels the device lacks;
# 2. runs the benchmark (scripts/device_bench.sh) on the GPU while the training caches build
#    on the CPU cores;
# 3. trains every run of configs/gpu-plan.yaml at once until END_BY_S (default 480) seconds
#    after the caches started (scripts/device_train.py);
# 4. packs each run's exported model into $OUT/<run>.tar and the logs and benchmark results
#    into $OUT/logs.tar (<= 8 files); unpack here with
#    `python scripts/build_carry.py unpack <files_at>`.
set -uo pipefail
: "${OUT:?OUT must be set to the device tool output folder}"
END_BY=${1:-480}
WORKERS=${WORKERS:-12}
# (NO_WHEELS=1: a dry run here, where the packages are installed)
[ -n "${NO_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site carry/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
RUNS=${RUNS_DIR:-/tmp/gpu-runs}
mkdir -p /tmp/bench "$RUNS"
BENCH=
if [ -z "${NO_BENCH:-}" ]; then  # NO_BENCH=1: a lease that only trains
  BENCH_OUT=/tmp/bench bash scripts/device_bench.sh > /tmp/bench/bench.log 2>&1 &
  BENCH=$!
fi
timeout --kill-after=10 $((END_BY + 90)) python3 scripts/device_train.py --carry carry --out "$RUNS" --end-by "$END_BY" \
  --device "${DEVICE:-cuda}" --workers "$WORKERS" "${@:2}" > "$RUNS/train.log" 2>&1
echo "device_train.py exit $?" >> "$RUNS/train.log"
[ -z "$BENCH" ] || wait "$BENCH"
for export in "$RUNS"/*/export; do
  [ -f "$export/scene.json" ] || continue
  run=$(basename "$(dirname "$export")")
  tar -cf "$OUT/$run.tar" -C "$export" .
done
(cd "$RUNS" && tar -cf "$OUT/logs.tar" -C /tmp bench -C "$RUNS" train.log \
  $(ls -d ./*/log.jsonl ./*/result.json ./*/config.yaml 2>/dev/null))
tail -n 15 "$RUNS/train.log" /tmp/bench/bench.log
ls -l "$OUT"
