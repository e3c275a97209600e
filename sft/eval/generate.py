"""Batched greedy answers to single-turn prompts, rendered with the model's own chat template."""

from __future__ import annotations

import torch


def _stop_ids(tokenizer) -> list[int]:
    """End-of-turn ids: EOS plus the template's turn terminators that are single tokens of this vocabulary."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id, *(vocab[t] for t in ("<|im_end|>", "<|eot_id|>", "<|end|>") if t in vocab)}
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    system: str | None = None,
) -> list[str]:
    """Greedy completions of each prompt as a one-turn chat (left-padded batches, stopped at end of turn)."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only: pad where nothing follows
    device = next(model.parameters()).device
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(
                    ([{"role": "system", "content": system}] if system else [])
                    + [{"role": "user", "content": prompt}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for prompt in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=_stop_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, batch["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers
