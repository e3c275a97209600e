"""Batched answers to chat prompts, rendered with the model's own chat template (greedy or sampled)."""

from __future__ import annotations

import torch


def _stop_ids(tokenizer) -> list[int]:
    """End-of-turn ids: EOS plus the template's turn terminators that are single tokens of this vocabulary."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id, *(vocab[t] for t in ("<|im_end|>", "<|eot_id|>", "<|end|>") if t in vocab)}
    return sorted(i for i in ids if i is not None)


def _messages(prompt: str | list[dict], system: str | None) -> list[dict]:
    """A message list as given, or a text prompt as one user turn after the optional system prompt."""
    if not isinstance(prompt, str):
        return prompt
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str] | list[list[dict]],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    system: str | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[str]:
    """Replies to each prompt (one-turn text or a message list), greedy at temperature 0, left-padded batches.

    Generation stops at the end of the assistant turn; `system` is prepended to text prompts only.
    """
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only: pad where nothing follows
    device = next(model.parameters()).device
    answers: list[str] = []
    greedy = {"do_sample": False}
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else greedy
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(
                    _messages(prompt, system), tokenize=False, add_generation_prompt=True
                )
                for prompt in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                **sampling,
                eos_token_id=_stop_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, batch["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers
