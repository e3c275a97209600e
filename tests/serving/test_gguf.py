"""`python -m sft.export format=gguf`: the GGUF file answers as the merged model, its tokenizer tokenizes as
the run's, and its Modelfile renders turns as the run's chat template.

The runs train from a tiny tied llama whose tokenizer is a small byte-level BPE trained here: model=tiny's
byte tokenizer has no merges, which llama.cpp cannot load (refused, tested below). Its widths (96, 256) are
whole Q8_0 blocks of 32 and its head width (24) is even, as the rotary permutation needs.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train, run_module
from gguf import GGMLQuantizationType, GGUFReader
from hydra.core.global_hydra import GlobalHydra
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from sft.data.builtin import builtin_conversations
from sft.data.templates import CHATML, get_template
from sft.serving.export import ExportError, export, load_run, save_final
from sft.serving.gguf_export import load_gguf, modelfile, pre_tokenizer_name, write_gguf
from sft.train import train
from sft.training.model import byte_tokenizer

SYSTEM = "You are a terse assistant."
# As SmolLM2's first ids; <repo_name> is special without being bos, eos, unk or pad.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"]
# A high learning rate moves the adapter far from zero, so an export that lost it would show.
TRAINED = [*TINY, "trainer.max_steps=4", "trainer.eval_steps=4", "optimizer.lr=1e-2", "lora.dropout=0"]
CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}],
    [
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "It is 42."},
        {"role": "user", "content": "And 7 × 6? Answer   briefly, ünïcödé welcome."},
    ],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Bleu."},
        {"role": "user", "content": "Another one, please.\n\nThanks!"},
    ],
]
GREEDY = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False}
# Largest logit difference from the float32 merged model (logits up to ~4.2), measured on this module's run:
# f16 0.0054, q8_0 0.12. The f16 file gives exactly the logits of the merged model with its 2-D weights
# rounded to f16 in torch: what differs is that rounding, nothing else (so also on SmolLM2-135M, where the
# rounding alone flips one near-tie in 8 greedy answers of 48 tokens).
F16_ATOL, Q8_0_ATOL = 1e-2, 0.25
# q8_0 over 3 prompts x 32 greedy tokens (measured; the test generates 16): fed the merged model's answers,
# q8_0 picks the same next token at 94 of 96 positions; free-running, one answer parts at its 2nd token (this
# random model's top two logits are often nearly tied) and 63 of 96 tokens agree. Where the picks differ, the
# merged model rates q8_0's pick within Q8_0_ATOL of its own: a near-tie flipped by rounding.
Q8_0_TOP1 = 0.9


def bpe_tokenizer(pre_tokenizer=None) -> PreTrainedTokenizerFast:
    """A small byte-level BPE with special tokens at ids 0-3 (as SmolLM2), trained on the builtin rows."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    texts = [m["content"] for row in builtin_conversations(200) for m in row["messages"]]
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_model(config_class, tokenizer, **extra):
    """A random tiny causal LM of `config_class` over `tokenizer`, seeded."""
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.1,  # sharp distributions, so a wrong weight changes the greedy answer
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """One tiny LoRA run from a tied llama with a BPE tokenizer and a default system prompt."""
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = bpe_tokenizer()
    tiny_model(LlamaConfig, tokenizer, tie_word_embeddings=True).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    overrides = [f"model.name_or_path={root / 'base'}", "model.random_init=null", f"data.system='{SYSTEM}'"]
    overrides += ["evaluation.parity.prompts=3", "evaluation.parity.max_new_tokens=12"]  # checked by export
    train(compose_train(root / "trained", root, cache_dir, *TRAINED, *overrides))
    GlobalHydra.instance().clear()
    return root / "trained"


@pytest.fixture(scope="module")
def merged(trained, cache_dir):
    """(model, tokenizer) of the run as sft.export merges it, in float32: the reference."""
    return load_run(trained, str(cache_dir), "float32")


@pytest.fixture(scope="module")
def f16(trained, cache_dir, tmp_path_factory) -> Path:
    """The run exported by the command line with format=gguf (f16 by default)."""
    out = tmp_path_factory.mktemp("export") / "gguf"
    done = run_module(
        "sft.export",
        f"run={trained}",
        f"out={out}",
        "format=gguf",
        env={**os.environ, "SFT_CACHE": str(cache_dir)},
    )
    assert done.returncode == 0, done.stderr
    assert "model.f16.gguf" in done.stdout and "Modelfile" in done.stdout and "(GGUF f16)" in done.stdout
    # The file, loaded back as a user would, answers the run's recorded prompts as training ended.
    assert "3/3 prompts identical" in done.stdout
    return out


def chat(tokenizer, messages) -> dict:
    """Messages rendered by the tokenizer's chat template with a generation prompt, as tensors."""
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def fields(path: Path) -> dict:
    """A GGUF file's metadata as plain values."""
    return {key: field.contents() for key, field in GGUFReader(path).fields.items()}


def test_the_f16_file_answers_as_the_merged_model(f16, merged):
    assert sorted(p.name for p in f16.iterdir()) == ["Modelfile", "model.f16.gguf"]
    path = f16 / "model.f16.gguf"
    meta = fields(path)
    reference, tokenizer = merged
    config = reference.config
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 1  # MOSTLY_F16
    assert meta["llama.context_length"] == 1024 and meta["llama.embedding_length"] == 96
    assert meta["llama.block_count"] == 2 and meta["llama.feed_forward_length"] == 256
    assert meta["llama.attention.head_count"] == 4 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 24 and meta["llama.vocab_size"] == len(tokenizer)
    assert meta["llama.rope.freq_base"] == pytest.approx(config.rope_parameters["rope_theta"])
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    reader = GGUFReader(path)
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # tied: stored once
    assert {
        "blk.1.attn_q.weight",
        "blk.1.attn_k.weight",
        "blk.1.ffn_down.weight",
        "output_norm.weight",
    } <= names
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32

    model, _ = load_gguf(path)
    assert model.config.tie_word_embeddings
    rounded = copy.deepcopy(reference)
    for weight in rounded.parameters():
        if weight.ndim == 2:  # what the f16 file stores; norms stay float32
            weight.data = weight.data.half().float()
    with torch.no_grad():
        for messages in CONVERSATIONS:
            ids = chat(tokenizer, messages)
            logits = model(**ids).logits
            assert (logits - reference(**ids).logits).abs().max() < F16_ATOL
            assert torch.equal(logits, rounded(**ids).logits)
            assert torch.equal(model.generate(**ids, **GREEDY), reference.generate(**ids, **GREEDY))


def test_the_q8_0_file_answers_close_to_the_merged_model(trained, cache_dir, merged, f16, tmp_path):
    out, _ = export(trained, tmp_path / "q8", str(cache_dir), format="gguf", gguf_type="q8_0")
    path = out / "model.q8_0.gguf"
    assert fields(path)["general.file_type"] == 7  # MOSTLY_Q8_0
    types = {t.name: t.tensor_type for t in GGUFReader(path).tensors}
    assert types["blk.0.ffn_up.weight"] == types["token_embd.weight"] == GGMLQuantizationType.Q8_0
    assert types["output_norm.weight"] == GGMLQuantizationType.F32
    assert path.stat().st_size < 0.6 * (f16 / "model.f16.gguf").stat().st_size

    reference, tokenizer = merged
    model, _ = load_gguf(path)
    same = total = 0
    with torch.no_grad():
        for messages in CONVERSATIONS:
            ids = chat(tokenizer, messages)
            start = ids["input_ids"].shape[1]
            assert (model(**ids).logits - reference(**ids).logits).abs().max() < Q8_0_ATOL
            answer = reference.generate(**ids, **GREEDY)
            # Teacher-forced on the merged model's answer: does q8_0 pick the same next token?
            expected = reference(answer).logits[0, start - 1 : -1]
            picks = model(answer).logits[0, start - 1 : -1].argmax(-1)
            same += int((picks == expected.argmax(-1)).sum())
            total += picks.numel()
            margin = expected.max(-1).values - expected.gather(-1, picks[:, None])[:, 0]
            assert margin.max() < Q8_0_ATOL
    assert same / total >= Q8_0_TOP1


def test_the_gguf_tokenizer_tokenizes_as_the_runs(f16, merged):
    _, tokenizer = merged
    _, rebuilt = load_gguf(f16 / "model.f16.gguf")
    assert rebuilt.chat_template == tokenizer.chat_template and SYSTEM in rebuilt.chat_template
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(rebuilt, name) == getattr(tokenizer, name), name
    for messages in CONVERSATIONS:
        assert rebuilt.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
        assert torch.equal(chat(rebuilt, messages)["input_ids"], chat(tokenizer, messages)["input_ids"])
    text = "Plain text, 1234 digits, it's   spaced\tand <|im_end|> <repo_name> special."
    assert rebuilt(text)["input_ids"] == tokenizer(text)["input_ids"]
    meta = fields(f16 / "model.f16.gguf")
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 3]  # special tokens are CONTROL tokens


def render_go(template: str, data: dict) -> str:
    """Render the subset of Go's text/template that the Modelfile uses: text, `{{ .Field }}`,
    `{{ range .List }}`...`{{ end }}`, `{{ if .Field }}`...`{{ else }}`...`{{ end }}`, and `{{-` / `-}}`.
    Anything else raises, so a template outside the subset fails the test instead of rendering wrongly."""
    parts = re.split(r"({{-?\s.*?\s-?}}|{{[^-\s].*?[^-\s]}})", template)
    for i, part in enumerate(parts):  # trim markers eat the whitespace beside them, as in Go
        if part.startswith("{{-"):
            parts[i - 1] = parts[i - 1].rstrip()
        if part.endswith("-}}") and i + 1 < len(parts):
            parts[i + 1] = parts[i + 1].lstrip()
    tokens = iter(
        ("action", re.fullmatch(r"{{-?\s*(.*?)\s*-?}}", p).group(1)) if p.startswith("{{") else ("text", p)
        for p in parts
    )

    def parse() -> tuple[list, str]:
        """Nodes up to the next `end` or `else` (or the template's end), and which one stopped it."""
        nodes = []
        for kind, value in tokens:
            if kind == "text":
                nodes.append(("text", value))
            elif value in ("end", "else"):
                return nodes, value
            elif m := re.fullmatch(r"(range|if) \.(\w+)", value):
                body, stop = parse()
                other = parse()[0] if stop == "else" else []
                nodes.append((m.group(1), m.group(2), body, other))
            elif m := re.fullmatch(r"\.(\w+)", value):
                nodes.append(("field", m.group(1)))
            else:
                raise ValueError(f"outside the renderer's subset: {{{{ {value} }}}}")
        return nodes, ""

    def run(nodes: list, scope: dict) -> str:
        out = ""
        for node in nodes:
            if node[0] == "text":
                out += node[1]
            elif node[0] == "field":
                out += str(scope[node[1]])
            elif node[0] == "if":
                out += run(node[2] if scope[node[1]] else node[3], scope)
            else:  # range: the body once per item, with the item as dot; else when there are none
                items = scope[node[1]]
                out += "".join(run(node[2], item) for item in items) if items else run(node[3], scope)
        return out

    return run(parse()[0], data)


def ollama_prompt(modelfile_text: str, messages: list[dict]) -> str:
    """What Ollama sends the model for a chat request: SYSTEM first unless the request has a system one."""
    template = re.search(r'^TEMPLATE """(.*?)"""', modelfile_text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""', modelfile_text, re.S | re.M)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system.group(1)}, *messages]
    roles = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return render_go(template, {"Messages": roles, "System": system.group(1) if system else ""})


def test_the_modelfile_renders_turns_as_the_chat_template(f16, merged):
    text = (f16 / "Modelfile").read_text()
    reference, tokenizer = merged
    assert re.search(r"^FROM \./model\.f16\.gguf$", text, re.M)
    stops = re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)
    assert stops == list(
        dict.fromkeys(tokenizer.convert_ids_to_tokens(reference.generation_config.eos_token_id))
    )
    assert stops == ["<|im_end|>"]  # the ChatML end of turn (the base's eos here as well)
    assert re.search(r"^PARAMETER num_ctx 1024$", text, re.M)
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ollama_prompt(text, messages) == expected


def test_the_go_renderer_follows_gos_trim_markers():
    # Checked by hand against Go's text/template: `{{-` trims before, `-}}` after, `if`/`else`, `range`.
    template = "a  {{- if .X }} yes {{- else }} no {{ end -}}  \n{{ range .L }}[{{ .V }}]{{ end }}"
    assert render_go(template, {"X": True, "L": [{"V": 1}, {"V": 2}]}) == "a yes[1][2]"
    assert render_go(template, {"X": "", "L": []}) == "a no "


def test_a_full_fine_tuning_run_with_untied_embeddings_exports(trained, cache_dir, tmp_path):
    run = tmp_path / "full"
    run.mkdir()
    (run / "config.yaml").write_text((trained / "config.yaml").read_text())
    tokenizer = bpe_tokenizer()
    model = tiny_model(LlamaConfig, tokenizer, tie_word_embeddings=False)
    save_final(model, tokenizer, get_template("chatml", tokenizer, SYSTEM), run)

    out, _ = export(run, tmp_path / "out", str(cache_dir), format="gguf")
    path = out / "model.f16.gguf"
    assert "output.weight" in {t.name for t in GGUFReader(path).tensors}
    loaded, _ = load_gguf(path)
    assert not loaded.config.tie_word_embeddings
    ids = chat(tokenizer, CONVERSATIONS[1])
    with torch.no_grad():
        assert (loaded(**ids).logits - model(**ids).logits).abs().max() < F16_ATOL


def test_a_qwen2_model_round_trips_without_the_rotary_permutation(tmp_path):
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer = bpe_tokenizer(split)
    model = tiny_model(Qwen2Config, tokenizer, tie_word_embeddings=True)
    for name, bias in model.named_parameters():  # Qwen2's q/k/v biases start at zero; make them count
        if name.endswith("bias"):
            bias.data.normal_(0, 0.5)
    path = write_gguf(tmp_path / "qwen.gguf", model, tokenizer, "f16", "qwen", [tokenizer.eos_token_id])
    meta = fields(path)
    assert meta["general.architecture"] == "qwen2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert "blk.0.attn_q.bias" in {t.name for t in GGUFReader(path).tensors}

    loaded, rebuilt = load_gguf(path)
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    for messages in CONVERSATIONS:
        ids = chat(tokenizer, messages)
        assert torch.equal(chat(rebuilt, messages)["input_ids"], ids["input_ids"])
        with torch.no_grad():
            assert (loaded(**ids).logits - model(**ids).logits).abs().max() < F16_ATOL


def test_what_gguf_cannot_hold_is_refused_by_name(tmp_path):
    tokenizer = bpe_tokenizer()
    mistral = tiny_model(MistralConfig, tokenizer)
    with pytest.raises(ExportError, match=r"'mistral'.*supports llama, qwen2"):
        write_gguf(tmp_path / "m.gguf", mistral, tokenizer)
    scaled = tiny_model(LlamaConfig, tokenizer, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ExportError, match="rope scaling 'linear'"):
        write_gguf(tmp_path / "m.gguf", scaled, tokenizer)
    byte = byte_tokenizer()  # model=tiny's: no merges
    with pytest.raises(ExportError, match="no BPE merges"):
        write_gguf(tmp_path / "m.gguf", tiny_model(LlamaConfig, byte), byte)
    with pytest.raises(ExportError, match="Metaspace"):
        pre_tokenizer_name({"type": "Metaspace", "replacement": "▁"})
    assert not (tmp_path / "m.gguf").exists()  # refused before the file is opened


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name(byte_level) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    with pytest.raises(ExportError, match="ByteLevel"):
        pre_tokenizer_name({**byte_level, "add_prefix_space": True})


def test_options_gguf_cannot_honour_are_refused_naming_the_key(trained, cache_dir, tmp_path):
    with pytest.raises(ExportError, match="dtype=float16: format=gguf"):
        export(trained, tmp_path / "a", str(cache_dir), dtype="float16", format="gguf")
    with pytest.raises(ExportError, match="gguf_type=q8_0: applies to format=gguf only"):
        export(trained, tmp_path / "b", str(cache_dir), gguf_type="q8_0")
    assert not list(tmp_path.iterdir())


def test_the_modelfile_states_each_stop_token_once():
    template = get_template("chatml", bpe_tokenizer(), SYSTEM)
    text = modelfile("m.gguf", template, ["<|im_end|>", "<|endoftext|>", "<|im_end|>"], 32768)
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == ["<|im_end|>", "<|endoftext|>"]
    assert f'SYSTEM """{SYSTEM}"""' in text and "PARAMETER num_ctx 8192" in text
    assert "PARAMETER temperature 0.7" in text and "PARAMETER top_p 0.9" in text  # sft.chat's defaults
    assert "TEMPLATE" not in modelfile("m.gguf", None, ["</s>"], 512).replace("# No TEMPLATE", "")
