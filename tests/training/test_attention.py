"""sdpa_segments: each packed sequence's causal attention, by matmuls (short) or torch's kernel (long)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sft.training import attention

HEADS, KV_HEADS, DIM = 4, 2, 8
# Two packed rows of 830 tokens: sequences of up to EAGER_MAX_LEN tokens take the matmul path (those of
# 225, 300 and 500 tokens in several blocks of queries), the 600-token one the kernel.
ROWS = [[5, 600, 225], [17, 3, 300, 500, 10]]


def packed_inputs():
    """(query, key, value) as an attention layer hands them over, and positions restarting per sequence."""
    generator = torch.Generator().manual_seed(0)
    length = sum(ROWS[0])

    def draw(heads):
        return torch.randn(len(ROWS), heads, length, DIM, generator=generator).requires_grad_()

    positions = torch.tensor([[p for n in row for p in range(n)] for row in ROWS])
    return draw(HEADS), draw(KV_HEADS), draw(KV_HEADS), positions


def reference(query, key, value) -> torch.Tensor:
    """Each sequence alone through torch's SDPA, key heads repeated (batch x tokens x heads x dim)."""
    key, value = (x.repeat_interleave(HEADS // KV_HEADS, dim=1) for x in (key, value))
    rows = []
    for b, lengths in enumerate(ROWS):
        cuts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
        rows.append(
            torch.cat(
                [
                    F.scaled_dot_product_attention(
                        query[b : b + 1, :, s:e],
                        key[b : b + 1, :, s:e],
                        value[b : b + 1, :, s:e],
                        is_causal=True,
                    )
                    for s, e in zip(cuts, cuts[1:], strict=False)
                ],
                dim=2,
            )
        )
    return torch.cat(rows).transpose(1, 2)


class Layer(torch.nn.Module):
    """An attention layer as transformers passes it (only its grouping is read, and only by sdpa)."""

    num_key_value_groups = HEADS // KV_HEADS


@pytest.mark.parametrize(
    "eager_max_len", [attention.EAGER_MAX_LEN, 0, 10_000], ids=["both", "kernel", "matmul"]
)
def test_segment_attention_and_its_gradients_equal_each_sequence_alone(eager_max_len, monkeypatch):
    """Outputs and query/key/value gradients match SDPA on each sequence alone, by either path."""
    monkeypatch.setattr(attention, "EAGER_MAX_LEN", eager_max_len)
    grads = []
    outputs = []
    for use_segments in (True, False):
        query, key, value, positions = packed_inputs()
        if use_segments:
            out, _ = attention.segment_attention(Layer(), query, key, value, None, position_ids=positions)
        else:
            out = reference(query, key, value)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
        outputs.append(out.detach())
        grads.append([x.grad for x in (query, key, value)])
    assert outputs[0].shape == (len(ROWS), sum(ROWS[0]), HEADS, DIM) and outputs[0].is_contiguous()
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=1e-5)
    for got, want, name in zip(grads[0], grads[1], ("query", "key", "value"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=name)


def test_under_bf16_autocast_the_result_is_bf16_and_close_to_float32():
    """Rotary leaves query and key in float32 under autocast; the result is bf16 within bf16's rounding."""
    query, key, value, positions = packed_inputs()
    want = reference(query, key, value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = attention.segment_attention(
            Layer(), query, key, value.to(torch.bfloat16), None, position_ids=positions
        )
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


def test_rows_without_a_restart_use_transformers_sdpa_with_its_mask(monkeypatch):
    """Padded rows (positions 0..n-1) and sliding-window layers are handed to transformers' own path."""
    calls = []
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda *a, **k: calls.append(k) or ("sdpa", None)
    )
    query, key, value, _ = packed_inputs()
    plain = torch.arange(query.shape[2]).expand(len(ROWS), -1)
    assert attention.segment_attention(Layer(), query, key, value, None, position_ids=plain)[0] == "sdpa"
    _, _, _, positions = packed_inputs()
    window = attention.segment_attention(
        Layer(), query, key, value, None, position_ids=positions, sliding_window=8
    )
    assert window[0] == "sdpa" and calls[1]["sliding_window"] == 8


def padded_inputs(lengths=(20, 13, 7)):
    """(query, key, value) for right-padded rows of `lengths`, and transformers' mask for them (True where a
    query may see a key: causal, pads hidden)."""
    generator = torch.Generator().manual_seed(1)
    n = max(lengths)

    def draw(heads):
        return torch.randn(len(lengths), heads, n, DIM, generator=generator).requires_grad_()

    real = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None] & real[:, None, :]
    return draw(HEADS), draw(KV_HEADS), draw(KV_HEADS), mask[:, None]


@pytest.mark.parametrize("masked", [True, False], ids=["padding-mask", "causal-only"])
def test_padded_rows_in_training_equal_transformers_sdpa(masked):
    """Padded rows in training on a CPU (matmuls) give transformers' sdpa outputs and query/key/value
    gradients, with a padding mask or none."""
    results = []
    for path in (attention.segment_attention, attention.sdpa_attention_forward):
        query, key, value, mask = padded_inputs()
        out, _ = path(Layer(), query, key, value, mask if masked else None)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
        results.append([out.detach(), *(x.grad for x in (query, key, value))])
    assert results[0][0].shape == (3, 20, HEADS, DIM) and results[0][0].is_contiguous()
    for got, want, name in zip(*results, ("output", "query", "key", "value"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=name)


def test_padded_rows_take_matmuls_only_in_training_and_when_short(monkeypatch):
    """Evaluation, rows longer than PADDED_MAX_LEN and attention dropout go to transformers' sdpa; a query
    that may see no key (a left pad) gets finite values, not NaN."""
    calls = []
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or ("sdpa", None)
    )
    query, key, value, mask = padded_inputs()
    assert attention.segment_attention(Layer().eval(), query, key, value, mask)[0] == "sdpa"
    assert attention.segment_attention(Layer(), query, key, value, mask, dropout=0.1)[0] == "sdpa"
    monkeypatch.setattr(attention, "PADDED_MAX_LEN", 19)
    assert attention.segment_attention(Layer(), query, key, value, mask)[0] == "sdpa"
    monkeypatch.setattr(attention, "PADDED_MAX_LEN", 20)
    mask[0, 0, :5] = False  # row 0's first five queries see nothing
    out, _ = attention.segment_attention(Layer(), query, key, value, mask)
    assert len(calls) == 3 and torch.isfinite(out).all()


def test_a_model_trains_padded_rows_by_matmuls_with_sdpas_logits_and_gradients(make_cfg, cache_dir):
    """The tiny model on right-padded rows: in training mode under sdpa_segments, the same logits and
    gradients at every real position as under transformers' sdpa (where each took its own path)."""
    from sft.config import validate
    from sft.training.model import load_model

    model = load_model(validate(make_cfg("model=tiny")).model, str(cache_dir)).train()
    ids = torch.randint(0, 200, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(20)[None, :] < torch.tensor([[20], [13], [7]])).long()
    results = []
    for implementation in ("sdpa", attention.NAME):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        (logits * mask[..., None]).square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((logits.detach() * mask[..., None], grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    assert len(results[0][1]) == len(results[1][1]) > 0
    for got, want in zip(results[1][1], results[0][1], strict=True):
        assert (got - want).norm() <= 1e-5 * want.norm()  # float rounding: the sums run in another order


class NonCausalLayer(Layer):
    """An attention layer that declares itself bidirectional."""

    is_causal = False


@pytest.mark.parametrize(
    ("layer", "extra", "bidirectional"),
    [
        (NonCausalLayer(), {}, False),
        (Layer(), {"is_causal": False}, False),
        (Layer(), {"position_bias": torch.zeros(1)}, False),
        (Layer(), {"softcap": 50.0}, False),
        (Layer(), {}, True),
        (None, {}, False),
    ],
    ids=[
        "module-not-causal",
        "is-causal-false",
        "position-bias",
        "softcap",
        "bidirectional-mask",
        "no-module",
    ],
)
def test_attention_the_matmuls_do_not_apply_goes_to_sdpa(layer, extra, bidirectional, monkeypatch):
    """Non-causal attention (by the layer, the call or a mask letting a query see a later key), a position
    bias or a soft-cap, which the blocked matmuls would drop, go to sdpa, packed rows included; so do
    padded rows without a layer to say it trains."""
    calls = []
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda *a, **k: calls.append(k) or ("sdpa", None)
    )
    query, key, value, mask = padded_inputs()
    if bidirectional:
        mask[2, 0, 0, 5] = True
    assert attention.segment_attention(layer, query, key, value, mask, **extra)[0] == "sdpa"
    if extra or isinstance(layer, NonCausalLayer):
        query, key, value, positions = packed_inputs()
        out = attention.segment_attention(layer, query, key, value, None, position_ids=positions, **extra)
        assert out[0] == "sdpa"
