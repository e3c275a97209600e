"""`python -m sft.bench` (make bench): run every configured trainer, then print and save the comparison.

Each run trains the same model with the same LoRA on the same rows for the same optimizer steps, in its
own process (`sft.bench.worker`), so peak memory is its own. Throughput counts only the steps after the
warm-up. The machine's fp32 and bf16 matmul peaks are measured in the same session, and model-FLOPs
utilisation (MFU) is each run's model FLOPs per second over the peak of the dtype it trained in.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from ..config import BenchConfig, check, checked_cli
from ..errors import ConfigError
from ..locations import CONF_DIR
from ..training.model import load_tokenizer, resolve_source
from ..training.precision import matmul_peak
from .clock import rates
from .flops import flops_per_token, mean_context
from .search import coordinate_search, trl_spec
from .worker import alpaca_chat


def row_lengths(model_dir: str, data: Path, cutoff: int) -> list[int]:
    """Token lengths of the rows as one-exchange chats under the model's template, cut at `cutoff`."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = []
    for row in json.loads(data.read_text()):
        chat = alpaca_chat(row)
        lengths.append(
            min(len(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)), cutoff)
        )
    return lengths


def run_one(name: str, spec: dict, out: Path, timeout: int) -> dict:
    """One worker process; its result, or its error and log tail."""
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "out_dir": str(run_dir), "result": str(run_dir / "result.json")}
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    why = ""
    with open(run_dir / "log.txt", "w") as log:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "sft.bench.worker", str(run_dir / "spec.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            failed, why = done.returncode != 0, f"exit {done.returncode}"
        except subprocess.TimeoutExpired:
            failed, why = True, f"timed out after {timeout:g} s"
    if failed or not (run_dir / "result.json").exists():
        tail = (run_dir / "log.txt").read_text()[-2000:]
        # A timed-out run's last line says so (its log may be empty, or end mid-step).
        return {"error": tail + (f"\n{why}" if why.startswith("timed out") or not tail.strip() else "")}
    return json.loads((run_dir / "result.json").read_text())


def search_trl(cfg: DictConfig, common: dict, out: Path, context: float, peak: float) -> tuple[dict, list]:
    """TRL's fastest settings here (sft.bench.search), from short runs; (the best, every trial's numbers)."""
    search = cfg.trl_search
    start = {
        "dtype": "bf16_weights" if common["bf16"] else "fp32",  # as runs.trl_default: TRL's own defaults
        "packing": False,
        "gradient_checkpointing": True,
        "micro_batch": cfg.effective_batch,
    }
    space = OmegaConf.to_container(search.space)
    # Only micro-batches that split the effective batch evenly (so every trial trains the same rows per step).
    fitting = [m for m in space.get("micro_batch", []) if cfg.effective_batch % m == 0]
    space["micro_batch"] = fitting or [cfg.effective_batch]
    numbers: list[dict] = []

    def measure(point: dict) -> float | None:
        name = "search_" + "_".join(f"{v}" for v in point.values())
        spec = {**common, "steps": search.steps, **trl_spec(point, cfg.effective_batch)}
        row = summarise(run_one(name, spec, out / "trl_search", cfg.timeout), search.warmup, context, peak)
        numbers.append({**point, **{k: row.get(k) for k in ("tokens_per_sec", "peak_rss_gb", "error")}})
        return row.get("tokens_per_sec")

    best, _ = coordinate_search(space, start, measure)
    for trial in numbers:
        trial["best"] = all(trial[k] == v for k, v in best.items())
    return best, numbers


def search_markdown(trials: list[dict]) -> str:
    """The search's trials as a Markdown table, in the order they ran."""
    lines = ["| dtype | packing | checkpointing | micro-batch | tokens/s | peak RSS GB | |", "|---" * 7 + "|"]
    for t in trials:
        speed = f"{t['tokens_per_sec']:.1f}" if t.get("tokens_per_sec") else f"failed: {t.get('error')}"
        rss = f"{t['peak_rss_gb']:.2f}" if t.get("peak_rss_gb") else ""
        lines.append(
            f"| {t['dtype']} | {t['packing']} | {t['gradient_checkpointing']} | {t['micro_batch']} "
            f"| {speed} | {rss} | {'best' if t['best'] else ''} |"
        )
    return "\n".join(lines)


def summarise(result: dict, warmup: int, context: float, peak_gflops: float) -> dict:
    """The table's numbers for one run."""
    if "error" in result:
        lines = result["error"].strip().splitlines() or ["no output"]
        return {"error": lines[-1][:200]}
    timed = rates(result["steps"], warmup)
    per_token = flops_per_token(
        result["frozen_matmul"], result["trainable"], result["layers"], result["width"], context
    )
    return {
        **timed,
        "peak_rss_gb": result["peak_rss_gb"],
        "peak_cuda_gb": result.get("peak_cuda_gb"),
        "prep_seconds": result["prep_seconds"],
        "prep_cached_seconds": result.get("prep_cached_seconds"),
        "flops_per_token": per_token,
        "mfu": timed["tokens_per_sec"] * per_token / (peak_gflops * 1e9),
        "settings": result.get("settings"),
    }


COLUMNS = (
    "run",
    "non-padding tokens/s",
    "trained tokens/s",
    "padding",
    "peak RSS GB",
    "timed s",
    "final loss",
    "MFU",
    "data prep s",
    "ours / it",
)


def cells(rows: dict[str, dict], ours: str) -> list[list[str]]:
    """One row of text cells per run: its numbers and the ratio of `ours` to it (tokens/s)."""
    mine = rows.get(ours, {}).get("tokens_per_sec")
    lines = []
    for name, r in rows.items():
        if "error" in r:
            lines.append([name, f"failed: see {name}/log.txt", *[""] * (len(COLUMNS) - 2)])
            continue
        cached = r.get("prep_cached_seconds")
        lines.append(
            [
                name,
                f"{r['tokens_per_sec']:.1f}",
                f"{r['trained_tokens_per_sec']:.1f}",
                f"{r['padding_fraction']:.1%}",
                f"{r['peak_rss_gb']:.2f}",
                f"{r['seconds']:.1f}",
                "" if r["loss"] is None else f"{r['loss']:.3f}",
                f"{r['mfu']:.1%}",
                f"{r['prep_seconds']:.2f}" + ("" if cached is None else f" ({cached:.2f} cached)"),
                "" if name == ours or mine is None else f"{mine / r['tokens_per_sec']:.2f}x",
            ]
        )
    return lines


def table(rows: dict[str, dict], ours: str) -> Table:
    """The comparison for the terminal."""
    out = Table(title="sft.train vs TRL SFTTrainer (timed steps only)")
    for c in COLUMNS:
        out.add_column(c, justify="left" if c == "run" else "right")
    for line in cells(rows, ours):
        out.add_row(*line)
    return out


def markdown(rows: dict[str, dict], ours: str) -> str:
    """The comparison as a Markdown table (for BENCHMARKS.md)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in cells(rows, ours)])


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench")
def main(cfg: DictConfig) -> None:
    """Measure the peaks, run every configured trainer, print the table, save results.json and table.md."""
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        model_cfg = check(cfg, BenchConfig).model
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    data = Path(cfg.data_file).resolve()
    if not data.is_file():
        sys.exit(f"data_file={cfg.data_file}: no such file ({data})")
    load_tokenizer(model_cfg, cfg.cache_dir)  # converts or builds the model once, outside every timing
    model_dir = resolve_source(model_cfg, cfg.cache_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measure = {"n": cfg.peak_matrix, "seconds": cfg.peak_seconds, "device": device}
    peaks = {
        "fp32_gflops": matmul_peak(torch.float32, **measure),
        "bf16_gflops": matmul_peak(torch.bfloat16, **measure),
    }
    # A CPU may list bf16 instructions yet multiply faster in fp32: the measurement decides.
    bf16 = peaks["bf16_gflops"] > peaks["fp32_gflops"] if cfg.bf16 == "auto" else bool(cfg.bf16)
    # Only rows whose whole chat fits the cutoff, so both trainers train on the same rows and tokens: TRL
    # would truncate a longer row's response, sft.train keeps responses whole and skips the row instead.
    given = json.loads(data.read_text())
    lengths = row_lengths(model_dir, data, sys.maxsize)
    fitting = [n for n in lengths if n <= cfg.cutoff]
    if not fitting:
        sys.exit(f"data_file={cfg.data_file}: no row fits cutoff={cfg.cutoff} tokens")
    rows_file = out / "rows.json"
    rows_file.write_text(json.dumps([r for r, n in zip(given, lengths, strict=True) if n <= cfg.cutoff]))
    context = mean_context(fitting)
    common = {
        "model_dir": model_dir,
        "data": str(rows_file),
        "steps": cfg.steps,
        "cutoff": cfg.cutoff,
        "effective_batch": cfg.effective_batch,
        "rank": cfg.rank,
        "alpha": cfg.alpha,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "bf16": bf16,
        "cache_dir": cfg.cache_dir,
    }
    results, rows = {}, {}
    peak = peaks["bf16_gflops" if bf16 else "fp32_gflops"]
    runs = {name: OmegaConf.to_container(run, resolve=True) for name, run in cfg.runs.items()}
    trials = []
    if cfg.trl_search.enabled:
        best, trials = search_trl(cfg, common, out, context, peak)
        runs = {**runs, "trl_best": trl_spec(best, cfg.effective_batch)}
    for name, run in runs.items():
        results[name] = run_one(name, {**common, **run}, out, cfg.timeout)
        rows[name] = summarise(results[name], cfg.warmup, context, peak)
    machine = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "bf16": bf16,
        **peaks,
        "mean_attention_context": context,
    }
    data_rows = {"file": str(data), "rows": len(given), "fit_cutoff": len(fitting)}
    (out / "results.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "config": OmegaConf.to_container(cfg),
                "data": data_rows,
                "trl_search": trials,
                "runs": rows,
                "raw": results,
            },
            indent=1,
            default=str,
        )
    )
    (out / "table.md").write_text(markdown(rows, cfg.ours) + "\n")
    console = Console()
    if trials:
        (out / "trl_search.md").write_text(search_markdown(trials) + "\n")
        console.print(f"TRL settings searched (short runs of {cfg.trl_search.steps} steps):")
        console.print(search_markdown(trials), markup=False)
    console.print(table(rows, cfg.ours))
    console.print(
        f"matmul peak: fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, bf16 {peaks['bf16_gflops']:.0f} GFLOP/s "
        f"(trained in {'bf16' if bf16 else 'fp32'}); mean attention context {context:.0f} tokens"
    )
    console.print(f"written: {out / 'results.json'}, {out / 'table.md'}")
    if failed := [name for name, r in rows.items() if "error" in r]:
        sys.exit(f"failed: {', '.join(failed)} (logs in {out})")


cli = checked_cli(main, BenchConfig)

if __name__ == "__main__":
    cli()
