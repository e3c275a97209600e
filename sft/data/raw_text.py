"""Raw text for continued pre-training: rows to {"text": str}, documents to cutoff_len token chunks.

Every token is trained and no chat template applies: a document is its tokens plus the end-of-text
token (so the model learns where documents end, and packed neighbours are told apart), cut into
consecutive chunks of at most cutoff_len tokens, each chunk its own example.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError, MalformedRow
from .formats import as_row

# LLaMA-Factory's raw-text entries name the text column as `prompt` (`columns: {prompt: text}`).
TEXT_COLUMN = "text"


def to_text(row: object, columns: Mapping | None = None) -> dict:
    """Normalise one raw-text row to {"text": str}, or raise MalformedRow saying why."""
    row = as_row(row)
    key = (columns or {}).get("prompt") or TEXT_COLUMN
    value = row.get(key)
    if value is None:
        raise MalformedRow(f"missing field {key!r}")
    if not isinstance(value, str):
        raise MalformedRow(f"{key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise MalformedRow(f"{key!r} is empty")
    return {"text": value}


def eos_id(tokenizer) -> int:
    """The end-of-text id that closes every document (a tokenizer without one cannot mark the ends)."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "stage=pt needs a tokenizer with an eos token to end each document; this one has none"
        )
    return tokenizer.eos_token_id


def chunk_text(text: str, tokenizer, cutoff_len: int) -> list[list[int]]:
    """The document's ids plus eos, cut into consecutive chunks of at most cutoff_len tokens."""
    ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], eos_id(tokenizer)]
    chunks = [ids[start : start + cutoff_len] for start in range(0, len(ids), cutoff_len)]
    # A lone last token (often just the eos) has nothing before it in its chunk to be predicted from.
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()
    return chunks
