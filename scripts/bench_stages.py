"""SmolLM2: an SFT run, then DPO on the demo pairs, through `python -m sft.pipeline`; then the peak memory of
a DPO run whose reference is the disabled adapter against one holding a second copy of the model.

    python scripts/bench_stages.py [out=/tmp/bench-stages] [sft_steps=8] [dpo_steps=20] [memory_steps=2]

Prints the held-out preference metrics of the DPO run before (its first validation: the SFT model) and
after, the stages' wall time, and peak resident memory of the two reference sources with their ratio.
Every number comes from runs made in this session, on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sft.provenance import cpu_model

# Shared by every run: the packaged SmolLM2, 512-token rows, 20 held-out rows, no generation at the end.
COMMON = [
    "model=smollm2_135m",
    "data.cutoff_len=512",
    "data.val_size=20",
    "trainer=cpu",
    "trainer.micro_batch_size=2",
    "logger=csv",
    "probe.enabled=false",
    "evaluation.enabled=false",
]


def run(command: list[str], log: Path, env: dict | None = None) -> tuple[float, float]:
    """Run a command (in `env`, else this environment) with its output in `log`; exit naming the log when it
    fails; (wall seconds, peak resident memory in MiB) of it."""
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(command)}; see {log}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main(argv: list[str]) -> None:
    """Run the pipeline and the memory pair; print the table."""
    opts = {"out": "/tmp/bench-stages", "sft_steps": "8", "dpo_steps": "20", "memory_steps": "2"}
    opts.update(a.split("=", 1) for a in argv)
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    # Few steps on a CPU: learning rates high enough to move (LoRA), DPO pairs 4 to an optimizer step.
    sft_stage = ["stage=sft", "data=alpaca_en", f"trainer.max_steps={opts['sft_steps']}"]
    sft_stage += ["trainer.effective_batch_size=8", "preset.learning_rate=2e-4"]
    dpo_stage = ["stage=dpo", "data=dpo_en", f"trainer.max_steps={opts['dpo_steps']}"]
    # Validation before and after only: one evaluation of the held-out pairs costs about a minute here.
    dpo_stage += ["trainer.eval_steps=100000", "trainer.effective_batch_size=4"]
    dpo_stage += ["preset.learning_rate=5e-4", "stage.lr_scale=1.0"]
    stages = (
        "stages=["
        + ",".join(
            f"{{name:{name},overrides:[" + ",".join(f"'{o}'" for o in stage) + "]}"
            for name, stage in (("sft", sft_stage), ("dpo", dpo_stage))
        )
        + "]"
    )
    overrides = "overrides=[" + ",".join(f"'{o}'" for o in COMMON) + "]"
    pipeline = [*py, "sft.pipeline", f"out={out / 'pipeline'}", overrides, stages, "overwrite=true"]
    wall, _ = run(pipeline, out / "pipeline.log")
    sft_run, dpo_run = out / "pipeline" / "1-sft", out / "pipeline" / "2-dpo"
    dpo = json.loads((dpo_run / "summary.json").read_text())
    sft = json.loads((sft_run / "summary.json").read_text())

    memory = {}
    for reference in ("auto", "copy"):
        command = [*py, "sft.train", *COMMON, "stage=dpo", "data=dpo_en", f"init_from={sft_run}"]
        command += [f"trainer.max_steps={opts['memory_steps']}", f"stage.reference={reference}"]
        command += ["trainer.effective_batch_size=4"]
        command += [f"paths.output_dir={out / ('memory-' + reference)}", "overwrite=true"]
        memory[reference] = run(command, out / f"memory-{reference}.log")

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)")
    print(
        f"pipeline sft ({sft['global_step']} steps) -> dpo ({dpo['global_step']} steps): {wall / 60:.1f} min"
    )
    print(f"  sft val loss {sft['initial_val_loss']:.4f} -> {sft['val_loss']:.4f}")
    held_out = dpo["data"]["val"]
    print(f"dpo on {held_out} held-out pairs: before (the SFT model) -> after")
    for name in (
        "val/loss",
        "val/rewards/accuracy",
        "val/rewards/margin",
        "val/logps/accuracy",
        "val/logps/margin",
    ):
        print(f"  {name:22s} {dpo['initial_val'][name]:8.4f} -> {dpo['val'][name]:8.4f}")
    (auto_s, auto_mib), (copy_s, copy_mib) = memory["auto"], memory["copy"]
    print(
        f"peak memory, dpo {opts['memory_steps']} steps: disabled adapter {auto_mib:.0f} MiB, "
        f"second copy {copy_mib:.0f} MiB (ratio {auto_mib / copy_mib:.3f}); "
        f"wall {auto_s:.0f} s vs {copy_s:.0f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
