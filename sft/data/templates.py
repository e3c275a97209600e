"""Chat templates: each one renders a conversation to text; none of them decides the loss mask.

A template is a Jinja chat template in the Hugging Face format, so the exact same string is
saved with the tokenizer and used at generation time. `auto` takes the tokenizer's own.
"""

from __future__ import annotations

from dataclasses import dataclass

# ChatML (SmolLM2, Qwen): the end-of-turn token belongs to the assistant turn and is trained.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Template:
    """A named Jinja chat template, its stop string and its default system prompt."""

    name: str
    jinja: str
    stop: str
    default_system: str | None = None


_BUILTIN = {
    "chatml": Template("chatml", CHATML, "<|im_end|>"),
    "llama3": Template("llama3", LLAMA3, "<|eot_id|>"),
}


def get_template(name: str, tokenizer, default_system: str | None = None) -> Template:
    """Look up a template by name; `auto` wraps the tokenizer's own chat template."""
    if name == "auto":
        if not tokenizer.chat_template:
            raise ValueError(
                "data.template=auto, but the tokenizer has no chat template; pick one of chatml, llama3"
            )
        stop = tokenizer.eos_token or ""
        return Template("auto", tokenizer.chat_template, stop, default_system)
    if name not in _BUILTIN:
        raise ValueError(f"data.template={name!r}: unknown; available: {', '.join([*_BUILTIN, 'auto'])}")
    base = _BUILTIN[name]
    return Template(base.name, base.jinja, base.stop, default_system)


def render(tokenizer, template: Template, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render messages (system first, if any) to the template's text."""
    return tokenizer.apply_chat_template(
        messages, chat_template=template.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def with_system(conversation: dict, template: Template) -> list[dict]:
    """The conversation's messages with its system prompt (or the template default) in front."""
    system = conversation.get("system") or template.default_system
    head = [{"role": "system", "content": system}] if system else []
    return head + list(conversation["messages"])
