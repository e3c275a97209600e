"""Parity: an exported model answers the eval prompts greedily, token for token, as the trained model did.

At the end of training the run records its reference (`parity_reference.json`): for the first prompts of
the eval suites, the prompt rendered with the training template and the greedy answer's token ids from
the model as it stood in memory (the adapter on its base), stopped at the run's end-of-turn ids.
`check` loads an exported artifact the way a deployment would (its own tokenizer, chat template and
generation config, nothing of the run's), answers the same prompts greedily and names the first prompt
where the rendered prompt, an answer token or the stop differs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import write_json
from ..data.templates import Template, generation_prompt
from ..errors import ExportError
from ..run_dir import RunDir, read_json
from .suite import load_suite


def parity_prompts(suites: list[str], count: int) -> list[str]:
    """The first `count` prompts of the eval suites, in suite order."""
    prompts: list[str] = []
    for name in suites:
        prompts += [row["prompt"] for row in load_suite(name)]
        if len(prompts) >= count:
            break
    return prompts[:count]


@torch.no_grad()
def _greedy(model, prompt_ids: list[int], max_new_tokens: int, **stop) -> list[int]:
    """Greedy new token ids after `prompt_ids`, one sequence (no padding, so nothing batch-dependent)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        **stop,
    )
    return out[0, ids.shape[1] :].tolist()


def _trim(answer: list[int], stop_ids: list[int]) -> tuple[list[int], bool]:
    """The answer up to and including its first stop id, and whether it stopped there."""
    for i, token in enumerate(answer):
        if token in stop_ids:
            return answer[: i + 1], True
    return answer, False


def record_reference(
    model, tokenizer, template: Template, stop_ids: list[int], prompts: list[str], max_new_tokens: int
) -> dict:
    """The trained model's greedy answers to `prompts`, with the rendered prompts' and answers' token ids."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for prompt in prompts:
            text = generation_prompt(tokenizer, template, prompt)
            prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            new = _greedy(
                model, prompt_ids, max_new_tokens, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
            )
            answer, stopped = _trim(new, stop_ids)
            rows.append(
                {
                    "prompt": prompt,
                    "prompt_ids": prompt_ids,
                    "answer_ids": answer,
                    "answer": tokenizer.decode(answer, skip_special_tokens=True),
                    "stopped": stopped,
                }
            )
    finally:
        model.train(was_training)
    return {"max_new_tokens": max_new_tokens, "stop_ids": stop_ids, "rows": rows}


def save_reference(reference: dict, run: Path) -> Path:
    """Write the reference into the run directory."""
    path = RunDir(run).parity_reference
    write_json(reference, path)
    return path


def _artifact_file(artifact: Path) -> tuple[Path, str | None]:
    """(directory, GGUF file name or None) of an exported artifact: a model directory or a .gguf file."""
    if artifact.is_file() and artifact.suffix == ".gguf":
        return artifact.parent, artifact.name
    if artifact.is_dir():
        if (artifact / "config.json").is_file():
            return artifact, None
        ggufs = sorted(p.name for p in artifact.glob("*.gguf"))
        if len(ggufs) == 1:
            return artifact, ggufs[0]
        if ggufs:
            raise ExportError(f"{artifact} holds several GGUF files ({', '.join(ggufs)}): name one")
    raise ExportError(f"{artifact}: not an exported model (a directory with config.json, or a .gguf file)")


def load_artifact(artifact: Path):
    """(model, tokenizer) of an exported artifact, loaded with transformers as a user of it would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..serving.gguf_export import load_gguf

    directory, gguf = _artifact_file(Path(artifact))
    if gguf:
        return load_gguf(directory / gguf)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return AutoModelForCausalLM.from_pretrained(directory, dtype="auto").eval(), tokenizer


def _first_difference(expected: list[int], got: list[int]) -> int:
    """Index of the first token where two id lists differ (the shorter length when one is a prefix)."""
    for i, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            return i
    return min(len(expected), len(got))


def compare(reference: dict, model, tokenizer) -> dict:
    """Answer the reference's prompts with `model` and `tokenizer`; the first drift, or none."""
    eos = model.generation_config.eos_token_id
    stops = [eos] if isinstance(eos, int) else list(eos or [])
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [None])[0]
    matched = 0
    for index, row in enumerate(reference["rows"]):
        messages = [{"role": "user", "content": row["prompt"]}]
        prompt_ids = list(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        drift = {"index": index, "prompt": row["prompt"], "expected": row["answer"]}
        if prompt_ids != row["prompt_ids"]:
            at = _first_difference(row["prompt_ids"], prompt_ids)
            expected_text = tokenizer.decode(row["prompt_ids"][at : at + 12])
            got_text = tokenizer.decode(prompt_ids[at : at + 12])
            return {
                "matched": matched,
                "first_difference": drift
                | {
                    "reason": f"the artifact's chat template renders the prompt differently at token {at}: "
                    f"{expected_text!r} in training, {got_text!r} in the artifact",
                    "got": None,
                },
            }
        new = _greedy(
            model, prompt_ids, reference["max_new_tokens"], eos_token_id=stops or None, pad_token_id=pad
        )
        answer, stopped = _trim(new, stops)
        if answer != row["answer_ids"] or stopped != row["stopped"]:
            at = _first_difference(row["answer_ids"], answer)
            if answer[:at] == row["answer_ids"] and row["stopped"]:
                end = tokenizer.decode(row["answer_ids"][-1:])
                reason = (
                    f"the trained model stopped after {at} tokens at {end!r}; the artifact does not stop "
                    f"there (its generation config's eos ids are {stops})"
                )
            elif not row["stopped"] and stopped and answer[:-1] == row["answer_ids"][: len(answer) - 1]:
                reason = f"the artifact stops at token {len(answer) - 1} where the trained model went on"
            else:
                reason = f"the answers differ from token {at} on"
            return {
                "matched": matched,
                "first_difference": drift
                | {"reason": reason, "got": tokenizer.decode(answer, skip_special_tokens=True)},
            }
        matched += 1
    return {"matched": matched, "first_difference": None}


def check(run: Path, artifact: Path, out: Path | None = None) -> dict:
    """Compare `artifact` with the run's reference; write and return the result (`passed` says it all)."""
    run_dir = RunDir(run)
    if not run_dir.parity_reference.is_file():
        raise ExportError(
            f"{run_dir.parity_reference} is missing: the run recorded no parity reference "
            "(evaluation.parity.prompts was 0, or the run predates parity checks)"
        )
    reference = read_json(run_dir.parity_reference)
    model, tokenizer = load_artifact(Path(artifact))
    result = {"run": str(Path(run).resolve()), "artifact": str(Path(artifact).resolve())}
    result |= {"prompts": len(reference["rows"])} | compare(reference, model, tokenizer)
    result["passed"] = result["first_difference"] is None
    write_json(result, Path(out) if out else run_dir.parity)
    return result


def describe(result: dict) -> str:
    """The check's outcome in words: the match count, or the first drift with both answers."""
    counts = f"{result['matched']}/{result['prompts']} prompts identical"
    head = f"parity of {result['artifact']} with {result['run']}: {counts}"
    drift = result["first_difference"]
    if drift is None:
        return head + " (greedy tokens and stops)"
    lines = [head, f"first drift, prompt {drift['index']}: {drift['prompt']!r}", f"  {drift['reason']}"]
    lines.append(f"  trained model: {drift['expected']!r}")
    if drift["got"] is not None:
        lines.append(f"  artifact:      {drift['got']!r}")
    return "\n".join(lines)
