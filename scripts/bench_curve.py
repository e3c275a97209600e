"""Cost over sequence length: tokens/s and peak memory of sft.train and TRL at cutoffs 512, 1024 and 2048.

    python scripts/bench_curve.py [out=/tmp/bench-curve] [cutoffs=512,1024,2048] [steps=4]
                                  [plot=docs/cost_curve.png]

Runs `python -m sft.bench` once per cutoff on the same Alpaca rows, both trainers packing rows to the cutoff
(micro-batch 2, no accumulation, no checkpointing, in the dtype the bench measures faster), and at the longest
cutoff both again with gradient checkpointing. Prints one Markdown table and draws tokens/s and peak RSS
against the cutoff.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stages import run  # noqa: E402

from sft.provenance import cpu_model  # noqa: E402

RUNS = {
    "sft": '{trainer: sft, sft_overrides: ["data.packing=true"]}',
    "trl": "{trainer: trl, trl_args: {packing: true, gradient_checkpointing: false}}",
}
CHECKPOINTED = {
    "sft_gc": '{trainer: sft, sft_overrides: ["data.packing=true", "trainer.gradient_checkpointing=true"]}',
    "trl_gc": "{trainer: trl, trl_args: {packing: true, gradient_checkpointing: true}}",
}


def bench(out: Path, cutoff: int, steps: str, runs: dict[str, str]) -> dict:
    """One `sft.bench` session at `cutoff` with `runs`; its results.json."""
    command = [sys.executable, "-m", "sft.bench", f"cutoff={cutoff}", "effective_batch=2", f"steps={steps}"]
    command += ["warmup=1", "trl_search.enabled=false", f"hydra.run.dir={out}", "ours=sft"]
    command += [f"~runs.{name}" for name in ("trl_default", "trl_packed_no_gc", "sft", "sft_packed")]
    command += [f"+runs.{name}={spec}" for name, spec in runs.items()]
    run(command, out.with_suffix(".log"))
    return json.loads((out / "results.json").read_text())


def plot(rows: list[dict], path: Path) -> None:
    """Tokens/s and peak RSS against the cutoff, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name]
        for axis, key in zip(axes, ("tokens_per_sec", "peak_rss_gb"), strict=True):
            axis.plot([r["cutoff"] for r in mine], [r[key] for r in mine], marker="o", label=name)
    for axis, label in zip(axes, ("non-padding tokens/s", "peak RSS (GB)"), strict=True):
        axis.set_xscale("log", base=2)
        ticks = sorted({r["cutoff"] for r in rows})
        axis.set_xticks(ticks, labels=[str(c) for c in ticks])
        axis.set_xlabel("cutoff (tokens per packed row)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"SmolLM2-135M, LoRA r32, micro-batch 2 packed: {cpu_model()}, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str]) -> None:
    """Run the sessions, print the table, draw the plot."""
    opts = {
        "out": "/tmp/bench-curve",
        "cutoffs": "512,1024,2048",
        "steps": "4",
        "plot": "docs/cost_curve.png",
    }
    opts.update(a.split("=", 1) for a in argv)
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    cutoffs = [int(c) for c in opts["cutoffs"].split(",")]
    rows = []
    for cutoff in cutoffs:
        runs = {**RUNS, **(CHECKPOINTED if cutoff == max(cutoffs) else {})}
        results = bench(out / f"cutoff-{cutoff}", cutoff, opts["steps"], runs)
        dtype = "bf16" if results["machine"]["bf16"] else "fp32"
        for name, r in results["runs"].items():
            rows.append({"run": name, "cutoff": cutoff, "dtype": dtype, **r})
    (out / "curve.json").write_text(json.dumps(rows, indent=1))
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)")
    print("| cutoff | run | dtype | non-padding tokens/s | peak RSS GB | MFU | sft / trl tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['cutoff']} | {r['run']} | failed: {r['error']} | | | | |")
            continue
        other = next(
            (o for o in rows if o["cutoff"] == r["cutoff"] and o["run"] == r["run"].replace("sft", "trl")),
            None,
        )
        usable = other is not None and other is not r and "error" not in other
        ratio = f"{r['tokens_per_sec'] / other['tokens_per_sec']:.2f}" if usable else ""
        print(
            f"| {r['cutoff']} | {r['run']} | {r['dtype']} | {r['tokens_per_sec']:.1f} "
            f"| {r['peak_rss_gb']:.2f} | {r['mfu']:.1%} | {ratio} |"
        )
    plot([r for r in rows if "error" not in r], Path(opts["plot"]))
    print(f"plot: {opts['plot']}")


if __name__ == "__main__":
    main(sys.argv[1:])
