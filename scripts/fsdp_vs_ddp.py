"""Train the same run under DDP and under FSDP (two CPU processes, gloo) and print how far apart they are.

    python scripts/fsdp_vs_ddp.py [overrides...]

With no overrides this is SmolLM2-135M (the embedded default model), LoRA, 2 optimizer steps of 8 rows.
Prints the largest difference of the logged train and validation losses and of the saved adapter tensors,
and exits 1 when they differ by more than float32 reduction-order noise: 1e-5 relative for the losses,
1e-4 of each tensor's largest value for the adapter (Adam divides by the root of tiny second moments, so a
1e-7 difference in a near-zero gradient moves its weight by much more than the gradient's own error).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

COMMON = [
    "trainer=cpu",
    "logger=csv",
    "trainer.devices=2",
    "lora.dropout=0",  # dropout draws from each process's RNG differently
    "trainer.max_steps=2",
    "trainer.eval_steps=2",
    "trainer.effective_batch_size=8",
    "trainer.micro_batch_size=2",
    "data.datasets.builtin.num_rows=40",
    "data.val_size=8",
    "probe.enabled=false",
    "evaluation.parity.prompts=0",
]
TOLERANCE, ADAPTER_TOLERANCE = 1e-5, 1e-4


def train(strategy: str, root: Path, overrides: list[str]) -> tuple[Path, float]:
    """Run sft.train under `strategy`; its run directory and wall seconds."""
    out = root / strategy
    started = time.perf_counter()
    command = [sys.executable, "-m", "sft.train", *COMMON, f"strategy={strategy}", f"hydra.run.dir={out}"]
    subprocess.run([*command, *overrides], check=True, env={**os.environ, "PROJECT_ROOT": str(root)})
    return out, time.perf_counter() - started


def series(run: Path, key: str) -> dict[int, float]:
    """step -> value of one logged metric."""
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def relative(a: float, b: float) -> float:
    """|a - b| relative to |a|."""
    return abs(a - b) / max(abs(a), 1e-12)


def main() -> int:
    """Both runs, then the comparison table; the exit status says whether they agree."""
    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        ddp, ddp_s = train("ddp", Path(tmp), overrides)
        fsdp, fsdp_s = train("fsdp", Path(tmp), overrides)
        worst = 0.0
        for key in ("train/loss", "val/loss"):
            a, b = series(ddp, key), series(fsdp, key)
            assert a.keys() == b.keys() and a, (key, a, b)
            diff = max(relative(a[s], b[s]) for s in a)
            worst = max(worst, diff)
            print(f"{key}: steps {sorted(a)}, DDP {list(a.values())}, largest relative difference {diff:.2e}")
        weights = "adapter/adapter_model.safetensors"
        if (ddp / weights).is_file():
            x, y = load_file(ddp / weights), load_file(fsdp / weights)
            assert x.keys() == y.keys() and x, "the adapters hold different tensors"
            diff = max(((x[k] - y[k]).abs().max() / x[k].abs().max().clamp_min(1e-12)).item() for k in x)
            worst = max(worst, diff * TOLERANCE / ADAPTER_TOLERANCE)
            print(f"adapter: {len(x)} tensors, largest difference relative to each tensor's max {diff:.2e}")
        print(f"wall: DDP {ddp_s:.0f} s, FSDP {fsdp_s:.0f} s; torch {torch.__version__}")
    ok = worst <= TOLERANCE
    print("agree" if ok else "DIFFER beyond the tolerances")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
