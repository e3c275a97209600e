"""A minimal client for OpenAI-compatible chat endpoints (vLLM, `python -m sft.serve`, the OpenAI API).

The standard library is enough for JSON over HTTP; the key is read from the environment per request and
never stored, logged or written anywhere.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

from ..errors import EndpointError

RETRY_STATUS = (429, 500, 502, 503, 504)


class Client:
    """A minimal OpenAI-compatible chat client: bearer key from an env var, timeout, retries with backoff."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_tokens: int = 512,
        temperature: float = 0.0,
    ) -> None:
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_tokens, self.temperature = max_tokens, temperature

    def headers(self) -> dict:
        """JSON content type, and the bearer key when its env var is set (read per request, never stored)."""
        key = os.environ.get(self.api_key_env)
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def request(self, path: str, payload: dict | None = None) -> dict:
        """GET (no payload) or POST JSON to `base_url + path`, retrying 429/5xx and connection errors."""
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base_url + path, data=data, headers=self.headers())
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:500]
                if err.code not in RETRY_STATUS or attempt == self.retries:
                    raise EndpointError(f"{self.base_url + path}: HTTP {err.code}: {detail}") from err
                failure = f"HTTP {err.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if attempt == self.retries:
                    raise EndpointError(f"{self.base_url + path}: {err}") from err
                failure = str(err)
            delay = self.backoff * 2**attempt
            print(f"{self.base_url}: {failure}; retrying in {delay:.1f}s", file=sys.stderr)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def models(self) -> list[str]:
        """Model ids the endpoint lists."""
        return [m["id"] for m in self.request("/models").get("data", [])]

    def chat(self, messages: list[dict], **sampling) -> str:
        """The model's reply to `messages`; `sampling` (temperature, top_p, ...) overrides the defaults."""
        payload = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens}
        payload |= {"temperature": self.temperature, **sampling}
        body = self.request("/chat/completions", payload)
        try:
            return body["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise EndpointError(
                f"{self.base_url}/chat/completions: unexpected response {str(body)[:300]}"
            ) from err
