"""`sft.serve` (OpenAI-compatible HTTP over a tiny run) and `sft.eval.judge` (LLM-as-judge through it)."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train, run_module
from hydra.core.global_hydra import GlobalHydra

from sft.eval.judge import (
    JudgeError,
    aggregate_pairwise,
    aggregate_single,
    combine,
    judge_rows,
    mean_ci,
    parse_rating,
    parse_verdict,
    read_rows,
)
from sft.serving.chat import eos_ids, load
from sft.serving.endpoint import Client, EndpointError
from sft.serving.serve import is_loopback, make_server
from sft.train import train

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """One tiny two-step LoRA run for the module."""
    root = tmp_path_factory.mktemp("serve")
    train(compose_train(root / "run", root, cache_dir, *TINY, "trainer.max_steps=2", "trainer.eval_steps=2"))
    GlobalHydra.instance().clear()
    return root / "run"


@pytest.fixture(scope="module")
def loaded(trained, cache_dir):
    """(model, tokenizer) of the run."""
    return load(trained, str(cache_dir))


@pytest.fixture(scope="module")
def url(loaded) -> str:
    """Base URL of a server over the run, in a daemon thread on a free port."""
    server = make_server(*loaded, "tiny", "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def call(url: str, path: str, body=None, token: str | None = None, raw: bytes | None = None):
    """(status, JSON body) of a GET (no body) or POST."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data=data, headers=headers)) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def chat(url: str, **fields):
    """POST a chat completion of MESSAGES with `fields`."""
    return call(url, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, **fields})


def test_models_and_health(url):
    status, body = call(url, "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == ["tiny"]
    assert call(url, "/health")[1]["status"] == "ok"
    assert call(url, "/nowhere")[0] == 404


def test_greedy_completion_equals_generate(url, loaded):
    model, tokenizer = loaded
    status, body = chat(url, temperature=0, max_tokens=12)
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)

    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=eos_ids(model, tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0, ids.shape[1] :]
    choice = body["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": tokenizer.decode(new, skip_special_tokens=True).strip(),
    }
    assert body["usage"] == {
        "prompt_tokens": ids.shape[1],
        "completion_tokens": len(new),
        "total_tokens": out.shape[1],
    }
    assert chat(url, temperature=0, max_tokens=12)[1]["choices"] == body["choices"]  # deterministic


def test_max_tokens_ends_with_length_and_stop_cuts(url):
    status, body = chat(url, temperature=0, max_tokens=3)
    assert status == 200
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3

    full = chat(url, temperature=0, max_tokens=12)[1]["choices"][0]["message"]["content"]
    stop = full[2:4]
    cut = chat(url, temperature=0, max_tokens=12, stop=[stop])[1]["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["message"]["content"] == full[: full.find(stop)].strip()


def test_sampling_with_a_seed_repeats(url):
    first = chat(url, temperature=1.0, top_p=0.9, max_tokens=6, seed=3)[1]["choices"]
    assert chat(url, temperature=1.0, top_p=0.9, max_tokens=6, seed=3)[1]["choices"] == first


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (None, "body"),  # not JSON at all
        ({"model": "tiny"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "top_p": 0}, "top_p"),
        ({"messages": MESSAGES, "n": 2}, "n"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"messages": MESSAGES, "stop": [""]}, "stop"),
    ],
)
def test_bad_request_is_400_naming_the_field(url, body, param):
    raw = b"{not json" if body is None else None
    status, error = call(url, "/v1/chat/completions", body, raw=raw)
    assert status == 400
    assert error["error"]["param"] == param and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(param)


def test_api_key_is_required_when_set(url, monkeypatch):
    monkeypatch.setenv("SFT_SERVE_API_KEY", "sekrit")
    assert call(url, "/v1/models")[0] == 401
    status, body = call(url, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1}, token="wrong")
    assert (
        status == 401 and body["error"]["type"] == "authentication_error" and "sekrit" not in json.dumps(body)
    )
    assert call(url, "/v1/models", token="sekrit")[0] == 200
    assert call(url, "/health")[0] == 200  # liveness needs no key


def test_only_loopback_binds_without_allow_remote(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    done = run_module("sft.serving.serve", f"run={tmp_path}", "host=0.0.0.0", timeout=120)
    assert done.returncode == 2 and "allow_remote=true" in done.stderr


# --- judge: parsing and aggregation on hand-written replies ---


def test_parse_rating():
    assert parse_rating("Clear and correct.\nRating: [[8]]") == 8
    assert parse_rating("Rating: [[3]] ... on reflection\nRating: [[7.5]]") == 7.5  # the last one counts
    assert parse_rating("Rating: [[11]]") is None and parse_rating("Rating: 8") is None
    assert parse_rating("") is None and parse_rating("[[8]]") is None


def test_parse_verdict():
    assert parse_verdict("A is more detailed. [[A]]") == "A"
    assert parse_verdict("Final verdict: [[ C ]]") == "C"
    assert parse_verdict("[[A]] or maybe [[B]]") is None  # contradictory
    assert parse_verdict("A is better") is None


@pytest.mark.parametrize(
    ("first", "swapped", "winner"),
    [
        ("A", "B", "A"),  # output wins in both positions
        ("B", "A", "B"),
        ("A", "A", "tie"),  # the judge just prefers position A: no win
        ("B", "B", "tie"),
        ("C", "C", "tie"),
        ("A", "C", "tie"),
        ("A", None, None),
        (None, "B", None),
    ],
)
def test_pairwise_counts_a_win_only_when_both_orders_agree(first, swapped, winner):
    assert combine(first, swapped) == winner


def test_aggregation():
    assert mean_ci([5.0]) == {"mean": 5.0, "ci95": None} and mean_ci([])["mean"] is None
    records = [
        {"rating": 6.0},
        {"rating": 8.0},
        {"rating": None, "reply": "?"},
        {"rating": None, "error": "x"},
    ]
    stats = aggregate_single(records)
    assert stats["mean_rating"] == 7.0 and stats["rated"] == 2
    assert stats["unparseable"] == 1 and stats["errors"] == 1
    half = 1.96 * 2**0.5 / 2**0.5  # sd of (6, 8) is sqrt(2); n = 2
    assert stats["ci95"] == pytest.approx([7.0 - half, 7.0 + half])

    pairs = [{"winner": w} for w in ("A", "A", "B", "tie", None)]
    stats = aggregate_pairwise(pairs)
    assert (stats["wins"], stats["losses"], stats["ties"], stats["unparseable"]) == (2, 1, 1, 1)
    assert stats["win_rate"] == pytest.approx(2.5 / 4)


def test_read_rows_names_what_pairwise_needs(tmp_path):
    path = tmp_path / "generations.jsonl"
    path.write_text(json.dumps({"id": 1, "instruction": "q", "output": "a"}) + "\n")
    assert len(read_rows(path, "single")) == 1
    with pytest.raises(JudgeError, match="output_b"):
        read_rows(path, "pairwise")


def test_client_gives_up_on_a_dead_endpoint():
    client = Client("http://127.0.0.1:9/v1", "m", retries=1, backoff=0, timeout=5)
    with pytest.raises(EndpointError, match="127.0.0.1:9"):
        client.chat(MESSAGES)


# --- judge end to end through the real server (the tiny model never writes a verdict) ---


def generations(tmp_path: Path, rows: int = 2) -> Path:
    """A generations.jsonl as `python -m sft.eval` writes it, with base answers."""
    path = tmp_path / "eval" / "generations.jsonl"
    path.parent.mkdir()
    lines = [{"id": i, "instruction": f"Say {i}.", "output": f"{i}", "output_b": "no"} for i in range(rows)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_judge_records_unparseable_replies_as_null(url, tmp_path):
    rows = read_rows(generations(tmp_path), "single")
    client = Client(url + "/v1", "tiny", max_tokens=4)
    records = judge_rows(client, rows, "single", concurrency=2)
    assert [r["id"] for r in records] == [0, 1]
    assert all(r["rating"] is None and r["retried"] and isinstance(r["reply"], str) for r in records)
    stats = aggregate_single(records)
    assert stats["unparseable"] == 2 and stats["mean_rating"] is None and stats["errors"] == 0


def test_judge_pairwise_records_a_failed_request_as_an_error(url, tmp_path):
    rows = read_rows(generations(tmp_path, rows=1), "pairwise")
    # The pairwise prompt in bytes is longer than the tiny model's 1024-token context: the server says 400.
    (record,) = judge_rows(Client(url + "/v1", "tiny", max_tokens=3), rows, "pairwise")
    assert record["winner"] is None and "HTTP 400" in record["error"] and "context" in record["error"]
    stats = aggregate_pairwise([record])
    assert stats["errors"] == 1 and stats["unparseable"] == 0 and stats["win_rate"] is None


def test_judge_cli_single(url, tmp_path):
    path = generations(tmp_path, rows=1)
    args = [f"generations={path}", f"url={url}/v1", "max_tokens=3"]  # model: the first /v1/models lists
    done = run_module("sft.eval.judge", *args, env={**os.environ, "OPENAI_API_KEY": ""}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no ratings" in done.stdout and "1 unparseable" in done.stdout
    (record,) = [json.loads(line) for line in (path.parent / "judgements.jsonl").read_text().splitlines()]
    assert record["rating"] is None and record["retried"] and isinstance(record["reply"], str)
    stats = json.loads((path.parent / "judge.json").read_text())
    assert stats["mode"] == "single" and stats["judge"] == "tiny" and stats["unparseable"] == 1


def test_judge_cli_names_a_missing_file(tmp_path):
    done = run_module("sft.eval.judge", f"generations={tmp_path}/nope.jsonl", timeout=120)
    assert done.returncode == 2 and "nope.jsonl: no such file" in done.stderr
