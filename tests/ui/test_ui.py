"""The web page's logic without a browser: groups from conf/, checks by field, paths, secrets, runs."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import CONF, ROOT, SHARED_DATA
from hydra import compose
from omegaconf import OmegaConf

from sft.config import ConfigError, validate
from sft.run_dir import RunDir
from sft.ui import configs, runs
from sft.ui.configs import EXTRA, Draft, Roots, check, config_groups, hydra_conf

FIXED = ["paths.output_dir=/tmp/sft-ui-test/run"]


@pytest.fixture(scope="module")
def groups():
    """(options per group, train.yaml's choices) of the real conf/ tree."""
    return config_groups()


@pytest.fixture
def roots(tmp_path):
    """Outputs under tmp_path plus the shared data, as `python -m sft.ui` sets them up."""
    return Roots([tmp_path / "outputs", SHARED_DATA])


def _check(groups, roots, extra: str = "", values: dict | None = None, **picks):
    options, defaults = groups
    return check(
        Draft({**defaults, "model": "tiny", **picks}, values or {}, extra), defaults, FIXED, roots.problem
    )


def test_groups_and_options_come_from_the_conf_tree(groups, tmp_path, monkeypatch):
    """Every group of train.yaml's defaults list with every YAML in its folder; a new file shows at once."""
    options, defaults = groups
    assert list(options)[:6] == ["model", "data", "lora", "optimizer", "scheduler", "preset"]
    for group, found in options.items():
        assert set(found) == {p.stem for p in (CONF / group).glob("*.yaml")}, group
    assert defaults["model"] == "smollm2_135m" and defaults["preset"] == "balanced"
    copy = tmp_path / "conf"
    shutil.copytree(CONF, copy)
    (copy / "model" / "my_model.yaml").write_text((CONF / "model" / "tiny.yaml").read_text())
    monkeypatch.setattr(configs, "CONF_DIR", copy)
    assert "my_model" in config_groups()[0]["model"]


def test_fields_follow_the_preset_and_only_edits_become_overrides(groups, roots):
    """Unedited fields show the composed values; edited ones become overrides in the command line."""
    checked = _check(groups, roots, preset="aggressive")
    assert checked.ok, checked.problems
    assert checked.values["learning_rate"] == 1e-4 and checked.values["lora_rank"] == 64
    assert checked.values["lora_alpha"] == 128  # 2 x rank, as conf/lora/default.yaml derives it
    assert checked.overrides == ["model=tiny", "preset=aggressive"]
    checked = _check(groups, roots, "data.system='You are terse.'", {"lora_rank": 8, "eval_steps": None})
    assert checked.values["lora_alpha"] == 16 and checked.values["eval_steps"] is None
    assert checked.overrides == [
        "model=tiny",
        "preset.lora_rank=8",
        "trainer.eval_steps=null",
        "data.system=You are terse.",
    ]
    command = checked.command()
    assert shlex.split(command)[3:] == checked.overrides  # the command line runs exactly what the page runs
    assert "'data.system=You are terse.'" in command


def test_problems_are_the_validators_own_and_sit_beside_their_field(groups, roots, make_cfg):
    """The same messages as `validate`, routed to the field, group or overrides box they concern."""
    checked = _check(groups, roots, "lora.dropout=2", {"lora_rank": -3, "cutoff_len": 4})
    with pytest.raises(ConfigError) as cli:
        validate(make_cfg("model=tiny", "preset.lora_rank=-3", "data.cutoff_len=4", "lora.dropout=2"))
    for owner, problems in checked.problems.items():
        for problem in problems:
            assert problem in str(cli.value), (owner, problem)
    assert checked.problems["lora_rank"] == ["lora.r=-3: a positive integer"]
    assert checked.problems["cutoff_len"] == ["data.cutoff_len=4: an integer >= 16"]
    assert checked.problems[EXTRA] == ["lora.dropout=2.0: a number in [0, 1)"]
    assert not checked.ok and checked.cfg is None
    assert _check(groups, roots, values={"learning_rate": "fast"}).problems == {
        "learning_rate": ["preset.learning_rate='fast': a number"]
    }
    assert "Could not find 'model/nope'" in _check(groups, roots, model="nope").problems["model"][0]
    unknown = _check(groups, roots, "trainer.learning_rate=1").problems[EXTRA][0]
    assert "did you mean 'optimizer.lr'" in unknown or "did you mean 'preset.learning_rate'" in unknown


def test_paths_outside_outputs_and_data_are_refused(groups, roots, tmp_path):
    """Paths anywhere in what a user typed must be under the outputs or data dirs; hub ids are not paths."""
    refused = {
        "+data.datasets.mine.path=/etc/passwd": "outside the locations",
        "resume=/tmp/elsewhere": "outside the locations",
        "model.name_or_path=/etc": "outside the locations",
        f"+data.datasets.mine.path={SHARED_DATA}/../../etc/passwd": "outside the locations",
        "data=mix data.datasets=[/etc/passwd]": "outside the locations",  # inside a list value
        "+data.datasets.mine.path=${oc.env:HOME}/x.json": "outside the locations",  # as it resolves
        "paths.log_dir=outputs/mine": "set by the page",
        "+callbacks.x._target_=os.system": "could run any code",
        "hydra.job_logging.handlers.file.filename=/tmp/x.log": "Hydra's own settings",
        "task_name=../../escape": "letters, digits",
    }
    for override, message in refused.items():
        words = override.split(" ")
        problems = _check(groups, roots, shlex.join(words)).problems
        assert message in " ".join(problems[EXTRA]), (override, problems)
    allowed = [
        f"+data.datasets.mine.path={SHARED_DATA / 'alpaca_en_demo.json'}",
        "model.name_or_path=Qwen/Qwen2.5-0.5B",
        "resume=last",
        "data=alpaca_en",  # a config file's own paths are the project's
        "'data.system=You answer in French/English.'",
    ]
    for override in allowed:
        assert EXTRA not in _check(groups, roots, override).problems, override
    with pytest.raises(ValueError, match="outside"):
        roots.check("/etc", "run")
    assert roots.check(tmp_path / "outputs" / "train", "run") == (tmp_path / "outputs" / "train").resolve()


def test_secrets_are_never_shown(groups, roots, monkeypatch):
    """A key in the environment is hidden in the composed YAML; one typed in is refused and hidden."""
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-1234567890")
    checked = _check(groups, roots, "+logger.wandb.settings.api_key=${oc.env:WANDB_API_KEY}")
    assert "wandb-secret-1234567890" not in checked.yaml
    typed = _check(groups, roots, "+logger.wandb.settings.api_key=typed-secret-123456")
    assert not typed.ok and "typed-secret-123456" not in typed.command()
    assert "secret typed into the config" in " ".join(typed.problems[EXTRA])


def test_run_status_progress_and_table(tmp_path):
    """Status, the progress line and the runs table are read from the run's own files."""
    log_dir = tmp_path / "outputs"
    run = log_dir / "train" / "runs" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    choices = {"model": "tiny", "data": "builtin", "preset": "balanced"}
    (run / ".hydra" / "hydra.yaml").write_text(
        OmegaConf.to_yaml({"hydra": {"runtime": {"choices": choices}}})
    )
    (run / ".hydra" / "overrides.yaml").write_text("- model=tiny\n- paths.log_dir=/x\n")
    assert runs.status(run) == "failed"
    progress = {"state": "running", "step": 5, "total_steps": 20, "eta_seconds": 75, "pid": 999_999_999}
    (run / "progress.json").write_text(json.dumps(progress))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert runs.status(run) == "stopped"  # its process is gone
    assert runs.status(run, running=True) == "running"
    (run / "csv").mkdir()
    pd.DataFrame({"step": [4], "train/tokens_per_sec": [1234.0]}).to_csv(
        run / "csv" / "metrics.csv", index=False
    )
    line = runs.progress_line(run, runs.status(run), RunDir(run).metrics())
    assert line == "stopped · step 5/20 · 1,234 tokens/s"
    (run / "summary.json").write_text(json.dumps({"global_step": 20, "val_loss": 1.5, "train_loss": 1.25}))
    row = runs.table(log_dir).iloc[0]
    assert (row["run"], row["status"], row["model"], row["overrides"]) == (
        "train/runs/2026-01-01_00-00-00",
        "finished",
        "tiny",
        "model=tiny",
    )
    assert row["step"] == 20 and row["val_loss"] == 1.5
    assert runs.format_seconds(3725) == "1h 02m" and runs.format_seconds(65) == "1m 05s"


def test_launcher_runs_argument_lists_and_stops_with_sigterm(tmp_path):
    """A launch is an argument list (no shell: a value with `;` stays one argument); Stop sends SIGTERM."""
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys, time\n"
        "open(os.environ['SFT_RUN_NAME'] + '.argv', 'w').write(json.dumps(sys.argv[1:]))\ntime.sleep(60)\n"
    )
    fake.chmod(0o755)
    launcher = runs.Launcher(tmp_path / "outputs", tmp_path, python=str(fake))
    job = launcher.start_run(["data.system=a; rm -rf /"])
    assert job.run.parent == tmp_path / "outputs" / "train" / "runs" and launcher.alive(job.run)
    argv = tmp_path / f"{job.run.name}.argv"
    for _ in range(100):
        if argv.is_file() and argv.read_text():
            break
        time.sleep(0.1)
    assert json.loads(argv.read_text()) == ["-m", "sft.train", "data.system=a; rm -rf /"]
    assert launcher.stop(job.run, timeout=30)
    assert job.process.returncode == -signal.SIGTERM and not launcher.alive(job.run)
    assert not launcher.stop(job.run)
    assert runs.status(job.run, launcher.alive(job.run)) == "failed"  # no checkpoint to resume from
    with pytest.raises(ValueError, match="only a stopped or failed run with a checkpoint"):
        launcher.resume_run(job.run)
    with pytest.raises(ValueError, match="letters, digits"):
        launcher.start_run([], task_name="../../escape")


def test_non_loopback_needs_a_password():
    """Binding beyond loopback without a password is refused with the variable to set."""
    from sft.ui.__main__ import option_problems

    with hydra_conf():
        cfg = compose("ui", overrides=["host=0.0.0.0"])
    (problem,) = option_problems(cfg, password=None)
    assert problem.startswith("host=0.0.0.0") and "SFT_UI_PASSWORD" in problem
    assert option_problems(cfg, password="hunter2-but-longer") == []
    with hydra_conf():
        assert option_problems(compose("ui"), password=None) == []


def test_training_package_never_imports_gradio():
    """Only sft.ui's app and entry point import Gradio; training, eval and the UI's logic do not."""
    code = (
        "import sys, sft.train, sft.eval, sft.prepare.steps, sft.ui.configs, sft.ui.runs, sft.ui.sweeps, "
        "sft.ui.compare; print('gradio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_page_offers_each_stage_with_its_data_and_beta(groups, roots):
    options, _ = groups
    assert set(options["stage"]) == {"sft", "pt", "dpo", "kto"}
    assert {"dpo_en", "kto_en", "c4"} <= set(options["data"])
    for stage, data in (("dpo", "dpo_en"), ("kto", "kto_en"), ("pt", "c4")):
        checked = _check(groups, roots, stage=stage, data=data)
        assert checked.ok, (stage, checked.problems)
    dpo = _check(groups, roots, stage="dpo", data="dpo_en", values={"beta": "0.3"})
    assert dpo.ok and "preset.beta=0.3" in dpo.overrides
    mismatch = _check(groups, roots, stage="dpo").problems  # the default builtin data holds conversations
    assert any("stage=dpo trains on pairs" in p for found in mismatch.values() for p in found), mismatch


def test_the_page_offers_every_adaptation_method_and_routes_its_mistakes(groups, roots):
    options, _ = groups
    assert {"qlora", "loraplus", "pissa", "olora", "freeze"} <= set(options["lora"])
    for method in ("qlora", "loraplus", "pissa", "olora", "freeze"):
        checked = _check(groups, roots, lora=method)
        assert checked.ok, (method, checked.problems)
    noisy = _check(groups, roots, values={"neftune_alpha": "5"})
    assert noisy.ok and "trainer.neftune_alpha=5.0" in noisy.overrides
    too_deep = _check(groups, roots, lora="freeze", values={"trainable_layers": "9"}).problems
    assert any("at most 2" in p for p in too_deep["trainable_layers"]), too_deep
    no_lora = _check(groups, roots, lora="none", values={"loraplus_lr_ratio": "16"}).problems
    assert any("null without LoRA" in p for p in no_lora["loraplus_lr_ratio"]), no_lora
