"""`python -m sft.prepare generate`: self-instruct through a loopback endpoint and a local model."""

from __future__ import annotations

import json
import signal
import threading

import pytest
from conftest import SHARED_DATA, compose_step, run_module, start_module

from sft.prepare import generate
from sft.prepare.backends import open_backend
from sft.prepare.rows import intact_lines
from sft.serving.serve import make_server

SEEDS = SHARED_DATA / "seed_tasks.jsonl"


def task(instruction: str, output: str = "A fine answer.", given: str = "") -> str:
    """A model reply holding one task."""
    return json.dumps({"instruction": instruction, "input": given, "output": output})


def test_parse_task_accepts_fenced_json_and_names_what_is_wrong():
    ok, why = generate.parse_task("Sure!\n```json\n" + task("Name three primary colours.") + "\n```")
    assert why == "" and ok == {
        "instruction": "Name three primary colours.",
        "input": "",
        "output": "A fine answer.",
    }
    assert generate.parse_task("I cannot do that.") == (None, "no JSON object in the reply")
    assert generate.parse_task('{"instruction": "Name three colours.", "output": ""}')[1] == "no output"
    assert "words" in generate.parse_task(task("Hi there"))[1]
    assert (
        "input is list"
        in generate.parse_task(
            json.dumps({"instruction": "Sort these numbers please.", "input": [3, 1], "output": "1, 3"})
        )[1]
    )


def test_seed_file_and_data_file_both_give_seed_tasks():
    tally = generate.Tally()
    seeds = generate.load_seeds(SEEDS, tally)
    assert len(seeds) == 175 and tally.counts["seeds"] == 175
    assert all(s["instruction"] and s["output"] for s in seeds)
    alpaca = generate.load_seeds(SHARED_DATA / "alpaca_en_demo.json", generate.Tally())
    assert len(alpaca) == 999 and set(alpaca[0]) == {"instruction", "input", "output"}


def test_endpoint_generation_rejects_bad_replies_retries_and_resumes(scripted, tmp_path):
    server, url = scripted
    first_seed = json.loads(SEEDS.read_text().splitlines()[0])["instruction"]
    server.script = [
        "Here is a task: instruction = write a haiku",  # no JSON: malformed
        task(first_seed),  # a seed again: near duplicate
        None,  # HTTP 503, retried by the client
        task("Draw a picture of a cat wearing a hat."),  # needs more than text
        "```json\n" + task("Explain why the sky looks blue at noon but red at sunset.") + "\n```",
        task("Convert 100 degrees Fahrenheit to Celsius and show the formula."),
    ]
    out = tmp_path / "generated.jsonl"
    args = [
        f"seeds={SEEDS}",
        f"output={out}",
        "backend=endpoint",
        f"backend.url={url}",
        "backend.concurrency=1",
        "backend.backoff=0",
    ]
    done = run_module("sft.prepare", "generate", "num=2", *args)
    assert done.returncode == 0, done.stderr
    rows = intact_lines(out)
    assert [r["instruction"] for r in rows] == [
        "Explain why the sky looks blue at noon but red at sunset.",
        "Convert 100 degrees Fahrenheit to Celsius and show the formula.",
    ]
    assert rows[0]["generated"]["by"].startswith("scripted at http://127.0.0.1")
    stats = json.loads(out.with_name(out.name + ".stats.json").read_text())
    assert stats["counts"] == {
        "seeds": 175,
        "resumed": 0,
        "requests": 5,
        "malformed": 1,
        "near_duplicates": 1,
        "unsuitable": 1,
        "kept": 2,
    }
    assert len(server.prompts) == 6  # the 503 was retried within its request
    assert "request 1: no JSON object" in stats["problems"][0]
    rejected = [
        json.loads(line) for line in out.with_name(out.name + ".rejected.jsonl").read_text().splitlines()
    ]
    assert [r["reason"].split(" ")[0] for r in rejected] == ["no", "ROUGE-L", "needs"]
    # Every prompt shows seed tasks; once a task is kept, later prompts may show it too.
    assert all(p.count('\n{"instruction": ') == 3 for p in server.prompts)

    # A second invocation with a larger target resumes: the kept rows stay, one more is added, and the
    # earlier generated task is among the examples shown.
    server.script = [task("Suggest a name for a bakery that sells only bread.")]
    server.prompts.clear()
    done = run_module("sft.prepare", "generate", "num=3", *args)
    assert done.returncode == 0, done.stderr
    rows = intact_lines(out)
    assert len(rows) == 3 and rows[2]["instruction"].startswith("Suggest a name")
    stats = json.loads(out.with_name(out.name + ".stats.json").read_text())
    assert stats["counts"]["resumed"] == 2 and stats["total"] == 3
    assert any("Fahrenheit" in p or "sky looks blue" in p for p in server.prompts)


# Five tasks no ROUGE-L check confuses with each other or with the seed tasks.
DISTINCT = [
    "Explain why the sky looks blue at noon but red at sunset.",
    "Convert 100 degrees Fahrenheit to Celsius and show the formula.",
    "Suggest a name for a bakery that sells only bread.",
    "Summarise the story of a heist film in two sentences.",
    "List four unusual uses for a paper clip in an office.",
]


def test_a_killed_generation_resumes_without_regenerating_its_rows(scripted, tmp_path):
    """SIGKILL a real `python -m sft.prepare generate` after three rows; the rerun keeps them and asks the
    endpoint only for the two missing ones."""
    server, url = scripted
    out = tmp_path / "generated.jsonl"
    args = [f"seeds={SEEDS}", f"output={out}", "backend=endpoint", f"backend.url={url}"]
    args.append("backend.concurrency=1")
    held, release = threading.Event(), threading.Event()

    def hold() -> str:  # the fourth request waits here until the process has been killed
        held.set()
        release.wait(120)
        return task("Never delivered: the client was killed while it waited.")

    server.script = [task(t) for t in DISTINCT[:3]] + [hold]
    process = start_module("sft.prepare", "generate", "num=5", *args, log=tmp_path / "first.log")
    try:
        assert held.wait(180), (tmp_path / "first.log").read_text()[-3000:]
        before = out.read_text()
        assert [r["instruction"] for r in intact_lines(out)] == DISTINCT[:3]  # flushed, one line each
        process.send_signal(signal.SIGKILL)
        assert process.wait(60) == -signal.SIGKILL
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not out.with_name(out.name + ".stats.json").exists()  # it never got to finish

    server.prompts.clear()
    server.script = [task(t) for t in DISTINCT[3:]]
    done = run_module("sft.prepare", "generate", "num=5", *args)
    assert done.returncode == 0, done.stderr
    assert out.read_text().startswith(before)  # the rows from before the kill, byte for byte
    assert [r["instruction"] for r in intact_lines(out)] == DISTINCT
    stats = json.loads(out.with_name(out.name + ".stats.json").read_text())
    assert stats["counts"]["resumed"] == 3 and stats["counts"]["requests"] == 2 and stats["total"] == 5
    assert len(server.prompts) == 2  # only the missing rows were asked for


def test_torn_last_line_is_cut_and_generation_continues(scripted, tmp_path):
    server, url = scripted
    out = tmp_path / "generated.jsonl"
    out.write_text(task("List four uses for a paper clip.") + "\n" + '{"instruction": "Half a li')
    server.script = [task("Summarise the story of a heist film in two sentences.")]
    cfg = compose_step(
        "generate",
        f"seeds={SEEDS}",
        f"output={out}",
        "num=2",
        "backend=endpoint",
        f"backend.url={url}",
        "backend.concurrency=1",
    )
    generate.run(cfg, open_backend(cfg.backend))
    assert [r["instruction"][:9] for r in intact_lines(out)] == ["List four", "Summarise"]


def test_a_dead_endpoint_stops_with_a_clear_error(tmp_path):
    cfg = compose_step(
        "generate",
        f"seeds={SEEDS}",
        f"output={tmp_path / 'g.jsonl'}",
        "backend=endpoint",
        "backend.url=http://127.0.0.1:9/v1",
        "backend.model=m",
        "backend.retries=0",
    )
    with pytest.raises(generate.PrepareError, match="every request failed.*127.0.0.1:9"):
        generate.run(cfg, open_backend(cfg.backend))


def test_malformed_output_of_a_real_model_is_counted_not_fatal(tmp_path, cache_dir):
    """A tiny random model, served (endpoint) and in-process (local), write no JSON."""
    seeds = tmp_path / "seeds.jsonl"  # short, so every prompt fits the tiny model's 1024-token context
    seeds.write_text(
        "".join(task(f"Name a {thing} and say why.") + "\n" for thing in ("fruit", "tree", "river"))
    )
    cfg = compose_step(
        "generate",
        f"seeds={seeds}",
        f"output={tmp_path / 'local.jsonl'}",
        "num=1",
        "num_examples=1",
        "max_requests_per_task=3",
        "model@backend.model=tiny",
        f"backend.cache_dir={cache_dir}",
        "backend.max_tokens=16",
        "backend.batch_size=3",
    )
    local = open_backend(cfg.backend)
    tally = generate.run(cfg, local)
    assert tally.counts["requests"] == 3 and tally.counts["malformed"] == 3 and tally.counts["kept"] == 0
    assert "stopped at 0/1 tasks after 3 requests" in tally.problems[-1]

    server = make_server(local.model, local.tokenizer, "tiny", "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        cfg = compose_step(
            "generate",
            f"seeds={seeds}",
            f"output={tmp_path / 'served.jsonl'}",
            "num=1",
            "max_requests_per_task=2",
            "num_examples=1",
            "backend=endpoint",
            f"backend.url={url}",
            "backend.max_tokens=16",
            "backend.concurrency=2",
        )
        tally = generate.run(cfg, open_backend(cfg.backend))
    finally:
        server.shutdown()
        server.server_close()
    assert tally.counts["requests"] == 2 and tally.counts["malformed"] == 2, tally.summary()
