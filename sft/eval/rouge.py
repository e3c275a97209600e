"""ROUGE-L F1 via the longest common subsequence of lowercased whitespace tokens.

`rouge_score` is not a project dependency and an LCS is a dozen lines, so it is computed here. Unlike
`rouge_score`'s default tokenizer, punctuation stays attached to its word ("mat." ≠ "mat"): the scores are
comparable between our own runs (base vs tuned), not with published numbers.
"""

from __future__ import annotations

from collections.abc import Sequence


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (O(len(a)·len(b)) time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of `prediction` against `reference`; 0.0 when either has no tokens (as `rouge_score`)."""
    pred, ref = prediction.lower().split(), reference.lower().split()
    common = lcs_length(pred, ref) if pred and ref else 0
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
