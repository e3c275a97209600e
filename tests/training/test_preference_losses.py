"""Preference losses against references: TRL 1.16's DPO and KTO trainers' own loss code (run on fixed
log-probs), the SimPO and ORPO papers' formulas written out naively, and hand-computed sequence sums."""

from __future__ import annotations

import math
import warnings
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from sft.training.preference_losses import (
    PAIR_LOSSES,
    kto_loss,
    log1mexp,
    needs_reference,
    pair_loss,
    sequence_sums,
)

F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------
# TRL's trainers, built for real (tiny random Llama, word-level tokenizer, one-row dataset), then fed fixed
# log-probs through stand-in models: their `_compute_loss` runs unchanged from the log-probs on.


def _tiny_parts():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(60)} | {"<unk>": 60, "<eos>": 61, "<pad>": 62}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    return tokenizer, LlamaForCausalLM(config), LlamaForCausalLM(config)


def _common(tmp_path) -> dict:
    return {"output_dir": str(tmp_path), "report_to": [], "use_cpu": True, "bf16": False}


def dpo_trainer(tmp_path, loss_type: str, beta: float):
    """A TRL DPOTrainer with `loss_type` and `beta` (TRL's defaults otherwise)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer, model, ref = _tiny_parts()
    data = Dataset.from_dict({"prompt": ["w1 w2"], "chosen": [" w3"], "rejected": [" w4"]})
    with warnings.catch_warnings():  # transformers' deprecations, not ours
        warnings.simplefilter("ignore")
        args = DPOConfig(**_common(tmp_path), loss_type=[loss_type], beta=beta)
        return DPOTrainer(
            model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer
        )


def kto_trainer(tmp_path, beta: float, desirable_weight: float, undesirable_weight: float):
    """A TRL KTOTrainer (loss_type "kto") with the given beta and class weights."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    tokenizer, model, ref = _tiny_parts()
    data = Dataset.from_dict(
        {"prompt": ["w1 w2", "w5"], "completion": [" w3", " w6"], "label": [True, False]}
    )
    with warnings.catch_warnings():  # transformers' deprecations, not ours
        warnings.simplefilter("ignore")
        args = KTOConfig(
            **_common(tmp_path),
            beta=beta,
            desirable_weight=desirable_weight,
            undesirable_weight=undesirable_weight,
        )
        trainer = KTOTrainer(
            model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer
        )
    assert trainer.loss_type == "kto" and trainer.calculate_KL
    return trainer


class FixedLogProbs:
    """Stands in for a causal LM with TRL's fused head: each row's completion log-prob is given.

    TRL sums `log_probs` over positions (the fused head leaves 0 where labels are -100), so the row's
    log-prob sits in the first position and zeros fill the rest. Inputs `kl_width` wide get the KL rows'.
    """

    def __init__(self, logps: torch.Tensor, kl_logps: torch.Tensor | None = None, kl_width: int = -1):
        self.logps, self.kl_logps, self.kl_width = logps, kl_logps, kl_width

    def __call__(self, input_ids, **_):
        rows, width = input_ids.shape
        logps = self.kl_logps if width == self.kl_width else self.logps
        per_token = torch.cat([logps[:, None], logps.new_zeros(rows, width - 2)], dim=1)
        zeros = per_token.new_zeros(per_token.shape)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _completion_mask(counts: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of one prompt token then `count` completion tokens, then padding."""
    pos = torch.arange(width)
    return ((pos >= 1) & (pos <= counts[:, None])).long()


def trl_dpo(trainer, pc, pr, rc, rr, nc, nr) -> torch.Tensor:
    """TRL's DPO loss (mean over pairs) on the given per-sequence log-probs; rows: [chosen; rejected]."""
    counts = torch.cat([nc, nr])
    width = int(counts.max()) + 2
    trainer.ref_model = FixedLogProbs(torch.cat([rc, rr]))
    inputs = {
        "input_ids": torch.zeros(len(counts), width, dtype=torch.long),
        "attention_mask": torch.ones(len(counts), width, dtype=torch.long),
        "completion_mask": _completion_mask(counts, width),
    }
    with warnings.catch_warnings():  # transformers' deprecations, not ours
        warnings.simplefilter("ignore")
        return trainer._compute_loss(FixedLogProbs(torch.cat([pc, pr])), inputs, return_outputs=False)


def trl_kto(trainer, policy, ref, policy_kl, ref_kl, desirable) -> torch.Tensor:
    """TRL's KTO loss (mean over rows) on the given per-sequence log-probs; KL rows are one token wider."""
    rows, width = len(policy), 4
    trainer.ref_model = FixedLogProbs(ref, ref_kl, kl_width=width + 1)
    ones = torch.ones(rows, width, dtype=torch.long)
    kl_ones = torch.ones(rows, width + 1, dtype=torch.long)
    inputs = {
        "input_ids": 0 * ones, "attention_mask": ones, "completion_mask": ones,
        "KL_input_ids": 0 * kl_ones, "KL_attention_mask": kl_ones, "KL_completion_mask": kl_ones,
        "label": desirable,
    }  # fmt: skip
    with warnings.catch_warnings():  # transformers' deprecations, not ours
        warnings.simplefilter("ignore")
        model = FixedLogProbs(policy, policy_kl, kl_width=width + 1)
        return trainer._compute_loss(model, inputs, return_outputs=False)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Fresh float64 leaves needing gradients, one per tensor."""
    return [t.detach().to(F64).clone().requires_grad_(True) for t in tensors]


def random_pairs(n_pairs: int, seed: int):
    """(policy chosen, policy rejected, ref chosen, ref rejected, n chosen, n rejected), float64 sums."""
    g = torch.Generator().manual_seed(seed)
    nc, nr = torch.randint(1, 7, (n_pairs,), generator=g), torch.randint(1, 7, (n_pairs,), generator=g)
    pc = -(torch.rand(n_pairs, generator=g, dtype=F64) * 2.5 + 0.05) * nc
    pr = -(torch.rand(n_pairs, generator=g, dtype=F64) * 2.5 + 0.05) * nr
    rc = pc + torch.randn(n_pairs, generator=g, dtype=F64)
    rr = pr + torch.randn(n_pairs, generator=g, dtype=F64)
    return pc, pr, rc, rr, nc, nr


# ---------------------------------------------------------------------------------------------------------
# DPO (sigmoid) and IPO against TRL's DPOTrainer


@pytest.mark.parametrize("kind, beta", [("sigmoid", 0.1), ("sigmoid", 0.7), ("ipo", 0.1), ("ipo", 0.5)])
def test_reference_losses_and_gradients_match_trl_dpo(tmp_path, kind, beta):
    pc, pr, rc, rr, nc, nr = random_pairs(6, seed=PAIR_LOSSES.index(kind) * 100 + int(beta * 10))
    trainer = dpo_trainer(tmp_path, kind, beta)

    tpc, tpr = leaves(pc, pr)
    expected = trl_dpo(trainer, tpc, tpr, rc, rr, nc, nr)
    expected.backward()
    opc, opr = leaves(pc, pr)
    losses, chosen_rewards, rejected_rewards = pair_loss(kind, opc, opr, nc, nr, rc, rr, beta=beta)
    losses.mean().backward()

    assert losses.shape == (6,)
    torch.testing.assert_close(losses.mean(), expected, atol=1e-5, rtol=1e-5)
    # Each pair's gradient is its own loss's derivative: together they pin every pair, not only the mean.
    torch.testing.assert_close(opc.grad, tpc.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(opr.grad, tpr.grad, atol=1e-5, rtol=1e-5)
    for i in range(6):  # and each pair's value, one pair per TRL batch
        one = trl_dpo(trainer, *(t[i : i + 1] for t in (pc, pr, rc, rr, nc, nr)))
        torch.testing.assert_close(losses[i].detach(), one, atol=1e-5, rtol=1e-5)
    # TRL logs the batch means of the same rewards.
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    torch.testing.assert_close(
        chosen_rewards.mean().item(), metrics["rewards/chosen"][0], atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(
        rejected_rewards.mean().item(), metrics["rewards/rejected"][0], atol=1e-6, rtol=1e-6
    )
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_identical_completions_give_log_2_and_zero_margin():
    logps, counts = torch.tensor([-3.0, -7.5]), torch.tensor([2, 5])
    ref = torch.tensor([-4.0, -1.0])
    losses, chosen, rejected = pair_loss("sigmoid", logps, logps, counts, counts, ref, ref, beta=0.1)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)))
    torch.testing.assert_close(chosen - rejected, torch.zeros(2))
    assert not (chosen > rejected).any()  # reward accuracy 0: a tie is not a win
    torch.testing.assert_close(chosen, 0.1 * (logps - ref))
    simpo, _, _ = pair_loss("simpo", logps, logps, counts, counts, beta=2.0, simpo_gamma=0.0)
    torch.testing.assert_close(simpo, torch.full((2,), math.log(2)))


def test_reference_losses_need_reference_log_probs():
    logps, counts = torch.tensor([-1.0]), torch.tensor([1])
    for kind in ("sigmoid", "ipo"):
        with pytest.raises(ValueError, match="reference"):
            pair_loss(kind, logps, logps, counts, counts, beta=0.1)
        with pytest.raises(ValueError, match="reference"):
            pair_loss(kind, logps, logps, counts, counts, logps, None, beta=0.1)
    with pytest.raises(ValueError, match="unknown preference loss"):
        pair_loss("hinge", logps, logps, counts, counts, logps, logps, beta=0.1)
    assert [needs_reference(k) for k in PAIR_LOSSES] == [True, True, False, False]


# ---------------------------------------------------------------------------------------------------------
# SimPO and ORPO against the papers' formulas, written naively in float64


def naive_simpo(pc, pr, nc, nr, beta, gamma):
    """Meng et al. 2024, eq. 6: -log sigma(beta/|yw| log pi(yw|x) - beta/|yl| log pi(yl|x) - gamma)."""
    return -torch.log(torch.sigmoid(beta / nc * pc - beta / nr * pr - gamma))


def naive_orpo(pc, pr, nc, nr, lam):
    """Hong et al. 2024, eqs. 4-7: L_SFT + lambda L_OR, P = exp(mean token log-prob), odds = P / (1 - P)."""
    p_chosen, p_rejected = torch.exp(pc / nc), torch.exp(pr / nr)
    odds_ratio = (p_chosen / (1 - p_chosen)) / (p_rejected / (1 - p_rejected))
    return -pc / nc + lam * -torch.log(torch.sigmoid(torch.log(odds_ratio)))


def _matches_naive(loss: str, naive, coefficient: float, tol: float, seed: int, **options) -> None:
    """`pair_loss(loss)`'s losses, gradients and rewards against a naive float64 formula of the paper."""
    pc, pr, _, _, nc, nr = random_pairs(7, seed=seed)
    apc, apr = leaves(pc, pr)
    expected = naive(apc, apr, nc.to(F64), nr.to(F64))
    expected.sum().backward()
    opc, opr = leaves(pc, pr)
    losses, chosen_rewards, rejected_rewards = pair_loss(loss, opc, opr, nc, nr, beta=coefficient, **options)
    losses.sum().backward()
    torch.testing.assert_close(losses, expected, atol=tol, rtol=tol)
    torch.testing.assert_close(opc.grad, apc.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(opr.grad, apr.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(chosen_rewards, coefficient * pc / nc)
    torch.testing.assert_close(rejected_rewards, coefficient * pr / nr)


@pytest.mark.parametrize("beta, gamma", [(2.0, 0.5), (2.5, 1.4), (10.0, 0.0)])
def test_simpo_matches_the_paper(beta, gamma):
    naive = partial(naive_simpo, beta=beta, gamma=gamma)
    _matches_naive("simpo", naive, beta, 1e-10, seed=int(beta * 10 + gamma * 100), simpo_gamma=gamma)


def test_simpo_gamma_is_trls_absolute_margin():
    # TRL's CPO trainer (loss_type "simpo"): logits = mean_c - mean_r - gamma / beta,
    # loss -logsigmoid(beta * logits); gamma is subtracted after the scaling by beta.
    from trl.experimental.cpo import CPOTrainer

    pc, pr, _, _, nc, nr = random_pairs(5, seed=3)
    beta, gamma = 2.5, 1.2
    cpo = SimpleNamespace(alpha=0.0, beta=beta, simpo_gamma=gamma, loss_type="simpo", label_smoothing=0.0)
    cpo.accelerator = SimpleNamespace(device="cpu")
    expected, _, _ = CPOTrainer.cpo_loss(cpo, pc / nc, pr / nr)
    losses, _, _ = pair_loss("simpo", pc, pr, nc, nr, beta=beta, simpo_gamma=gamma)
    torch.testing.assert_close(losses, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("lam", [0.1, 0.8])
def test_orpo_matches_the_paper(lam):
    _matches_naive("orpo", partial(naive_orpo, lam=lam), lam, 1e-9, seed=int(lam * 10) + 40)


def test_orpo_odds_ratio_term_matches_trl():
    # TRL's ORPOTrainer.odds_ratio_loss gives beta * logsigmoid(log odds) (in fp32); its loss is the NLL
    # minus the mean of that.
    from trl.experimental.orpo import ORPOTrainer

    pc, pr, _, _, nc, nr = random_pairs(6, seed=5)
    orpo = SimpleNamespace(beta=0.3, accelerator=SimpleNamespace(device="cpu"))
    ratio_term, _, _, _, _ = ORPOTrainer.odds_ratio_loss(orpo, pc / nc, pr / nr)
    losses, _, _ = pair_loss("orpo", pc, pr, nc, nr, beta=0.3)
    torch.testing.assert_close(losses - (-pc / nc), -ratio_term.to(F64), atol=1e-5, rtol=1e-5)


def test_log1mexp_is_exact_where_the_naive_form_is_and_finite_near_zero():
    x = -torch.logspace(-3, 1, 200, dtype=F64)  # -1e-3 .. -10: both sides of the -log 2 split
    torch.testing.assert_close(log1mexp(x), torch.log(1 - torch.exp(x)), atol=0, rtol=1e-10)
    far = torch.tensor([-40.0, -300.0], dtype=F64)  # where 1 - e^x rounds to 1, log(1 - e^x) ~ -e^x
    torch.testing.assert_close(log1mexp(far), -torch.exp(far), atol=0, rtol=1e-10)
    for dtype in (torch.float32, F64):
        tiny = torch.tensor([-1e-8, -1e-20], dtype=dtype, requires_grad=True)
        value = log1mexp(tiny)
        value.sum().backward()
        # log(1 - e^x) ~ log(-x) for tiny x; the naive form in fp32 gives -inf here.
        torch.testing.assert_close(value, torch.log(-tiny.detach()), atol=0, rtol=1e-6)
        torch.testing.assert_close(tiny.grad, 1 / tiny.detach(), atol=0, rtol=1e-6)
        zero = torch.zeros(1, dtype=dtype, requires_grad=True)  # a log-prob that rounded to 0
        log1mexp(zero).sum().backward()
        assert torch.isfinite(log1mexp(zero.detach())).all() and torch.isfinite(zero.grad).all()
    assert torch.isinf(torch.log(1 - torch.exp(torch.tensor(-1e-8))))


def test_orpo_stays_finite_for_a_near_certain_completion():
    pc = torch.tensor([-1e-8, -3e-8, 0.0], requires_grad=True)
    pr = torch.tensor([-2.0, -1e-8, -0.5], requires_grad=True)
    counts = torch.tensor([1, 3, 2])
    losses, _, _ = pair_loss("orpo", pc, pr, counts, counts, beta=0.1)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


def test_a_completion_without_trained_tokens_divides_by_one():
    logps, counts = torch.tensor([0.0, -2.0]), torch.tensor([0, 4])
    losses, chosen, _ = pair_loss(
        "simpo", logps, logps.flip(0), counts, counts.flip(0), beta=2.0, simpo_gamma=0.0
    )
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(chosen, torch.tensor([0.0, -1.0]))


# ---------------------------------------------------------------------------------------------------------
# KTO against TRL's KTOTrainer


@pytest.mark.parametrize("kl_shift", [0.8, -0.8])  # a positive KL baseline, and a negative one clamped to 0
def test_kto_matches_trl(tmp_path, kl_shift):
    g = torch.Generator().manual_seed(11)
    rows, beta, w_desirable, w_undesirable = 7, 0.3, 1.3, 0.7
    policy = -torch.rand(rows, generator=g, dtype=F64) * 20 - 1
    ref = policy + torch.randn(rows, generator=g, dtype=F64) * 2
    policy_kl = -torch.rand(rows, generator=g, dtype=F64) * 20 - 1
    ref_kl = policy_kl - kl_shift + torch.randn(rows, generator=g, dtype=F64) * 0.1
    desirable = torch.tensor([True, False, False, True, True, False, True])
    trainer = kto_trainer(tmp_path, beta, w_desirable, w_undesirable)

    (tp,) = leaves(policy)
    expected = trl_kto(trainer, tp, ref, policy_kl, ref_kl, desirable)
    expected.backward()
    op, okl = leaves(policy, policy_kl)
    losses, rewards, kl = kto_loss(
        op,
        ref,
        okl,
        ref_kl,
        desirable,
        beta=beta,
        desirable_weight=w_desirable,
        undesirable_weight=w_undesirable,
    )
    losses.mean().backward()

    assert losses.shape == (rows,)
    torch.testing.assert_close(losses.mean(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(op.grad, tp.grad, atol=1e-5, rtol=1e-5)
    assert okl.grad is None  # the KL baseline is a constant to the loss, as in TRL
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    assert kl.item() == pytest.approx(metrics["kl"][0], abs=1e-6)
    assert (kl.item() > 0) == (kl_shift > 0)
    assert rewards[desirable].mean().item() == pytest.approx(metrics["rewards/chosen"][0], abs=1e-6)
    assert rewards[~desirable].mean().item() == pytest.approx(metrics["rewards/rejected"][0], abs=1e-6)


def test_kto_reduces_the_kl_before_clamping_and_an_empty_batch_is_not_nan():
    policy, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    policy_kl, ref_kl = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -5.0])  # local KL 0.5
    desirable = torch.tensor([True, False])
    _, _, local = kto_loss(policy, ref, policy_kl, ref_kl, desirable, beta=0.1)
    assert local.item() == pytest.approx(0.5)
    seen = []
    _, _, kl = kto_loss(
        policy, ref, policy_kl, ref_kl, desirable, beta=0.1, reduce=lambda k: seen.append(k.item()) or k - 2.0
    )
    assert seen == [pytest.approx(0.5)] and kl.item() == 0.0  # the other devices' mean pulled it below 0
    empty = torch.zeros(0)
    losses, rewards, kl = kto_loss(empty, empty, empty, empty, empty.bool(), beta=0.1)
    assert losses.shape == rewards.shape == (0,) and kl.item() == 0.0
    # A micro-batch of one row: its own KL row is the whole estimate (micro_batch_size=1).
    one = torch.tensor([-1.0])
    _, _, kl = kto_loss(one, one, torch.tensor([-2.0]), torch.tensor([-2.75]), one.bool(), beta=0.1)
    assert kl.item() == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------------------
# Per-sequence sums from per-token log-probs


def test_sequence_sums_group_tokens_and_skip_those_of_no_sequence():
    token_logps = torch.tensor([-1.0, float("nan"), -4.0, -8.0, -16.0, -32.0], requires_grad=True)
    segments = torch.tensor([0, -1, 2, 0, -1, 2])  # sequences 1 and 3 have no tokens
    sums, counts = sequence_sums(token_logps, segments, 4)
    torch.testing.assert_close(sums.detach(), torch.tensor([-9.0, 0.0, -36.0, 0.0]))
    assert counts.tolist() == [2, 0, 2, 0] and counts.dtype == torch.long
    (sums * torch.tensor([1.0, 10.0, 100.0, 1000.0])).sum().backward()
    # A token of no sequence (its log-prob may be anything, even NaN) gets no gradient.
    torch.testing.assert_close(token_logps.grad, torch.tensor([1.0, 0.0, 100.0, 1.0, 0.0, 100.0]))


def test_sequence_sums_of_no_tokens_are_zeros():
    sums, counts = sequence_sums(torch.zeros(0, dtype=F64), torch.zeros(0, dtype=torch.long), 3)
    assert sums.tolist() == [0.0, 0.0, 0.0] and sums.dtype == F64 and counts.tolist() == [0, 0, 0]
