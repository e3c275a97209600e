"""`python -m sft.eval.judge generations=<run>/eval/generations.jsonl url=... model=... mode=single|pairwise`.

LLM-as-judge over the rows `python -m sft.eval` writes, through any OpenAI-compatible chat endpoint
(`python -m sft.serve`, vLLM, the OpenAI API):

- `single` (MT-Bench style): the judge rates each `output` 1-10 for its `instruction` and must end with
  `Rating: [[N]]`.
- `pairwise` (AlpacaEval / MT-Bench style): the judge picks `[[A]]`, `[[B]]` or `[[C]]` (tie) between
  `output` and `output_b`. Judges favour a position, so every pair is judged twice with the order swapped
  and a win counts only when both orders agree; a disagreement is a tie.

A reply without a parseable verdict is asked again once; if it still has none the row records null with
the raw reply kept, and is counted as unparseable. Writes `judgements.jsonl` and `judge.json` beside the
generations file.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ..atomic import write_json
from ..config import JudgeConfig, check, checked_cli
from ..errors import ConfigError, EndpointError, JudgeError
from ..locations import CONF_DIR
from ..serving.endpoint import Client

SINGLE_SYSTEM = "You are a helpful assistant."
SINGLE_PROMPT = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your "
    "explanation, you must rate the response on a scale of 1 to 10 by strictly following this format on the "
    'final line: "Rating: [[N]]", for example: "Rating: [[5]]".\n\n'
    "[Question]\n{instruction}\n\n"
    "[The Start of Assistant's Answer]\n{output}\n[The End of Assistant's Answer]"
)
PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses. Begin your evaluation by comparing the two responses and provide a short explanation. Avoid "
    "any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Be as "
    "objective as possible. After providing your explanation, output your final verdict by strictly "
    'following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" '
    "for a tie."
)
PAIR_PROMPT = (
    "[User Question]\n{instruction}\n\n[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's "
    "Answer]\n\n[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)
RATING = re.compile(r"Rating:\s*\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(reply: str) -> float | None:
    """The last `Rating: [[N]]` in a reply, when N is within 1-10; None otherwise."""
    found = RATING.findall(reply or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None


def parse_verdict(reply: str) -> str | None:
    """ "A", "B" or "C" (tie) from `[[X]]` markers; None when there is none, or more than one distinct."""
    found = set(VERDICT.findall(reply or ""))
    return found.pop() if len(found) == 1 else None


def swap_back(verdict: str | None) -> str | None:
    """A verdict on the swapped order (A = output_b) in the original order's terms."""
    return {"A": "B", "B": "A"}.get(verdict, verdict)


def combine(first: str | None, swapped: str | None) -> str | None:
    """The pair's result from both orders: "A" or "B" when they agree, else "tie"; None if either is missing.

    `swapped` is the verdict as the judge gave it on the swapped order; it is mapped back here.
    """
    if first is None or swapped is None:
        return None
    second = swap_back(swapped)
    if first == second and first in ("A", "B"):
        return first
    return "tie"


def single_messages(row: dict) -> list[dict]:
    """The rating prompt for one row."""
    prompt = SINGLE_PROMPT.format(instruction=row["instruction"], output=row["output"])
    return [{"role": "system", "content": SINGLE_SYSTEM}, {"role": "user", "content": prompt}]


def pair_messages(instruction: str, a: str, b: str) -> list[dict]:
    """The comparison prompt with `a` shown as assistant A and `b` as assistant B."""
    prompt = PAIR_PROMPT.format(instruction=instruction, a=a, b=b)
    return [{"role": "system", "content": PAIR_SYSTEM}, {"role": "user", "content": prompt}]


def ask(client: Client, messages: list[dict], parse: Callable[[str], object]) -> dict:
    """The judge's reply and its parse; an unparseable reply is asked once more before giving up."""
    reply = client.chat(messages)
    parsed, retried = parse(reply), False
    if parsed is None:
        reply, retried = client.chat(messages), True
        parsed = parse(reply)
    return {"parsed": parsed, "reply": reply, "retried": retried}


def judge_single(client: Client, row: dict) -> dict:
    """One row's rating record: {id, rating (null if unparseable), reply, retried}."""
    answer = ask(client, single_messages(row), parse_rating)
    return {
        "id": row.get("id"),
        "rating": answer["parsed"],
        "reply": answer["reply"],
        "retried": answer["retried"],
    }


def judge_pair(client: Client, row: dict) -> dict:
    """One row's record judged in both orders: winner "A" (output), "B" (output_b), "tie" or null."""
    first = ask(client, pair_messages(row["instruction"], row["output"], row["output_b"]), parse_verdict)
    swapped = ask(client, pair_messages(row["instruction"], row["output_b"], row["output"]), parse_verdict)
    return {
        "id": row.get("id"),
        "winner": combine(first["parsed"], swapped["parsed"]),
        "verdicts": [first["parsed"], swapped["parsed"]],  # as given: the second is on the swapped order
        "replies": [first["reply"], swapped["reply"]],
        "retried": first["retried"] or swapped["retried"],
    }


def mean_ci(values: list[float]) -> dict:
    """Mean with a 95% normal-approximation interval (null interval below two values)."""
    n = len(values)
    if not n:
        return {"mean": None, "ci95": None}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def aggregate_single(records: list[dict]) -> dict:
    """Mean rating and its 95% CI over the parseable ratings, with counts."""
    ratings = [r["rating"] for r in records if r.get("rating") is not None]
    stats = mean_ci(ratings)
    return {
        "mode": "single",
        "rows": len(records),
        "rated": len(ratings),
        "unparseable": sum(1 for r in records if r.get("rating") is None and "error" not in r),
        "errors": sum(1 for r in records if "error" in r),
        "retried": sum(1 for r in records if r.get("retried")),
        "mean_rating": stats["mean"],
        "ci95": stats["ci95"],
    }


def aggregate_pairwise(records: list[dict]) -> dict:
    """Win rate of `output` over `output_b` (a tie counts half) with its 95% CI, and counts."""
    winners = [r["winner"] for r in records if r.get("winner") is not None]
    scores = [{"A": 1.0, "B": 0.0, "tie": 0.5}[w] for w in winners]
    stats = mean_ci(scores)
    return {
        "mode": "pairwise",
        "rows": len(records),
        "judged": len(winners),
        "wins": winners.count("A"),
        "losses": winners.count("B"),
        "ties": winners.count("tie"),
        "unparseable": sum(1 for r in records if r.get("winner") is None and "error" not in r),
        "errors": sum(1 for r in records if "error" in r),
        "retried": sum(1 for r in records if r.get("retried")),
        "win_rate": stats["mean"],
        "ci95": stats["ci95"],
    }


def read_rows(path: Path, mode: str, limit: int | None = None) -> list[dict]:
    """The generations rows, checked for the fields `mode` needs."""
    if not path.is_file():
        raise JudgeError(f"generations={path}: no such file (python -m sft.eval run=<run> writes it)")
    needed = ("instruction", "output", "output_b") if mode == "pairwise" else ("instruction", "output")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise JudgeError(f"generations={path}: line {number} is not JSON ({err})") from err
        missing = [k for k in needed if not isinstance(row.get(k), str)]
        if missing:
            hint = (
                " (pairwise needs the base answers: python -m sft.eval base=true)"
                if "output_b" in missing
                else ""
            )
            raise JudgeError(f"generations={path}: line {number} has no {', '.join(missing)}{hint}")
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    return rows


def judge_rows(client: Client, rows: list[dict], mode: str, concurrency: int = 4) -> list[dict]:
    """Every row's record in row order, `concurrency` at a time; failed requests leave an error record."""
    judge_one = judge_pair if mode == "pairwise" else judge_single

    def safe(row: dict) -> dict:
        try:
            return judge_one(client, row)
        except EndpointError as err:  # one failing row must not lose the others' (paid-for) judgements
            empty = {"winner": None} if mode == "pairwise" else {"rating": None}
            return {"id": row.get("id"), **empty, "error": str(err)}

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(safe, rows))


def summary(stats: dict) -> str:
    """One line for the terminal."""
    ci = stats["ci95"]
    interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    if stats["mode"] == "single":
        head = f"mean rating {stats['mean_rating']:.2f}" if stats["mean_rating"] is not None else "no ratings"
        counts = f"{stats['rated']}/{stats['rows']} rated"
    else:
        head = f"win rate {stats['win_rate']:.3f}" if stats["win_rate"] is not None else "no verdicts"
        counts = f"{stats['wins']} wins, {stats['losses']} losses, {stats['ties']} ties"
    return f"{head}{interval}; {counts}, {stats['unparseable']} unparseable, {stats['errors']} errors"


def judge(cfg: DictConfig) -> dict:
    """Judge the generations file named by `cfg`; write judgements.jsonl and judge.json beside it."""
    path = Path(cfg.generations).expanduser()
    rows = read_rows(path, cfg.mode, cfg.limit)
    client = Client(
        cfg.url, cfg.model, cfg.api_key_env, cfg.timeout, cfg.retries, cfg.backoff, cfg.max_tokens
    )
    if not client.model:
        models = client.models()
        if not models:
            raise JudgeError(f"model: not set and {cfg.url}/models lists none")
        client.model = models[0]
    records = judge_rows(client, rows, cfg.mode, cfg.concurrency)
    stats = (aggregate_pairwise if cfg.mode == "pairwise" else aggregate_single)(records)
    stats |= {"judge": client.model, "url": client.base_url, "generations": str(path)}
    with open(path.parent / "judgements.jsonl", "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    write_json(stats, path.parent / "judge.json")
    print(summary(stats))
    print(f"written: {path.parent / 'judgements.jsonl'}, {path.parent / 'judge.json'}")
    return stats


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="judge")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a bad setting, file or endpoint exits 2 with its message."""
    try:
        check(cfg, JudgeConfig)
        judge(cfg)
    except (ConfigError, EndpointError) as err:
        print(err, file=sys.stderr)
        sys.exit(2)


cli = checked_cli(main, JudgeConfig)

if __name__ == "__main__":
    cli()
