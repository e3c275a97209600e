"""Where the preparation steps get model text: an OpenAI-compatible endpoint or a local transformers model.

Both take a list of chat prompts and return one reply per prompt, or the error that request ended in, so
one failed request never loses the rest of a batch.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from omegaconf import DictConfig, OmegaConf

from ..config import ModelConfig
from ..errors import EndpointError, PrepareError
from ..serving.endpoint import Client


def reply_objects(text: str) -> list[object]:
    """Every top-level JSON object that parses in a model's reply, in order (fences and prose ignored)."""
    decoder, found, pos = json.JSONDecoder(), [], 0
    while (start := text.find("{", pos)) >= 0:
        try:
            value, end = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):  # deep nesting exhausts the decoder's recursion
            pos = start + 1
            continue
        found.append(value)
        pos = end
    return found


class EndpointBackend:
    """Chat completions from a URL, `concurrency` requests in flight, each retried with backoff."""

    def __init__(self, cfg: DictConfig):
        self.client = Client(
            cfg.url,
            cfg.model,
            cfg.api_key_env,
            cfg.timeout,
            cfg.retries,
            cfg.backoff,
            cfg.max_tokens,
            cfg.temperature,
        )
        self.batch_size = cfg.concurrency  # prompts per round: all of them in flight at once
        if not self.client.model:
            models = self.client.models()
            if not models:
                raise PrepareError(f"backend.model: not set and {cfg.url}/models lists none")
            self.client.model = models[0]
        self.name = f"{self.client.model} at {self.client.base_url}"

    def complete(self, prompts: list[list[dict]], **sampling) -> list[str | Exception]:
        """One reply (or its EndpointError) per prompt, in order."""

        def one(messages: list[dict]) -> str | Exception:
            try:
                return self.client.chat(messages, **sampling)
            except EndpointError as err:
                return err

        with ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            return list(pool.map(one, prompts))


class LocalBackend:
    """Sampled replies from a transformers model (the embedded SmolLM2 by default), in batches."""

    def __init__(self, cfg: DictConfig):
        import torch  # only a local model needs torch and transformers loaded

        from ..training.model import load_model, load_tokenizer

        model_cfg = ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
        self.tokenizer = load_tokenizer(model_cfg, cfg.cache_dir)
        device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(model_cfg, cfg.cache_dir).to(device).eval()
        self.batch_size, self.max_tokens = cfg.batch_size, cfg.max_tokens
        self.temperature, self.top_p = cfg.temperature, cfg.top_p
        self.name = f"{model_cfg.name_or_path or 'random tiny model'} on {device}"
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)

    def complete(self, prompts: list[list[dict]], **sampling) -> list[str | Exception]:
        """One sampled reply per prompt, in order."""
        from ..eval.generate import generate  # torch, as above: only a local model needs it

        return generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=sampling.get("max_tokens", self.max_tokens),
            batch_size=self.batch_size,
            temperature=sampling.get("temperature", self.temperature),
            top_p=sampling.get("top_p", self.top_p),
        )


def open_backend(cfg: DictConfig) -> EndpointBackend | LocalBackend:
    """The backend `cfg` describes (checked by the step's schema, sft.config.BACKENDS)."""
    backend = EndpointBackend(cfg) if cfg.kind == "endpoint" else LocalBackend(cfg)
    print(f"backend: {backend.name}", file=sys.stderr)
    return backend
