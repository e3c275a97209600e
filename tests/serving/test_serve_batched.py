"""`sft.serve` through the official `openai` client: chat and text completions, whole and streamed, stop
strings, seeds, usage, errors, a client that disconnects, and continuous batching that changes no output.

One server over the random tiny model for the module, in-process on a free port.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from conftest import compose_train, load_script
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sft.config import ModelConfig
from sft.serving import kv
from sft.serving.batching import Generation
from sft.serving.chat import eos_ids, load
from sft.serving.serve import make_server
from sft.serving.text import ReplyText
from sft.training.model import resolve_source

USER = [{"role": "user", "content": "Name a colour."}]
BATCH = 8  # the server's max_batch_size: small, so the load test also queues


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, cache_dir):
    """(model, tokenizer) of the random tiny model (a model directory, as `sft.serve run=<dir>` loads it)."""
    cfg = compose_train(
        tmp_path_factory.mktemp("tiny"), tmp_path_factory.mktemp("logs"), cache_dir, "model=tiny"
    )
    GlobalHydra.instance().clear()
    source = resolve_source(ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True)), str(cache_dir))
    return load(Path(source), str(cache_dir))


@pytest.fixture(scope="module")
def server(loaded):
    """The running server (its engine is reachable as `server.engine`)."""
    served = make_server(*loaded, "tiny", "127.0.0.1", 0, quiet=True, max_batch_size=BATCH, threads=1)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def url(server) -> str:
    """The server's OpenAI base URL."""
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    """A synchronous client that never retries (a retry would hide a failure)."""
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def chat_ids(tokenizer, messages=USER) -> list[int]:
    """The prompt ids the server builds for `messages`."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def streamed_chat(client, **kwargs) -> tuple[str, str, list, object]:
    """(joined content, finish reason, every chunk, usage) of a streamed chat completion."""
    chunks = list(client.chat.completions.create(model="tiny", messages=USER, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    return text, finish[0], chunks, chunks[-1].usage


def wait_idle(server, seconds: float = 20) -> None:
    """Wait until the engine has nothing running or waiting."""
    deadline = time.monotonic() + seconds
    while server.engine.load() != {"running": 0, "waiting": 0}:
        assert time.monotonic() < deadline, f"still busy: {server.engine.load()}"
        time.sleep(0.05)


# --- whole and streamed, chat and completions ---


def test_chat_whole_and_streamed_say_the_same(client, loaded):
    whole = client.chat.completions.create(model="tiny", messages=USER, max_tokens=24, temperature=0)
    assert whole.object == "chat.completion" and whole.model == "tiny" and whole.id.startswith("chatcmpl-")
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    prompt_tokens = len(chat_ids(loaded[1]))
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (prompt_tokens, 24)
    assert whole.usage.total_tokens == prompt_tokens + 24

    text, finish, chunks, usage = streamed_chat(
        client, max_tokens=24, temperature=0, stream_options={"include_usage": True}
    )
    assert (text, finish) == (choice.message.content, "length")
    assert chunks[0].choices[0].delta.role == "assistant" and all(
        c.object == "chat.completion.chunk" for c in chunks
    )
    assert chunks[-1].choices == [] and usage.model_dump() == whole.usage.model_dump()
    _, _, chunks, usage = streamed_chat(client, max_tokens=4, temperature=0)
    assert usage is None and all(c.choices for c in chunks)  # no usage chunk unless asked


def test_completions_whole_and_streamed(client, loaded):
    prompt = "The capital of France is"
    whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert (
        whole.usage.prompt_tokens == len(loaded[1](prompt)["input_ids"])
        and whole.usage.completion_tokens == 16
    )
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    )  # not stripped either
    assert chunks[-1].usage.completion_tokens == 16
    ids = loaded[1](prompt)["input_ids"]
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=16, temperature=0)
    assert by_ids.choices[0].text == whole.choices[0].text


def test_the_stream_is_server_sent_events_ending_with_done(url):
    body = {"model": "tiny", "messages": USER, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


# --- stop strings ---


def test_stop_strings_cut_the_reply_whole_and_streamed(client):
    sampling = {"max_tokens": 60, "temperature": 0}
    kwargs = {"model": "tiny", "messages": USER, **sampling}
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    # Two printable ASCII characters: two tokens of the byte-level tokenizer, so the stop is split across
    # steps, and no incomplete UTF-8 character (which is held back anyway) hides an early release.
    stop, later = re.findall(r"[!-~]{2}", full)[:2]
    expected = full[: full.find(stop)].strip()
    cut = client.chat.completions.create(**kwargs, stop=stop)
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 60
    # The earliest of several stops wins, whatever their order; one that never appears changes nothing.
    cut = client.chat.completions.create(**kwargs, stop=[later, "\x00never\x00", stop])
    assert cut.choices[0].message.content == expected

    text, finish, _, _ = streamed_chat(client, **sampling, stop=[stop])
    assert (text, finish) == (expected, "stop")
    # A stop whose first character appears but never the rest: held back, then released, nothing lost.
    text, finish, _, _ = streamed_chat(client, **sampling, stop=[stop[0] + "\x00\x01"])
    assert (text, finish) == (full, "length")


class _Bytes:
    """A stand-in tokenizer: token i is the i-th byte; enough for ReplyText."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize(
    ("text", "stops", "strip"),
    [
        ("Hello world. Next turn", [". Next"], True),
        ("  spaced  out  ", [], True),
        ("  spaced  out  ", [], False),
        ("caf\u00e9 \u20ac and \U0001f600 end", ["and \U0001f600"], False),
        ("abab abc", ["abc"], False),
        ("no stop here", ["here!"], True),
    ],
)
def test_released_pieces_join_to_the_final_text(text, stops, strip):
    """Byte by byte (multi-byte characters split across tokens): never text that is later taken back."""
    reply, ids, pieces = ReplyText(_Bytes(), stops, strip), [], []
    stopped = False
    for byte in text.encode():
        ids.append(byte)
        piece, stopped = reply.update(ids)
        pieces.append(piece)
        assert "\ufffd" not in piece
        if stopped:
            break
    if not stopped:
        pieces.append(reply.finish(ids))
    cut = min([text.find(s) for s in stops if s in text], default=len(text))
    expected = text[:cut].strip() if strip else text[:cut]
    assert "".join(pieces) == reply.final == expected


# --- seeds and batching ---


def test_a_seed_repeats_its_sample_alone_and_batched(url):
    async def run() -> tuple[list[str], list[str]]:
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)

        async def sample(seed: int, text: str = "Name a colour.") -> str:
            reply = await client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": text}],
                max_tokens=20,
                temperature=1.0,
                top_p=0.9,
                seed=seed,
            )
            return reply.choices[0].message.content

        alone = [await sample(7), await sample(8)]
        together = await asyncio.gather(
            sample(7), *(sample(100 + i, f"Other prompt {i}") for i in range(6)), sample(8)
        )
        await client.close()
        return alone, [together[0], together[-1]]

    alone, batched = asyncio.run(run())
    assert batched == alone
    assert alone[0] != alone[1]  # the seed matters


def test_greedy_tokens_are_the_same_alone_and_batched(server, loaded):
    """Token for token, through the engine: each prompt alone, then all of them sharing steps, joining
    at different times (the prompts differ in length, so their caches and positions differ too)."""
    tokenizer = loaded[1]
    prompts = [chat_ids(tokenizer, [{"role": "user", "content": "x" * (3 * i + 1)}]) for i in range(6)]

    def submit(ids: list[int], new: int) -> threading.Event:
        done = threading.Event()

        def emit(event):
            if event.last:
                done.tokens = event.token_ids
                done.set()

        server.engine.submit(Generation(ids, new, temperature=0), emit)
        return done

    alone = []
    for i, ids in enumerate(prompts):
        done = submit(ids, 30 + i)
        assert done.wait(60)
        alone.append(done.tokens)
    server.engine.peak_batch = 0
    waiting = []
    for i, ids in enumerate(prompts):
        waiting.append(submit(ids, 30 + i))
        time.sleep(0.01 * i)  # later ones join a batch already decoding
    assert all(done.wait(60) for done in waiting)
    assert [done.tokens for done in waiting] == alone
    assert server.engine.peak_batch >= 3  # they did share steps


def _alone_and_batched(model, prompts: list[list[int]]) -> None:
    """The first prompt's logits (its prompt and 3 decoded tokens) alone equal them beside 1 to 6 others."""
    with torch.inference_mode():
        cache = kv.SequenceCache(200)
        alone = [kv.forward(model, [(cache, prompts[0])])[0]]
        for token in (65, 66, 67):
            alone.append(kv.forward(model, [(cache, [token])])[0])
        for others in range(1, 7):
            caches = [kv.SequenceCache(200) for _ in range(others + 1)]
            rows = [kv.forward(model, [(c, p) for c, p in zip(caches, prompts, strict=False)])[0]]
            for token in (65, 66, 67):
                rows.append(kv.forward(model, [(c, [token]) for c in caches])[0])
            assert all(torch.equal(a, b) for a, b in zip(alone, rows, strict=True)), others


def test_logits_are_bitwise_the_same_alone_and_batched(loaded):
    """kv.forward: one sequence's logits with 1 to 6 others in the step, joining or decoding, equal its
    logits alone, bit for bit (so no greedy token and no seeded sample can depend on the batch)."""
    model, tokenizer = loaded
    kv.install(model)
    _alone_and_batched(
        model, [chat_ids(tokenizer, [{"role": "user", "content": "y" * (5 * i + 2)}]) for i in range(7)]
    )


def test_logits_stay_bitwise_the_same_where_the_cpu_splits_a_wide_sum_between_threads():
    """SmolLM2's MLP shape (576 -> 1536 -> 576): MKL on an Intel CPU, on 2 threads, splits the down
    projection's 1536-wide sum between the threads for up to 192 rows, so short steps run on one thread."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
    }
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, vocab_size=259, **shape)).eval()
    kv.install(model)
    every, one = kv.plans(model)
    assert every.threads == torch.get_num_threads() and one.threads == 1
    assert every.tokens % kv.ROWS == 0 and one.tokens % kv.ROWS == 0
    # Prompts of 10 to 190 tokens: alone, steps are short; from 4 sequences on, joining steps have 220+ rows.
    _alone_and_batched(model, [[(7 * i + j) % 250 for j in range(10 + 30 * i)] for i in range(7)])


def test_greedy_text_is_the_same_alone_and_concurrent(url):
    async def run():
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)

        async def ask(i: int, stream: bool) -> str:
            kwargs = {"model": "tiny", "max_tokens": 12 + i, "temperature": 0}
            messages = [{"role": "user", "content": f"Question number {i}?"}]
            if not stream:
                reply = await client.chat.completions.create(messages=messages, **kwargs)
                return reply.choices[0].message.content
            chunks = await client.chat.completions.create(messages=messages, stream=True, **kwargs)
            return "".join([c.choices[0].delta.content or "" async for c in chunks])

        alone = [await ask(i, False) for i in range(6)]
        together = await asyncio.gather(*(ask(i, i % 2 == 1) for i in range(6)))
        await client.close()
        return alone, together

    alone, together = asyncio.run(run())
    assert together == alone


# --- errors ---


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"model": "gpt-4"}, 404, "model"),
        ({"n": 2}, 400, "n"),
        ({"max_tokens": 1024}, 400, "max_tokens"),  # the prompt plus 1024 exceed the 1024-token context
        ({"max_completion_tokens": 5000}, 400, "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 300}]}, 400, "messages"),  # > 1024 byte tokens
        ({"temperature": "hot"}, 400, "temperature"),
        ({"max_tokens": 2.5}, 400, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"stream_options": {"include_usage": True}}, 400, "stream_options"),  # without stream
        ({"logprobs": True}, 400, "logprobs"),
        ({"seed": -1}, 400, "seed"),
        ({"messages": "hello"}, 400, "messages"),
    ],
)
def test_bad_chat_requests_get_openai_errors(client, fields, status, param):
    body = {"model": "tiny", "messages": USER, **fields}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**body)
    error = caught.value
    assert error.status_code == status
    assert error.body["param"] == param and error.body["message"].startswith(param)
    assert error.body["type"] == "invalid_request_error"
    if status == 404:
        assert isinstance(error, openai.NotFoundError) and error.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "hi", "echo": True}, "echo"),
        ({"prompt": "hi", "best_of": 3}, "best_of"),
        ({"prompt": [10**9]}, "prompt"),  # not a token id of this vocabulary
    ],
)
def test_bad_completion_requests_get_openai_errors(client, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", **fields)
    assert caught.value.body["param"] == param


def test_malformed_bodies_and_routes(url):
    bad = httpx.post(
        f"{url}/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "body"
    assert httpx.post(f"{url}/completions", json=[1, 2]).json()["error"]["param"] == "body"
    missing = httpx.get(f"{url}/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{url}/chat/completions").status_code == 405
    health = httpx.get(url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and "running" in health


def test_api_key(client, url, monkeypatch):
    monkeypatch.setenv("SFT_SERVE_API_KEY", "sekrit")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    keyed = openai.OpenAI(base_url=url, api_key="sekrit", max_retries=0)
    assert [m.id for m in keyed.models.list().data] == ["tiny"]


# --- clients that leave ---


LONG = "The capital of France is"  # greedy, the tiny model writes a few hundred tokens before its EOS


@pytest.fixture(scope="module")
def long_reply(client, server) -> int:
    """Steps the engine takes for LONG's whole greedy reply (nothing else running)."""
    wait_idle(server)
    before = server.engine.steps
    reply = client.completions.create(model="tiny", prompt=LONG, max_tokens=900, temperature=0)
    assert server.engine.steps - before == reply.usage.completion_tokens > 200
    return reply.usage.completion_tokens


def test_a_reply_ends_at_the_end_of_turn_token_as_generate_does(client, loaded, long_reply):
    """LONG's greedy reply ends at the model's EOS: the same tokens and text as `generate` with eos_ids."""
    model, tokenizer = loaded
    reply = client.completions.create(model="tiny", prompt=LONG, max_tokens=900, temperature=0)
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == long_reply
    ids = tokenizer(LONG, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=900,
            do_sample=False,
            eos_token_id=eos_ids(model, tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    assert new[-1] in eos_ids(model, tokenizer) and len(new) == long_reply
    assert reply.choices[0].text == tokenizer.decode(new, skip_special_tokens=True)


def assert_stopped_early(server, before: int, full: int) -> None:
    """The generation left the batch long before its whole reply (and the engine is idle again)."""
    wait_idle(server)
    assert server.engine.steps - before < full - 100, (server.engine.steps - before, full)


def test_a_client_that_disconnects_mid_stream_frees_its_slot(client, server, url, long_reply):
    wait_idle(server)
    before = server.engine.steps
    body = {"model": "tiny", "prompt": LONG, "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/completions", json=body, timeout=60) as response:
        next(line for line in response.iter_lines() if line.startswith("data: {"))
    # Closed after the first chunk: the generation must stop and leave the batch.
    assert_stopped_early(server, before, long_reply)
    reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=3)
    assert reply.usage.completion_tokens == 3  # and the server goes on serving


def test_a_client_that_disconnects_while_waiting_for_a_whole_reply_frees_its_slot(server, long_reply):
    wait_idle(server)
    before = server.engine.steps
    body = json.dumps({"model": "tiny", "prompt": LONG, "max_tokens": 900, "temperature": 0}).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.server_address[1])) as raw:
        raw.sendall(request)
        deadline = time.monotonic() + 20
        while server.engine.steps - before < 5:  # generating
            assert time.monotonic() < deadline
            time.sleep(0.005)
    assert_stopped_early(server, before, long_reply)


# --- load ---


def test_short_load_test_has_no_failures(url):
    module = load_script("load_test")
    figures = asyncio.run(module.load(url, clients=8, seconds=5, max_tokens=16))
    assert figures["failures"] == 0, figures["failure_reasons"]
    assert figures["served"] >= 8 and figures["tokens"] > 0
    assert figures["p50_s"] <= figures["p90_s"] <= figures["p99_s"]
    assert "requests served, 0 failed" in module.report(figures)
