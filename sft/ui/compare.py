"""A finished run beside its base model: the same prompt, the run's chat template, one reply from each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..run_dir import RunDir
from ..serving.chat import Chat
from ..serving.export import load_run, run_weights, stop_token_ids
from ..training.lineage import start_weights


def chat_ready(run: Path) -> bool:
    """True when the run saved trained weights (an adapter or a full model) to chat with."""
    try:
        run_weights(Path(run))
    except ValueError:
        return False
    return True


class Comparison:
    """The tuned run and its untouched base, each a `Chat` over the run's tokenizer and template.

    Both are greedy by default, so a difference between the replies comes from the weights alone.
    """

    def __init__(self, run: Path, max_new_tokens: int = 128, temperature: float = 0.0) -> None:
        run = Path(run)
        cfg = RunDir(run).read_config()
        cache_dir = cfg.paths.cache_dir
        tuned, tokenizer = load_run(run, cache_dir)
        # The base is the run's starting policy (its base model, or its init_from parent's result),
        # rebuilt from config.yaml; it speaks through the run's template too.
        base = start_weights(cfg, cache_dir).eval()
        base.generation_config.eos_token_id = stop_token_ids(cfg, tokenizer, base)
        self.run = run
        self.tuned = Chat(tuned, tokenizer, None, max_new_tokens, temperature)
        self.base = Chat(base, tokenizer, None, max_new_tokens, temperature)

    def reset(self) -> None:
        """Start both conversations afresh."""
        self.tuned.reset()
        self.base.reset()

    def ask(self, prompt: str) -> Iterator[tuple[str, str]]:
        """Stream (tuned reply so far, base reply so far): the tuned model first, then the base."""
        tuned = base = ""
        for piece in self.tuned.stream(prompt):
            tuned += piece
            yield tuned, base
        for piece in self.base.stream(prompt):
            base += piece
            yield tuned, base
