"""Where a run's weights start: the configured base model, or an earlier run's result (`init_from`).

The hand-off between stages (CPT → SFT → DPO) is decided here and nowhere else: `merge` folds the parent's
adapter into its base and trains a new adapter on top; `continue` trains the parent's adapter further.
The chain is recursive, each run's config.yaml naming its parent by absolute path, so a run's weights are
rebuilt the same way for training, export, chat and evaluation:

- starting policy (`start_weights`): the configured base, else the parent's result;
- base under the run's own adapter (`adapter_base`): the same, except for `continue`, where it is the
  parent's own base (the run's adapter *is* the parent's, trained further);
- result (`trained_weights`): the run's adapter merged into its `adapter_base`, or its full model.

torch, transformers and PEFT are imported inside the functions that load weights: `sft.train` calls
`inherit` before validating, and a config mistake must still be answered without loading them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import ModelConfig, TrainConfig
from ..errors import ConfigError
from ..provenance import hydra_overrides
from ..run_dir import RunDir

log = logging.getLogger(__name__)

# The model keys a child run always takes from its parent: which weights, how their conversations render.
IDENTITY = (
    "name_or_path",
    "gguf_file",
    "revision",
    "random_init",
    "trust_remote_code",
    "template",
    "default_system",
)

# LoRA settings that `continue` takes from the parent's adapter: the child's must say the same.
# (dropout is not among them: it shapes no weight, so the child's own applies.)
ADAPTER_SHAPE = ("r", "alpha", "target", "bias", "use_dora", "use_rslora", "modules_to_save", "quantize")


@dataclass(frozen=True)
class Parent:
    """A finished run that another run starts from."""

    run: Path  # absolute
    config: DictConfig  # its config.yaml
    weights: Path  # its adapter/ or model/

    @property
    def is_adapter(self) -> bool:
        """True when the run saved a LoRA adapter (False: a fully fine-tuned model)."""
        return self.weights == RunDir(self.run).adapter

    @property
    def stage(self) -> str:
        """The parent's stage name; "sft" for a config written before stages existed."""
        return str(OmegaConf.select(self.config, "stage.name", default=None) or "sft")


def finished_run(path: str | Path, key: str = "init_from") -> Parent:
    """The finished run at `path`; a ConfigError naming `key` says what is missing."""
    run = Path(path).expanduser().resolve()
    layout = RunDir(run)
    weights = layout.saved_weights(key, path)
    return Parent(run, layout.read_config(), weights)


def parent_of(cfg: DictConfig | TrainConfig, key: str = "init_from") -> Parent | None:
    """The run that `cfg` starts from, or None when it starts from its configured base model."""
    init_from = _get(cfg, "init_from")
    return None if init_from is None else finished_run(init_from, key)


def continues(cfg: DictConfig | TrainConfig, parent: Parent | None) -> bool:
    """True when the run trains its parent's adapter further (`handoff: continue` with LoRA on both sides)."""
    lora = _get(cfg, "lora")
    enabled = lora.enabled if lora is not None else False
    return parent is not None and _get(cfg, "handoff") == "continue" and parent.is_adapter and enabled


def fresh_adapter(cfg: TrainConfig) -> bool:
    """Whether the run trains a new LoRA adapter, so that disabling it gives back the starting weights.

    Trained biases (`lora.bias` all or lora_only) live in the base layers, where disabling the adapter
    does not undo them; a PiSSA or OLoRA start leaves a residual there, not the starting weights.
    """
    from .model import moves_base

    lora = cfg.lora
    return (
        lora.enabled and lora.bias == "none" and not moves_base(lora) and not continues(cfg, parent_of(cfg))
    )


# --- before and after validation (sft.train) ------------------------------------------------------------


def inherit(cfg: DictConfig) -> None:
    """With `init_from`: check the parent, record its absolute path and take its `model` config.

    Called before validation, so the inherited model's template (`data.template: ${model.template}`) and
    every check apply to the model the run really trains.
    """
    if cfg.get("init_from") is None:
        return
    parent = finished_run(cfg.init_from)
    if _same_dir(cfg, parent.run):
        raise ConfigError(
            f"init_from={cfg.init_from}: is this run's own paths.output_dir; choose another one"
        )
    composed = _plain(cfg.model)
    # The parent's model config, except how this run loads the weights when its command line says so
    # (model.dtype, model.attn_implementation): which weights and their chat format are the parent's.
    inherited = OmegaConf.to_container(parent.config.model, resolve=True)
    for key in _typed_model_keys() - set(IDENTITY):
        if key in composed:
            inherited[key] = composed[key]
    changed = sorted(k for k in IDENTITY if composed.get(k) != inherited.get(k))
    if changed:
        log.info(
            "model config taken from init_from=%s (differs from the composed one in: %s)",
            parent.run,
            ", ".join(f"model.{k}" for k in changed),
        )
    with open_dict(cfg):
        cfg.init_from = str(parent.run)  # the record must find the parent from any working directory
        cfg.model = OmegaConf.create(inherited)


def _typed_model_keys() -> set[str]:
    """The `model.<key>` names given on this launch's command line (none outside a Hydra run)."""
    keys = (o.split("=", 1)[0].lstrip("+~") for o in hydra_overrides())
    return {k.removeprefix("model.") for k in keys if k.startswith("model.")}


def check_handoff(cfg: TrainConfig) -> None:
    """Refuse a `continue` whose LoRA settings differ from the parent adapter's; say when it acts as merge."""
    parent = parent_of(cfg)
    if parent is None or cfg.handoff != "continue":
        return
    if not continues(cfg, parent):
        why = "the parent is a full fine-tune" if not parent.is_adapter else "this run has lora.enabled=false"
        log.warning("handoff=continue acts as merge: %s, so there is no adapter to train further", why)
        return
    theirs = parent.config.lora
    ours = OmegaConf.structured(cfg.lora)
    differ = [
        f"lora.{k}={ours.get(k)} (the parent's is {theirs.get(k)})"
        for k in ADAPTER_SHAPE
        if _plain(ours.get(k)) != _plain(theirs.get(k))
    ]
    if differ:
        raise ConfigError(
            f"handoff=continue trains the adapter of init_from={parent.run} further, so its LoRA settings "
            f"must match: {'; '.join(differ)}. Set them as the parent's, or use handoff=merge"
        )


def parent_record(cfg: TrainConfig) -> dict | None:
    """run_record.json's `parent` entry: which run this one started from and how; None without one."""
    parent = parent_of(cfg)
    if parent is None:
        return None
    return {
        "run": str(parent.run),
        "handoff": "continue" if continues(cfg, parent) else "merge",  # what happened, not what was asked
        "stage": parent.stage,
        "weights": "adapter" if parent.is_adapter else "model",
    }


# --- weights ------------------------------------------------------------------------------------------


def start_model(cfg: TrainConfig, cache_dir: str):
    """The model a run trains: its starting weights, wrapped for training (LoRA or full)."""
    from .dropout import scatter_lora_dropout
    from .model import apply_peft, prepare_for_training

    parent = parent_of(cfg)
    base = adapter_base(cfg, cache_dir, cfg.model.dtype, four_bit=True)
    if not continues(cfg, parent):
        return apply_peft(base, cfg.lora, cfg.trainer.gradient_checkpointing)
    from peft import PeftConfig, PeftModel

    log.info("continuing the adapter of %s", parent.run)
    config = PeftConfig.from_pretrained(parent.weights)
    config.lora_dropout = cfg.lora.dropout  # shapes no weight: the child's own setting applies
    base = prepare_for_training(base, cfg.trainer.gradient_checkpointing)
    model = PeftModel.from_pretrained(base, parent.weights, config=config, is_trainable=True)
    if cfg.lora.fast_dropout:
        scatter_lora_dropout(model)
    return model.train()


def adapter_base(
    cfg: DictConfig | TrainConfig, cache_dir: str, dtype: str | None = None, four_bit: bool = False
):
    """The plain weights under the run's own adapter (a full fine-tune's start), rebuilt through the chain.

    A QLoRA run's base is its 4-bit weights: stored in 4 bits with `four_bit` (the run training), else
    de-quantised (evaluation, export, later stages): the values its adapter was trained against either way.
    """
    parent = parent_of(cfg)
    if parent is None:
        return _load_base(cfg, cache_dir, dtype, four_bit)
    if continues(cfg, parent):
        return adapter_base(parent.config, cache_dir, dtype, four_bit)
    merged = _result(parent, cache_dir, dtype)
    quantization = _quantization(cfg, dtype)
    if quantization is None:
        return merged
    from .model import quantized_copy

    four_bits = quantized_copy(merged, quantization)
    return four_bits if four_bit else four_bits.dequantize()


def start_weights(cfg: DictConfig | TrainConfig, cache_dir: str, dtype: str | None = None):
    """The run's starting policy as one plain model: its configured base, or its parent's result.

    For `continue` this equals the parent's result too: the adapter it starts with is the parent's.
    """
    parent = parent_of(cfg)
    return _load_base(cfg, cache_dir, dtype) if parent is None else _result(parent, cache_dir, dtype)


def trained_weights(
    run: Path, cache_dir: str, dtype: str | None = None, key: str = "run", merge: bool = True
):
    """A finished run's result as one plain model: its adapter merged into its rebuilt base, or its model.

    `merge=False` keeps an adapter on its base (the model as training ran it).
    """
    return _result(finished_run(run, key), cache_dir, dtype, merge)


def _result(run: Parent, cache_dir: str, dtype: str | None, merge: bool = True):
    if run.is_adapter:
        from peft import PeftModel

        base = adapter_base(run.config, cache_dir, dtype)
        model = PeftModel.from_pretrained(base, run.weights)
        return model.merge_and_unload() if merge else model
    from transformers import AutoModelForCausalLM

    from .model import TORCH_DTYPES

    model = model_config(run.config, dtype)
    return AutoModelForCausalLM.from_pretrained(
        run.weights,
        dtype=TORCH_DTYPES[model.dtype],
        attn_implementation=model.attn_implementation,
        trust_remote_code=model.trust_remote_code,
    )


def _load_base(cfg: DictConfig | TrainConfig, cache_dir: str, dtype: str | None, four_bit: bool = False):
    from .model import load_model

    quantization = _quantization(cfg, dtype)
    model = load_model(model_config(cfg, dtype), cache_dir, quantization)
    return model if quantization is None or four_bit else model.dequantize()


def _quantization(cfg: DictConfig | TrainConfig, dtype: str | None):
    """The run's 4-bit settings (a QLoRA run), or None; a config.yaml from before QLoRA has none."""
    from .model import quantization_config

    lora = _get(cfg, "lora")
    if isinstance(lora, DictConfig):
        lora = OmegaConf.merge({"quantize": None, "double_quant": True}, lora)
    if lora is None or not lora.quantize:
        return None
    return quantization_config(lora.quantize, lora.double_quant, model_config(cfg, dtype))


def model_config(cfg: DictConfig | TrainConfig, dtype: str | None) -> ModelConfig:
    """The run's ModelConfig, with the weights' dtype replaced when one is asked for."""
    node = cfg.model if isinstance(cfg.model, ModelConfig) else ModelConfig(**_plain(cfg.model))
    return ModelConfig(**{**vars(node), **({"dtype": dtype} if dtype else {})})


def _get(cfg: DictConfig | TrainConfig, key: str):
    """A config value from a typed config or a saved config.yaml, which may predate the key."""
    return cfg.get(key) if isinstance(cfg, DictConfig) else getattr(cfg, key)


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _same_dir(cfg: DictConfig, run: Path) -> bool:
    """True when the composed paths.output_dir is `run` (it may be Hydra's, unknown outside a job)."""
    try:
        out = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=True)
    except Exception:  # no Hydra job to resolve ${hydra:...} against: nothing to compare
        return False
    return out is not None and Path(str(out)).expanduser().resolve() == run
