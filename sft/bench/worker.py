"""One benchmark run in its own process (so peak memory is its own): `python -m sft.bench.worker spec.json`.

The spec names the trainer (`trl` or `sft`), the model directory, the data file and the settings; the
result (per-step records with the loss, the rows and trained tokens of the prepared training set,
preparation time, parameter counts, peak memory) is written to `spec["result"]`.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..data.formats import to_conversation
from ..locations import CONF_DIR


def alpaca_chat(row: dict) -> list[dict]:
    """An Alpaca row's user and assistant turns, exactly as the training pipeline builds them."""
    return to_conversation(row, "alpaca")["messages"]


def peak_memory() -> dict:
    """Peak resident memory of this process (and peak CUDA memory when on a GPU), in GiB."""
    peak = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        peak["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return peak


def run_trl(spec: dict) -> dict:
    """TRL's SFTTrainer with LoRA on the Alpaca rows as prompt-completion chats (loss on completions)."""
    # A worker process runs one trainer: TRL and its stack load only in the process that runs it.
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .clock import CountingCollator, TrlClock
    from .flops import parameter_counts

    rows = json.loads(Path(spec["data"]).read_text())
    chats = Dataset.from_list(
        [
            {
                "prompt": chat[:-1],
                "completion": chat[-1:],
            }
            for chat in map(alpaca_chat, rows)
        ]
    )
    dtype = torch.bfloat16 if spec["bf16"] else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, attn_implementation="sdpa")
    settings = {
        "output_dir": tempfile.mkdtemp(prefix="trl-bench-"),
        "max_steps": spec["steps"],
        "per_device_train_batch_size": spec["effective_batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": spec["lr"],
        "max_length": spec["cutoff"],
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": spec["bf16"],
        "use_cpu": not torch.cuda.is_available(),
        "seed": spec["seed"],
        "disable_tqdm": True,
        **spec.get("trl_args", {}),
    }
    args = SFTConfig(**settings)
    lora = LoraConfig(
        r=spec["rank"],
        lora_alpha=spec["alpha"],
        lora_dropout=0.05,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=chats, processing_class=tokenizer, peft_config=lora
    )
    start = time.perf_counter()  # dataset preparation again, timed alone (an in-memory dataset has no cache)
    trainer._prepare_dataset(chats, tokenizer, args, args.packing, None, "train")
    prep = time.perf_counter() - start
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    clock = TrlClock(counter)
    trainer.add_callback(clock)
    seen = trl_data(trainer.train_dataset)
    trainer.train()
    settled = {k: getattr(args, k) for k in ("packing", "padding_free", "gradient_checkpointing")}
    return {
        "steps": clock.steps,
        "data": seen,
        "prep_seconds": prep,
        "settings": settled,
        **parameter_counts(trainer.model),
    }


def trl_data(dataset) -> dict:
    """Rows and trained (completion) tokens of TRL's prepared training set."""
    columns = dataset.column_names
    rows = sum(map(len, dataset["seq_lengths"])) if "seq_lengths" in columns else len(dataset)
    if "completion_mask" in columns:
        trained = sum(map(sum, dataset["completion_mask"]))
    else:
        trained = sum(sum(1 for t in labels if t != -100) for labels in dataset["labels"])
    return {"rows": rows, "trained_tokens": trained}


def run_sft(spec: dict) -> dict:
    """sft.train on the same rows, model and LoRA, composed from conf/ with the spec's overrides."""
    # sft.train's stack loads only in the process that runs it (not in a TRL worker).
    from hydra import compose, initialize_config_dir

    from ..config import validate
    from ..data.loading import system_prompt
    from ..data.preprocess import prepare
    from ..data.templates import get_template
    from ..train import train
    from ..training.model import load_tokenizer

    out = Path(spec["out_dir"])
    clock_path = out / "steps.json"
    overrides = [
        "data=alpaca_en",
        f"data.datasets.alpaca_en.path={spec['data']}",
        f"data.cutoff_len={spec['cutoff']}",
        "data.val_size=0",  # train on every row, as TRL does
        f"model.name_or_path={spec['model_dir']}",
        "model.gguf_file=null",
        f"model.dtype={'bfloat16' if spec['bf16'] else 'float32'}",
        f"lora.r={spec['rank']}",
        f"lora.alpha={spec['alpha']}",
        "lora.target=all",
        f"trainer.max_steps={spec['steps']}",
        f"trainer.effective_batch_size={spec['effective_batch']}",
        f"trainer.precision={'bf16-mixed' if spec['bf16'] else '32-true'}",
        f"trainer.eval_steps={spec['steps'] * 10}",
        "trainer.limit_val_batches=2",
        f"optimizer.lr={spec['lr']}",
        f"seed={spec['seed']}",
        "probe.enabled=false",
        "logger=csv",
        "overwrite=true",  # the bench's own directory: a rerun into it replaces the run
        f"paths.output_dir={out / 'run'}",
        f"paths.log_dir={out}",
        f"paths.cache_dir={spec['cache_dir']}",
        "+callbacks.bench._target_=sft.bench.clock.LightningClock",
        f"+callbacks.bench.path={clock_path}",
        *spec.get("sft_overrides", []),
    ]
    conf = CONF_DIR
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    typed = validate(cfg)
    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    template = get_template(typed.data.template, tokenizer, system_prompt(typed.data))
    with tempfile.TemporaryDirectory() as cache:  # cold, then a cache hit
        start = time.perf_counter()
        stats = prepare(typed.data, tokenizer, template, typed.seed, cache).stats
        cold = time.perf_counter() - start
        start = time.perf_counter()
        prepare(typed.data, tokenizer, template, typed.seed, cache)
        warm = time.perf_counter() - start
    train(cfg)
    recorded = json.loads(clock_path.read_text())
    seen = {"rows": stats.train, "trained_tokens": stats.train_trained_tokens}
    return {"prep_seconds": cold, "prep_cached_seconds": warm, "data": seen, **recorded}


def main() -> None:
    """Run the spec given as the first argument and write its result."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(spec["seed"])
    result = (run_trl if spec["trainer"] == "trl" else run_sft)(spec)
    result |= peak_memory()
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
