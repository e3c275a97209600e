"""`python -m sft.chat`: streamed multi-turn replies, history, commands and the rendered prompt."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, compose_train
from hydra.core.global_hydra import GlobalHydra

from sft.serving.chat import REPLY, Chat, chat_loop, load, render_prompt
from sft.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """One tiny LoRA run shared by this module's tests (training is the slow part)."""
    root = tmp_path_factory.mktemp("chat")
    overrides = [*TINY, "trainer.max_steps=4", "trainer.eval_steps=4", "optimizer.lr=1e-2", "lora.dropout=0"]
    train(compose_train(root / "trained", root, cache_dir, *overrides))
    GlobalHydra.instance().clear()
    return root / "trained"


@pytest.fixture(scope="module")
def loaded(trained, cache_dir):
    """The run's (model, tokenizer), loaded once for the in-process tests."""
    return load(trained, str(cache_dir))


def greedy(loaded, system: str | None = None) -> Chat:
    return Chat(*loaded, system=system, max_new_tokens=8, temperature=0)


def test_piped_session_prints_three_replies_and_exits_0(trained, cache_dir):
    lines = "Who are you?\nAnd what can you do?\n/reset\nHello again.\n/exit\nnever read\n"
    done = subprocess.run(
        [sys.executable, "-m", "sft.serving.chat", f"run={trained}", "temperature=0", "max_new_tokens=8"],
        cwd=ROOT,
        env={**os.environ, "SFT_CACHE": str(cache_dir)},
        input=lines,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(REPLY) == 3
    assert "(history cleared)" in done.stdout and "never read" not in done.stdout


def test_history_is_in_the_next_prompt_until_reset(loaded):
    chat, out = greedy(loaded), io.StringIO()
    chat_loop(chat, ["Who are you?"], out)
    reply = chat.history[-1]["content"]
    assert out.getvalue().startswith(REPLY) and out.getvalue().strip() == (REPLY + reply).strip()
    second = chat.prompt("And what can you do?")
    assert "Who are you?" in second
    assert f"<|im_start|>assistant\n{reply}<|im_end|>" in second
    assert second.endswith("<|im_start|>user\nAnd what can you do?<|im_end|>\n<|im_start|>assistant\n")

    chat_loop(chat, ["And what can you do?", "/reset"], out)
    assert chat.history == []
    assert "Who are you?" not in chat.prompt("Hello again.")


def test_system_prompt_is_rendered_and_can_be_changed(loaded):
    chat = greedy(loaded, system="You are a terse pirate.")
    assert chat.prompt("Hi").startswith("<|im_start|>system\nYou are a terse pirate.<|im_end|>\n")
    chat_loop(chat, ["/system Answer in French."], io.StringIO())
    assert "Answer in French." in chat.prompt("Hi") and "pirate" not in chat.prompt("Hi")
    chat_loop(chat, ["/system"], io.StringIO())
    assert "<|im_start|>system" not in chat.prompt("Hi")  # the tiny run's template has no default


def test_render_prompt_keeps_every_turn_in_order(loaded):
    _, tokenizer = loaded
    history = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply one"},
        {"role": "user", "content": "second"},
    ]
    text = render_prompt(tokenizer, history, "sys")
    assert text.index("sys") < text.index("first") < text.index("reply one") < text.index("second")


def test_a_stopped_reply_is_not_kept_and_old_turns_make_room(loaded):
    chat = greedy(loaded)
    with contextlib.closing(chat.stream("Who are you?")) as pieces:
        next(pieces)  # stop after the first piece, as Ctrl+C does
    assert chat.history == []

    # Each turn ~300 byte tokens: three of them and a 256-token reply overflow the tiny model's 1024.
    chat.max_new_tokens = 256
    chat.history = [
        {"role": r, "content": f"{r} {i} " + "x" * 300} for i in range(3) for r in ("user", "assistant")
    ]
    ids = chat.fit("latest")
    assert len(ids) + 256 <= loaded[0].config.max_position_embeddings
    assert chat.history and chat.history[-1]["content"].startswith("assistant 2")
