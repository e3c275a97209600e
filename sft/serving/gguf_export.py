"""A merged model as one GGUF file (llama.cpp, Ollama, LM Studio) with an Ollama `Modelfile` beside it.

`python -m sft.export run=<run> format=gguf [gguf_type=q8_0]` calls `write_gguf_dir`. The file must behave as
the run did in training, so:

- weights: llama.cpp's tensor names (gguf-py's TensorNameMap), 2-D weights in F16 or Q8_0, norms and biases
  in F32; a llama model's q/k rows permuted to llama.cpp's rotary layout (transformers' GGUF loader undoes
  it); tied embeddings stored once (no `output.weight`, which is how both readers know they are tied);
- tokenizer: the run's own byte-level BPE vocabulary, merges, token types, special ids, add-bos/eos flags
  and chat template, with a pre-tokenizer name under which llama.cpp and transformers split text as the
  run's tokenizer did;
- Modelfile: an Ollama template rendering system/user/assistant turns exactly as the run's chat template,
  its default system prompt, and the run's stop tokens.

`load_gguf` reads a file back the way transformers does; the tests compare it with the merged model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import (
    GGML_QUANT_VERSION,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    TokenType,
    get_tensor_name_map,
    quants,
)
from omegaconf import DictConfig, OmegaConf

from ..data.loading import fill_text
from ..data.templates import Template, get_template
from ..errors import ExportError
from ..locations import CONF_DIR

log = logging.getLogger(__name__)

# gguf_type -> (llama.cpp's general.file_type, how 2-D weights are stored)
GGUF_TYPES = {
    "f16": (LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
}
# transformers' model_type -> llama.cpp architecture (SmolLM2 and the tiny test model are `llama`)
ARCHITECTURES = {"llama": MODEL_ARCH.LLAMA, "qwen2": MODEL_ARCH.QWEN2}
Q8_0_BLOCK = 32
# Templates whose turns the Ollama template below reproduces (sft.data.templates: both are ChatML).
CHATML_TEMPLATES = ("chatml", "qwen")
# Ollama's ChatML form (its template docs): every message as `<|im_start|>role\ncontent<|im_end|>\n`, then the
# assistant's header. With the default system prompt given as SYSTEM (Ollama puts it first when a request has
# no system message), this is what our ChatML Jinja renders with add_generation_prompt for these roles.
CHATML_OLLAMA = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
# Sampling as `python -m sft.chat` does by default, so both answer alike.
SAMPLING = ("temperature", "top_p")
# Ollama's own context default (2k-4k tokens, by version) would cut conversations the model can hold.
MAX_NUM_CTX = 8192


def gguf_file_name(gguf_type: str) -> str:
    """The GGUF file's name inside an export directory."""
    return f"model.{gguf_type}.gguf"


def write_gguf_dir(
    directory: Path, model, tokenizer, run_config: DictConfig, gguf_type: str, name: str
) -> Path:
    """Write `model.<gguf_type>.gguf` and an Ollama `Modelfile` into `directory`; return the GGUF path."""
    stops = generation_stops(model)
    path = write_gguf(directory / gguf_file_name(gguf_type), model, tokenizer, gguf_type, name, stops)
    template = ollama_template(run_config, tokenizer)
    text = modelfile(
        path.name,
        template,
        tokenizer.convert_ids_to_tokens(stops),
        model.config.max_position_embeddings,
    )
    (directory / "Modelfile").write_text(text)
    return path


def generation_stops(model) -> list[int]:
    """The ids generation stops at (`load_run` put the model's eos and the template's stop token there)."""
    eos = model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def write_gguf(
    path: Path, model, tokenizer, gguf_type: str = "f16", name: str = "model", stops: list[int] = ()
) -> Path:
    """Write `model` (a transformers causal LM) and `tokenizer` as one GGUF file at `path`.

    `stops` are the run's end-of-turn ids; one that is not the tokenizer's eos is written as llama.cpp's
    end-of-turn token, so llama.cpp stops there too.
    """
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"gguf_type={gguf_type!r}: one of {tuple(GGUF_TYPES)}")
    config = model.config
    arch = supported_architecture(config)
    file_type, weight_type = GGUF_TYPES[gguf_type]
    writer = GGUFWriter(path, MODEL_ARCH_NAMES[arch])
    # Everything is checked and converted before the file is opened: a refusal leaves no half-written file.
    write_tokenizer(writer, tokenizer, config.vocab_size, stops)
    write_hyperparameters(writer, config, name, file_type)
    for tensor_name, data in gguf_tensors(model, arch):
        stored, raw_type = storage(data, weight_type)
        writer.add_tensor(tensor_name, stored, raw_dtype=raw_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def supported_architecture(config) -> MODEL_ARCH:
    """The llama.cpp architecture of a transformers config; an ExportError for what GGUF cannot hold."""
    kind = config.model_type
    if kind not in ARCHITECTURES:
        raise ExportError(
            f"format=gguf: the model's architecture is {kind!r} ({', '.join(config.architectures or [])}); "
            f"GGUF export supports {', '.join(ARCHITECTURES)} (llama: SmolLM2, Llama; qwen2: Qwen2, Qwen2.5)"
        )
    problems = []
    theta, rope_type = rope(config)
    if rope_type != "default":
        # llama.cpp and transformers' GGUF loader each rebuild scaled rope from their own keys; neither
        # reads back what we could write, so the file would not compute what the run computed.
        problems.append(f"rope scaling {rope_type!r}")
    if theta is None:
        problems.append("no rope theta in the config")
    if kind == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        problems.append("attention or MLP biases (transformers' GGUF loader drops them for llama)")
    if kind == "qwen2" and getattr(config, "use_sliding_window", False):
        problems.append("sliding-window attention")
    if problems:
        raise ExportError(
            f"format=gguf: this {kind} model has {', '.join(problems)}, which GGUF export cannot keep"
        )
    return ARCHITECTURES[kind]


def rope(config) -> tuple[float | None, str]:
    """(rope theta, rope type) from a transformers 5 config (`rope_parameters`) or an older one."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return theta, kind


def head_dim(config) -> int:
    """Width of one attention head."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def write_hyperparameters(writer: GGUFWriter, config, name: str, file_type: LlamaFileType) -> None:
    """The `general.*` and `<arch>.*` keys llama.cpp reads and transformers maps back onto a config."""
    heads = config.num_attention_heads
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope(config)[0]))
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // heads:  # llama.cpp assumes hidden_size / heads otherwise
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)


def rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """q or k projection rows reordered from transformers' rotary layout to llama.cpp's.

    transformers rotates each head's first half against its second half (rotate_half); llama.cpp's llama
    rope rotates adjacent pairs. Interleaving the halves makes llama.cpp compute the same attention.
    """
    shape = weight.shape
    return weight.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def gguf_tensors(model, arch: MODEL_ARCH) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp tensor name, float32 array) for every weight of the model."""
    config = model.config
    names = get_tensor_name_map(arch, config.num_hidden_layers)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # no output.weight: llama.cpp reuses token_embd, transformers ties them again
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(
                f"format=gguf: weight {hf_name} has no llama.cpp tensor in {MODEL_ARCH_NAMES[arch]}"
            )
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == MODEL_ARCH.LLAMA and ".attn_q." in name:
            data = rotary_rows(data, config.num_attention_heads)
        elif arch == MODEL_ARCH.LLAMA and ".attn_k." in name:
            data = rotary_rows(data, kv_heads)
        yield name, data


def storage(
    data: np.ndarray, weight_type: GGMLQuantizationType
) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    """(array to write, its raw GGML type or None for a plain float array), as llama.cpp stores it.

    Norms and biases (1-D) stay F32; Q8_0 needs rows in whole blocks of 32, and a weight whose rows are not
    falls back to F16 as it does in llama.cpp's converter.
    """
    if data.ndim < 2:
        return data.astype(np.float32), None
    if weight_type == GGMLQuantizationType.Q8_0 and data.shape[-1] % Q8_0_BLOCK == 0:
        return quants.quantize(data, weight_type), weight_type
    return data.astype(np.float16), None


def write_tokenizer(writer: GGUFWriter, tokenizer, vocab_size: int, stops: list[int] = ()) -> None:
    """The tokenizer as llama.cpp's `gpt2` (byte-level BPE) vocabulary, with special ids and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            "format=gguf: the run's tokenizer has no `tokenizers` backend to read a vocabulary from"
        )
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ExportError(
            "format=gguf: only byte-level BPE tokenizers (GPT-2 style: SmolLM2, Qwen2) are supported, "
            f"this one is {spec['model']['type']} with a {(spec.get('decoder') or {}).get('type')} decoder"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    if not merges:
        # gguf-py cannot write an empty array and llama.cpp refuses a `gpt2` vocabulary without merges.
        raise ExportError(
            "format=gguf: the tokenizer has no BPE merges (e.g. model=tiny's byte tokenizer); "
            "llama.cpp cannot load a byte-level vocabulary without them"
        )
    tokens, types = vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    add_bos, add_eos = added_specials(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    other_stops = [i for i in stops if i != tokenizer.eos_token_id]
    if other_stops:
        writer.add_eot_token_id(other_stops[0])
    if isinstance(tokenizer.chat_template, str) and tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[TokenType]]:
    """Each id's token as `tokenizers` spells it and its llama.cpp type, for the model's `vocab_size` rows.

    Added special tokens are CONTROL (never produced from text by the BPE), other added tokens USER_DEFINED;
    rows the tokenizer never produces are named `[PAD<id>]` and UNUSED, as llama.cpp's converter does.
    """
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ExportError(
            f"format=gguf: tokenizer ids go up to {max(by_id)}, the model has {vocab_size} embedding rows"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    return tokens, types


def added_specials(tokenizer) -> tuple[bool, bool]:
    """(adds bos, adds eos): what the tokenizer puts around plain text, read from what it does."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    extra = len(full) > len(bare)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return extra and bos is not None and full[0] == bos, extra and eos is not None and full[-1] == eos


def split_names() -> dict[str, str]:
    """Regex pre-tokenizer patterns transformers' GGUF reader knows -> their llama.cpp pre-tokenizer names."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except (
        ImportError
    ):  # another transformers layout: no split-regex tokenizer can be matched, none is guessed
        return {}
    names: dict[str, str] = {}
    for name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items():
        names.setdefault(pattern, name)
    return names


def pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a `tokenizers` pre-tokenizer: how text is split before BPE.

    Only splits that llama.cpp and transformers' GGUF reader both reproduce are named; anything else is
    refused rather than written under a name that would tokenize differently from training.
    """
    pieces = (spec or {}).get("pretokenizers") if (spec or {}).get("type") == "Sequence" else [spec or {}]
    kinds = [p.get("type") for p in pieces]
    if kinds == ["ByteLevel"] and pieces[0].get("use_regex", True) and not pieces[0].get("add_prefix_space"):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's
    if kinds == ["Digits", "ByteLevel"] and pieces[0].get("individual_digits") and pieces[1].get("use_regex"):
        # SmolLM2's hub tokenizer. llama.cpp splits the same; transformers' GGUF reader ignores the digit
        # split, so only llama.cpp (and Ollama) reproduce its tokenization of numbers.
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not pieces[1].get("use_regex") and not pieces[0].get("invert"):
        name = split_names().get((pieces[0].get("pattern") or {}).get("Regex"))
        if name and str(pieces[0].get("behavior")).lower() == "isolated":
            return name
    raise ExportError(
        f"format=gguf: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) has no llama.cpp "
        "equivalent known here (GPT-2's byte-level regex, SmolLM2's, Qwen2's or Llama 3's split)"
    )


def ollama_template(run_config: DictConfig, tokenizer) -> Template | None:
    """The run's chat template when the Modelfile can reproduce it (ChatML), else None."""
    name = OmegaConf.select(run_config, "data.template", default=None)
    if name not in CHATML_TEMPLATES:
        return None
    data = OmegaConf.select(run_config, "data")
    placeholders = OmegaConf.to_container(data.placeholders) if data.get("placeholders") else {}
    template = get_template(name, tokenizer, fill_text(data.get("system"), placeholders))
    # The run's tokenizer carries what training rendered; a config that no longer rebuilds it is not trusted.
    return template if template.jinja == tokenizer.chat_template else None


def modelfile(gguf_name: str, template: Template | None, stops: list[str], context_length: int) -> str:
    """An Ollama Modelfile for the GGUF file `gguf_name` next to it."""
    lines = [
        "# Ollama: `ollama create <name> -f Modelfile` in this directory (written by python -m sft.export).",
        f"FROM ./{gguf_name}",
    ]
    if template is None:
        log.warning(
            "Modelfile: no Ollama TEMPLATE for this chat template; Ollama will choose one from the GGUF"
        )
        lines.append("# No TEMPLATE: only ChatML runs (data.template chatml or qwen) get one written.")
    else:
        lines.append(f'TEMPLATE """{CHATML_OLLAMA}"""')
        if template.default_system:
            if '"""' in template.default_system:
                raise ExportError('format=gguf: data.system contains """, which a Modelfile cannot quote')
            lines.append(f'SYSTEM """{template.default_system}"""')
    for stop in dict.fromkeys(stops):
        if '"' in stop or "\n" in stop:
            raise ExportError(f"format=gguf: stop token {stop!r} cannot be written as a Modelfile parameter")
        lines.append(f'PARAMETER stop "{stop}"')
    chat_defaults = OmegaConf.load(CONF_DIR / "chat.yaml")
    for key in SAMPLING:
        lines.append(f"PARAMETER {key} {chat_defaults[key]}")
    lines.append(f"PARAMETER num_ctx {min(context_length, MAX_NUM_CTX)}")
    return "\n".join(lines) + "\n"


def load_gguf(path: str | Path):
    """(model, tokenizer) as transformers rebuilds them from a GGUF file: float32 weights, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer
