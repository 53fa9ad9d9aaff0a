#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that scripts/gpu_results.sh installs on the offline GPU machine for
# the klnotes-vs-TRL measurement (benchmarks/bench_trainer.py): TRL and datasets, with the two dependencies
# that the GPU machine's image lacks (dill, multiprocess); about 1.8 MB, into .whl/ (ignored by git), for
# Python 3.12 on x86-64 (that image's). Then call the device tool's run with carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -la .whl
