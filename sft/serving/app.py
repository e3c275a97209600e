"""The HTTP side of the server: a Starlette app with the OpenAI routes over a batching Engine.

Bodies are parsed and prompts tokenized here, on the event loop; generation happens on the engine's
thread, its events arriving through an asyncio queue. A client that goes away (mid-stream, or while it
waits for a whole reply) has its generation cancelled, which frees its place in the batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import RequestError
from .batching import Engine, Event, Generation
from .protocol import ModelNotFound, Params, budget, error_body, parse_chat, parse_completion, render
from .responses import DONE, Shape, sse

log = logging.getLogger(__name__)
MAX_BODY = 4 * 2**20  # a request is text; anything larger is a mistake or abuse


def authorized(header: str | None, api_key_env: str) -> bool:
    """Whether the Authorization header carries the key in `$api_key_env` (always true when it is unset)."""
    key = os.environ.get(api_key_env)
    if not key:
        return True
    scheme, _, token = (header or "").partition(" ")
    # Constant-time: the key must not leak through response timing.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def error(
    status: int, message: str, param: str | None = None, kind: str | None = None, code=None
) -> Response:
    """An OpenAI error response."""
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse(error_body(message, param, kind, code), status_code=status)


class Api:
    """The routes' state: engine, tokenizer, served name, key variable and default max_tokens."""

    def __init__(self, engine: Engine, name: str, api_key_env: str, default_max_tokens: int) -> None:
        self.engine, self.tokenizer, self.name = engine, engine.tokenizer, name
        self.api_key_env, self.default_max_tokens = api_key_env, default_max_tokens
        self.context = getattr(engine.model.config, "max_position_embeddings", None)
        self.created = int(time.time())

    async def health(self, request: Request) -> Response:
        """Liveness and load (open, so probes need no key)."""
        return JSONResponse({"status": "ok", "model": self.name, **self.engine.load()})

    async def models(self, request: Request) -> Response:
        """The one served model."""
        if denied := self.check_auth(request):
            return denied
        model = {"id": self.name, "object": "model", "created": self.created, "owned_by": "sft"}
        return JSONResponse({"object": "list", "data": [model]})

    async def chat(self, request: Request) -> Response:
        """POST /v1/chat/completions."""
        return await self.complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions."""
        return await self.complete(request, chat=False)

    def check_auth(self, request: Request) -> Response | None:
        """A 401 unless the request carries the configured bearer key."""
        if authorized(request.headers.get("authorization"), self.api_key_env):
            return None
        response = error(
            401, "missing or wrong API key: send 'Authorization: Bearer <key>'", None, "authentication_error"
        )
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def complete(self, request: Request, chat: bool) -> Response:
        """Parse, check and run one completion, streamed or whole."""
        try:
            # The body is read before answering anything: closing on unread data can reset the connection.
            raw = await read_body(request)
            if denied := self.check_auth(request):
                return denied
            params = (parse_chat if chat else parse_completion)(parse_json(raw))
            if params.model is not None and params.model != self.name:
                raise ModelNotFound(params.model)
            generation = self.generation(params, chat)
        except RequestError as err:
            return error(err.status, str(err), err.param, code=getattr(err, "code", None))
        shape = Shape(self.name, chat)
        if params.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            stream = self.stream(generation, shape, params.include_usage)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        return await self.whole(request, generation, shape)

    def generation(self, params: Params, chat: bool) -> Generation:
        """The prompt tokenized (chat: in the model's template) and the request's settings, checked."""
        if chat:
            text = render(self.tokenizer, params.messages)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template has them
        elif isinstance(params.prompt, str):
            ids = self.tokenizer(params.prompt)["input_ids"]
        else:
            ids = params.prompt
            if max(ids) >= len(self.tokenizer):
                raise RequestError(f"prompt: token id {max(ids)} is not in the vocabulary", "prompt")
        where = "messages" if chat else "prompt"
        if not ids:
            raise RequestError(f"{where}: the prompt comes to no tokens", where)
        limit = budget(self.context, len(ids), params, self.default_max_tokens, where)
        return Generation(
            prompt_ids=list(ids),
            max_new_tokens=limit,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stops=params.stop,
            strip=chat,
        )

    async def whole(self, request: Request, generation: Generation, shape: Shape) -> Response:
        """Wait for the whole reply; a client that disconnects meanwhile cancels it."""

        async def collect() -> Event:
            async for event in self.engine.events(generation):
                if event.last:
                    return event
            raise RuntimeError("generation ended without a last event")

        task = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(disconnected(request))
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not task.done():  # the client left: stop generating for it (closes the events, which cancels)
            task.cancel()
            return Response(status_code=499)
        event = task.result()
        if event.error:
            return error(500, event.error)
        content = event.content
        return JSONResponse(
            shape.whole(content, event.finish_reason, event.prompt_tokens, len(event.token_ids))
        )

    async def stream(self, generation: Generation, shape: Shape, include_usage: bool):
        """The server-sent events of a streamed reply, ending with [DONE].

        Starlette cancels this generator when the client disconnects; leaving the `async for` closes the
        engine's events, which cancels the generation.
        """
        if shape.chat:
            yield sse(shape.chunk(role=True))
        async for event in self.engine.events(generation):
            if event.error:
                yield sse(error_body(event.error, None, "server_error"))
                break
            if event.text:
                yield sse(shape.chunk(event.text))
            if event.finish_reason:
                yield sse(shape.chunk(finish_reason=event.finish_reason))
                if include_usage:
                    yield sse(shape.usage_chunk(event.prompt_tokens, len(event.token_ids)))
        yield DONE


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) past MAX_BODY."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise RequestError(
            f"body: larger than {MAX_BODY} bytes (or a bad Content-Length)", "body", status=413
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestError(f"body: larger than {MAX_BODY} bytes", "body", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes):
    """The body as JSON; a 400 naming `body` otherwise."""
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"body: not valid JSON ({err})", "body") from err


async def disconnected(request: Request) -> None:
    """Return once the client has gone away (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 and 405 as OpenAI error bodies."""
    return error(exc.status_code, f"no route {request.method} {request.url.path}")


async def server_error(request: Request, exc: Exception) -> Response:
    """Anything unexpected: a 500 with the reason, and the traceback in the log."""
    log.exception("request failed", exc_info=exc)
    return error(500, f"server error: {type(exc).__name__}: {exc}")


def build_app(engine: Engine, name: str, api_key_env: str, default_max_tokens: int) -> Starlette:
    """The ASGI app over `engine` (which the caller starts and stops)."""
    api = Api(engine, name, api_key_env, default_max_tokens)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    handlers = {HTTPException: http_error, Exception: server_error}
    return Starlette(routes=routes, exception_handlers=handlers)
