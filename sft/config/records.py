"""Typed configs as plain data: what runs save and log."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from ..provenance import redact


def to_plain(obj: Any) -> Any:
    """A typed config as plain dicts and lists, for YAML/JSON output."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def to_record(obj: Any) -> Any:
    """A typed config as plain dicts and lists with secrets redacted: what runs save and log."""
    return redact(to_plain(obj))
