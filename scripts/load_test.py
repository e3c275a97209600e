"""A bounded load test of `python -m sft.serve`: N concurrent clients for T seconds, on loopback.

    python scripts/load_test.py run=<run or model dir> [clients=64] [seconds=60] [max_tokens=32]
    python scripts/load_test.py url=http://127.0.0.1:8000/v1 [clients=...]

With `run=` the server is started in its own process on a free port (and stopped at the end), so the clients
do not share its interpreter. Each client sends requests back to back until the time is up, in turn a
streamed chat completion (usage from stream_options), a whole one, and a text completion, all sampled with
a seed. It prints requests served, failures (with the first few reasons), latency p50/p90/p99 and the
aggregate completion tokens/s over the wall time of the whole test.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Name a colour.",
    "What is two plus two?",
    "Write one sentence about the sea.",
    "List three fruits.",
    "Say hello in French.",
    "Why is the sky blue? Answer briefly.",
    "Give me a word that rhymes with cat.",
    "Describe a tree in five words.",
]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def one_request(
    client: AsyncOpenAI, model: str, kind: int, prompt: str, max_tokens: int, seed: int
) -> int:
    """Send one request of the given kind (0: streamed chat, 1: whole chat, 2: completion); its tokens."""
    sampling = {"model": model, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed}
    messages = [{"role": "user", "content": prompt}]
    if kind == 0:
        stream = await client.chat.completions.create(
            messages=messages, stream=True, stream_options={"include_usage": True}, **sampling
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        if usage is None:
            raise RuntimeError("the stream ended without its usage chunk")
        return usage.completion_tokens
    if kind == 1:
        return (await client.chat.completions.create(messages=messages, **sampling)).usage.completion_tokens
    return (await client.completions.create(prompt=prompt, **sampling)).usage.completion_tokens


async def client_loop(
    client: AsyncOpenAI, model: str, index: int, deadline: float, max_tokens: int, tally: dict
):
    """Requests back to back until the deadline, recorded in `tally`."""
    sent = 0
    while time.perf_counter() < deadline:
        kind, prompt = (index + sent) % 3, PROMPTS[(index + sent) % len(PROMPTS)]
        start = time.perf_counter()
        try:
            tokens = await one_request(client, model, kind, prompt, max_tokens, seed=index * 1000 + sent)
        except Exception as err:  # a load test counts failures, it does not stop at the first
            tally["failures"].append(f"{type(err).__name__}: {err}")
        else:
            tally["latencies"].append(time.perf_counter() - start)
            tally["tokens"] += tokens
        sent += 1


async def load(url: str, clients: int = 8, seconds: float = 5.0, max_tokens: int = 32) -> dict:
    """Run the load and return its figures: served, failures, latency percentiles (s), tokens/s."""
    client = AsyncOpenAI(base_url=url, api_key=os.environ.get("SFT_SERVE_API_KEY", "none"), max_retries=0)
    model = (await client.models.list()).data[0].id
    tally = {"latencies": [], "failures": [], "tokens": 0}
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(client_loop(client, model, i, deadline, max_tokens, tally) for i in range(clients))
    )
    wall = time.perf_counter() - start
    await client.close()
    latencies = tally["latencies"]
    return {
        "clients": clients,
        "seconds": seconds,
        "wall_s": wall,
        "served": len(latencies),
        "failures": len(tally["failures"]),
        "failure_reasons": tally["failures"][:5],
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "tokens": tally["tokens"],
        "tokens_per_s": tally["tokens"] / wall,
    }


def report(figures: dict) -> str:
    """The figures as a few lines of text."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    lines = [
        f"{figures['clients']} clients x {figures['seconds']:g} s (wall {figures['wall_s']:.1f} s): "
        f"{figures['served']} requests served, {figures['failures']} failed",
        f"latency p50 {ms(figures['p50_s'])}, p90 {ms(figures['p90_s'])}, p99 {ms(figures['p99_s'])}",
        f"{figures['tokens']} completion tokens, {figures['tokens_per_s']:.1f} tokens/s aggregate",
    ]
    lines += [f"  failure: {reason}" for reason in figures["failure_reasons"]]
    return "\n".join(lines)


@contextmanager
def served(run: str, *overrides: str):
    """`python -m sft.serve run=<run>` in its own process on a free port; yields its base URL."""
    command = [sys.executable, "-m", "sft.serve", f"run={run}", "port=0", *overrides]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        for line in process.stdout:
            if found := re.search(r"at (http://\S+/v1)", line):
                # Its access log goes on to stdout: drained, or a full pipe would stall the server.
                threading.Thread(target=process.stdout.read, daemon=True).start()
                yield found.group(1)
                return
        raise RuntimeError(f"the server exited ({process.wait()}) before it said where it serves")
    finally:
        process.terminate()
        process.wait(30)


def arguments(argv: list[str]) -> dict:
    """key=value arguments."""
    args = dict(arg.split("=", 1) for arg in argv)
    unknown = set(args) - {"run", "url", "clients", "seconds", "max_tokens"}
    if unknown or ("run" in args) == ("url" in args):
        sys.exit(__doc__)
    return args


def main(argv: list[str]) -> None:
    """Run the load against `url=` or a server started over `run=`, and print the report."""
    args = arguments(argv)
    settings = {
        "clients": int(args.get("clients", 64)),
        "seconds": float(args.get("seconds", 60)),
        "max_tokens": int(args.get("max_tokens", 32)),
    }
    if "url" in args:
        print(report(asyncio.run(load(args["url"], **settings))))
        return
    with served(args["run"]) as url:
        print(report(asyncio.run(load(url, **settings))))


if __name__ == "__main__":
    main(sys.argv[1:])
