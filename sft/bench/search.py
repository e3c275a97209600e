"""TRL at its best on the machine at hand: a coordinate search over the settings that decide its speed."""

from __future__ import annotations

from collections.abc import Callable

# How each dtype of the search loads the weights (`bf16`: in bf16) and what TRL's own `bf16` (autocast) is.
DTYPES = {
    "fp32": {"bf16": False, "autocast": False},
    "bf16_autocast": {"bf16": False, "autocast": True},
    "bf16_weights": {"bf16": True, "autocast": True},
}
ORDER = ("dtype", "packing", "gradient_checkpointing", "micro_batch")


def trl_spec(point: dict, effective_batch: int) -> dict:
    """The worker spec of a TRL run at one point of the search space, at the bench's effective batch."""
    dtype = DTYPES[point["dtype"]]
    return {
        "trainer": "trl",
        "bf16": dtype["bf16"],
        "trl_args": {
            "bf16": dtype["autocast"],
            "packing": point["packing"],
            "gradient_checkpointing": point["gradient_checkpointing"],
            "per_device_train_batch_size": point["micro_batch"],
            "gradient_accumulation_steps": effective_batch // point["micro_batch"],
        },
    }


def coordinate_search(
    space: dict[str, list], start: dict, measure: Callable[[dict], float | None]
) -> tuple[dict, list[tuple[dict, float | None]]]:
    """(fastest point found, every point measured with its tokens/s) by taking each setting in ORDER in
    turn and keeping its fastest value, the others held at the best so far. Each point is measured once;
    a failed run (None) never wins."""
    measured: dict[tuple, float | None] = {}

    def speed(point: dict) -> float:
        key = tuple(point[k] for k in ORDER)
        if key not in measured:
            measured[key] = measure(point)
        return -1.0 if measured[key] is None else measured[key]

    best = dict(start)
    speed(best)  # the start (TRL's defaults) is the first trial
    for setting in ORDER:
        for value in space.get(setting, []):
            candidate = {**best, setting: value}
            if speed(candidate) > speed(best):
                best = candidate
    trials = [(dict(zip(ORDER, key, strict=True)), tokens) for key, tokens in measured.items()]
    return best, trials
