#!/usr/bin/env bash
# GPU-scale results of chapters 7-8 in one command of at most 8 minutes (issue 13), on a machine that reaches
# no network: builds GPT-2 124M's architecture on the package's 65-word synthetic language, pretrains it,
# measures 20 RL steps, then runs the largest part of the experiment set that fits (klnotes.gpt2.gpu_results),
# and, when TRL is importable and time is left, klnotes' trainer against TRL's GRPOTrainer on the same GPU
# (benchmarks/bench_trainer.py).
#
# Assumes: python3 with torch (CUDA), transformers, tokenizers, numpy, pandas and tqdm already installed (the
# GPU machine's image has them); klnotes is used from this tree through PYTHONPATH (no pip, no network).
# Wheels in .whl/ (e.g. trl, datasets and their missing dependencies), if present, are installed into
# a private temporary folder (mktemp -d) first, removed at the end. Nothing is downloaded.
#
# Usage (repository root):  bash scripts/gpu_results.sh
#        toy dry run on a CPU: GPU_RESULTS_TOY=1 bash scripts/gpu_results.sh
# Settings: OUT (outputs; default ./gpu_results_out), GPU_RESULTS_SECONDS (the whole command, default 470),
# GPU_RESULTS_WORK (model, results and checkpoints; default a folder under /dev/shm or /tmp), PYTHON,
# GPU_RESULTS_ARGS (more arguments for python -m klnotes.gpt2.gpu_results, e.g. "--layers 6 --lr 3e-5").
# Outputs under $OUT (at most 8 shallow files, as the device tool returns them): log.txt, model.json,
# measure.json, plan.json, timings.csv, summary.json, results.tar.gz (results/full/...), bench_trainer.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)
OUT="${OUT:-$PWD/gpu_results_out}"
TOY="${GPU_RESULTS_TOY:-0}"
TOTAL="${GPU_RESULTS_SECONDS:-470}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

# Private temporary folders only (mktemp -d: mode 0700, unpredictable names): a fixed /tmp path first on
# PYTHONPATH would let anyone who can write /tmp put code there.
site=""
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d "${TMPDIR:-/tmp}/klnotes-site.XXXXXXXX")
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
shm=/tmp  # checkpoints (about 1 GB for the 85M model with AdamW's moments) in memory when it has room: fast writes
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -ge 4194304 ]; then shm=/dev/shm; fi
WORK="${GPU_RESULTS_WORK:-$(mktemp -d "$shm/klnotes-gpu-results.XXXXXXXX")}"
trap '[ -z "$site" ] || rm -rf "$site"' EXIT
export KLNOTES_RUNS="$WORK/runs" KLNOTES_CACHE="$WORK/cache"
"$PYTHON" -c "import klnotes, torch, transformers; print('klnotes', klnotes.__file__, '| torch', torch.__version__,
'| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

if [ "$TOY" = 1 ]; then
  args=(--toy --device cpu --measure-steps 3 --min-steps 2)
  bench=(--device cpu --rounds 1 --steps 3 --prompts 2 --group 4 --tokens 4 --updates 2)
  reserve=45
else
  args=(--device cuda --pretrain-seconds 90)
  bench=(--device cuda --rounds 1 --steps 6)
  reserve=80
fi
if ! "$PYTHON" -c "import trl, datasets" 2>/dev/null; then
  echo "TRL (trl, datasets) is not importable: no klnotes-vs-TRL measurement (carry them as wheels in .whl/)"
  bench+=(--no-trl); reserve=$(( reserve / 2 ))
fi
budget=$(( TOTAL - ($(date +%s) - began) - reserve ))
# shellcheck disable=SC2086
"$PYTHON" -m klnotes.gpt2.gpu_results --out "$OUT" --work "$WORK" --budget "$budget" "${args[@]}" ${GPU_RESULTS_ARGS:-}

model=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['folder'])" "$OUT/model.json")
bench+=(--policy "$WORK/models/$model")   # klnotes vs TRL on the pretrained model itself
left=$(( TOTAL - ($(date +%s) - began) - 5 ))
if [ "$left" -ge 20 ]; then
  echo "== benchmarks/bench_trainer.py ${bench[*]} (at most $left s)"
  timeout "$left" "$PYTHON" benchmarks/bench_trainer.py "${bench[@]}" >"$OUT/bench_trainer.txt" 2>&1 \
    || echo "bench_trainer stopped (exit $?): see bench_trainer.txt"
  cat "$OUT/bench_trainer.txt"
else
  echo "no time left for benchmarks/bench_trainer.py ($left s)"
fi
[ -n "${GPU_RESULTS_WORK:-}" ] || rm -rf "$WORK"
echo "gpu_results.sh: $(( $(date +%s) - began )) s in all; outputs in $OUT"
