"""Greedy answers to a few prompts, to show what training changed."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback

from ..data.templates import Template, generation_prompt
from .strategy import shards_parameters

log = logging.getLogger(__name__)


@torch.no_grad()
def answer(model, tokenizer, template: Template, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions of each single-turn prompt, rendered with the training template."""
    was_training = model.training
    model.eval()
    # A stop string that is not one token of this vocabulary would map to the unknown-token id.
    stop = tokenizer.convert_tokens_to_ids(template.stop) if template.stop in tokenizer.get_vocab() else None
    stop_ids = [i for i in {stop, tokenizer.eos_token_id} if i is not None]
    device = next(model.parameters()).device
    answers = []
    for prompt in prompts:
        text = generation_prompt(tokenizer, template, prompt)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
        out = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        answers.append(
            tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        )
    model.train(was_training)
    return answers


class ProbeAnswers(Callback):
    """Answers the probe prompts before training and again with the weights the run saves.

    Before: at the run's first `setup` (the validation before training, or the fit when resuming),
    ahead of any wrapping or sharding of the model. After: at the validation that follows training,
    once the best checkpoint (when restored) is in place; at the end of the fit when the run has no
    validation rows. Skipped where the strategy keeps the weights sharded; only the first process
    generates.
    """

    def __init__(self, tokenizer, template: Template, prompts: list[str], max_new_tokens: int):
        self.tokenizer, self.template = tokenizer, template
        self.prompts, self.max_new_tokens = prompts, max_new_tokens
        self.before: list[str] = []
        self.after: list[str | None] = []
        self._fitted = False

    def _answer(self, model) -> list[str]:
        return answer(model, self.tokenizer, self.template, self.prompts, self.max_new_tokens)

    def _answer_after(self, trainer, pl_module) -> None:
        if shards_parameters(trainer.strategy):
            log.info("probes after training skipped: %s shards the weights", type(trainer.strategy).__name__)
            self.after = [None] * len(self.prompts)
        else:
            self.after = self._answer(pl_module.model)

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Answer with the untrained adapter, before the strategy wraps the model."""
        if trainer.is_global_zero and not self.before:
            self.before = self._answer(pl_module.model)

    def on_fit_end(self, trainer, pl_module) -> None:
        """The next validation is the final one; without validation rows, answer now."""
        self._fitted = True
        if trainer.is_global_zero and not any(trainer.num_val_batches):
            self._answer_after(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Answer with the final weights, at the validation that follows training."""
        if self._fitted and trainer.state.fn == "validate" and trainer.is_global_zero:
            self._answer_after(trainer, pl_module)

    def summary_section(self) -> dict:
        """Each probe prompt with its answers before and after training."""
        after = self.after or [None] * len(self.before)
        rows = zip(self.prompts, self.before, after, strict=False)
        return {"probes": [{"prompt": p, "before": b, "after": a} for p, b, a in rows]}
