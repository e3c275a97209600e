"""Run records: secrets are recognised by name and value and kept out; git, versions and JSON are real."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from sft.provenance import (
    REDACTED,
    SECRET_KEY,
    git_state,
    hydra_overrides,
    literal_secrets,
    redact,
    redact_override,
    run_record,
)

SECRET_NAMES = [
    "api_key",
    "apikey",
    "API_KEY",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "access_token",
    "auth_token",
    "hf_token",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "wandb_api_key",
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
    "token",
    "bearer",
    "private_key",
    "credentials",
    "logger.wandb.api_key",
    "aws-secret-access-key",
]
INNOCENT_NAMES = [
    "max_new_tokens",
    "tokens_seen",
    "tokens_per_sec",
    "num_tokens",
    "trained_tokens",
    "tokenizer",
    "pad_token",
    "eos_token",
    "bos_token",
    "tokenizer.pad_token",
    "token_accuracy",
    "key",
    "monitor_key",
    "num_key_value_heads",
    "password_file",
    "api_key_env",
    "keyboard",
    "secretary",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_match(name):
    assert SECRET_KEY.search(name)


@pytest.mark.parametrize("name", INNOCENT_NAMES)
def test_innocent_names_do_not_match(name):
    assert not SECRET_KEY.search(name)


def test_redact_replaces_secret_values_and_leaves_input_alone(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    data = {
        "logger": {"wandb": {"api_key": "k1", "project": "sft"}, "hf_token": "k2"},
        "probe": {"max_new_tokens": 5, "pad_token": "<pad>"},
        "auth": [{"password": "k3", "user": "me"}, {"token": None}],
    }
    before = copy.deepcopy(data)
    out = redact(data)
    assert out == {
        "logger": {"wandb": {"api_key": REDACTED, "project": "sft"}, "hf_token": REDACTED},
        "probe": {"max_new_tokens": 5, "pad_token": "<pad>"},
        "auth": [{"password": REDACTED, "user": "me"}, {"token": None}],
    }
    assert data == before


def test_redact_hides_secret_environment_values_under_any_name(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "abcd1234secret")
    monkeypatch.setenv("SOME_TOKEN", "true")  # too short to be worth hiding everywhere
    out = redact({"logger": {"note": "abcd1234secret", "url": "https://x:abcd1234secret@h", "flag": "true"}})
    assert out == {"logger": {"note": REDACTED, "url": f"https://x:{REDACTED}@h", "flag": "true"}}


def test_redact_override():
    assert redact_override("logger.wandb.api_key=abc") == f"logger.wandb.api_key={REDACTED}"
    assert redact_override("+hf_token=abc") == f"+hf_token={REDACTED}"
    assert redact_override("probe.max_new_tokens=5") == "probe.max_new_tokens=5"
    assert redact_override("~logger") == "~logger"


def test_literal_secrets_skips_interpolations_and_innocent_names():
    cfg = OmegaConf.create(
        {
            "logger": {"wandb": {"api_key": "abc"}, "x": {"token": "${oc.env:HF_TOKEN}"}},
            "probe": {"max_new_tokens": 5},
            "missing": {"password": "???"},
            "empty": {"secret": ""},
        }
    )
    assert literal_secrets(cfg) == ["logger.wandb.api_key"]


def test_literal_secrets_recurses_into_lists():
    cfg = OmegaConf.create({"hooks": [{"url": "u"}, {"auth_token": "abc"}]})
    assert literal_secrets(cfg) == ["hooks.1.auth_token"]


def _git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def test_git_state_reports_commit_branch_and_dirtiness(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "f.txt").write_text("one\n")
    _git(repo, "add", "f.txt")
    _git(repo, "commit", "-q", "-m", "first")
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()

    assert git_state(repo) == {"commit": sha, "branch": "main", "dirty": False}
    (repo / "untracked.txt").write_text("x")  # untracked files do not change what the commit reproduces
    assert git_state(repo / "f.txt")["dirty"] is False
    (repo / "f.txt").write_text("two\n")
    assert git_state(repo)["dirty"] is True


def test_git_state_outside_a_repository(tmp_path):
    assert git_state(tmp_path) is None
    assert git_state(tmp_path / "does" / "not" / "exist") is None


def test_run_record(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_0123456789abcdef")
    argv = ["sft/train.py", "logger.wandb.api_key=abc", "trainer.max_steps=3", "data.name=my file"]
    record = run_record(
        argv=argv,
        overrides=["logger.wandb.api_key=abc", "trainer.max_steps=3", "note=hf_0123456789abcdef"],
        seed=7,
        data_files={"data/a.jsonl": "sha256:00"},
        project_dir=tmp_path,
    )
    assert set(record) == {
        "command",
        "overrides",
        "seed",
        "git",
        "versions",
        "hardware",
        "data_files",
        "created",
        "parent",
    }
    assert shlex.split(record["command"]) == [argv[0], f"logger.wandb.api_key={REDACTED}", *argv[2:]]
    assert record["overrides"] == [
        f"logger.wandb.api_key={REDACTED}",
        "trainer.max_steps=3",
        f"note={REDACTED}",
    ]
    assert record["seed"] == 7 and record["parent"] is None  # a run started from its base model
    assert record["git"] is None
    assert {"python", "torch", "omegaconf", "hydra-core"} <= set(record["versions"])
    assert {"platform", "hostname", "cpu_count", "gpu_count", "gpus"} <= set(record["hardware"])
    assert record["data_files"] == {"data/a.jsonl": "sha256:00"}
    text = json.dumps(record)
    assert 'abc"' not in text and "hf_0123456789abcdef" not in text


def test_hydra_overrides_outside_hydra():
    assert hydra_overrides() == []


def test_hydra_overrides_inside_a_hydra_app(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(
        "import hydra\n"
        "from sft.provenance import hydra_overrides\n"
        "@hydra.main(version_base='1.3', config_path=None)\n"
        "def main(cfg):\n"
        "    print(hydra_overrides())\n"
        "main()\n"
    )
    args = [sys.executable, str(app), "+a=1", "+b.c=x", f"hydra.run.dir={tmp_path / 'out'}"]
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['+a=1', '+b.c=x']"
