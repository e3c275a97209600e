"""What a run record holds so the run can be repeated (sft.run_dir writes it), and keeping secrets out."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shlex
import socket
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

REDACTED = "<redacted>"

# The last part of a name (split on `.`, `_`, `-`) decides whether it holds a secret, so `password_file`,
# `api_key_env` and `token_accuracy` (names *about* a secret, or LM words) stay readable.
SECRET_PARTS = (
    "secret",
    "secrets",
    "password",
    "passwd",
    "passphrase",
    "bearer",
    "credential",
    "credentials",
    "apikey",
    "secretkey",
    "privatekey",
    "accesstoken",
    "authtoken",
)
# `key` alone is a dict key, a sort key, `monitor_key`: only these qualifiers make it a secret.
KEY_QUALIFIERS = ("api", "private", "secret", "access", "auth", "signing", "encryption", "ssh")
# `token` is a secret (`token`, `hf_token`, `access_token`, `SLACK_BOT_TOKEN`) unless it names a tokenizer
# token; counting words (`max_new_tokens`, `tokens_seen`, `tokenizer`) never end in the bare part `token`.
LM_TOKENS = (
    "pad",
    "eos",
    "bos",
    "unk",
    "sep",
    "cls",
    "mask",
    "start",
    "end",
    "stop",
    "eot",
    "eom",
    "special",
    "additional",
    "image",
    "video",
    "audio",
    "placeholder",
    "default",
    "new",
    "tool",
    "think",
    "fim",
)

_SEP = r"[._-]"
SECRET_KEY = re.compile(
    rf"(?:^|{_SEP})(?:{'|'.join(SECRET_PARTS)})$"
    rf"|(?:^|{_SEP})(?:{'|'.join(KEY_QUALIFIERS)}){_SEP}key$"
    r"|^token$"
    # The lookahead tests the whole part before `_token`: `[a-z0-9]+` cannot cross a separator.
    rf"|(?:^|{_SEP})(?!(?:{'|'.join(LM_TOKENS)}){_SEP})[a-z0-9]+{_SEP}token$",
    re.IGNORECASE,
)
# Environment values shorter than this ("1", "true") would redact innocent strings everywhere.
MIN_ENV_SECRET_LEN = 8

PACKAGES = (
    "sft",
    "torch",
    "lightning",
    "transformers",
    "peft",
    "datasets",
    "tokenizers",
    "safetensors",
    "hydra-core",
    "omegaconf",
    "optuna",
    "wandb",
    "numpy",
    "accelerate",
    "deepspeed",
    "flash-attn",
)
HARDWARE_ENV = ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_JOB_ID")
GIT_TIMEOUT_S = 5


def is_secret(name: object) -> bool:
    """True when a config or environment key name holds a secret."""
    return isinstance(name, str) and SECRET_KEY.search(name) is not None


def _env_secrets() -> list[str]:
    # Longest first, so a secret containing another is replaced whole.
    values = {v for k, v in os.environ.items() if is_secret(k) and len(v) >= MIN_ENV_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def _redact(obj: Any, env_secrets: list[str]) -> Any:
    if isinstance(obj, dict):
        return {
            k: REDACTED if is_secret(k) and v is not None else _redact(v, env_secrets) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        items = [_redact(v, env_secrets) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, str):
        # Substrings too: a resolved `${oc.env:HF_TOKEN}` may sit inside a URL or a shell command.
        for secret in env_secrets:
            obj = obj.replace(secret, REDACTED)
    return obj


def redact(obj: Any) -> Any:
    """Copy of a nested dict/list with secret-named values and secret environment values replaced."""
    return _redact(obj, _env_secrets())


def redact_override(override: str) -> str:
    """`key=value` with the value hidden when the key (Hydra `+`/`++`/`~` prefixes aside) is secret-named."""
    key, sep, _ = override.partition("=")
    return f"{key}={REDACTED}" if sep and is_secret(key.lstrip("+~")) else override


def literal_secrets(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Dotted keys of secret-named entries whose value is typed in as a string rather than interpolated."""
    found: list[str] = []
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}.{key}" if prefix else str(key)
        # Interpolations are never resolved here: `${oc.env:X}` is the sanctioned way in, and resolving
        # could fail on keys the current job does not set.
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, (DictConfig, ListConfig)):
            found += literal_secrets(value, path)
        elif is_secret(key) and isinstance(value, str) and value:
            found.append(path)
    return found


def _git(cwd: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            # `git status` would otherwise refresh the index and race with the user's own git commands.
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state(path: str | os.PathLike) -> dict | None:
    """Commit, branch and dirtiness of the git checkout holding `path`; None without git or a repository."""
    path = Path(path)
    cwd = path if path.is_dir() else path.parent
    if not cwd.is_dir() or _git(cwd, "rev-parse", "--show-toplevel") is None:
        return None
    branch = _git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git(cwd, "rev-parse", "--verify", "--quiet", "HEAD"),
        "branch": None if branch == "HEAD" else branch,  # "HEAD" means detached
        "dirty": None if status is None else bool(status),
    }


def package_versions() -> dict[str, str]:
    """Python and the installed versions of the packages a run's results depend on."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if "sft" not in versions:  # running from a checkout that was never pip-installed
        from sft import __version__

        versions["sft"] = __version__
    return versions


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else what the platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware() -> dict:
    """Platform, host, CPUs, torch threads, CUDA/cuDNN versions, GPUs and the launcher environment."""
    env = {
        k: v
        for k, v in sorted(os.environ.items())
        if (k in HARDWARE_ENV or k.startswith("NCCL_")) and not is_secret(k)
    }
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "env": env,
    }
    try:
        import torch
    except ImportError:
        return info
    # Jobs sharing a machine (a parallel sweep) each get a share of its cores: the record says which.
    info["torch_threads"] = torch.get_num_threads()
    info["cuda"] = torch.version.cuda
    try:
        info["cudnn"] = torch.backends.cudnn.version()
    except RuntimeError:  # cuDNN present but unusable: record that it is unknown, do not fail the run
        info["cudnn"] = None
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    info["gpu_count"] = len(gpus)
    info["gpus"] = gpus
    return info


def run_record(
    *,
    argv: list[str],
    overrides: list[str],
    seed: int | None,
    data_files: dict[str, str],
    project_dir: str | os.PathLike,
    parent: dict | None = None,
) -> dict:
    """Everything needed to repeat a run: command, overrides, seed, code, versions, hardware, data hashes.

    `parent` is the run it started from (`init_from`: its path, hand-off, stage and weights), else None.
    """
    record = {
        # Overrides typed on the command line appear in argv too, so they get the same key-based redaction.
        "command": shlex.join(redact_override(a) for a in argv),
        "overrides": [redact_override(o) for o in overrides],
        "seed": seed,
        "git": git_state(project_dir),
        "versions": package_versions(),
        "hardware": hardware(),
        "data_files": dict(data_files),
        "parent": parent,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return redact(record)


def hydra_overrides() -> list[str]:
    """Task overrides of the running Hydra job, or [] outside one (e.g. a config made with `compose`)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []
