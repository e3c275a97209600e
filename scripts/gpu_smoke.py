"""Run every scale-out strategy for a few steps on the GPUs present and print one table row per strategy.

Called by scripts/gpu_smoke.sh. Each strategy runs as its own `python -m sft.train` process (so a crash,
an out-of-memory error or a missing package only fails its row) and is read back from its summary.json:
tokens/s, peak CUDA memory, final train loss, status. Extra arguments are passed to every run as Hydra
overrides, e.g. `scripts/gpu_smoke.sh --steps 20 model=qwen2_5_0_5b trainer.micro_batch_size=8`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = tuple(sorted(p.stem for p in (ROOT / "conf" / "strategy").glob("*.yaml")))
COLUMNS = ("strategy", "devices", "tokens/s per GPU", "peak memory (GiB)", "final loss", "status")


@dataclass
class Run:
    """One strategy to run, on how many devices, or why it is skipped."""

    strategy: str
    devices: int
    skip: str | None = None
    overrides: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options, with every unrecognised `key=value` argument kept as a Hydra override."""
    parser = argparse.ArgumentParser(prog="gpu_smoke.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated options of conf/strategy/"
    )
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per strategy")
    parser.add_argument("--model", default="smollm2_135m", help="an option of conf/model/")
    parser.add_argument("--devices", type=int, default=None, help="GPUs per run (default: all present)")
    parser.add_argument(
        "--timeout", type=int, default=900, help="seconds per strategy before it counts as failed"
    )
    parser.add_argument("--out", type=Path, default=None, help="where runs, logs and the table go")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = rest
    args.strategies = [s for s in args.strategies.split(",") if s]
    bad = [s for s in args.strategies if s not in STRATEGIES]
    if bad:
        parser.error(f"--strategies: unknown {bad}; choose from {', '.join(STRATEGIES)}")
    if args.out is None:
        args.out = ROOT / "outputs" / "gpu_smoke" / time.strftime("%Y-%m-%d_%H-%M-%S")
    return args


def plan(strategies: list[str], gpus: int, deepspeed: bool, devices: int | None = None) -> list[Run]:
    """What runs where: every strategy on all GPUs (or `devices`), skipped with a reason when it cannot run.

    DDP, FSDP and DeepSpeed all run on a single GPU too (a world of one), so with one GPU every
    strategy still gets a row; what needs several GPUs to be meaningful is the speed-up, not the run.
    """
    n = min(devices or gpus, gpus)
    runs = []
    for strategy in strategies:
        skip = None
        if gpus == 0:
            skip = "skipped: no CUDA GPU"
        elif strategy.startswith("deepspeed") and not deepspeed:
            skip = "skipped: deepspeed not installed (pip install -e '.[deepspeed]')"
        runs.append(Run(strategy, n, skip))
    return runs


def command(run: Run, args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The `python -m sft.train` command line for one strategy."""
    steps = args.steps
    return [
        sys.executable,
        "-m",
        "sft.train",
        f"model={args.model}",
        "trainer=gpu",
        f"strategy={run.strategy}",
        f"trainer.devices={run.devices}",
        f"trainer.max_steps={steps}",
        f"trainer.eval_steps={steps}",
        f"trainer.save_steps={steps}",
        "trainer.limit_val_batches=4",
        "logger=csv",
        "probe.enabled=false",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]


def _last_error(text: str) -> str:
    """The most telling line of a failed run's output: the last exception or error line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or line.startswith("Invalid config"):
            return line[:160]
    return lines[-1][:160] if lines else "no output"


def row(run: Run, run_dir: Path, returncode: int | None, output: str = "") -> dict:
    """One table row from a finished run (its summary.json), a failure, a timeout or a skip."""
    base = {"strategy": run.strategy, "devices": run.devices}
    empty = {"tokens_per_sec": None, "peak_memory_gb": None, "final_loss": None}
    if run.skip:
        return {**base, **empty, "status": run.skip}
    if returncode is None:
        return {**base, **empty, "status": "failed: timed out"}
    summary_path = run_dir / "summary.json"
    if returncode != 0 or not summary_path.is_file():
        return {**base, **empty, "status": f"failed (exit {returncode}): {_last_error(output)}"}
    summary = json.loads(summary_path.read_text())
    return {
        **base,
        "tokens_per_sec": summary.get("tokens_per_sec"),
        "peak_memory_gb": summary.get("peak_cuda_memory_gb"),
        "final_loss": summary.get("train_loss"),
        "status": "ok",
    }


def table(rows: list[dict]) -> str:
    """A Markdown table of the rows, numbers rounded, missing values as '-'."""

    def cell(value, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [
            r["strategy"],
            str(r["devices"]),
            cell(r["tokens_per_sec"], 0),
            cell(r["peak_memory_gb"], 2),
            cell(r["final_loss"], 4),
            r["status"].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # a broken CUDA install reports as no GPU, in the status column
        return 0


def main(argv: list[str] | None = None) -> int:
    """Run the plan, print and save the table; exit 1 if any run failed (skips are not failures)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    runs = plan(
        args.strategies, _gpu_count(), importlib.util.find_spec("deepspeed") is not None, args.devices
    )
    rows = []
    for run in runs:
        run_dir = args.out / run.strategy
        cmd = command(run, args, run_dir)
        if args.dry_run:
            print(run.skip or " ".join(cmd))
            continue
        returncode, output = None, ""
        if not run.skip:
            print(f"--- {run.strategy} on {run.devices} GPU(s)", flush=True)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
                returncode, output = done.returncode, done.stdout + done.stderr
            except subprocess.TimeoutExpired as err:
                output = f"{err.stdout or ''}{err.stderr or ''}"
            (args.out / f"{run.strategy}.log").write_text(output if isinstance(output, str) else "")
        rows.append(row(run, run_dir, returncode, output))
    if args.dry_run:
        return 0
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(
        json.dumps({"runs": [asdict(r) for r in runs], "rows": rows}, indent=2)
    )
    print(f"\nruns, logs and table: {args.out}")
    return int(any(r["status"].startswith("failed") for r in rows))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
