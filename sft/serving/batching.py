"""Continuous batching: one worker thread owns the model and decodes every running request together.

Requests join between steps (their prompts prefilled in the same forward as the others' next tokens) and leave
as soon as they finish or their client goes away, each with its own key/value cache (`kv`), sampler
(`sampling`) and reply text (`text`). A request's greedy tokens, and its seeded samples, are the same
whether it runs alone or beside others.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from . import kv
from .chat import eos_ids
from .sampling import Sampler
from .text import ReplyText

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """What one request asks for: prompt ids, a token budget, sampling and stop strings."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stops: list[str] = field(default_factory=list)
    strip: bool = False  # chat replies are stripped of surrounding whitespace, completions are not


@dataclass(frozen=True)
class Event:
    """A piece of a reply; the last one has a finish_reason (stop or length) or an error."""

    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    token_ids: tuple[int, ...] = ()
    content: str = ""  # the whole reply, on the last event

    @property
    def last(self) -> bool:
        """Whether no event follows this one."""
        return self.finish_reason is not None or self.error is not None


class _Sequence:
    """A request while it waits or runs: its cache, sampler, tokens so far and where its events go."""

    def __init__(self, generation: Generation, emit: Callable[[Event], None], tokenizer, device) -> None:
        self.generation, self.emit = generation, emit
        self.cache = kv.SequenceCache(len(generation.prompt_ids) + generation.max_new_tokens)
        self.sampler = Sampler(generation.temperature, generation.top_p, generation.seed, device)
        self.text = ReplyText(tokenizer, generation.stops, generation.strip)
        self.tokens: list[int] = []
        self.cancelled = self.done = False

    def new_ids(self) -> list[int]:
        """What this step feeds the model: the prompt on joining, then the last sampled token."""
        return self.tokens[-1:] if self.tokens else self.generation.prompt_ids

    def end(self, reason: str, text: str = "") -> None:
        """Send the last event."""
        self.done = True
        self.emit(
            Event(
                text=text,
                finish_reason=reason,
                prompt_tokens=len(self.generation.prompt_ids),
                token_ids=tuple(self.tokens),
                content=self.text.final or "",
            )
        )

    def fail(self, message: str) -> None:
        """Send an error as the last event."""
        self.done = True
        self.emit(Event(error=message))


class Engine:
    """Runs submitted generations in a dynamic batch on one worker thread."""

    def __init__(
        self,
        model,
        tokenizer,
        max_batch_size: int = 32,
        max_batch_tokens: int = 2048,
        threads: int | None = None,
    ) -> None:
        kv.install(model)
        self.model, self.tokenizer = model, tokenizer
        # The worker decodes with its own copy: a fast tokenizer shared across threads can fail with
        # "Already borrowed" when one thread changes its padding or truncation while another decodes.
        self._decoder = copy.deepcopy(tokenizer)
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.threads = threads
        self.eos = set(eos_ids(model, tokenizer))
        self.device = next(model.parameters()).device
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # touched by the worker only
        self._stopping = False
        self.steps, self.peak_batch = 0, 0
        self._thread = threading.Thread(target=self._loop, name="sft-serve-generation", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current step; requests still waiting or running get an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def load(self) -> dict:
        """How many requests are running and waiting."""
        return {"running": len(self._running), "waiting": len(self._waiting)}

    def submit(self, generation: Generation, emit: Callable[[Event], None]) -> _Sequence:
        """Queue a generation; `emit` gets its events on the worker thread. Returns a handle for cancel."""
        sequence = _Sequence(generation, emit, self._decoder, self.device)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._waiting.append(sequence)
            self._cond.notify_all()
        return sequence

    def cancel(self, sequence: _Sequence) -> None:
        """Drop a generation (its client left): out of the queue now, out of the batch by the next step."""
        with self._cond:
            sequence.cancelled = True
            if sequence in self._waiting:
                self._waiting.remove(sequence)
            self._cond.notify_all()

    async def events(self, generation: Generation) -> AsyncIterator[Event]:
        """A generation's events in the caller's event loop; closing the iterator early cancels it."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                pass

        sequence = self.submit(generation, emit)
        try:
            while True:
                event = await queue.get()
                yield event
                if event.last:
                    return
        finally:
            self.cancel(sequence)

    def _admit(self) -> list[_Sequence]:
        """Waiting sequences that join this step: batch slots free and prompt tokens within the budget."""
        joining, tokens = [], 0
        while self._waiting and len(self._running) + len(joining) < self.max_batch_size:
            size = len(self._waiting[0].generation.prompt_ids)
            if joining and tokens + size > self.max_batch_tokens:
                break
            joining.append(self._waiting.popleft())
            tokens += size
        return joining

    def _loop(self) -> None:
        """The worker: wait for work, then step the batch until nothing is left."""
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stopping or self._waiting or self._running):
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._running = [s for s in self._running if not s.cancelled]
                    joining = self._admit()
                batch = joining + self._running
                if not batch:
                    continue
                try:
                    self._step(batch)
                except Exception as err:  # one failed step must not take the server down with it
                    log.exception("generation step failed")
                    for sequence in batch:
                        sequence.fail(f"generation failed: {type(err).__name__}: {err}")
                    batch = []
                self._running = [s for s in batch if not s.done]
        with self._cond:
            left, self._waiting = [*self._waiting, *self._running], deque()
            self._running = []
        for sequence in left:
            sequence.fail("the server is shutting down")

    def _step(self, batch: list[_Sequence]) -> None:
        """One forward over the batch, one new token for each sequence."""
        logits = kv.forward(self.model, [(s.cache, s.new_ids()) for s in batch])
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(batch))
        for sequence, row in zip(batch, logits, strict=True):
            self._advance(sequence, sequence.sampler(row))

    def _advance(self, sequence: _Sequence, token: int) -> None:
        """Append a sampled token, send the text it settles, and end the sequence when it is done."""
        sequence.tokens.append(token)
        if token in self.eos:
            sequence.end("stop", sequence.text.finish(sequence.tokens[:-1]))
            return
        text, stopped = sequence.text.update(sequence.tokens)
        if stopped:
            sequence.end("stop", text)
        elif len(sequence.tokens) >= sequence.generation.max_new_tokens:
            sequence.end("length", text + sequence.text.finish(sequence.tokens))
        elif text:
            sequence.emit(Event(text=text))
