"""Aggregate tokens/s of `python -m sft.serve` with one client at a time against N concurrent clients.

    python scripts/bench_serve.py run=<run or model dir | tiny> [clients=16] [max_tokens=32] [rounds=1]

The server runs in its own process on a free port (`run=tiny`: the random tiny test model, built in the
cache once). Both phases send the same N chat prompts, greedy, with the same max_tokens, `rounds` times
each: first one client, one request after another; then N clients at once, one prompt each. It prints
each phase's completion tokens, wall time and tokens/s, and the ratio concurrent / sequential.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import served  # noqa: E402

QUESTIONS = ["colour", "fruit", "river", "city", "tree", "animal", "song", "tool"]


def prompts(count: int) -> list[str]:
    """`count` different short chat prompts."""
    return [
        f"Name a {QUESTIONS[i % len(QUESTIONS)]} and say why, in one sentence ({i})." for i in range(count)
    ]


async def ask(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> int:
    """One greedy chat completion; its completion tokens."""
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0
    )
    return reply.usage.completion_tokens


async def phases(url: str, clients: int, max_tokens: int, rounds: int) -> dict:
    """tokens and seconds of the sequential and the concurrent phase."""
    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)
    model = (await client.models.list()).data[0].id
    texts = prompts(clients)
    await ask(client, model, texts[0], 4)  # warm-up: first-call costs stay out of both timings
    start, tokens = time.perf_counter(), 0
    for _ in range(rounds):
        for text in texts:
            tokens += await ask(client, model, text, max_tokens)
    sequential = {"tokens": tokens, "seconds": time.perf_counter() - start}

    async def one_client(text: str) -> int:
        return sum([await ask(client, model, text, max_tokens) for _ in range(rounds)])

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one_client(text) for text in texts)))
    concurrent = {"tokens": tokens, "seconds": time.perf_counter() - start}
    await client.close()
    return {"sequential": sequential, "concurrent": concurrent}


def tiny_model() -> str:
    """The random tiny test model's directory (built in the sft cache the first time)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sft.config import ModelConfig
    from sft.locations import CONF_DIR
    from sft.training.model import resolve_source

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("serve", overrides=["run=unused"])
        model = compose("train", overrides=["model=tiny"]).model
    return resolve_source(ModelConfig(**OmegaConf.to_container(model, resolve=True)), cfg.cache_dir)


def main(argv: list[str]) -> None:
    """Run both phases against a server over `run=` and print the figures."""
    args = dict(arg.split("=", 1) for arg in argv)
    if "run" not in args or set(args) - {"run", "clients", "max_tokens", "rounds"}:
        sys.exit(__doc__)
    run = tiny_model() if args["run"] == "tiny" else args["run"]
    clients, max_tokens, rounds = (
        int(args.get("clients", 16)),
        int(args.get("max_tokens", 32)),
        int(args.get("rounds", 1)),
    )
    with served(run, f"max_batch_size={max(clients, 1)}") as url:
        figures = asyncio.run(phases(url, clients, max_tokens, rounds))
    rates = {}
    for phase, label in (
        ("sequential", "1 client, sequential"),
        ("concurrent", f"{clients} concurrent clients"),
    ):
        f = figures[phase]
        rates[phase] = f["tokens"] / f["seconds"]
        print(f"{label:>24}: {f['tokens']} tokens in {f['seconds']:.1f} s = {rates[phase]:.1f} tokens/s")
    print(f"{'ratio':>24}: {rates['concurrent'] / rates['sequential']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
