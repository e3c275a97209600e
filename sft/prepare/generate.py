"""Self-instruct: new (instruction, input, output) tasks from a model shown a few seed tasks.

As in Self-Instruct (Wang et al., 2023) and Stanford Alpaca: each prompt shows a few human-written seed
tasks (and, once there are some, machine-written ones), the model answers with one new task as a JSON
object, and a task is kept only when it parses, suits a text-only model, and its instruction's ROUGE-L
against every instruction so far stays at or below a threshold (0.7 in the paper). Kept tasks are
appended as they come, so an interrupted run resumes where it stopped; rejected replies go to a
`.rejected.jsonl` file beside the output with the reason.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from omegaconf import DictConfig

from ..errors import PrepareError
from ..eval.rouge import rouge_l
from ..text import words
from .backends import reply_objects
from .rows import Appender, Tally, finish, intact_lines, load_rows

SYSTEM = "You write training data for an instruction-following AI assistant."
PROMPT = (
    'Here are example tasks, each a JSON object with an "instruction", an "input" (context the '
    'instruction needs, or "" when it needs none) and an "output" (a high-quality answer):\n\n'
    "{examples}\n\n"
    "Write one new task that differs from all of these in topic and in kind (not a rewording). Vary the "
    "verbs and the task type: questions, writing, classification, editing, coding, reasoning, advice. The "
    "instruction must be doable by a text-only assistant. Reply with only the JSON object."
)
# Self-Instruct's filter: tasks a language model cannot do from text alone.
UNSUITABLE = re.compile(
    r"\b(image|images|picture|pictures|photo|graph|graphs|file|files|map|maps|draw|plot|go to|video|audio"
    r"|music|flowchart|diagram)\b",
    re.IGNORECASE,
)


def _seed_file(path: Path) -> list[dict] | None:
    """A self-instruct seed file's tasks (JSON lines with `instances`), first instance each; else None."""
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    tasks = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not tasks or "instances" not in tasks[0]:
        return None
    first = [(t.get("instances") or [{}])[0] for t in tasks]
    return [
        {"instruction": t["instruction"], "input": i.get("input", ""), "output": i.get("output", "")}
        for t, i in zip(tasks, first, strict=True)
    ]


def load_seeds(path: str | Path, tally: Tally) -> list[dict]:
    """Seed tasks as {instruction, input, output}: from a self-instruct seed file or any data file."""
    path = Path(path).expanduser()
    seeds = _seed_file(path)
    if seeds is None:
        seeds = []
        for row in load_rows(path, Tally()):
            raw = row.data
            if {"instruction", "output"} <= raw.keys():
                seeds.append(
                    {
                        "instruction": raw["instruction"],
                        "input": raw.get("input") or "",
                        "output": raw["output"],
                    }
                )
            else:
                seeds.append({"instruction": row.instruction, "input": "", "output": row.response})
    tally.count("seeds", len(seeds))
    return seeds


def example_block(examples: list[dict]) -> str:
    """The examples as JSON lines, in the form the reply must take."""
    keys = ("instruction", "input", "output")
    return "\n".join(json.dumps({k: e.get(k, "") for k in keys}, ensure_ascii=False) for e in examples)


def build_prompt(rng: random.Random, seeds: list[dict], generated: list[dict], cfg: DictConfig) -> list[dict]:
    """Chat messages showing `num_examples` tasks: up to `machine_examples` generated ones, the rest seeds."""
    machine = rng.sample(generated, min(cfg.machine_examples, len(generated)))
    human = rng.sample(seeds, min(cfg.num_examples - len(machine), len(seeds)))
    examples = human + machine
    rng.shuffle(examples)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT.format(examples=example_block(examples))},
    ]


def parse_task(reply: str, max_words: int = 150) -> tuple[dict | None, str]:
    """The task in a reply and "" or (None, why it was rejected)."""
    candidates = [v for v in reply_objects(reply) if isinstance(v, dict)]
    if not candidates:
        return None, "no JSON object in the reply"
    task = candidates[0]
    instruction, output = task.get("instruction"), task.get("output")
    given = task.get("input")
    if not isinstance(instruction, str) or not instruction.strip():
        return None, "no instruction"
    if not isinstance(output, str) or not output.strip():
        return None, "no output"
    if given is not None and not isinstance(given, str):
        return None, f"input is {type(given).__name__}, not text"
    count = len(words(instruction))
    if count < 3 or count > max_words:
        return None, f"instruction has {count} words (3-{max_words} allowed)"
    return {"instruction": instruction.strip(), "input": (given or "").strip(), "output": output.strip()}, ""


def most_similar(instruction: str, pool: list[str]) -> tuple[float, str | None]:
    """The highest ROUGE-L of `instruction` against the pool, and that instruction."""
    best, match = 0.0, None
    for other in pool:
        score = rouge_l(instruction, other)
        if score > best:
            best, match = score, other
    return best, match


def cross_field_problems(cfg) -> list[str]:
    """More machine-made examples per prompt than examples shown (each setting's range: GenerateConfig)."""
    if cfg.machine_examples <= cfg.num_examples:
        return []
    return [f"machine_examples={cfg.machine_examples}: 0 to num_examples ({cfg.num_examples})"]


def run(cfg: DictConfig, backend) -> Tally:
    """Generate until the output holds `num` tasks or the request budget is spent; returns the counts."""
    tally = Tally()
    output = Path(cfg.output).expanduser()
    seeds = load_seeds(cfg.seeds, tally)
    if not seeds:
        raise PrepareError(f"seeds={cfg.seeds}: no seed tasks")
    generated = intact_lines(output)
    tally.count("resumed", len(generated))
    pool = [s["instruction"] for s in seeds] + [g["instruction"] for g in generated]
    rng = random.Random(f"{cfg.seed}:{len(generated)}")  # a resumed run does not replay the same prompts
    budget = (cfg.num - len(generated)) * cfg.max_requests_per_task
    rejected = output.with_name(output.name + ".rejected.jsonl")
    with Appender(output) as out, Appender(rejected) as bad:
        while len(generated) < cfg.num and tally.counts["requests"] < budget:
            want = min(backend.batch_size, budget - tally.counts["requests"])
            prompts = [build_prompt(rng, seeds, generated, cfg) for _ in range(want)]
            replies = backend.complete(prompts)
            first = tally.counts["requests"] + 1
            tally.count("requests", len(replies))
            if all(isinstance(r, Exception) for r in replies):
                raise PrepareError(f"every request failed, stopping (rerun to resume): {replies[0]}")
            for number, reply in enumerate(replies, first):
                where = f"request {number}"
                if isinstance(reply, Exception):
                    tally.problem(where, str(reply), "request_errors")
                    continue
                task, why = parse_task(reply, cfg.max_instruction_words)
                if task is None:
                    tally.problem(where, f"{why}: {reply[:120]!r}")
                    bad.write({"reason": why, "reply": reply})
                    continue
                if UNSUITABLE.search(task["instruction"]):
                    tally.count("unsuitable")
                    bad.write({"reason": "needs more than text", **task})
                    continue
                score, match = most_similar(task["instruction"], pool)
                if score > cfg.similarity_threshold:
                    tally.count("near_duplicates")
                    bad.write({"reason": f"ROUGE-L {score:.2f} with {match!r}", **task})
                    continue
                out.write({**task, "generated": {"by": backend.name, "max_rouge_l": round(score, 3)}})
                generated.append(task)
                pool.append(task["instruction"])
                tally.count("kept")
                if len(generated) >= cfg.num:
                    break
    if len(generated) < cfg.num:
        tally.problems.append(
            f"stopped at {len(generated)}/{cfg.num} tasks after {tally.counts['requests']} requests "
            f"(max_requests_per_task={cfg.max_requests_per_task}); rerun to continue"
        )
    finish("generate", tally, output, total=len(generated))
    return tally
