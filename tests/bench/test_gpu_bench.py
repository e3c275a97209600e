"""scripts/gpu_bench.sh: the unattended GPU benchmark, run here on the CPU with the tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT, SHARED_DATA, load_script
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sft.locations import CONF_DIR

SCRIPT = ROOT / "scripts" / "gpu_bench.sh"
# The tiny random model for a few steps: the CPU stands in for the GPU.
TINY = (
    "--allow-cpu",
    "model=tiny",
    "steps=2",
    "warmup=1",
    "cutoff=128",
    "effective_batch=2",
    "peak_matrix=256",
    "peak_seconds=0.2",
    "trl_search.enabled=false",
    f"data_file={SHARED_DATA / 'alpaca_en_demo.json'}",
)


@pytest.fixture(scope="module")
def gpu_bench():
    """scripts/gpu_bench.py as a module."""
    return load_script("gpu_bench")


def run_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """scripts/gpu_bench.sh with this interpreter, its output captured."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_arguments_overrides_and_the_gpu_settings_compose(gpu_bench, tmp_path):
    args = gpu_bench.parse_args(["--allow-cpu", "--run-timeout=30", "steps=3", "~runs.sft", "+runs.x={a: 1}"])
    assert args.allow_cpu and args.run_timeout == 30 and args.deadline == 570
    assert args.overrides == ["steps=3", "~runs.sft", "+runs.x={a: 1}"]
    for bad in (["--bogus"], ["steps"], ["-x=1"]):
        with pytest.raises(SystemExit):
            gpu_bench.parse_args(bad)
    cmd = gpu_bench.bench_command(True, 120, tmp_path, ["steps=3"])
    assert cmd[1:3] == ["-m", "sft.bench"] and cmd[-1] == "steps=3"  # the caller's overrides come last
    assert "model=qwen2_5_0_5b_shape" in cmd and "timeout=120" in cmd and f"hydra.run.dir={tmp_path}" in cmd
    assert "model=qwen2_5_0_5b_shape" in gpu_bench.bench_command(False, 120, tmp_path, [])
    # The GPU settings compose into bench.yaml, and the sft runs' preset into train.yaml.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        bench = compose("bench", overrides=list(gpu_bench.GPU_OVERRIDES))
        train = compose("train", overrides=list(bench.runs.sft_packed.sft_overrides))
    assert bench.model.random_init.hidden_size == 896 and bench.cutoff == 1024
    assert list(bench.runs.sft.sft_overrides) == ["trainer=gpu"]
    assert train.trainer.micro_batch_size == 8 and train.data.packing is True
    GlobalHydra.instance().clear()


def test_requirements_and_the_wheels_to_fetch(gpu_bench):
    declared = gpu_bench.declared()
    assert declared["trl"].startswith("trl>=") and declared["hydra-core"].startswith("hydra-core>=")
    versions = {"trl": "1.16.0", "hydra-core": "1.3.2", "datasets": None}
    wanted = {"trl": "trl>=1.10", "hydra-core": "hydra-core>=1.3.2,<1.4", "datasets": "datasets>=3.0"}
    assert gpu_bench.unsatisfied(wanted, versions.get) == ["datasets>=3.0"]
    assert gpu_bench.unsatisfied({"trl": "trl>=1.10"}, {"trl": "0.9"}.get) == ["trl>=1.10"]
    pytest.importorskip("trl", reason="the bench extra (pip install -e '.[bench]') is not installed")
    plan = gpu_bench.fetch_plan(gpu_bench.closure())
    names = {kind: {pin.split("==")[0] for pin in pins} for kind, pins in plan.items()}
    assert {"trl", "hydra-core", "omegaconf", "antlr4-python3-runtime", "datasets"} <= names["any"]
    assert "numpy" in names["compiled"]  # the GPU machine's own, never fetched
    assert not {"torch", "triton"} & set().union(*names.values())


def test_a_package_that_no_wheel_provides_is_named(gpu_bench, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_bench, "declared", lambda: {"no-such-dist": "no-such-dist>=1"})
    with pytest.raises(gpu_bench.Missing, match="no wheels in .*--fetch-wheels"):
        gpu_bench.ensure_packages(tmp_path)
    wheel = tmp_path / "other_dist-1.0-py3-none-any.whl"  # a wheels folder without the one needed
    with zipfile.ZipFile(wheel, "w") as z:
        metadata = "Metadata-Version: 2.1\nName: other-dist\nVersion: 1.0\n"
        z.writestr("other_dist-1.0.dist-info/METADATA", metadata)
    with pytest.raises(gpu_bench.Missing, match="pip could not install no-such-dist>=1 .*--fetch-wheels"):
        gpu_bench.ensure_packages(tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or __import__("torch").cuda.is_available(),
    reason="needs a machine without a CUDA device",
)
def test_without_cuda_it_stops_with_a_message_unless_allowed():
    done = run_script("--dry-run", timeout=120)  # --dry-run: were the check broken, nothing would run
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no CUDA device is visible" in done.stdout and "--allow-cpu" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_tiny_comparison_runs_both_trainers_prints_every_run_and_exits_zero(tmp_path, cache_dir):
    """The script end to end (it runs `python -m sft.bench`, as `make bench` does, with its own model and
    time limits): TRL (the bench extra) and sft.train on the random tiny model, TRL's best searched first,
    two steps each; the table is complete."""
    pytest.importorskip("trl", reason="the bench extra (pip install -e '.[bench]') is not installed")
    done = run_script(
        *TINY,
        f"--out={tmp_path}",
        f"cache_dir={cache_dir}",
        "~runs.trl_packed_no_gc",
        "~runs.sft_packed",
        "ours=sft",
        "bf16=false",  # fp32 throughout, so TRL's defaults are the search's first point whatever the CPU
        # The search, cut to two points: TRL's defaults, then packing.
        "trl_search.enabled=true",
        "trl_search.steps=2",
        "trl_search.space.dtype=[fp32]",
        "trl_search.space.gradient_checkpointing=[true]",
        "trl_search.space.micro_batch=[4,2]",  # 4 cannot split effective_batch=2: left out
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    table = (tmp_path / "table.md").read_text()
    for name in ("trl_default", "sft", "trl_best"):
        assert f"| {name}" in table and f"| {name}" in done.stdout, name
    assert f"results: {tmp_path / 'results.json'}" in done.stdout
    assert "all 3 runs finished: trl_default, sft, trl_best" in done.stdout

    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"trl_default", "sft", "trl_best"}
    trials = results["trl_search"]
    assert [t["packing"] for t in trials] == [False, True] and all(t["tokens_per_sec"] > 0 for t in trials)
    (best,) = [t for t in trials if t["best"]]
    assert results["runs"]["trl_best"]["settings"]["packing"] is best["packing"]
    for name, run in results["runs"].items():
        assert run["timed_steps"] == 1 and run["tokens_per_sec"] > 0 and 0 < run["mfu"] < 1, name
    assert results["runs"]["trl_default"]["settings"]["gradient_checkpointing"] is True  # TRL's own default
    assert results["runs"]["sft"]["prep_cached_seconds"] < results["runs"]["sft"]["prep_seconds"]
    assert results["machine"]["fp32_gflops"] > 0
    # Both trained on the same rows (those that fit the cutoff whole) and the same tokens: TRL's
    # completion is everything after the prompt, "<|im_end|>\n", so it trains one more token per row.
    given = json.loads((SHARED_DATA / "alpaca_en_demo.json").read_text())
    assert 0 < results["data"]["fit_cutoff"] < results["data"]["rows"] == len(given)
    trl, ours = results["raw"]["trl_default"]["data"], results["raw"]["sft"]["data"]
    assert trl["rows"] == ours["rows"] == results["data"]["fit_cutoff"]
    assert trl["trained_tokens"] == ours["trained_tokens"] + ours["rows"]
    # The first step's loss (the random base model: LoRA starts as the identity) is a per-trained-token
    # mean over two rows in both trainers; the rows differ (each shuffles its own way), so within 2%
    # (observed: 6.063 vs 6.093).
    first = {name: run["steps"][0]["loss"] for name, run in results["raw"].items()}
    assert first["sft"] == pytest.approx(first["trl_default"], rel=0.02), first


def test_a_run_that_times_out_is_named_and_fails_the_script(tmp_path, cache_dir):
    done = run_script(
        *TINY,
        "--run-timeout=1",
        f"--out={tmp_path}",
        f"cache_dir={cache_dir}",
        "~runs.trl_default",
        "~runs.trl_packed_no_gc",
        "~runs.sft_packed",
        "ours=sft",
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED run sft: timed out after 1 s" in done.stdout
    assert "| sft | failed: see sft/log.txt |" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_the_deadline_stops_the_bench(tmp_path, cache_dir):
    done = run_script(*TINY, "--deadline=2", f"--out={tmp_path}", f"cache_dir={cache_dir}", timeout=120)
    assert done.returncode == 124, done.stdout + done.stderr
    assert "FAILED: the deadline passed before the table was written" in done.stdout
