"""The OpenAI request bodies this server accepts: each field checked, and a RequestError that names the first
bad one (its message starts with the field's name) for a 4xx with an OpenAI error body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jinja2 import TemplateError

from ..errors import RequestError

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4  # as the OpenAI API allows
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds

# Fields this server cannot honour, with the values that mean "not used": anything else is a 400, not a
# silently different answer.
_UNSUPPORTED_CHAT = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "functions": (None, []),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "response_format": (None, {"type": "text"}),
}
_UNSUPPORTED_COMPLETION = {
    "logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
}


class ModelNotFound(RequestError):
    """A `model` this server does not serve (404, as OpenAI answers)."""

    code = "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"model: {name!r} is not served here; GET /v1/models lists what is", "model", 404)


def error_body(message: str, param: str | None, kind: str = "invalid_request_error", code=None) -> dict:
    """The OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class Params:
    """A completion request's settings; `max_tokens` is None when the client left it to the server."""

    model: str | None
    max_tokens: int | None
    max_tokens_param: str
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    messages: list[dict] = field(default_factory=list)  # chat
    prompt: str | list[int] = ""  # completions: text, or token ids


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    """`body[key]` as a float in [low, high] (or (low, high]); a RequestError names the key otherwise."""
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (low < value if low_open else low <= value) or value > high:
        bound = "(" if low_open else "["
        raise RequestError(f"{key}: must be a number in {bound}{low}, {high}], got {value!r}", key)
    return float(value)


def _int(body: dict, key: str, default: int | None, low: int, high: int | None = None) -> int | None:
    """`body[key]` as an int in [low, high] (or the default when absent)."""
    value = body.get(key, default)
    if value is None:
        return default
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise RequestError(f"{key}: must be an integer {bound}, got {value!r}", key)
    return value


def _bool(body: dict, key: str) -> bool:
    """`body[key]` as a bool (false when absent)."""
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"{key}: must be true or false, got {value!r}", key)
    return bool(value)


def _content(content, where: str) -> str:
    """A message's text: a string, or OpenAI content parts of type text joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(f"{where}.content: must be a string (or a list of text parts)", f"{where}.content")


def parse_messages(messages) -> list[dict]:
    """Validated `[{role, content}]` with roles system/user/assistant."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: must be a non-empty list of {role, content} objects", "messages")
    parsed = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where}: must be an object with role and content", where)
        if message.get("role") not in ROLES:
            raise RequestError(f"{where}.role: one of {', '.join(ROLES)}, got {message.get('role')!r}", where)
        parsed.append({"role": message["role"], "content": _content(message.get("content"), where)})
    return parsed


def parse_prompt(prompt) -> str | list[int]:
    """A completions prompt: one string or one list of token ids (a list holding one of those is accepted)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and t >= 0 for t in prompt):
        return prompt
    raise RequestError("prompt: one non-empty string or list of token ids (one prompt per request)", "prompt")


def parse_stop(stop) -> list[str]:
    """The `stop` field as a list of non-empty strings (at most four)."""
    stops = [stop] if isinstance(stop, str) else stop or []
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise RequestError(f"stop: a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    return stops


def _unsupported(body: dict, table: dict) -> None:
    """A 400 naming the first field set to something this server cannot do."""
    for key, unused in table.items():
        if key in body and body[key] not in unused:
            raise RequestError(f"{key}: not supported by this server (got {body[key]!r})", key)


def _params(body, table: dict) -> dict:
    """The settings chat and completions share."""
    if not isinstance(body, dict):
        raise RequestError("body: must be a JSON object", "body")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"model: must be a string, got {model!r}", "model")
    if _int(body, "n", 1, 1) != 1:
        raise RequestError("n: only n=1 is supported", "n")
    _unsupported(body, table)
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise RequestError("stream_options: an object, allowed only with stream: true", "stream_options")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return {
        "model": model,
        "max_tokens": _int(body, key, None, 1),
        "max_tokens_param": key,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        "stop": parse_stop(body.get("stop")),
        "seed": _int(body, "seed", None, 0, MAX_SEED),
        "stream": stream,
        "include_usage": _bool(options or {}, "include_usage"),
    }


def parse_chat(body) -> Params:
    """The settings of a chat-completions body."""
    params = _params(body, _UNSUPPORTED_CHAT)
    return Params(**params, messages=parse_messages(body.get("messages")))


def parse_completion(body) -> Params:
    """The settings of a (text) completions body."""
    params = _params(body, _UNSUPPORTED_COMPLETION)
    return Params(**params, prompt=parse_prompt(body.get("prompt")))


def render(tokenizer, messages: list[dict]) -> str:
    """The prompt the model continues: the messages in its chat template, then the assistant header."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as err:  # e.g. a template that insists on alternating roles
        raise RequestError(f"messages: the chat template rejects them: {err}", "messages") from err


def budget(context: int | None, prompt_tokens: int, params: Params, default: int, where: str) -> int:
    """New tokens allowed: the request's max_tokens (a 400 when prompt and it exceed the context), or the
    server's default cut to what the context leaves after the prompt (`where`: the prompt's field)."""
    if context and prompt_tokens >= context:
        raise RequestError(f"{where}: the prompt is {prompt_tokens} tokens; the context is {context}", where)
    if params.max_tokens is None:
        return min(default, context - prompt_tokens) if context else default
    if context and prompt_tokens + params.max_tokens > context:
        key = params.max_tokens_param
        raise RequestError(
            f"{key}: {params.max_tokens} new tokens after a prompt of {prompt_tokens} exceed the "
            f"context of {context} tokens",
            key,
        )
    return params.max_tokens
