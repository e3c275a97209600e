"""OpenAI response objects: chat.completion, text_completion and their chunks as server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict | str) -> bytes:
    """One server-sent event carrying `payload` (JSON, or a literal such as [DONE])."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")


@dataclass
class Shape:
    """Builds the objects of one reply: `chat` (chat.completion) or text_completion."""

    model: str
    chat: bool
    id: str = field(default="")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _object(self, kind: str, choices: list) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def whole(self, content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
        """The non-streamed response."""
        if self.chat:
            message = {"role": "assistant", "content": content}
            choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
            body = self._object("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": content, "finish_reason": finish_reason, "logprobs": None}
            body = self._object("text_completion", [choice])
        return body | {"usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, text: str | None = None, finish_reason: str | None = None, role: bool = False) -> dict:
        """One streamed chunk: new text, or the finish reason (a chat stream's first chunk names the role)."""
        if self.chat:
            delta = (
                {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            )
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return self._object("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return self._object("text_completion", [choice])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        """The chunk `stream_options.include_usage` asks for: no choices, the usage."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, []) | {"usage": usage(prompt_tokens, completion_tokens)}
