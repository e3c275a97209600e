"""Chat templates: each one renders a conversation to text; none of them decides the loss mask.

A template is a Jinja chat template in the Hugging Face format, so the exact same string is
saved with the tokenizer and used at generation time. `auto` takes the tokenizer's own.

Every built-in template wraps the trained part of each assistant turn (its content or tool-call
text and its end-of-turn token) in `{% generation %}`, so `apply_chat_template(...,
return_assistant_tokens_mask=True)` marks the same tokens that `tokenize.encode` trains.
The configured default system prompt is baked into the Jinja text, so generation with the
saved template uses it too.

Reasoning: `qwen3` (ChatML markup) and `deepseek_r1` render an assistant message's `reasoning_content`
as `<think>\n...\n</think>\n\n` in front of its answer, inside the trained span; a message without
one renders no think block. Unlike the models' own templates, which drop the reasoning of turns
before the last user message at inference, every turn renders the reasoning its data holds: the
prefix rule the masks are derived from needs each turn rendered the same way in every prefix.
Templates without reasoning support refuse rows that carry reasoning (see `tokenize.encode`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Every tag trims the whitespace around it (`{%-`, `{{-`), so the layout below is for reading only.
_SYSTEM = r"""
{%- if messages and messages[0].role == 'system' %}
    {%- set system = messages[0].content %}
{%- else %}
    {%- set system = @DEFAULT_SYSTEM@ %}
{%- endif %}
"""

# Tool-call `arguments` follow the HF convention (a dict); a JSON string is passed through untouched.
_ARGUMENTS = r"""
{%- if call.arguments is string %}
    {{- call.arguments }}
{%- else %}
    {{- call.arguments | tojson }}
{%- endif %}
"""

# An answer's reasoning trace in front of its text, Qwen3 and DeepSeek-R1 style.
_THINK = r"""
{%- if message.reasoning_content is defined and message.reasoning_content is not none %}
    {{- '<think>\n' + message.reasoning_content + '\n</think>\n\n' }}
{%- endif %}
"""

# ChatML in the Qwen2.5 layout; tools the Hermes / Qwen2.5 way. @THINK@: Qwen3's reasoning block.
_CHATML = r"""
@SYSTEM@
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if system is not none %}
        {{- system + '\n\n' }}
    {%- endif %}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' + tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments ' }}
    {{- 'within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif system is not none %}
    {{- '<|im_start|>system\n' + system + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
            @THINK@
            {%- if message.content %}
                {{- message.content }}
            {%- endif %}
            {%- for tool_call in message.tool_calls or [] %}
                {%- set call = tool_call.function if tool_call.function is defined else tool_call %}
                {%- if message.content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' + call.name + '", "arguments": ' }}
                @ARGUMENTS@
                {{- '}\n</tool_call>' }}
            {%- endfor %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {#- Consecutive tool results share one user turn. #}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- elif not (loop.first and message.role == 'system') %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Llama 3 headers; tools Llama 3.1 style (schemas in the system block, JSON calls, `ipython` results).
# Several calls in one turn go one JSON object per line (Llama 3.1 itself allows only one).
_LLAMA3 = r"""
{%- if bos_token is defined and bos_token %}
    {{- bos_token }}
{%- endif %}
@SYSTEM@
{%- if tools or system is not none %}
    {{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
    {%- if tools %}
        {{- 'Environment: ipython\n\nYou have access to the following functions. To call a function, ' }}
        {{- 'please respond with JSON for a function call. Respond in the format {"name": function name, ' }}
        {{- '"parameters": dictionary of argument name and its value}. Do not use variables.\n\n' }}
        {%- for tool in tools %}
            {{- tool | tojson(indent=4) + '\n\n' }}
        {%- endfor %}
    {%- endif %}
    {%- if system is not none %}
        {{- system | trim }}
    {%- endif %}
    {{- '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- generation %}
            {%- if message.content %}
                {{- message.content | trim }}
            {%- endif %}
            {%- for tool_call in message.tool_calls or [] %}
                {%- set call = tool_call.function if tool_call.function is defined else tool_call %}
                {%- if message.content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '{"name": "' + call.name + '", "parameters": ' }}
                @ARGUMENTS@
                {{- '}' }}
            {%- endfor %}
            {{- '<|eot_id|>' }}
        {%- endgeneration %}
    {%- elif message.role == 'tool' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' }}
    {%- elif not (loop.first and message.role == 'system') %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content | trim }}
        {{- '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Alpaca instruction / response blocks; every response ends with the tokenizer's eos_token.
_ALPACA = r"""
{%- if tools %}
    {{- raise_exception('the alpaca template cannot render tools or tool calls') }}
{%- endif %}
@SYSTEM@
{%- if system is not none %}
    {{- system + '\n\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {{- '### Instruction:\n' + message.content + '\n\n' }}
    {%- elif message.role == 'assistant' and not message.tool_calls %}
        {{- '### Response:\n' }}
        {%- generation %}
            {{- message.content + eos_token }}
        {%- endgeneration %}
        {{- '\n\n' }}
    {%- elif message.tool_calls or message.role == 'tool' %}
        {{- raise_exception('the alpaca template cannot render tools or tool calls') }}
    {%- elif not (loop.first and message.role == 'system') %}
        {{- raise_exception('the alpaca template cannot render a ' + message.role + ' message here') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '### Response:\n' }}
{%- endif %}
"""


# DeepSeek-R1's markup (no tools); the answer ends with its end-of-sentence token.
_DEEPSEEK_R1 = r"""
{%- if tools %}
    {{- raise_exception('the deepseek_r1 template cannot render tools or tool calls') }}
{%- endif %}
{%- if bos_token is defined and bos_token %}
    {{- bos_token }}
{%- endif %}
@SYSTEM@
{%- if system is not none %}
    {{- system }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {{- '<｜User｜>' + message.content }}
    {%- elif message.role == 'assistant' and not message.tool_calls %}
        {{- '<｜Assistant｜>' }}
        {%- generation %}
            @THINK@
            {{- message.content + '<｜end▁of▁sentence｜>' }}
        {%- endgeneration %}
    {%- elif message.tool_calls or message.role == 'tool' %}
        {{- raise_exception('the deepseek_r1 template cannot render tools or tool calls') }}
    {%- elif not (loop.first and message.role == 'system') %}
        {{- raise_exception('the deepseek_r1 template cannot render a ' + message.role + ' message here') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<｜Assistant｜>' }}
{%- endif %}
"""
DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"


def _literal(text: str | None) -> str:
    """A Jinja expression for `text`: Python's repr escapes are exactly the ones Jinja's lexer undoes."""
    return "none" if text is None else repr(text)


def _build(body: str, default_system: str | None, think: bool = False) -> str:
    """A template's Jinja text with the default system prompt baked in, and the reasoning block if `think`."""
    system = _SYSTEM.strip().replace("@DEFAULT_SYSTEM@", _literal(default_system))
    text = body.strip().replace("@SYSTEM@", system).replace("@ARGUMENTS@", _ARGUMENTS.strip())
    # Without reasoning the placeholder's line goes entirely, so chatml's text stays what it always was.
    block = _THINK.strip() + "\n" if think else ""
    return re.sub(r"^[ \t]*@THINK@\n", lambda _: block, text, flags=re.MULTILINE)


def chatml_jinja(default_system: str | None = None) -> str:
    """ChatML (Qwen2.5 layout, Hermes tool calls) with an optional default system prompt."""
    return _build(_CHATML, default_system)


def qwen3_jinja(default_system: str | None = None) -> str:
    """ChatML with Qwen3's reasoning block in front of an answer that has a reasoning trace."""
    return _build(_CHATML, default_system, think=True)


def deepseek_r1_jinja(default_system: str | None = None) -> str:
    """DeepSeek-R1 markup with the reasoning block (no tools), with an optional default system prompt."""
    return _build(_DEEPSEEK_R1, default_system, think=True)


def llama3_jinja(default_system: str | None = None) -> str:
    """Llama 3 (Llama 3.1-style tools) with an optional default system prompt."""
    return _build(_LLAMA3, default_system)


def alpaca_jinja(default_system: str | None = None) -> str:
    """Alpaca (no tools) with an optional default system prompt at the top."""
    return _build(_ALPACA, default_system)


# ChatML without a default system prompt (the byte tokenizer in sft/training/model.py carries it).
CHATML = chatml_jinja()


@dataclass(frozen=True)
class Template:
    """A named Jinja chat template, its stop string, its default system prompt, tool and reasoning support."""

    name: str
    jinja: str
    stop: str
    default_system: str | None = None
    supports_tools: bool = True
    supports_reasoning: bool = False


BUILTIN = ("chatml", "qwen", "qwen3", "llama3", "alpaca", "deepseek_r1")
# The built-in templates that render reasoning traces (named in the refusal of a row with reasoning).
THINKING = ("qwen3", "deepseek_r1")


def get_template(name: str, tokenizer, default_system: str | None = None) -> Template:
    """Look up a template by name; a non-None `default_system` replaces the template's own default."""
    if name == "auto":
        jinja = tokenizer.chat_template
        if not jinja or not isinstance(jinja, str):
            raise ValueError(
                "data.template=auto, but the tokenizer has no (single) chat template; "
                f"pick one of {', '.join(BUILTIN)}"
            )
        # A tokenizer's own template that never mentions tool calls (or reasoning) would silently drop them.
        return Template(
            "auto",
            jinja,
            tokenizer.eos_token or "",
            default_system,
            "tool_calls" in jinja,
            "reasoning_content" in jinja,
        )
    if name == "qwen":
        system = QWEN_SYSTEM if default_system is None else default_system
        return Template("qwen", chatml_jinja(system or None), "<|im_end|>", system or None)
    if name == "qwen3":
        jinja = qwen3_jinja(default_system or None)
        return Template("qwen3", jinja, "<|im_end|>", default_system or None, supports_reasoning=True)
    if name == "deepseek_r1":
        system = default_system or None
        jinja = deepseek_r1_jinja(system)
        return Template("deepseek_r1", jinja, DEEPSEEK_EOS, system, False, supports_reasoning=True)
    if name == "chatml":
        return Template("chatml", chatml_jinja(default_system or None), "<|im_end|>", default_system or None)
    if name == "llama3":
        return Template("llama3", llama3_jinja(default_system or None), "<|eot_id|>", default_system or None)
    if name == "alpaca":
        if not tokenizer.eos_token:
            raise ValueError("data.template=alpaca ends each response with eos_token; the tokenizer has none")
        jinja = alpaca_jinja(default_system or None)
        return Template("alpaca", jinja, tokenizer.eos_token, default_system or None, supports_tools=False)
    raise ValueError(f"data.template={name!r}: unknown; available: {', '.join([*BUILTIN, 'auto'])}")


def render(
    tokenizer,
    template: Template,
    messages: list[dict],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """Render messages (system first, if any) and tool schemas to the template's text."""
    return tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        chat_template=template.jinja,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def with_system(conversation: dict, template: Template) -> list[dict]:
    """The conversation's messages with its system prompt (or the template default) in front."""
    system = conversation.get("system") or template.default_system
    head = [{"role": "system", "content": system}] if system else []
    return head + list(conversation["messages"])


def generation_prompt(tokenizer, template: Template, prompt: str) -> str:
    """One user turn (after the template's default system prompt), rendered up to the assistant's reply."""
    messages = with_system({"messages": [{"role": "user", "content": prompt}]}, template)
    return render(tokenizer, template, messages, add_generation_prompt=True)
