"""Peak memory and speed of each adaptation method, every run in a fresh process, against LoRA.

    python scripts/bench_adapters.py [out=/tmp/bench-adapters] [steps=4] [methods=default,qlora,...]

Runs `python -m sft.train` once per method on the packaged SmolLM2 (same data, steps and batch), each in
its own process so no run inherits another's memory, and prints peak resident memory (the child's
getrusage high-water mark, and the run's own `peak_rss_gb`), tokens/s and trainable parameters, with
ratios against `lora=default` measured in the same session.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stages import run  # noqa: E402

from sft.provenance import cpu_model  # noqa: E402

COMMON = [
    "model=smollm2_135m",
    "data.cutoff_len=256",
    "data.val_size=16",
    "trainer=cpu",
    "trainer.micro_batch_size=2",
    "trainer.effective_batch_size=8",
    "preset=aggressive",
    "logger=csv",
    "probe.enabled=false",
    "evaluation.enabled=false",
]
METHODS = "default,qlora,dora,rslora,loraplus,pissa,freeze,none"


def main(argv: list[str]) -> None:
    """Run every method once; print the table."""
    opts = {"out": "/tmp/bench-adapters", "steps": "4", "methods": METHODS}
    opts.update(a.split("=", 1) for a in argv)
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for method in opts["methods"].split(","):
        command = [sys.executable, "-m", "sft.train", *COMMON, f"lora={method}"]
        command += [f"trainer.max_steps={opts['steps']}", f"trainer.eval_steps={opts['steps']}"]
        command += [f"paths.output_dir={out / method}", "overwrite=true"]
        wall, peak_mib = run(command, out / f"{method}.log")
        summary = json.loads((out / method / "summary.json").read_text())
        rows[method] = (peak_mib, summary, wall)

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); {opts['steps']} steps of 8 rows, cutoff 256")
    base_mib, base, _ = rows.get("default", next(iter(rows.values())))
    print("| method | peak RSS MiB | vs LoRA | tokens/s | vs LoRA | trainable | wall s |")
    print("|---|---|---|---|---|---|---|")
    for method, (mib, summary, wall) in rows.items():
        speed = summary["tokens_per_sec"]
        print(
            f"| {method} | {mib:.0f} | {mib / base_mib:.2f} | {speed:.1f} "
            f"| {speed / base['tokens_per_sec']:.2f} "
            f"| {summary['parameters']['trainable']:,} | {wall:.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
