"""Write the trained result: a PEFT adapter (or a full model) with its tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel

from .data.templates import Template
from .io import publish_dir


def save_final(model, tokenizer, template: Template, run_dir: Path, state_dict: dict | None = None) -> Path:
    """Save `adapter/` (LoRA) or `model/` (full fine-tuning) atomically and return its path.

    `state_dict` holds the weights when the strategy sharded them (gathered by sft.strategy.full_state_dict).
    """
    is_adapter = isinstance(model, PeftModel)

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=state_dict)
        # The template the model was trained with is the one generation must use.
        tokenizer.chat_template = template.jinja
        tokenizer.save_pretrained(tmp)

    return publish_dir(build, Path(run_dir) / ("adapter" if is_adapter else "model"), overwrite=True)
