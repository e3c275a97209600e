"""Load the base model and tokenizer (hub id, local dir, packaged GGUF, or random tiny; in 4 bits for QLoRA)
and set up what trains: a PEFT adapter (LoRA family, PiSSA/OLoRA starts), the whole model or its last layers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from ..atomic import publish_dir
from ..config import DTYPES, LoraConfig, ModelConfig
from ..data.templates import CHATML
from ..errors import ConfigError
from .dropout import scatter_lora_dropout

log = logging.getLogger(__name__)

# torch dtypes by the names the configs allow (sft.config.DTYPES); "auto" lets transformers choose.
TORCH_DTYPES = {**{name: getattr(torch, name) for name in DTYPES}, "auto": "auto"}


def package_dir(uri: str) -> Path:
    """Resolve `pkg://<package>` to the installed package's directory."""
    name = uri.removeprefix("pkg://")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model.name_or_path={uri}: package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def convert_gguf(source_dir: Path, gguf_file: str, target: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a trainable safetensors directory (cached at `target`)."""

    def build(tmp: Path) -> None:
        log.info("converting %s/%s to safetensors in %s (once)", source_dir, gguf_file, target)
        tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_file, dtype=torch.float32)
        # A GGUF load is flagged as quantized and refuses training and saving; rebuild it plain.
        plain_config = quantized.config.to_dict()
        plain_config.pop("quantization_config", None)
        plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(plain_config))
        plain.load_state_dict(quantized.state_dict(), strict=True)
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return publish_dir(build, target)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with ChatML special tokens: needs no download and covers any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer


def build_random_model(spec: dict, target: Path) -> Path:
    """Create (once) a randomly initialised Llama model with the byte tokenizer at `target`.

    `vocab_size` may exceed the tokenizer's (the extra ids are never produced by it), so a model with a
    real architecture's shape, output head included, can be benchmarked without downloading anything.
    """

    def build(tmp: Path) -> None:
        params = dict(spec)
        seed = params.pop("seed", 0)
        tokenizer = byte_tokenizer()
        params["vocab_size"] = max(params.get("vocab_size", 0), len(tokenizer))
        params.setdefault("tie_word_embeddings", False)
        config = LlamaConfig(
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            **params,
        )
        with torch.random.fork_rng():  # the run's own seeded RNG stream must not depend on the cache
            torch.manual_seed(seed)
            AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return publish_dir(build, target)


def resolve_source(cfg: ModelConfig, cache_dir: str) -> str:
    """A local directory or hub id that `from_pretrained` can load for this model config."""
    cache = Path(cache_dir).expanduser() / "models"
    if cfg.random_init is not None:
        digest = hashlib.sha256(json.dumps(cfg.random_init, sort_keys=True).encode()).hexdigest()[:12]
        return str(build_random_model(cfg.random_init, cache / f"random-llama-{digest}"))
    source = cfg.name_or_path
    local = package_dir(source) if source.startswith("pkg://") else Path(source).expanduser()
    if cfg.gguf_file:
        stem = Path(cfg.gguf_file).stem
        return str(convert_gguf(local, cfg.gguf_file, cache / f"{local.name}-{stem}"))
    return str(local) if local.exists() else source


def load_tokenizer(cfg: ModelConfig, cache_dir: str):
    """The base model's tokenizer (converting or building the model once if it is not cached yet)."""
    source = resolve_source(cfg, cache_dir)
    if cfg.trust_remote_code:
        log.warning("model.trust_remote_code=true: Python code shipped with %s will run here", source)
    tokenizer = AutoTokenizer.from_pretrained(
        source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, cache_dir: str, quantization=None):
    """The base model's weights, ready to be wrapped (stored in 4 bits given a BitsAndBytesConfig)."""
    model = AutoModelForCausalLM.from_pretrained(
        resolve_source(cfg, cache_dir),
        dtype=TORCH_DTYPES[cfg.dtype],
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        revision=cfg.revision,
        quantization_config=quantization,
    )
    return model if quantization is None else one_4bit_kernel(model)


def one_4bit_kernel(model):
    """Make bitsandbytes run its 4-bit layers the same way in training and in evaluation.

    On CPUs with AVX512-BF16 it repacks a layer's weights for a faster kernel the first time the layer runs
    without gradients; that kernel's logits differ from the training path's (by 0.07 on the tiny test
    model), so validation would not measure the model that trains. The training path de-quantises exactly.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def quantization_config(quantize: str, double_quant: bool, model: ModelConfig):
    """bitsandbytes' settings of a QLoRA base (lora.quantize nf4 or fp4), computing in the weights' dtype."""
    from transformers import BitsAndBytesConfig

    compute = torch.float32 if model.dtype == "auto" else TORCH_DTYPES[model.dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def quantized_copy(model, quantization):
    """`model` (plain weights in memory, e.g. a parent run's merged result) reloaded in 4 bits."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sft-quantize-") as tmp:
        model.save_pretrained(tmp)
        return one_4bit_kernel(
            AutoModelForCausalLM.from_pretrained(tmp, dtype=model.dtype, quantization_config=quantization)
        )


def prepare_for_training(model, gradient_checkpointing: bool = False):
    """Set up activation checkpointing and training mode on loaded weights (before any adapter)."""
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        # PEFT's recipe for a 4-bit base: norms and head in float32, inputs that carry gradients.
        model = prepare_model_for_kbit_training(
            model, gradient_checkpointing, {"use_reentrant": False} if gradient_checkpointing else None
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if gradient_checkpointing:
        model.config.use_cache = False
    # from_pretrained returns eval mode, which would silently switch dropout off during training.
    return model.train()


def apply_peft(model, cfg: LoraConfig, gradient_checkpointing: bool = False):
    """Wrap the model with LoRA, or train it whole (full fine-tuning) or in part (freeze tuning)."""
    model = prepare_for_training(model, gradient_checkpointing)
    if not cfg.enabled:
        if cfg.trainable_layers or cfg.trainable_modules:
            return freeze(model, cfg.trainable_layers, cfg.trainable_modules)
        return model.requires_grad_(True)
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules="all-linear" if cfg.target == "all" else list(cfg.target),
        bias=cfg.bias,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        modules_to_save=cfg.modules_to_save,
        init_lora_weights=True if cfg.init == "default" else cfg.init,
    )
    model = get_peft_model(model, peft_config)
    if cfg.fast_dropout:
        scatter_lora_dropout(model)
    return model


def moves_base(cfg: LoraConfig) -> bool:
    """True when the adapter's start is factored out of the base weights (PiSSA, OLoRA): the base then holds
    a residual, and the saved adapter must be converted to apply to the original weights."""
    return cfg.enabled and cfg.init.startswith(("pissa", "olora"))


def save_initial_adapter(model, path: Path) -> None:
    """Save a PiSSA/OLoRA adapter's starting weights, which `save_final` needs to convert the trained one."""
    # Marked plain LoRA, as PEFT documents: loading this start must not factor the base a second time.
    model.peft_config["default"].init_lora_weights = True
    model.save_pretrained(path)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList as long as `config.num_hidden_layers`."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise TypeError(f"no list of {count} decoder layers in {type(model).__name__}")


def freeze(model, layers: int | None, modules: list[str] | None):
    """Freeze tuning: train the last `layers` decoder layers, or within them (all, when `layers` is null)
    only the named modules (`mlp`, `self_attn.q_proj`), plus named modules outside the stack (`lm_head`)."""
    stack = decoder_layers(model)
    if layers and layers > len(stack):
        raise ConfigError(
            f"lora.trainable_layers={layers}: at most {len(stack)}, the model's number of decoder layers"
        )
    chosen = stack[len(stack) - layers :] if layers else stack
    in_stack = {id(p) for p in stack.parameters()}
    in_chosen = {id(p) for p in chosen.parameters()}
    # Tied weights (embed_tokens and lm_head) answer to either name: list both.
    named = list(model.named_parameters(remove_duplicate=False))
    if modules:
        matches = {m: {n for n, _ in named if f".{m}." in f".{n}."} for m in modules}
        if unmatched := [m for m, hits in matches.items() if not hits]:
            examples = sorted({part for n, _ in named for part in n.split(".")[:-1] if not part.isdigit()})
            raise ConfigError(
                f"lora.trainable_modules={list(modules)}: {unmatched} match no parameter of the model; "
                f"its module names are {', '.join(examples)}"
            )
        wanted = set().union(*matches.values())
        # Outside the stack any named module trains; inside it only those of the chosen layers.
        train = {id(p) for n, p in named if n in wanted and (id(p) in in_chosen or id(p) not in in_stack)}
    else:
        train = in_chosen
    model.requires_grad_(False)
    for _, param in named:
        param.requires_grad_(id(param) in train)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts (PEFT counts a 4-bit weight's values, not its packed bytes)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
