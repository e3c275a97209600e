"""`python -m sft.data`: a few examples with their trained tokens highlighted, and the data statistics.

Uses the same config, tokenizer, template and cached preprocessing as training, so what it shows
is exactly what the model will be trained on; no model weights are loaded.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from itertools import islice
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, open_dict

from ..config import TRAIN_GROUPS, PreviewConfig, check, checked_cli, validate
from ..config.commands import PreviewSettings
from ..errors import ConfigError, DataError
from ..locations import CONF_DIR
from .stats import DataStats
from .templates import get_template
from .tokenize import IGNORE_INDEX

if TYPE_CHECKING:
    from .preprocess import Prepared

_ON, _OFF = "\033[1;32m", "\033[0m"


def highlight(
    tokenizer, input_ids: list[int], labels: list[int], color: bool, weights: list[float] | None = None
) -> str:
    """The decoded example with each run of trained tokens coloured (or wrapped in «»).

    With per-token loss weights, a trained run whose weight is not 1 is followed by `[weight w]`, and a
    turn left untrained by weight 0 by `[weight 0]`.
    """
    start, end = (_ON, _OFF) if color else ("«", "»")
    weights = list(weights) if weights is not None and len(weights) else [1.0] * len(input_ids)
    pieces, run, key = [], [], None
    for token, label, weight in [*zip(input_ids, labels, weights, strict=True), (None, None, None)]:
        is_trained = label is not None and label != IGNORE_INDEX
        if run and (token is None or (is_trained, weight) != key):
            trained, w = key
            text = tokenizer.decode(run)
            pieces.append(f"{start}{text}{end}" if trained else text)
            if (trained and w != 1) or w == 0:
                pieces.append(f"[weight {w:g}]")
            run = []
        run.append(token)
        key = (is_trained, weight)
    return "".join(pieces)


def _prompt_len(labels: list[int]) -> int:
    """Tokens before the first trained one: the prompt of a pair's side."""
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def show_example(tokenizer, row: dict, kind: str, color: bool) -> list[str]:
    """The lines that show one prepared row of `kind` with its trained tokens marked."""
    if kind == "pairs":
        ids, labels = row["chosen_input_ids"], row["chosen_labels"]
        cut = _prompt_len(labels)
        return [
            "[prompt]",
            tokenizer.decode(ids[:cut]),
            *(
                line
                for side in ("chosen", "rejected")
                for line in (
                    f"[{side}]",
                    highlight(tokenizer, row[f"{side}_input_ids"][cut:], row[f"{side}_labels"][cut:], color),
                )
            ),
        ]
    if kind == "feedback":
        desirable = "desirable" if row["label"] else "undesirable"
        return [
            f"[label: {row['label']} ({desirable})]",
            highlight(tokenizer, row["input_ids"], row["labels"], color),
            "[KL row: this prompt with another row's completion]",
            highlight(tokenizer, row["kl_input_ids"], row["kl_labels"], color),
        ]
    return [highlight(tokenizer, row["input_ids"], row["labels"], color, row.get("label_weights"))]


def report(stats: DataStats) -> str:
    """A plain-text table of the data statistics."""
    cols = (
        "rows",
        "malformed",
        "used",
        "train",
        "val",
        "truncated",
        *(["split"] if stats.total("split") else []),  # raw-text chunks: pt only
        "too_long",
        "no_trained_token",
        "invalid",
    )
    width = max([len(n) for n in stats.datasets] + [7])
    lines = ["dataset".ljust(width) + "".join(f"{c:>17}" for c in cols)]
    for name, d in stats.datasets.items():
        lines.append(name.ljust(width) + "".join(f"{getattr(d, c):>17}" for c in cols))
    lines.append("total".ljust(width) + "".join(f"{stats.total(c):>17}" for c in cols))
    lines.append(
        f"train tokens {stats.train_tokens} ({stats.train_trained_tokens} trained); "
        f"lengths {stats.length_percentiles}"
    )
    if stats.categories:
        total = sum(stats.categories.values())
        mix = ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in stats.categories.items())
        lines.append(f"categories: {mix}")
    if stats.cache:
        lines.append(f"cache {stats.cache}")
    lines += [f"warning: {w}" for w in stats.warnings]
    lines += [f"skipped {p}" for p in stats.problems[:10]]
    if len(stats.problems) > 10:
        lines.append(f"... and {len(stats.problems) - 10} more skipped rows")
    return "\n".join(lines)


def streamed_rows(typed, tokenizer, template, n: int, split: str) -> tuple[Prepared, list[dict]]:
    """With data.streaming: the held-out rows, or the first `n` training examples as the stream deals
    them to one device (shuffled, unpacked), each with its source and trained-token count."""
    from .preprocess import Encoder
    from .streaming import TrainStream, prepare_stream

    prepared, sources, starts = prepare_stream(typed.data, tokenizer, template)
    if split == "train":
        cfg = replace(typed.data, packing=False, group_by_length=False)
        encoder = Encoder(tokenizer, template, cfg)
        stream = TrainStream(cfg, encoder, sources, starts, prepared.stats, typed.seed, 1, 1)
        examples = [batch[0] for batch in islice(stream, n)]
    else:
        examples = list(prepared.val.select(range(min(n, len(prepared.val)))))
    return prepared, [{**e, "trained": sum(t != IGNORE_INDEX for t in e["labels"])} for e in examples]


def preview(cfg: DictConfig) -> str:
    """The preview text for a composed `preview` config."""
    options = check(cfg.preview, PreviewSettings, prefix="preview.")
    with open_dict(cfg):
        cfg.pop("preview")
    typed = validate(cfg)
    # Here, not at the top: a mistyped key is answered before transformers and datasets load.
    from ..training.model import load_tokenizer
    from .loading import system_prompt
    from .preprocess import prepare

    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    template = get_template(typed.data.template, tokenizer, system_prompt(typed.data))
    if typed.data.streaming:
        prepared, rows = streamed_rows(typed, tokenizer, template, options.rows, options.split)
    else:
        prepared = prepare(typed.data, tokenizer, template, typed.seed, typed.paths.cache_dir)
        rows = prepared.train if options.split == "train" else prepared.val
    color = sys.stdout.isatty() if options.color == "auto" else bool(options.color)
    out = []
    for i in range(min(options.rows, len(rows))):
        row = rows[i]
        out += [
            f"--- {options.split} example {i} ({row['source']}, {row['length']} tokens, "
            f"{row['trained']} trained) ---",
            *show_example(tokenizer, row, typed.data.kind, color),
        ]
    out += [
        "",
        f"template {template.name}, cutoff_len {typed.data.cutoff_len}, truncation {typed.data.truncation}",
        report(prepared.stats),
    ]
    return "\n".join(out)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="preview")
def main(cfg: DictConfig) -> None:
    """Print the preview; a config or data mistake exits 2 with its message."""
    try:
        print(preview(cfg))
    except (ConfigError, DataError) as err:
        print(err, file=sys.stderr)
        sys.exit(2)


cli = checked_cli(main, PreviewConfig, TRAIN_GROUPS)
