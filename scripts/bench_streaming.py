"""Streaming at scale: peak memory as the corpus grows 10x, and throughput against the cached path.

    python scripts/bench_streaming.py [--small-gb 0.3] [--steps 30] [--model tiny] [--keep DIR] [overrides...]

1. Writes a corpus of real rows from the shared data (Alpaca, Glaive tool calls, the identity set), varied
   (two rows joined into a two-turn conversation, an id, a random system prompt), as .jsonl shards of
   64 MB: `--small-gb` and ten times that.
2. Trains `--steps` optimizer steps streaming each corpus (data.streaming=true) and prints each run's
   peak RSS, its wall time to the first step (start-up) and its tokens/s.
3. On one shard's first rows (`--rows`), trains the same steps with the cached path and with streaming,
   twice each in alternation, and prints the tokens/s ratio (same rows, same model, same batches).
The corpus is deleted afterwards unless --keep names where to write it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sft.provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHARD_BYTES = 64 << 20


def source_conversations() -> list[list[dict]]:
    """The shared rows as lists of messages (Alpaca and identity: one exchange; Glaive: its turns)."""
    out = []
    for name in ("alpaca_en_demo.json", "identity.json"):
        for row in json.loads((SHARED / name).read_text()):
            prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}])
    roles = {"human": "user", "gpt": "assistant"}
    for row in json.loads((SHARED / "glaive_toolcall_en_demo.json").read_text()):
        turns = [t for t in row["conversations"] if t["from"] in roles]
        if len(turns) >= 2 and turns[0]["from"] == "human":
            out.append([{"role": roles[t["from"]], "content": t["value"]} for t in turns[:2]])
    return out


def write_corpus(directory: Path, total_bytes: int, seed: int = 0) -> int:
    """Varied rows in 64 MB .jsonl shards up to `total_bytes`; returns the rows written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng, pool = random.Random(seed), source_conversations()
    systems = [None, "You are a helpful assistant.", "Answer briefly.", "Think step by step."]
    written = rows = shard = 0
    while written < total_bytes:
        with open(directory / f"part-{shard:05d}.jsonl", "w", encoding="utf-8") as out:
            size = 0
            while size < SHARD_BYTES and written + size < total_bytes:
                messages = list(rng.choice(pool))
                if rng.random() < 0.5:
                    messages += rng.choice(pool)
                system = rng.choice(systems)
                if system:
                    messages = [{"role": "system", "content": system}, *messages]
                line = json.dumps({"id": rows, "messages": messages}, ensure_ascii=False) + "\n"
                out.write(line)
                size += len(line.encode())
                rows += 1
            written += size
        shard += 1
    return rows


def train(run: Path, cache: Path, *overrides: str) -> dict:
    """One `python -m sft.train` run; its summary plus the seconds to the first optimizer step."""
    env = {**os.environ, "SFT_CACHE": str(cache)}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sft.train", f"paths.output_dir={run}", *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_step = None
    metrics = run / "csv" / "metrics.csv"
    while process.poll() is None:
        if first_step is None and metrics.exists() and "train/loss" in metrics.read_text():
            first_step = time.perf_counter() - started
        time.sleep(0.2)
    if process.returncode:
        sys.exit(f"run {run} failed:\n{process.stderr.read()[-4000:]}")
    summary = json.loads((run / "summary.json").read_text())
    return {**summary, "first_step_seconds": first_step}


def main() -> None:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-gb", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--only", choices=("memory", "speed"), help="one of the two measurements")
    parser.add_argument("overrides", nargs="*", help="sft.train overrides added to every run")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    cache = Path(os.environ.get("SFT_CACHE", Path.home() / ".cache" / "sft"))
    common = [
        f"model={args.model}",
        "data=mix",
        "logger=csv",
        "probe.enabled=false",
        "evaluation.parity.prompts=0",
        "evaluation.enabled=false",
        f"trainer.max_steps={args.steps}",
        "trainer.save_steps=1000000",
        "data.cutoff_len=512",
        "data.val_size=32",
        *args.overrides,
    ]
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; model={args.model}, {args.steps} steps {args.overrides}"
    )
    try:
        sizes = [("1x", args.small_gb)] + ([("10x", 10 * args.small_gb)] if args.only != "speed" else [])
        print("\n| corpus | rows | peak RSS (GB) | to first step (s) | tokens/s |\n|---|---|---|---|---|")
        for label, gigabytes in sizes:
            corpus = work / f"corpus-{label}"
            rows = write_corpus(corpus, int(gigabytes * (1 << 30)))
            s = train(
                work / f"stream-{label}", cache, *common, f"data.datasets=[{corpus}]", "data.streaming=true"
            )
            print(
                f"| {gigabytes:.1f} GB ({label}) | {rows} | {s['peak_rss_gb']:.3f} | "
                f"{s['first_step_seconds']:.1f} | {s['tokens_per_sec']:.1f} |"
            )
        if args.only == "memory":
            return
        same = work / "same-rows.jsonl"
        with open(work / "corpus-1x" / "part-00000.jsonl", encoding="utf-8") as src:
            same.write_text("".join(line for _, line in zip(range(args.rows), src, strict=False)))
        speeds: dict[str, list[float]] = {"cached": [], "streaming": []}
        for attempt in range(2):
            for path in ("cached", "streaming"):
                run = work / f"{path}-{attempt}"
                extra = [f"data.datasets=[{same}]", f"data.streaming={path == 'streaming'}"]
                speeds[path].append(train(run, cache, *common, *extra)["tokens_per_sec"])
        best = {path: max(values) for path, values in speeds.items()}
        print(f"\nsame {args.rows} rows, tokens/s (two runs each, alternating): {speeds}")
        print(f"streaming / cached (best of two each): {best['streaming'] / best['cached']:.3f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
