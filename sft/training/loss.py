"""Token-level scores of the labelled positions: summed next-token loss, and per-token log-probabilities.

`kept_scores` gives the output head's scores at the positions whose label is kept, either from full
logits or with the head applied only to those positions' hidden states, which never builds the
(tokens x vocabulary) logits of prompt and padding positions. `token_loss` (full logits) and
`trained_token_loss` (head on kept positions) are the two routes to the same summed loss. The
cross-entropy itself (`token_nll`) upcasts the score rows to fp32 a cache-sized chunk at a time, forward and
backward, instead of building the whole (tokens x vocabulary) fp32 copy: 1.06x a packed SmolLM2 step on a
CPU (BENCHMARKS.md).

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

from ..data.tokenize import IGNORE_INDEX

# Families whose logits are exactly `lm_head(decoder(...).last_hidden_state)`: no soft-capping, scaling
# or extra terms between the decoder and the loss (Gemma soft-caps, Granite scales, MoE adds aux losses).
PLAIN_HEAD = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3")


# Bytes of fp32 score rows upcast at a time: on a CPU about a core's L2, so a chunk's upcast, exponentials
# and gradient stay in cache; elsewhere a bound on the fp32 copies (two or three chunks live at once) with
# few kernel launches (measured on a CPU only).
CHUNK_BYTES = {"cpu": 1 << 21}
OTHER_CHUNK_BYTES = 1 << 28


class _ChunkedNll(torch.autograd.Function):
    """Cross-entropy of each score row against its wanted id, and whether its argmax is that id, computed in
    fp32 a chunk of rows at a time: the (rows x vocabulary) fp32 copy, its log-softmax and their gradients
    are never built whole. Backward writes softmax - one-hot, times the row's gradient, in the scores' dtype.
    """

    @staticmethod
    def forward(
        ctx, scores: torch.Tensor, wanted: torch.Tensor, count_correct: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(nll per row, argmax == wanted per row: empty unless `count_correct`); keeps the scores and each
        row's log-sum-exp."""
        budget = CHUNK_BYTES.get(scores.device.type, OTHER_CHUNK_BYTES)
        rows = max(1, budget // (4 * scores.shape[-1]))
        nll = torch.empty(len(scores), dtype=torch.float32, device=scores.device)
        lse = torch.empty_like(nll)
        correct = torch.empty(len(scores) if count_correct else 0, dtype=torch.bool, device=scores.device)
        for start in range(0, len(scores), rows):
            part, ids = slice(start, start + rows), wanted[start : start + rows]
            chunk = scores[part].float()
            torch.logsumexp(chunk, -1, out=lse[part])
            torch.sub(lse[part], chunk.gather(1, ids[:, None]).squeeze(1), out=nll[part])
            if count_correct:
                torch.eq(chunk.argmax(-1), ids, out=correct[part])
        ctx.save_for_backward(scores, wanted, lse)
        ctx.rows = rows
        ctx.mark_non_differentiable(correct)
        return nll, correct

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_nll: torch.Tensor, _correct) -> tuple[torch.Tensor, None, None]:
        """(softmax - one-hot) x the row's gradient, chunk by chunk, in the scores' dtype."""
        scores, wanted, lse = ctx.saved_tensors
        grad = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
        for start in range(0, len(scores), ctx.rows):
            part, ids = slice(start, start + ctx.rows), wanted[start : start + ctx.rows]
            probs = scores[part].to(torch.float32, copy=True).sub_(lse[part, None]).exp_()
            probs[torch.arange(len(ids), device=ids.device), ids] -= 1
            torch.mul(probs, grad_nll[part, None], out=grad[part])
        return grad, None, None


def token_nll(
    scores: torch.Tensor, wanted: torch.Tensor, count_correct: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of each score row against its wanted id, whether its argmax is that id: empty unless
    `count_correct`), in fp32."""
    return _ChunkedNll.apply(scores, wanted, count_correct)


def summed_cross_entropy(scores: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, correct predictions) of score rows against wanted ids, computed in fp32."""
    nll, correct = token_nll(scores, wanted)
    return nll.sum(), correct.sum()


def weighted_cross_entropy(
    scores: torch.Tensor, wanted: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of weight x cross-entropy, sum of weights, weighted correct predictions), computed in fp32."""
    weights = weights.float()
    nll, correct = token_nll(scores, wanted)
    return (weights * nll).sum(), weights.sum(), (weights * correct.to(weights.dtype)).sum()


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
    return -token_nll(scores, wanted, count_correct=False)[0]
