#!/usr/bin/env bash
# The GPU run of issue 17 §5: Qwen2.5-VL-7B-shaped random weights, bf16, SDPA and flash-attention 2 (if the
# flash-attn package is installed), ~2.3k (48x48) and ~5k (71x71) visual tokens, prefill batch 1 / 8 / 32,
# keep 0.04 / 0.111 vs unpruned, interleaved repeats, CUDA allocator peaks. A 420 s budget inside the script (plus
# model builds) keeps the whole run under 8 minutes on an H100/H200; anything skipped is listed in report.json.
#
#   bash benchmarks/gpu.sh [OUT_DIR]       (default benchmarks/results/gpu_7b_<gpu name>)
#
# Output: OUT_DIR/report.json (rows, ratios, environment incl. GPU name), report.md (table), report.png (plot).
# Not yet run on a GPU: no GPU was lent to the session that wrote it (its Python part has a CPU smoke test,
# tests/eval/test_perf_report.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for an H100/H200')"
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
OUT=${1:-benchmarks/results/gpu_7b_${GPU}}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 470 "$PY" benchmarks/perf_report.py --preset gpu-7b --out "$OUT"
echo "GPU report in $OUT"
