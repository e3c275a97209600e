"""Token-level scores of the labelled positions: summed next-token loss, and per-token log-probabilities.

`kept_scores` gives the output head's scores at the positions whose label is kept, either from full
logits or with the head applied only to those positions' hidden states, which never builds the
(tokens x vocabulary) logits of prompt and padding positions. `token_loss` (full logits) and
`trained_token_loss` (head on kept positions) are the two routes to the same summed loss.

Per-turn loss weights: a batch with `label_weights` (see sft.data.collate) gives
(sum of w x cross-entropy, sum of w, sum of w x correct) over its trained tokens instead of
(summed cross-entropy, token count, correct count). The module adds these sums over the optimizer
step's micro-batches and devices and divides once, so the step's loss is sum(w x nll) / sum(w) over all
its trained tokens: every token counts by its weight, wherever in the step it sits (the per-token mean
with weights; weight 1 everywhere is exactly today's mean). A batch without weights takes the unweighted
path, so unweighted data computes bit for bit what it always did. Under precision=bf16-true Lightning
casts every floating batch tensor, the weights included, to bf16 (0.1 becomes 0.10009765625); numerator
and denominator use the same rounded weights, so the loss stays an exact weighted mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE_INDEX

# Families whose logits are exactly `lm_head(decoder(...).last_hidden_state)`: no soft-capping, scaling
# or extra terms between the decoder and the loss (Gemma soft-caps, Granite scales, MoE adds aux losses).
PLAIN_HEAD = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3")


def summed_cross_entropy(scores: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, correct predictions) of score rows against wanted ids, computed in fp32."""
    scores = scores.float()  # upcast only the rows that carry loss
    return F.cross_entropy(scores, wanted, reduction="sum"), (scores.argmax(-1) == wanted).sum()


def weighted_cross_entropy(
    scores: torch.Tensor, wanted: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of weight x cross-entropy, sum of weights, weighted correct predictions), computed in fp32."""
    scores, weights = scores.float(), weights.float()
    nll = F.cross_entropy(scores, wanted, reduction="none")
    correct = (scores.argmax(-1) == wanted).to(weights.dtype)
    return (weights * nll).sum(), weights.sum(), (weights * correct).sum()


def scored_sums(
    scores: torch.Tensor, wanted: torch.Tensor, keep: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss sum, what it is a mean over, correct) of kept score rows; `weights` (batch-shaped) or None."""
    if weights is None:
        loss_sum, correct = summed_cross_entropy(scores, wanted)
        return loss_sum, keep.sum(), correct
    return weighted_cross_entropy(scores, wanted, weights[:, 1:][keep])


def token_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, trained-token count, correct predictions) over positions whose label is kept;
    with `weights` (label_weights), each term and count scaled by its label's weight.

    An all-masked batch gives a zero sum and a zero count, never NaN, and nothing syncs with the host.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return scored_sums(logits[:, :-1][keep], targets[keep], keep, weights)


def split_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, output head) of a causal LM, under PEFT too, when its logits are plainly head(decoder);
    None when the model family is not known to be plain (the caller then uses full logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_HEAD:
        return None
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None else None


def kept_scores(model, head, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score rows, wanted ids, keep mask) at the positions whose next-token label is kept.

    With `head` = (decoder, output head) the head runs on those positions' hidden states only; with None
    the model's full logits are computed and the kept rows taken from them.
    """
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch.get("attention_mask"),
        "position_ids": batch.get("position_ids"),
        "use_cache": False,  # a cache would also stop transformers from building the packed-sample mask
    }
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    if head is None:
        scores = model(**inputs).logits[:, :-1][keep]
    else:
        decoder, output = head
        scores = output(decoder(**inputs).last_hidden_state[:, :-1][keep])
    return scores, targets[keep], keep


def trained_token_loss(
    decoder: torch.nn.Module, head: torch.nn.Module, batch: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`token_loss` of the batch, with the head applied to the hidden states of trained positions only."""
    scores, wanted, keep = kept_scores(None, (decoder, head), batch)
    return scored_sums(scores, wanted, keep, batch.get("label_weights"))


def token_logps(scores: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Log-probability of each wanted id under its score row, in fp32."""
    return -F.cross_entropy(scores.float(), wanted, reduction="none")
