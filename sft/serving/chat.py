"""`python -m sft.chat run=<run or model dir>`: talk to a model, its replies streamed as they are generated.

A run directory is loaded the way `sft.serving.export` merges it (adapter on the rebuilt base, or model/); any
other transformers model directory (an export, a downloaded model) loads as it is. The prompt is always
rendered with the tokenizer's own chat template: for a run, the one it was trained with.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import hydra
import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, TextIteratorStreamer

from ..config import ChatConfig, check, checked_cli
from ..errors import ConfigError, ExportError
from ..locations import CONF_DIR
from ..run_dir import RunDir
from .export import load_run

HELP = "commands: /reset (clear history), /system <text> (set the system prompt; empty: default), /exit"
PROMPT = "you> "
REPLY = "assistant> "


def render_prompt(tokenizer, history: list[dict], system: str | None = None) -> str:
    """The text the model continues: system prompt, the turns so far (last one the user's), assistant header.

    Without a system prompt the template's own default (if it bakes one in) applies.
    """
    head = [{"role": "system", "content": system}] if system else []
    return tokenizer.apply_chat_template(head + history, tokenize=False, add_generation_prompt=True)


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply: the generation config's eos ids and the tokenizer's eos token."""
    eos = model.generation_config.eos_token_id
    ids = [*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None))


class _Interrupt(StoppingCriteria):
    """Stops generation from another thread (Ctrl+C while a reply streams)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class Chat:
    """A conversation with one model: multi-turn history, a system prompt and sampling settings."""

    def __init__(
        self,
        model,
        tokenizer,
        system: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.9,
    ) -> None:
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.history: list[dict] = []

    def reset(self) -> None:
        """Forget every turn (the system prompt stays)."""
        self.history = []

    def prompt(self, user: str) -> str:
        """The rendered prompt for the next user turn, after the history so far."""
        return render_prompt(self.tokenizer, [*self.history, {"role": "user", "content": user}], self.system)

    def fit(self, user: str) -> list[int]:
        """The next turn's prompt ids, dropping the oldest turns while it and the reply exceed the context."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        while True:
            ids = self.tokenizer(self.prompt(user), add_special_tokens=False)["input_ids"]
            if not limit or len(ids) + self.max_new_tokens <= limit or not self.history:
                return ids
            self.history = self.history[2:]  # one user turn and its reply

    def generation_kwargs(self) -> dict:
        """Sampling settings for `generate`: greedy when temperature is 0."""
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        # The model's generation config may ask for sampling (top_k too); greedy must override all of it.
        greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        pad = self.tokenizer.pad_token_id
        return {
            "max_new_tokens": self.max_new_tokens,
            "eos_token_id": eos_ids(self.model, self.tokenizer),
            "pad_token_id": self.tokenizer.eos_token_id if pad is None else pad,
            **(sampling if self.temperature > 0 else greedy),
        }

    def stream(self, user: str) -> Iterator[str]:
        """Generate the reply to `user` piece by piece; the turn joins the history once the reply is complete.

        Closing the iterator early (Ctrl+C) stops generation and leaves the history as it was.
        """
        device = next(self.model.parameters()).device
        ids = torch.tensor([self.fit(user)], device=device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        interrupt, failure = _Interrupt(), []

        def generate() -> None:
            try:
                self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    streamer=streamer,
                    stopping_criteria=[interrupt],
                    **self.generation_kwargs(),
                )
            except Exception as err:  # re-raised in the caller's thread; the streamer must still end
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        pieces = []
        try:
            for piece in streamer:
                pieces.append(piece)
                yield piece
        finally:
            interrupt.event.set()
            thread.join()
        if failure:
            raise failure[0]
        reply = "".join(pieces).strip()
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def command(chat: Chat, line: str, out: TextIO) -> bool:
    """Carry out a `/command`; False when it ends the chat."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        chat.reset()
        out.write("(history cleared)\n")
    elif name == "/system":
        chat.system = arg.strip() or None
        out.write("(system prompt set)\n" if chat.system else "(system prompt cleared: template default)\n")
    else:
        out.write(f"{HELP}\n")
    return True


def reply(chat: Chat, user: str, out: TextIO) -> None:
    """Stream one reply to `out`; Ctrl+C stops it (that turn is not kept) and the chat goes on."""
    out.write(REPLY)
    try:
        with contextlib.closing(chat.stream(user)) as pieces:
            for piece in pieces:
                out.write(piece)
                out.flush()
    except KeyboardInterrupt:
        out.write(" [stopped]")
    out.write("\n")
    out.flush()


def chat_loop(chat: Chat, lines: Iterable[str], out: TextIO) -> None:
    """Answer each user line until `/exit` or the end of the input; `/`-lines are commands."""
    for line in lines:
        if line.startswith("/"):
            if not command(chat, line.strip(), out):
                return
        elif line.strip():
            reply(chat, line.strip(), out)


def read_lines(prompt: str = PROMPT) -> Iterator[str]:
    """User lines from stdin with a prompt, until EOF (Ctrl+D) or Ctrl+C; piped lines are echoed."""
    echo = not sys.stdin.isatty()  # so a piped session's output reads as a transcript
    while True:
        try:
            line = input(prompt)
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if echo:
            print(line)
        yield line


def load(path: Path, cache_dir: str, dtype: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) of a run directory (config.yaml) or a transformers model directory (config.json)."""
    if not path.is_dir():
        raise ExportError(f"run={path}: no such directory")
    if RunDir(path).config.is_file():
        model, tokenizer = load_run(path, cache_dir, dtype)
    elif (path / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or "auto", trust_remote_code=trust_remote_code
        ).eval()
    else:
        raise ExportError(
            f"run={path}: neither a run directory (config.yaml with adapter/ or model/) "
            "nor a model directory (config.json)"
        )
    if not tokenizer.chat_template:
        raise ExportError(f"run={path}: the tokenizer has no chat template")
    return model, tokenizer


def load_on_device(cfg: DictConfig):
    """(model, tokenizer, device) of `cfg.run` placed on `cfg.device` (auto: the GPU when there is one)."""
    model, tokenizer = load(Path(cfg.run).expanduser(), cfg.cache_dir, cfg.dtype, cfg.trust_remote_code)
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), tokenizer, device


def open_chat(cfg: DictConfig) -> Chat:
    """Load the model named by `cfg.run` onto the device and start an empty conversation."""
    check(cfg, ChatConfig)
    model, tokenizer, device = load_on_device(cfg)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.run}: {params:,} parameters on {device} ({model.dtype}); {HELP}", file=sys.stderr)
    return Chat(model, tokenizer, cfg.system, cfg.max_new_tokens, cfg.temperature, cfg.top_p)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="chat")
def main(cfg: DictConfig) -> None:
    """`python -m sft.chat run=<dir>`; a wrong directory or setting exits 2 with its message."""
    try:
        chat = open_chat(cfg)
    except (ExportError, ConfigError) as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    chat_loop(chat, read_lines(), sys.stdout)


cli = checked_cli(main, ChatConfig)

if __name__ == "__main__":
    cli()
