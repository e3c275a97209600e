"""Packing and collation: bins, packed rows, batch tensors, and proof that packed samples stay isolated."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from conftest import SHARED_DATA
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_flash_attention_utils import (
    _is_packed_sequence,
    prepare_fa_kwargs_from_position_ids,
)

from sft.data.collate import PackedCollator, PadCollator
from sft.data.packing import PackedDataset, pack, packing_efficiency
from sft.data.tokenize import IGNORE_INDEX
from sft.training.attention import NAME as SEGMENTS  # registers sft's per-sequence sdpa
from sft.training.loss import split_head, token_loss, trained_token_loss

VOCAB = 64
EOS = PAD = 1  # pad == eos, as with many tokenizers: padding must still never be a target
LENGTHS = [11, 5, 17, 3, 9]
BINS = [[0, 1, 2], [3, 4]]  # two rows (33 and 12 tokens) of different fill, both padded to 40
HAS_FLASH = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
IMPLS = [
    "sdpa",
    "eager",
    SEGMENTS,
    pytest.param(
        "flash_attention_2",
        marks=pytest.mark.skipif(not HAS_FLASH, reason="needs the flash_attn package and a CUDA device"),
    ),
]


def make_examples(lengths: list[int], seed: int = 0) -> list[dict]:
    """Random token rows ending in eos; even ones mask a prompt (a third), odd ones train on every token."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for k, n in enumerate(lengths):
        ids = torch.randint(2, VOCAB, (n,), generator=generator).tolist()
        ids[-1] = EOS
        # A fully trained row has a real first label, which packing must mask at the boundary.
        prompt = n // 3 if k % 2 == 0 else 0
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return examples


def tiny_llama(attn_implementation: str, seed: int = 0):
    """A seeded, randomly initialised two-layer Llama in eval mode."""
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=PAD,
        eos_token_id=EOS,
        initializer_range=0.1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.float().eval()


def forward(model, batch: dict) -> torch.Tensor:
    """Logits, calling the model exactly as SFTModule does."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).logits


def spans(
    bins: list[list[int]], lengths: list[int], flatten: bool = False
) -> dict[int, tuple[int, int, int]]:
    """Example index → (row, start, end) of its tokens in the collated packed batch."""
    out, offset = {}, 0
    for row, b in enumerate(bins):
        offset = offset if flatten else 0
        for i in b:
            out[i] = (0 if flatten else row, offset, offset + lengths[i])
            offset += lengths[i]
    return out


def packed_batch(examples, bins, flatten: bool = False) -> dict:
    """The collated packed batch of `bins`."""
    data = PackedDataset(examples, bins)
    return PackedCollator(PAD, flatten=flatten)([data[i] for i in range(len(data))])


def setting(impl: str) -> tuple[str, torch.dtype, float]:
    """(device, dtype, tolerance) for an attention implementation: flash needs CUDA and half precision."""
    if impl == "flash_attention_2":
        return "cuda", torch.bfloat16, 2e-2
    return "cpu", torch.float32, 1e-5


# --- the model sees packed samples exactly as it sees them alone ---------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_logits_and_loss_equal_unpacked(impl):
    """Each sample's logits and summed loss are the same alone, padded in a batch, and packed with others."""
    device, dtype, tol = setting(impl)
    model = tiny_llama(impl).to(device, dtype)
    examples = make_examples(LENGTHS)
    # flash_attention_2 only splits a packed row into samples when the batch is one row.
    flatten = impl == "flash_attention_2"
    packed = {k: v.to(device) for k, v in packed_batch(examples, BINS, flatten).items()}
    padded = {k: v.to(device) for k, v in PadCollator(PAD)(examples).items()}
    with torch.no_grad():
        packed_logits, padded_logits = forward(model, packed), forward(model, padded)
        total_loss, total_count, _ = token_loss(packed_logits, packed["labels"])
        alone_loss_sum, alone_count = 0.0, 0
        for i, (row, start, end) in spans(BINS, LENGTHS, flatten).items():
            alone_batch = {k: v.to(device) for k, v in PadCollator(PAD)([examples[i]]).items()}
            alone = forward(model, alone_batch)[:, : LENGTHS[i]]
            in_pack = packed_logits[row : row + 1, start:end]
            torch.testing.assert_close(in_pack, alone, atol=tol, rtol=tol)
            torch.testing.assert_close(padded_logits[i : i + 1, : LENGTHS[i]], alone, atol=tol, rtol=tol)
            loss, count, _ = token_loss(alone, alone_batch["labels"][:, : LENGTHS[i]])
            packed_loss, packed_count, _ = token_loss(in_pack, packed["labels"][row : row + 1, start:end])
            torch.testing.assert_close(packed_loss, loss, atol=tol * 10, rtol=tol)
            assert packed_count == count
            alone_loss_sum, alone_count = alone_loss_sum + loss.float(), alone_count + int(count)
    # No loss term straddles a boundary or lands on padding: the batch totals add up exactly.
    assert int(total_count) == alone_count
    torch.testing.assert_close(total_loss.float(), alone_loss_sum, atol=tol * 50, rtol=tol)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_leakage_is_detected_without_the_packed_mask(impl):
    """Negative controls: plain positions, an all-ones mask or a cache each let packed samples mix."""
    model = tiny_llama(impl)
    examples = make_examples(LENGTHS)
    packed = packed_batch(examples, BINS)
    row, start, end = spans(BINS, LENGTHS)[1]  # the second sample of the first row
    with torch.no_grad():
        alone = forward(model, PadCollator(PAD)([examples[1]]))[0, : LENGTHS[1]]
        isolated = forward(model, packed)[row, start:end]
        plain = forward(model, {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]})
        with_mask = forward(model, {**packed, "attention_mask": torch.ones_like(packed["input_ids"])})
        # SFTModule must pass use_cache=False: config.use_cache is True, and with a cache (even in train
        # mode) transformers skips the packed-sequence mask and attends across the whole row.
        model.train()
        cached = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
    torch.testing.assert_close(isolated, alone, atol=1e-5, rtol=1e-5)
    for leaky in (plain, with_mask, cached):
        assert (leaky[row, start:end] - alone).abs().max() > 1e-3


def lora_model(impl: str):
    """The tiny Llama wrapped with non-trivially initialised LoRA on all linear layers, in train mode."""
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(impl)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False
    )
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return get_peft_model(model, config).train()


@pytest.mark.parametrize("impl", ["sdpa", "eager", SEGMENTS])
def test_lora_loss_and_gradients_equal_packed_and_unpacked(impl):
    """Under LoRA the summed loss and every adapter gradient match between packed and padded batches."""
    model = lora_model(impl)
    examples = make_examples(LENGTHS)
    grads, losses = [], []
    for batch in (packed_batch(examples, BINS), PadCollator(PAD)(examples)):
        model.zero_grad()
        loss, count, _ = token_loss(forward(model, batch), batch["labels"])
        loss.backward()
        losses.append((loss.detach(), int(count)))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert losses[0][1] == losses[1][1]
    torch.testing.assert_close(losses[0][0], losses[1][0], atol=1e-4, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and all("lora_" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("impl", ["sdpa", "eager", SEGMENTS])
def test_one_samples_loss_has_no_gradient_into_other_packed_samples(impl):
    """d(loss of sample k)/d(input embeddings) is exactly zero on every other sample and on padding."""
    model = lora_model(impl)
    examples = make_examples(LENGTHS)
    batch = packed_batch(examples, BINS)
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=batch["position_ids"], use_cache=False).logits
    for i, (row, start, end) in spans(BINS, LENGTHS).items():
        loss, _, _ = token_loss(logits[row : row + 1, start:end], batch["labels"][row : row + 1, start:end])
        (grad,) = torch.autograd.grad(loss, embeds, retain_graph=True)
        own = torch.zeros(grad.shape[:2], dtype=torch.bool)
        own[row, start:end] = True
        assert torch.count_nonzero(grad[~own]) == 0, f"sample {i} leaks gradient outside its span"
        # Its own earlier tokens do get gradient, so the zero above is not vacuous.
        assert grad[row, start : end - 1].abs().sum(-1).gt(0).all()


# --- transformers' view of a packed batch --------------------------------------------------------------


def test_transformers_finds_every_sample_and_padding_block():
    """find_packed_sequence_indices splits each packed row into its samples plus one padding block."""
    batch = packed_batch(make_examples(LENGTHS), BINS)
    blocks = find_packed_sequence_indices(batch["position_ids"])
    expected = [[0] * 11 + [1] * 5 + [2] * 17 + [3] * 7, [0] * 3 + [1] * 9 + [2] * 28]
    assert blocks.tolist() == expected


def test_flash_attention_needs_a_flattened_batch():
    """flash_attention_2 ignores packed positions when batch > 1; one flattened row gives exact cu_seqlens."""
    examples = make_examples(LENGTHS)
    rows = packed_batch(examples, BINS)
    assert not _is_packed_sequence(rows["position_ids"], batch_size=rows["position_ids"].shape[0])
    flat = packed_batch(examples, BINS, flatten=True)
    assert flat["input_ids"].shape == (1, 48)  # 33 + 12 tokens, padded to a multiple of 8
    assert _is_packed_sequence(flat["position_ids"], batch_size=1)
    (cu_seqlens, _), (max_len, _) = prepare_fa_kwargs_from_position_ids(flat["position_ids"])
    assert cu_seqlens.tolist() == [0, 11, 16, 33, 36, 45, 48]
    assert int(max_len) == 17
    assert int(flat["num_tokens"]) == sum(LENGTHS)


# --- pack() --------------------------------------------------------------------------------------------


def realistic_lengths(cutoff: int) -> list[int]:
    """Byte lengths of the alpaca demo rows plus template overhead, cut to `cutoff` as tokenization would."""
    rows = json.loads((SHARED_DATA / "alpaca_en_demo.json").read_text())
    return [min(len((r["instruction"] + r["input"] + r["output"]).encode()) + 40, cutoff) for r in rows]


@pytest.mark.parametrize("capacity", [512, 2048])
def test_pack_respects_capacity_covers_every_index_and_fills_well(capacity):
    """Every index lands in exactly one bin, no bin overflows, and rows are nearly full."""
    lengths = realistic_lengths(capacity)
    bins = pack(lengths, capacity, seed=0)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    lower_bound = math.ceil(sum(lengths) / capacity)
    assert len(bins) <= lower_bound * 1.02 + 1
    assert packing_efficiency(lengths, bins, capacity) > 0.97


def test_pack_is_deterministic_per_seed():
    """Same seed, same bins; another seed reorders ties and bins but keeps the same fill."""
    lengths = realistic_lengths(1024)
    first, again, other = pack(lengths, 1024, 3), pack(lengths, 1024, 3), pack(lengths, 1024, 4)
    assert first == again
    assert first != other
    assert len(other) == len(first)


def test_pack_rejects_examples_that_do_not_fit():
    """An example longer than the capacity (or empty) is an upstream bug, reported clearly."""
    with pytest.raises(ValueError, match="example 1 has 600 tokens"):
        pack([10, 600, 20], 512, seed=0)
    with pytest.raises(ValueError, match="outside 1..512"):
        pack([10, 0], 512, seed=0)
    assert pack([], 512, seed=0) == []


# --- PackedDataset and collators -----------------------------------------------------------------------


def test_packed_dataset_rows_masks_boundaries_and_restarts_positions():
    """A packed row concatenates its samples, masks each first label and restarts positions per sample."""
    examples = make_examples([4, 3])
    examples[1]["labels"] = list(examples[1]["input_ids"])  # fully trained: only the boundary gets masked
    data = PackedDataset(examples, [[1, 0]])
    row = data[0]
    assert row["input_ids"] == examples[1]["input_ids"] + examples[0]["input_ids"]
    assert row["position_ids"] == [0, 1, 2, 0, 1, 2, 3]
    assert row["labels"][:3] == [IGNORE_INDEX, *examples[1]["input_ids"][1:]]
    assert row["labels"][3] == IGNORE_INDEX
    assert row["labels"][4:] == examples[0]["labels"][1:]
    assert data.lengths == [7] and len(data) == 1


def test_packed_dataset_reads_a_datasets_dataset_lazily():
    """A datasets.Dataset works as the example store; given lengths skip the pass over the rows."""
    import datasets

    examples = make_examples(LENGTHS)
    store = datasets.Dataset.from_list(examples)
    data = PackedDataset(store, BINS)
    assert data.lengths == [33, 12]
    assert PackedDataset(store, BINS, lengths=LENGTHS).lengths == [33, 12]
    assert data[1] == PackedDataset(examples, BINS)[1]
    torch_store = store.with_format("torch")
    assert PackedDataset(torch_store, BINS)[0] == data[0]


def test_pad_collator_masks_padding_even_when_pad_is_eos():
    """Real eos targets keep their label; padding with the same id never becomes a target."""
    examples = make_examples([5, 2])
    batch = PadCollator(PAD)(examples)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "num_tokens"}
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"][0, 4] == EOS and batch["labels"][1, 1] == EOS
    assert (batch["input_ids"][1, 2:] == PAD).all() and (batch["labels"][1, 2:] == IGNORE_INDEX).all()
    assert batch["attention_mask"].tolist()[1] == [1, 1, 0, 0, 0, 0, 0, 0]
    assert int(batch["num_tokens"]) == 7
    tensors = [{k: torch.tensor(v) for k, v in e.items()} for e in examples]
    assert all(torch.equal(batch[k], PadCollator(PAD)(tensors)[k]) for k in batch)


def test_packed_collator_pads_with_its_own_position_run_and_no_mask():
    """Padding gets labels -100 and positions 0..k-1; the batch has no attention_mask."""
    examples = make_examples(LENGTHS)
    batch = packed_batch(examples, BINS)
    assert set(batch) == {"input_ids", "labels", "position_ids", "num_tokens"}
    assert batch["input_ids"].shape == (2, 40)
    assert batch["position_ids"][1].tolist() == [0, 1, 2, *range(9), *range(28)]
    assert (batch["input_ids"][1, 12:] == PAD).all() and (batch["labels"][1, 12:] == IGNORE_INDEX).all()
    assert batch["labels"][1, 11] == EOS  # the real eos at a sample's end stays a target
    assert int(batch["num_tokens"]) == sum(LENGTHS)
    # Each sample's own labels survive except the first, which the loss never targets anyway.
    trained = sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == trained


@pytest.mark.parametrize("packed", [False, True])
def test_head_on_trained_positions_gives_the_same_loss_and_gradients(packed):
    """trained_token_loss (head on kept positions only) equals token_loss on full logits, under LoRA."""
    model = lora_model("sdpa")
    examples = make_examples(LENGTHS)
    batch = packed_batch(examples, BINS) if packed else PadCollator(PAD)(examples)
    head = split_head(model)
    assert head is not None and head[1] is model.get_base_model().lm_head
    results = []
    for loss_fn in (
        lambda: token_loss(forward(model, batch), batch["labels"]),
        lambda: trained_token_loss(*head, batch),
    ):
        model.zero_grad()
        loss, count, correct = loss_fn()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), int(count), int(correct), grads))
    (full, n_full, c_full, g_full), (fast, n_fast, c_fast, g_fast) = results
    assert (n_full, c_full) == (n_fast, c_fast)
    torch.testing.assert_close(full, fast, atol=1e-5, rtol=1e-6)
    for name in g_full:
        torch.testing.assert_close(g_full[name], g_fast[name], atol=1e-6, rtol=1e-5, msg=name)


def test_heads_of_unknown_families_are_not_split():
    """A family whose logits are more than head(decoder) (e.g. soft-capped) keeps the full-logits path."""
    model = lora_model("sdpa")
    model.get_base_model().config.model_type = "gemma2"
    assert split_head(model) is None


# --- end to end: the data module's packed batches through the Lightning module --------------------------


def test_packed_batches_from_the_data_module_train_like_the_unpacked_rows(make_cfg):
    """The production path (SFTDataModule with data.packing=true, then SFTModule.training_step) gives
    restarting position ids and no attention mask, and the first micro-batch's loss, trained tokens and
    every LoRA gradient equal those of the same samples padded one per row (fp32, tiny model).

    A packed row treated as one long causal sequence (an attention mask of ones, or positions running on
    across samples) lets samples attend to each other: the loss and gradients then differ.
    """
    from conftest import TINY

    from sft.config import validate
    from sft.data.datamodule import build_datamodule
    from sft.data.loading import system_prompt
    from sft.data.templates import get_template
    from sft.training.model import apply_peft, load_model, load_tokenizer
    from sft.training.module import SFTModule

    overrides = ("data.packing=true", "data.datasets.builtin.num_rows=48", "lora.dropout=0")
    cfg = validate(make_cfg(*TINY, *overrides))
    assert cfg.model.dtype == "float32"
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    template = get_template(cfg.data.template, tokenizer, system_prompt(cfg.data))
    data = build_datamodule(cfg, tokenizer, template)
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    packed = next(iter(loader))
    rows = list(loader.sampler)[: cfg.trainer.micro_batch_size]  # the packed rows of that first batch
    samples = [[data.prepared.train[i] for i in data.train_set.bins[row]] for row in rows]
    assert sum(len(s) for s in samples) > len(rows)  # some row really holds several samples

    assert "attention_mask" not in packed
    width = packed["input_ids"].shape[1]
    for r, row_samples in enumerate(samples):
        expected = [p for s in row_samples for p in range(len(s["input_ids"]))]
        expected += range(width - len(expected))  # the padding run is a block of its own
        assert packed["position_ids"][r].tolist() == expected
        ids = [t for s in row_samples for t in s["input_ids"]]
        assert packed["input_ids"][r, : len(ids)].tolist() == ids

    unpacked = PadCollator(data.pad_id)([s for row_samples in samples for s in row_samples])
    assert int(unpacked["num_tokens"]) == int(packed["num_tokens"])

    model = apply_peft(load_model(cfg.model, cfg.paths.cache_dir), cfg.lora)
    with torch.no_grad():  # LoRA B starts at zero, which would leave every A gradient zero either way
        generator = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    module = SFTModule(model, cfg.optimizer, cfg.scheduler, cfg.trainer)
    results = []
    for batch in (packed, unpacked):
        model.zero_grad()
        module._window = torch.zeros(3)
        module.training_step(batch, 0).backward()
        loss_sum, n_tokens, _ = module._window
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss_sum / n_tokens), int(n_tokens), grads))
    (packed_loss, packed_tokens, packed_grads), (loss, tokens, grads) = results
    assert packed_tokens == tokens > 0
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    assert packed_grads.keys() == grads.keys() and all("lora_" in n for n in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)
