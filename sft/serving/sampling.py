"""The next token of one sequence from its logits: greedy, or sampled with its own seeded generator.

Each request draws from its own `torch.Generator`, never the global one, so what it samples depends only on
its seed and its logits, not on which requests share the batch or in what order they arrived.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper


class Sampler:
    """Picks a sequence's next token: argmax at temperature 0, else temperature and top-p sampling."""

    def __init__(self, temperature: float, top_p: float, seed: int | None, device: torch.device) -> None:
        self.greedy = temperature == 0
        self.warpers = LogitsProcessorList()
        if not self.greedy:
            if temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()  # nondeterministic: unseeded requests must not repeat each other
        else:
            self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token id from one row of logits ([vocab])."""
        if self.greedy:
            return int(logits.argmax())
        scores = self.warpers(None, logits[None])
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
