"""Write the trained result, and export a run as one plain transformers model directory.

Training saves `adapter/` (LoRA) or `model/` (full fine-tuning) with `save_final`. `python -m sft.export
run=<run dir>` merges the adapter into the base weights the run was trained on (rebuilt through its
`init_from` chain by sft.training.lineage) and writes a directory that `AutoModelForCausalLM.from_pretrained`
loads with no PEFT, carrying the run's chat template. `format=gguf` writes the same merged model as one
GGUF file with an Ollama Modelfile instead (sft.serving.gguf_export).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from peft import PeftModel
from transformers import AutoTokenizer

from ..atomic import publish_dir
from ..config import DTYPES, ExportConfig, check, checked_cli
from ..data.templates import Template, get_template
from ..errors import ConfigError, ExportError
from ..locations import CONF_DIR
from ..run_dir import RunDir
from ..training.lineage import model_config, trained_weights
from .gguf_export import GGUF_TYPES, write_gguf_dir

# What a PEFT adapter directory holds; none of it may end up in a merged export.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
FORMATS = ("safetensors", "gguf")
GGUF_DIR = "gguf"  # format=gguf's default output directory inside the run


def save_final(
    model,
    tokenizer,
    template: Template,
    run_dir: Path,
    state_dict: dict | None = None,
    start: Path | None = None,
) -> Path:
    """Save `adapter/` (LoRA) or `model/` (full fine-tuning) atomically and return its path.

    `state_dict` holds the weights when the strategy sharded them (gathered by full_state_dict). `start` is
    a PiSSA/OLoRA adapter's saved start: the trained adapter is converted by PEFT into a plain LoRA adapter
    (of twice the rank) on the original base, so it loads anywhere the base does; `start` is then deleted.
    """
    is_adapter = isinstance(model, PeftModel)
    conversion = {"path_initial_model_for_weight_conversion": str(start)} if start else {}

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=state_dict, **conversion)
        # The template the model was trained with is the one generation must use.
        tokenizer.chat_template = template.jinja
        tokenizer.save_pretrained(tmp)

    saved = publish_dir(build, RunDir(run_dir).weights_dir(is_adapter), overwrite=True)
    if start:
        shutil.rmtree(start)
    return saved


def run_weights(run: Path) -> Path:
    """The run's trained weights directory (`adapter/` or `model/`); an ExportError names what is missing."""
    return RunDir(run).saved_weights("run", run, ExportError)


def stop_token_ids(cfg: DictConfig, tokenizer, model) -> list[int]:
    """End-of-turn ids for generation: the model's own eos ids plus the training template's stop token.

    A base model's eos (e.g. `<|endoftext|>`) need not be the token the template ends a turn with
    (`<|im_end|>`); without it generation would run past the reply.
    """
    eos = model.generation_config.eos_token_id
    ids = list(eos) if isinstance(eos, list) else [eos]
    ids.append(tokenizer.eos_token_id)
    try:
        stop = get_template(cfg.data.template, tokenizer).stop
    except (ValueError, AttributeError, KeyError):  # an older or hand-written config.yaml
        stop = None
    if stop and stop in tokenizer.get_vocab():
        ids.append(tokenizer.convert_tokens_to_ids(stop))
    return list(dict.fromkeys(i for i in ids if i is not None))


def load_run(run: Path, cache_dir: str, dtype: str | None = None):
    """(model, tokenizer) of a finished run: the adapter merged into its rebuilt base, or the full model.

    A run started from another (`init_from`) has its base rebuilt through the whole chain of parents.

    The model comes back in eval mode with the template's stop token among its generation eos ids.
    """
    weights = run_weights(run)
    cfg = RunDir(run).read_config()
    base_cfg = model_config(cfg, dtype)
    # The tokenizer saved with the weights carries the chat template the run was trained with.
    tokenizer = AutoTokenizer.from_pretrained(weights, trust_remote_code=base_cfg.trust_remote_code)
    model = trained_weights(run, cache_dir, dtype)
    model.generation_config.eos_token_id = stop_token_ids(cfg, tokenizer, model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def check_out(run: Path, out: Path, overwrite: bool) -> None:
    """Refuse an output directory that would replace the run itself or an existing export, unless asked."""
    run, target = run.resolve(), out.resolve()
    if target == run or target in run.parents or target in (RunDir(run).adapter, RunDir(run).model):
        raise ExportError(f"out={out}: would replace the run {run} or its weights; choose another directory")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"out={out}: already exists and is not empty; set overwrite=true to replace it")


def shareable(directory: Path) -> None:
    """Give a directory and its files the umask's usual modes.

    An export is handed to servers and other users, but the temporary directory it is built in is
    private (0700) and safetensors writes its files 0600.
    """
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def check_format(format: str, dtype: str | None, gguf_type: str) -> None:
    """Refuse a format, or an option the chosen format cannot honour, naming the key."""
    if format not in FORMATS:
        raise ExportError(f"format={format!r}: one of {FORMATS}")
    if format == "gguf" and dtype is not None:
        raise ExportError(
            f"dtype={dtype}: format=gguf stores its weights as gguf_type ({', '.join(GGUF_TYPES)}), "
            "not in a dtype; leave dtype unset"
        )
    if format == "gguf" and gguf_type not in GGUF_TYPES:
        raise ExportError(f"gguf_type={gguf_type!r}: one of {tuple(GGUF_TYPES)}")
    if format != "gguf" and gguf_type != "f16":
        raise ExportError(f"gguf_type={gguf_type}: applies to format=gguf only; add format=gguf or drop it")
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"dtype={dtype!r}: one of {DTYPES} (or null for the run's model.dtype)")


def default_out(run: Path, format: str = "safetensors") -> Path:
    """Where an export goes when `out` is not given: <run>/merged, or <run>/gguf for format=gguf."""
    return run / GGUF_DIR if format == "gguf" else RunDir(run).merged


def export(
    run: Path,
    out: Path,
    cache_dir: str,
    dtype: str | None = None,
    overwrite: bool = False,
    format: str = "safetensors",
    gguf_type: str = "f16",
):
    """Write the run at `out` as a transformers directory or a GGUF file + Modelfile; return (out, model)."""
    check_format(format, dtype, gguf_type)
    run_weights(run)  # a wrong run directory is reported before anything is loaded or checked
    check_out(run, out, overwrite)
    # GGUF weights are rounded to f16 or q8_0 once, from the merge done in float32.
    model, tokenizer = load_run(run, cache_dir, "float32" if format == "gguf" else dtype)

    def build(tmp: Path) -> None:
        if format == "gguf":
            write_gguf_dir(
                tmp, model, tokenizer, RunDir(run).read_config(), gguf_type, Path(run).resolve().name
            )
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        shareable(tmp)

    return publish_dir(build, out, overwrite=True), model


def describe(out: Path, model, stored: str | None = None) -> str:
    """What an export wrote: the directory, its files with sizes, the parameter count and how it is stored."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    lines = [f"wrote {out}"]
    lines += [f"  {p.relative_to(out)}  {p.stat().st_size / 2**20:.1f} MiB" for p in files]
    params = sum(p.numel() for p in model.parameters())
    lines.append(f"parameters: {params:,} ({stored or next(model.parameters()).dtype})")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """`python -m sft.export run=<run dir>`; a wrong run, output or option exits 2 with its message."""
    torch.set_grad_enabled(False)  # nothing here trains; merging and saving need no autograd graph
    try:
        check(cfg, ExportConfig)
        run = Path(cfg.run).expanduser()
        out = Path(cfg.out).expanduser() if cfg.out else default_out(run, cfg.format)
        written, model = export(run, out, cfg.cache_dir, cfg.dtype, cfg.overwrite, cfg.format, cfg.gguf_type)
    except (ConfigError, ExportError) as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    print(describe(written, model, f"GGUF {cfg.gguf_type}" if cfg.format == "gguf" else None))
    del model  # the check loads the written files; two copies of the weights would double the memory
    if cfg.parity:
        check_parity(run, written)


def check_parity(run: Path, written: Path) -> None:
    """Answer the run's recorded prompts with the written files, loaded as a user would; exit 1 on drift.

    The export stays in place either way, for a look at what drifted.
    """
    from ..eval import parity

    if not RunDir(run).parity_reference.is_file():
        print(f"parity not checked: {run} recorded no answers (evaluation.parity.prompts was 0)")
        return
    result = parity.check(run, written)
    print(parity.describe(result))
    if not result["passed"]:
        print(f"the export drifts from the trained model (written anyway: {written})", file=sys.stderr)
        sys.exit(1)


cli = checked_cli(main, ExportConfig)

if __name__ == "__main__":
    cli()
