#!/usr/bin/env bash
# The benchmark against TRL (python -m sft.bench), unattended on a GPU machine that cannot reach PyPI:
# the Qwen2.5-0.5B-shaped random model, bf16 when faster, each run timed out, the whole script under a
# deadline (570 s). Prints the table and the results' path; exit status non-zero on any failure.
#
#   scripts/gpu_bench.sh --fetch-wheels           # where PyPI is reachable: TRL & co. + the Alpaca rows -> wheels/
#   scripts/gpu_bench.sh                          # on the GPU machine (a copy of the checkout with wheels/)
#   scripts/gpu_bench.sh cutoff=2048 ~runs.trl_default          # extra Hydra overrides of conf/bench.yaml
#   scripts/gpu_bench.sh --allow-cpu model=tiny steps=2 cutoff=128 effective_batch=2 peak_matrix=256
#   scripts/gpu_bench.sh --dry-run                # check the machine, print the command, run nothing
#
# Exit status: 0 all runs finished, 1 a run or the bench failed (named), 2 bad arguments, 3 the machine
# lacks something (CUDA, PyTorch, a package or wheel, the data), 124 the deadline passed.
# Python: $PYTHON, else .venv/bin/python, else python3 (on the lent GPU machines: python3, with CUDA PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
exec "$PY" scripts/gpu_bench.py "$@"
