"""`python -m sft.serve run=<run or model dir>`: a small OpenAI-compatible HTTP server over a tuned model.

Endpoints: `POST /v1/chat/completions` (non-streaming only; `n` must be 1), `GET /v1/models`, `GET /health`.
Prompts are rendered with the model's own chat template. One generation runs at a time (a lock): the
server is for evaluation and trying a model out, not for throughput. It has no authentication beyond an
optional shared bearer token (the env var named by `api_key_env`), so it binds 127.0.0.1 and refuses any
other interface unless `allow_remote=true`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hydra
import torch
from jinja2 import TemplateError
from omegaconf import DictConfig
from transformers import StoppingCriteria

from ..config import ServeConfig, check, checked_cli
from ..errors import ConfigError, ExportError, RequestError
from ..locations import CONF_DIR
from .chat import eos_ids, load_on_device

ROLES = ("system", "user", "assistant")
MAX_BODY = 4 * 2**20  # a chat request is text; anything larger is a mistake or abuse
MAX_STOPS = 4  # as the OpenAI API allows


def error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict:
    """The OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


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


def _int(body: dict, key: str, default: int | None, low: int) -> int | None:
    """`body[key]` as an int >= low (or the default when absent)."""
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise RequestError(f"{key}: must be an integer >= {low}, got {value!r}", key)
    return value


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


def parse_request(body, default_max_tokens: int = 256) -> dict:
    """The generation settings of a chat-completions body; a RequestError names the first bad field."""
    if not isinstance(body, dict):
        raise RequestError("body: must be a JSON object", "body")
    if body.get("stream"):
        raise RequestError(
            "stream: streaming is not supported by this server; omit it or set false", "stream"
        )
    if _int(body, "n", 1, 1) != 1:
        raise RequestError("n: only n=1 is supported", "n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return {
        "messages": parse_messages(body.get("messages")),
        "max_tokens": _int(body, key, default_max_tokens, 1),
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        "stop": parse_stop(body.get("stop")),
        "seed": _int(body, "seed", None, 0),
    }


def render(tokenizer, messages: list[dict]) -> str:
    """The prompt the model continues: the messages in its chat template, then the assistant header."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as err:  # e.g. a template that insists on alternating roles
        raise RequestError(f"messages: the chat template rejects them: {err}", "messages") from err


class _StopText(StoppingCriteria):
    """Ends generation once the new text contains one of the request's stop strings."""

    def __init__(self, tokenizer, stops: list[str], start: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, start

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        text = self.tokenizer.decode(input_ids[0, self.start :], skip_special_tokens=True)
        done = any(stop in text for stop in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def sampling(temperature: float, top_p: float) -> dict:
    """`generate` settings: greedy at temperature 0, overriding what the model's generation config asks."""
    if temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}


def budget(model, prompt_tokens: int, max_tokens: int) -> int:
    """New tokens allowed: `max_tokens`, cut to what the context has left after the prompt."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and prompt_tokens >= limit:
        raise RequestError(
            f"messages: the prompt is {prompt_tokens} tokens; the context is {limit}", "messages"
        )
    return min(max_tokens, limit - prompt_tokens) if limit else max_tokens


@torch.inference_mode()
def complete(model, tokenizer, request: dict) -> dict:
    """Generate one reply: {content, finish_reason, prompt_tokens, completion_tokens}."""
    device = next(model.parameters()).device
    ids = tokenizer(render(tokenizer, request["messages"]), add_special_tokens=False, return_tensors="pt")
    ids = ids["input_ids"].to(device)
    prompt_tokens = ids.shape[1]
    limit = budget(model, prompt_tokens, request["max_tokens"])
    stops, pad = request["stop"], tokenizer.pad_token_id
    if request["seed"] is not None:
        torch.manual_seed(request["seed"])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=limit,
        eos_token_id=eos_ids(model, tokenizer),
        pad_token_id=tokenizer.eos_token_id if pad is None else pad,
        stopping_criteria=[_StopText(tokenizer, stops, prompt_tokens)] if stops else None,
        **sampling(request["temperature"], request["top_p"]),
    )
    new = out[0, prompt_tokens:].tolist()
    return finish(tokenizer, new, stops, eos_ids(model, tokenizer), limit) | {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(new),
    }


def finish(tokenizer, new: list[int], stops: list[str], eos: list[int], limit: int) -> dict:
    """The reply text (cut before the first stop string) and why generation ended."""
    text = tokenizer.decode(new, skip_special_tokens=True)
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    if cuts:
        return {"content": text[: min(cuts)].strip(), "finish_reason": "stop"}
    ended = bool(new) and new[-1] in eos
    reason = "length" if not ended and len(new) >= limit else "stop"
    return {"content": text.strip(), "finish_reason": reason}


def response(name: str, result: dict) -> dict:
    """The chat.completion object for one generated reply."""
    usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"]}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": result["content"]},
        "finish_reason": result["finish_reason"],
        "logprobs": None,
    }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [choice],
        "usage": usage,
    }


def authorized(header: str | None, api_key_env: str) -> bool:
    """Whether the Authorization header carries the key in `$api_key_env` (always true when it is unset)."""
    key = os.environ.get(api_key_env)
    if not key:
        return True
    scheme, _, token = (header or "").partition(" ")
    # Constant-time: the key must not leak through response timing.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the server's model; the server object carries the model, name and lock."""

    server_version = "sft-serve"

    def log_message(self, format: str, *args) -> None:
        """Access log on stderr (request line and status only, never headers: they may carry the key)."""
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        """Write `payload` as a JSON response."""
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        """The request body (bounded by MAX_BODY)."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as err:
            raise RequestError("Content-Length: not an integer", "Content-Length") from err
        if length > MAX_BODY:
            raise RequestError(f"body: larger than {MAX_BODY} bytes", "body", status=413)
        return self.rfile.read(length) if length > 0 else b""

    def check_auth(self) -> bool:
        """Answer 401 and return False unless the request carries the configured bearer token."""
        if authorized(self.headers.get("Authorization"), self.server.api_key_env):
            return True
        message = "missing or wrong API key: send 'Authorization: Bearer <key>'"
        self.send_json(401, error_body(message, None, "authentication_error"), {"WWW-Authenticate": "Bearer"})
        return False

    def do_GET(self) -> None:
        """`/health` (open, so liveness probes need no key) and `/v1/models`."""
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self.send_json(200, {"status": "ok", "model": self.server.name})
        elif path == "/v1/models":
            if self.check_auth():
                model = {"id": self.server.name, "object": "model", "created": self.server.created}
                self.send_json(200, {"object": "list", "data": [model | {"owned_by": "sft"}]})
        else:
            self.send_json(404, error_body(f"no route GET {path}", None))

    def do_POST(self) -> None:
        """`/v1/chat/completions`."""
        path = self.path.split("?")[0].rstrip("/")
        try:
            # Read the body before answering anything: closing on unread data can reset the connection.
            raw = self.read_body()
            if not self.check_auth():
                return
            if path != "/v1/chat/completions":
                raise RequestError(f"no route POST {path}", None, status=404)
            self.send_json(200, self.chat(raw))
        except RequestError as err:
            self.send_json(err.status, error_body(str(err), err.param))
        except Exception as err:  # a generation failure must reach the client, not kill the thread silently
            self.send_json(
                500, error_body(f"generation failed: {type(err).__name__}: {err}", None, "server_error")
            )

    def chat(self, raw: bytes) -> dict:
        """Parse, generate (one at a time) and shape a chat completion."""
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"body: not valid JSON ({err})", "body") from err
        request = parse_request(body, self.server.default_max_tokens)
        with self.server.lock:  # one model, one generation: concurrent generate calls would fight for memory
            result = complete(self.server.model, self.server.tokenizer, request)
        return response(self.server.name, result)


def make_server(
    model,
    tokenizer,
    name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str = "SFT_SERVE_API_KEY",
    default_max_tokens: int = 256,
    quiet: bool = False,
) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server over `model`; port 0 picks a free port (see `server_address`).

    The key in `$api_key_env` is read per request, so setting or clearing it takes effect at once.
    """
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.model, server.tokenizer, server.name = model, tokenizer, name
    server.api_key_env, server.default_max_tokens, server.quiet = api_key_env, default_max_tokens, quiet
    server.lock, server.created = threading.Lock(), int(time.time())
    return server


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def option_problems(cfg: DictConfig) -> list[str]:
    """A host that would serve other machines without allow_remote (each setting's own range is checked by
    its schema, ServeConfig)."""
    problems = []
    if not is_loopback(str(cfg.host)) and not cfg.allow_remote:
        problems.append(
            f"host={cfg.host}: not a loopback address and the server has no authentication beyond an "
            "optional shared key; set allow_remote=true to bind it anyway"
        )
    return problems


def open_server(cfg: DictConfig) -> ThreadingHTTPServer:
    """Check the settings, load the model onto its device and bind the server."""
    check(cfg, ServeConfig)
    problems = option_problems(cfg)
    if problems:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
    model, tokenizer, _ = load_on_device(cfg)
    name = cfg.model_name or Path(cfg.run).expanduser().resolve().name
    return make_server(model, tokenizer, name, cfg.host, cfg.port, cfg.api_key_env, cfg.max_tokens)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    """`python -m sft.serve run=<dir>`; a wrong directory or setting exits 2 with its message."""
    try:
        server = open_server(cfg)
    except (ExportError, ConfigError, OSError) as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    host, port = server.server_address[:2]
    keyed = f"; requests need the key in ${cfg.api_key_env}" if os.environ.get(cfg.api_key_env) else ""
    print(f"serving {server.name} at http://{host}:{port}/v1 (one request at a time, no streaming{keyed})")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


cli = checked_cli(main, ServeConfig)

if __name__ == "__main__":
    cli()
