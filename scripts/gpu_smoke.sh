#!/usr/bin/env bash
# Run every strategy (conf/strategy/) for a few steps on the GPUs present and print a table:
# strategy, devices, tokens/s, peak CUDA memory, final loss, status. A strategy that fails, times
# out or cannot run here (no GPU, no deepspeed) gets its status in the table; the others still run.
#
#   scripts/gpu_smoke.sh                                   # all strategies, 10 steps, SmolLM2-135M
#   scripts/gpu_smoke.sh --strategies ddp,fsdp --steps 20  # a subset
#   scripts/gpu_smoke.sh model=qwen2_5_0_5b trainer.micro_batch_size=8   # extra Hydra overrides
#   scripts/gpu_smoke.sh --dry-run                         # print the commands only
#
# Exit status 1 when any run failed. Runs, logs, table.md and results.json go to outputs/gpu_smoke/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
exec "$PY" scripts/gpu_smoke.py "$@"
