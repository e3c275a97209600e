"""What each stage optimises: a batch → one row of sums (the loss first, then what it is averaged over),
and summed rows → metrics.

Sums, not means, travel between micro-batches and devices: the module adds rows over an accumulation
window or a validation pass, reduces them over devices and divides once (by trained tokens for sft and
pt, by pairs or examples for preference stages), so accumulation and device count never change a result
(KTO's KL baseline excepted: it is a statistic of each micro-batch, see FeedbackObjective).
The scorer (the Lightning module) gives token losses, per-sequence log-probabilities and the reference's.
"""

from __future__ import annotations

import torch

from ..config import StageConfig
from .preference_losses import kto_loss, needs_reference, pair_loss


def _per(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp(min=1)


class TokenObjective:
    """Next-token cross-entropy on labelled tokens: the assistant turns (sft) or every token (pt).

    With per-turn loss weights the "tokens" entry is the sum of the trained tokens' weights, and loss,
    perplexity and accuracy are means in which each token counts by its weight.
    """

    keys = ("loss", "tokens", "correct")
    train_metrics = ("loss",)
    needs_reference = False

    def sums(self, scorer, batch: dict) -> torch.Tensor:
        """[summed loss, trained tokens, correct predictions]; the loss entry carries the gradient."""
        loss_sum, n_tokens, correct = scorer.token_loss(batch)
        return torch.stack([loss_sum, n_tokens.to(loss_sum.dtype), correct.to(loss_sum.dtype)])

    def metrics(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token-weighted loss, perplexity and next-token accuracy."""
        loss = _per(sums[0], sums[1])
        return {"loss": loss, "ppl": torch.exp(loss.clamp(max=50)), "token_accuracy": _per(sums[2], sums[1])}


class PairObjective:
    """A preference loss over (chosen, rejected) pairs: DPO (sigmoid), IPO, SimPO or ORPO.

    Rewards are the loss's implicit rewards (beta times the policy-to-reference log-ratio, or the
    length-normalised log-probability for the reference-free losses); accuracy counts pairs whose chosen
    reward is strictly higher, so a policy equal to its reference scores 0. `logps/*` need no reference:
    how often, and by how much, the policy itself gives the chosen answer the higher mean log-probability
    per token, which compares a model before preference tuning with the model after it.
    """

    keys = ("loss", "pairs", "chosen", "rejected", "correct", "logp_margin", "logp_correct")
    train_metrics = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy")

    def __init__(self, loss: str, beta: float, simpo_gamma: float):
        self.loss, self.beta, self.simpo_gamma = loss, beta, simpo_gamma
        self.needs_reference = needs_reference(loss)

    def sums(self, scorer, batch: dict) -> torch.Tensor:
        """[summed loss, pairs, summed chosen and rejected rewards, pairs ranked right by reward, summed
        per-token log-probability margin, pairs ranked right by it]."""
        logps, counts = scorer.sequence_logps(batch)
        p = logps.shape[0] // 2  # sequences 0..p-1 are the chosen sides, p..2p-1 the rejected ones
        ref_chosen = ref_rejected = None
        if self.needs_reference:
            ref = scorer.reference_logps(batch)
            ref_chosen, ref_rejected = ref[:p], ref[p:]
        losses, chosen, rejected = pair_loss(
            self.loss,
            logps[:p],
            logps[p:],
            counts[:p],
            counts[p:],
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            simpo_gamma=self.simpo_gamma,
        )
        row = [losses.sum(), torch.tensor(float(p), device=logps.device)]
        row += [chosen.sum(), rejected.sum(), (chosen > rejected).sum().to(logps.dtype)]
        per_token = (logps / counts.clamp(min=1)).detach()
        margin = per_token[:p] - per_token[p:]
        row += [margin.sum(), (margin > 0).sum().to(logps.dtype)]
        return torch.stack([v.to(logps.dtype) for v in row])

    def metrics(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean loss, mean rewards of each side, their margin and the preference accuracy."""
        chosen, rejected = _per(sums[2], sums[1]), _per(sums[3], sums[1])
        return {
            "loss": _per(sums[0], sums[1]),
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margin": chosen - rejected,
            "rewards/accuracy": _per(sums[4], sums[1]),
            "logps/margin": _per(sums[5], sums[1]),
            "logps/accuracy": _per(sums[6], sums[1]),
        }


class FeedbackObjective:
    """KTO on unpaired feedback: each completion is desirable or not, against a batch KL baseline.

    The KL baseline comes from each micro-batch's mismatched (prompt, other completion) rows, as in TRL;
    it is not averaged over devices, so under DDP each device uses its own micro-batch's estimate.
    """

    keys = ("loss", "examples", "chosen", "desirable", "rejected", "undesirable", "kl", "batches")
    train_metrics = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "kl")
    needs_reference = True

    def __init__(self, beta: float, desirable_weight: float, undesirable_weight: float):
        self.beta, self.weights = beta, (desirable_weight, undesirable_weight)

    def sums(self, scorer, batch: dict) -> torch.Tensor:
        """[summed loss, examples, desirable rewards, desirable count, undesirable rewards, count, KL, 1]."""
        logps, _ = scorer.sequence_logps(batch)
        ref = scorer.reference_logps(batch)
        b = logps.shape[0] // 2  # sequences 0..b-1 are the completions, b..2b-1 the KL rows
        desirable = batch["label"].to(torch.bool)
        losses, rewards, kl = kto_loss(
            logps[:b],
            ref[:b],
            logps[b:],
            ref[b:],
            desirable,
            beta=self.beta,
            desirable_weight=self.weights[0],
            undesirable_weight=self.weights[1],
        )
        zero = torch.zeros((), dtype=logps.dtype, device=logps.device)
        row = [
            losses.sum(),
            zero + b,
            torch.where(desirable, rewards, zero).sum(),
            desirable.sum().to(logps.dtype),
            torch.where(desirable, zero, rewards).sum(),
            (~desirable).sum().to(logps.dtype),
            kl.to(logps.dtype),
            zero + 1,
        ]
        return torch.stack(row)

    def metrics(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean loss, mean reward of desirable and of undesirable completions, their margin, mean KL."""
        chosen, rejected = _per(sums[2], sums[3]), _per(sums[4], sums[5])
        return {
            "loss": _per(sums[0], sums[1]),
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margin": chosen - rejected,
            "kl": _per(sums[6], sums[7]),
        }


def build_objective(stage: StageConfig):
    """The objective of a stage: tokens for sft and pt, pairs for dpo, feedback for kto."""
    if stage.name == "dpo":
        return PairObjective(stage.loss, stage.beta, stage.simpo_gamma)
    if stage.name == "kto":
        return FeedbackObjective(stage.beta, stage.desirable_weight, stage.undesirable_weight)
    return TokenObjective()
