#!/usr/bin/env bash
# GPU results in one command of at most 8 minutes (issue 13): install the project as the README says
# (a machine that has torch keeps it), then scripts/gpu_results.py builds and pretrains a GPT-2-architecture
# model offline, times 20 RL steps, and runs the largest part of the experiment set that fits.
# Results and timings go to $OUT (results/gpu/*.csv in the chapters' layout, timings.json, model/).
#   OUT=/tmp/out bash scripts/gpu_results.sh                 # on the GPU machine
#   OUT=/tmp/out KLNOTES_GPU_TOY=1 bash scripts/gpu_results.sh   # its test: toy sizes on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/klnotes-gpu-results}"
BUDGET_S="${KLNOTES_GPU_BUDGET_S:-400}"          # seconds after the install (8 min in all with it)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_PROGRESS_BAR=off
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's klnotes, installed or not
if ! python -c "import transformers, klnotes.policies as p; p.gpt2_tokenizer_files()" >/dev/null 2>&1; then
  pip install -q -e ".[dev]"                         # the README's install; a machine with torch keeps it
fi
toy=()
[ "${KLNOTES_GPU_TOY:-0}" = 1 ] && toy=(--toy)
python scripts/gpu_results.py --out "$OUT" --budget "$BUDGET_S" "${toy[@]}" 2>&1 | tee "$OUT/log.txt"
