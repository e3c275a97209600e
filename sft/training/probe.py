"""Greedy answers to a few prompts, to show what training changed."""

from __future__ import annotations

import torch

from ..data.templates import Template, render, with_system


@torch.no_grad()
def answer(model, tokenizer, template: Template, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy completions of each single-turn prompt, rendered with the training template."""
    was_training = model.training
    model.eval()
    # A stop string that is not one token of this vocabulary would map to the unknown-token id.
    stop = tokenizer.convert_tokens_to_ids(template.stop) if template.stop in tokenizer.get_vocab() else None
    stop_ids = [i for i in {stop, tokenizer.eos_token_id} if i is not None]
    device = next(model.parameters()).device
    answers = []
    for prompt in prompts:
        messages = with_system({"messages": [{"role": "user", "content": prompt}]}, template)
        text = render(tokenizer, template, messages, add_generation_prompt=True)
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
