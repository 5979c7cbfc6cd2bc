#!/usr/bin/env bash
# One call on a lent GPU machine (see the README's "GPU benchmark"): wheels the image lacks, then
# `python -m salmon.bench gpu` for both paper presets and tools/gpu_check.py. Everything lands in $OUT.
set -u
OUT=${OUT:-results/gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false SALMON_RESULTS=/tmp/salmon-results SALMON_CACHE=/tmp/salmon-cache
if [ -n "${WHEELS:-}" ]; then   # the lent machine: wheels its image lacks (WHEELS=.whl, carried)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else export PYTHONPATH=$PWD; fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; python3 -c \
  "import torch, transformers, nnsight, pyarrow, datasets; print(torch.__version__, transformers.__version__, nnsight.__version__, pyarrow.__version__, datasets.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout ${T2B:-150} python3 -m salmon.bench gpu --preset gemma-2-2b --json "$OUT/gpu-2b.json" 2>&1 | tee "$OUT/bench-2b.log" | tail -40
timeout ${TCHK:-150} python3 tools/gpu_check.py --out "$OUT" 2>&1 | grep -v UserWarning | tee "$OUT/check.log" | cut -c1-1500
timeout ${T9B:-150} python3 -m salmon.bench gpu --preset gemma-2-9b --json "$OUT/gpu-9b.json" 2>&1 | tee "$OUT/bench-9b.log" | tail -40
