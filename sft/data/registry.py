"""Dataset names → full dataset entries, from `conf/data/*.yaml` or a LLaMA-Factory `dataset_info.json`.

`data.datasets` may be a list (`[alpaca_en, self_cognition, path/to/rows.jsonl]`, or dicts such as
`{name: alpaca_en, weight: 2}`) or a mapping `{name: {overrides}}`. Every name is looked up in
this order: a path to local data, an entry of `data.dataset_info` (when set), then a data config
`conf/data/<name>.yaml` (each is a runnable data config that also serves as a registry entry).
The result is always a mapping name → entry, so a single dataset's setting can be overridden
from the command line (`data.datasets.builtin.num_rows=40`).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ..errors import DataFileError, RegistryError
from ..locations import CONF_DIR
from .formats import SUFFIXES, source_files

CONF_DATA = CONF_DIR / "data"

# LLaMA-Factory dataset_info.json keys we understand, and the ones we refuse with a reason.
_INFO_KEYS = {
    *("file_name", "hf_hub_url", "formatting", "columns", "tags", "split", "subset", "num_samples"),
    "ranking",
}
_INFO_REFUSED = {
    "ms_hub_url": "ModelScope hub datasets are not supported; use file_name or hf_hub_url",
    "om_hub_url": "Modelers hub datasets are not supported; use file_name or hf_hub_url",
    "script_url": "loading scripts are not supported; use file_name or hf_hub_url",
    "folder": "hub sub-folders are not supported; download the files and use file_name",
}


def missing_path(path: str) -> str | None:
    """Why a local data path cannot be read (None when it names at least one data file)."""
    try:
        source_files(path)
    except (FileNotFoundError, DataFileError) as err:
        return str(err)
    return None


def _looks_like_path(name: str) -> bool:
    """A name with a path separator, a wildcard or a data-file suffix is a path, not a registry name."""
    return "/" in name or glob.has_magic(name) or name.endswith(SUFFIXES)


def conf_names() -> list[str]:
    """Data configs under conf/data/ that define datasets (usable as names)."""
    return [file.stem for file in sorted(CONF_DATA.glob("*.yaml")) if _from_conf(file.stem)]


def _from_conf(name: str) -> list[tuple[str, dict]] | None:
    """The dataset entries a `conf/data/<name>.yaml` defines (a mix config may define several)."""
    file = CONF_DATA / f"{name}.yaml"
    if not file.exists():
        return None
    node = OmegaConf.load(file)
    datasets = None if OmegaConf.is_missing(node, "datasets") else node.get("datasets")
    if isinstance(datasets, DictConfig) and len(datasets):
        return [(str(k), OmegaConf.to_container(v, resolve=False) or {}) for k, v in datasets.items()]
    return None


def read_dataset_info(path: str) -> dict[str, dict]:
    """Load a LLaMA-Factory dataset_info.json."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise RegistryError(f"data.dataset_info={path!r}: no such file")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RegistryError(f"data.dataset_info={path!r}: invalid JSON ({err})") from None
    if not isinstance(info, dict):
        raise RegistryError(f"data.dataset_info={path!r}: expected an object mapping names to entries")
    return info


def from_dataset_info(name: str, entry: dict, base_dir: Path) -> dict:
    """Translate one LLaMA-Factory registry entry to our dataset entry (paths relative to its file)."""
    problems = [f"{key}: {why}" for key, why in _INFO_REFUSED.items() if entry.get(key)]
    unknown = sorted(set(entry) - _INFO_KEYS - set(_INFO_REFUSED))
    if unknown:
        problems.append(f"unknown keys {unknown} (understood: {sorted(_INFO_KEYS)})")
    out: dict[str, Any] = {"format": entry.get("formatting", "alpaca")}
    if entry.get("file_name"):
        out.update(source="file", path=str(base_dir / entry["file_name"]))
    elif entry.get("hf_hub_url"):
        out.update(source="hub", path=entry["hf_hub_url"], subset=entry.get("subset"))
    elif not problems:
        problems.append("needs file_name or hf_hub_url")
    if problems:
        raise RegistryError(f"data.dataset_info entry {name!r}: " + "; ".join(problems))
    for ours, theirs in (("columns", "columns"), ("tags", "tags"), ("split", "split")):
        if entry.get(theirs):
            out[ours] = entry[theirs]
    if entry.get("num_samples"):
        out["max_samples"] = entry["num_samples"]
    if entry.get("ranking"):  # preference pairs; kto_tag and raw-text entries are told by their columns
        out["kind"] = "pairs"
    return out


def _requested(raw: Any) -> list[tuple[str | None, dict]]:
    """(name, overrides) pairs from the list or mapping form of data.datasets."""
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, (DictConfig, dict)):
        return [(str(k), _plain(v)) for k, v in raw.items()]
    pairs = []
    for item in raw or []:
        if isinstance(item, str):
            pairs.append((item, {}))
        else:
            entry = _plain(item)
            pairs.append((entry.pop("name", None), entry))
    return pairs


def _plain(node: Any) -> dict:
    """A config node as a plain dict, interpolations left for the root config to resolve."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False) or {}
    return dict(node or {})


def _lookup(name: str, info: dict[str, dict] | None, info_dir: Path | None) -> list[tuple[str, dict]] | None:
    """Registry entries for a name, or None when it is unknown."""
    if _looks_like_path(name):
        return [(Path(name).stem.split("*")[0] or "files", {"source": "file", "path": name})]
    if info is not None and name in info:  # the user's own registry wins over a same-named conf/data file
        return [(name, from_dataset_info(name, info[name], info_dir))]
    return _from_conf(name)


def expand_datasets(cfg: DictConfig) -> DictConfig:
    """Rewrite `cfg.data.datasets` in place as a mapping name → full entry (RegistryError if unknown)."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig):
        return cfg
    if OmegaConf.is_missing(data, "datasets"):
        raise RegistryError(
            "Invalid config:\n  data.datasets: missing; give names, "
            "e.g. 'data.datasets=[alpaca_en,self_cognition]' "
            f"(available: {', '.join(conf_names())})"
        )
    if "datasets" not in data:
        return cfg
    info_path = data.get("dataset_info")
    info = read_dataset_info(info_path) if info_path else None
    info_dir = Path(info_path).expanduser().parent if info_path else None
    # Every entry starts from data.dataset_defaults; a named dataset's config and the overrides win.
    defaults = _plain(data.get("dataset_defaults"))
    expanded: dict[str, dict] = {}
    problems = []
    for i, (name, override) in enumerate(_requested(data.datasets)):
        if name is None:
            path = override.get("path")
            name = Path(str(path)).stem if path else f"dataset{i}"
            found = None
        else:
            found = _lookup(name, info, info_dir)
        if found is None and not (override.get("path") or override.get("source") == "builtin"):
            available = conf_names() + sorted(info or {})
            problems.append(f"data.datasets: unknown dataset {name!r}; available: {', '.join(available)}")
            continue
        if found is None or len(found) == 1:
            key = found[0][0] if found and _looks_like_path(name) else name
            base = found[0][1] if found else {}
            found = [(key, OmegaConf.to_container(OmegaConf.merge(base, override)))]
        for key, entry in found:  # a mix config contributes all of its datasets, unchanged
            expanded[key if key not in expanded else f"{key}_{i}"] = {**defaults, **entry}
    if problems:
        raise RegistryError("Invalid config:\n  " + "\n  ".join(problems))
    with open_dict(cfg):
        cfg.data.datasets = expanded
    return cfg
