"""Preference-tuning losses as pure functions of per-sequence log-probabilities.

Every log-probability here is the sum over a completion's trained tokens (prompt and padding excluded),
in fp32 or wider; counts are those tokens' numbers. Losses come back per pair (or per row for KTO), so
the caller chooses the reduction; rewards are detached and only for logging. Conventions follow TRL 1.16
(DPOTrainer, KTOTrainer, the experimental CPO and ORPO trainers) so that `beta` means what it means there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config.schema import PREFERENCE_LOSSES

# The losses stage.loss chooses from; the first two compare the policy with a reference.
PAIR_LOSSES = PREFERENCE_LOSSES
_NEEDS_REFERENCE = ("sigmoid", "ipo")
_LOG_HALF = -math.log(2.0)


def needs_reference(kind: str) -> bool:
    """Whether pair loss `kind` needs the reference model's log-probs; ValueError for an unknown kind."""
    if kind not in PAIR_LOSSES:
        raise ValueError(f"unknown preference loss {kind!r}; choose from {', '.join(PAIR_LOSSES)}")
    return kind in _NEEDS_REFERENCE


def sequence_sums(
    token_logps: torch.Tensor, segments: torch.Tensor, n_sequences: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums [S], counts [S]) of per-token log-probs [N] grouped by `segments` [N] (a token's sequence index,
    -1 for a token of no sequence); a sequence without tokens sums to 0 with count 0. No host sync."""
    # Tokens of no sequence go to an extra bin that is dropped: no boolean indexing (which would sync).
    bins = torch.where(segments >= 0, segments, n_sequences).long()
    sums = token_logps.new_zeros(n_sequences + 1).index_add(0, bins, token_logps)
    counts = torch.zeros(n_sequences + 1, dtype=torch.long, device=segments.device)
    counts = counts.index_add(0, bins, torch.ones_like(bins))
    return sums[:n_sequences], counts[:n_sequences]


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and far from it, with finite values and gradients."""
    # Mächler's split at -log 2: log(-expm1(x)) where exp(x) is near 1 (1 - exp(x) cancels), log1p(-exp(x))
    # elsewhere. torch.where evaluates both branches and a non-finite unselected one makes a NaN gradient:
    # the first is finite for every x < 0, the second only away from 0, so its argument is clamped there.
    # x is capped just below 0: a log-prob that rounded to 0 gives a large finite value instead of -inf.
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    return torch.where(
        x > _LOG_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x.clamp(max=_LOG_HALF)))
    )


def pair_loss(
    kind: str,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    n_chosen: torch.Tensor,
    n_rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
    *,
    beta: float,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses [P], chosen rewards [P], rejected rewards [P]) of P preference pairs under loss `kind`.

    policy_* and ref_* are summed log-probs [P] of each completion's trained tokens; n_* their token counts
    [P] (a count of 0 divides as 1). ref_* are required for "sigmoid" and "ipo", ignored otherwise.
      sigmoid (DPO): -logsigmoid(beta * ((pc - rc) - (pr - rr))); rewards beta * (p - r).
      ipo: ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 beta))^2, TRL's per-token form; rewards beta * (p - r).
      simpo: -logsigmoid(beta * (pc / nc - pr / nr) - simpo_gamma); simpo_gamma is the absolute reward
        margin (TRL's CPOConfig.simpo_gamma, the paper's gamma), not a ratio of beta; rewards beta * p / n.
      orpo: -pc / nc (the chosen completion's per-token NLL, the SFT term) plus beta (the paper's lambda)
        times -logsigmoid(log odds ratio) with odds(p) = exp(p / n) / (1 - exp(p / n)); rewards beta * p / n.
    """
    if needs_reference(kind) and (ref_chosen is None or ref_rejected is None):
        raise ValueError(
            f"preference loss {kind!r} needs the reference's log-probs: ref_chosen and ref_rejected"
        )
    if kind in _NEEDS_REFERENCE:
        chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
        chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        if kind == "sigmoid":
            return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)), chosen_rewards, rejected_rewards
        # IPO on sequence sums would scale the squared loss with completion length; TRL (with the IPO
        # authors) averages over the completion's tokens, and so do we, so beta means the same.
        chosen_mean, rejected_mean = chosen_ratio / _count(n_chosen), rejected_ratio / _count(n_rejected)
        return (chosen_mean - rejected_mean - 1 / (2 * beta)) ** 2, chosen_rewards, rejected_rewards
    # Reference-free losses work on the mean log-prob per trained token (length-normalised).
    chosen_mean, rejected_mean = policy_chosen / _count(n_chosen), policy_rejected / _count(n_rejected)
    chosen_rewards, rejected_rewards = beta * chosen_mean.detach(), beta * rejected_mean.detach()
    if kind == "simpo":
        losses = -F.logsigmoid(beta * (chosen_mean - rejected_mean) - simpo_gamma)
        return losses, chosen_rewards, rejected_rewards
    # ORPO: log(odds_c / odds_r) = (mc - mr) - (log(1 - e^mc) - log(1 - e^mr)).
    log_odds = (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))
    return -chosen_mean - beta * F.logsigmoid(log_odds), chosen_rewards, rejected_rewards


def kto_loss(
    policy: torch.Tensor,
    ref: torch.Tensor,
    policy_kl: torch.Tensor,
    ref_kl: torch.Tensor,
    desirable: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses [B], rewards [B], kl []) of TRL 1.16's KTO loss (loss_type "kto") over B unpaired rows.

    policy, ref: summed log-probs [B] of each row's completion; policy_kl, ref_kl: those of the mismatched
    (prompt i, another row's completion) KL rows [B]; desirable: bool [B]. The KL baseline is the mean
    policy-reference gap over the KL rows, detached and clamped at 0. TRL averages it over processes
    before the clamp: pass `reduce` (e.g. an all-reduce mean) to do the same, or it stays this batch's.
    Desirable rows: desirable_weight * (1 - sigmoid(beta * (logratio - kl))); undesirable rows:
    undesirable_weight * (1 - sigmoid(beta * (kl - logratio))). Rewards are beta * logratio, detached.
    """
    # A sum over a count known on the host: an empty batch gives 0, not the NaN of an empty mean.
    kl = (policy_kl - ref_kl).detach().sum() / max(policy_kl.numel(), 1)
    if reduce is not None:
        kl = reduce(kl)
    kl = kl.clamp(min=0)
    logratio = policy - ref
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio))),
    )
    return losses, beta * logratio.detach(), kl


def _count(n: torch.Tensor) -> torch.Tensor:
    """Token counts to divide by: at least 1 (a completion without trained tokens has a zero sum)."""
    # An integer tensor divides into the log-probs' floating dtype (true division), unrounded.
    return n.clamp(min=1)
