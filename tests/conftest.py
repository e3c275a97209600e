"""Shared fixtures: compose the real Hydra config with outputs under tmp_path and a shared model cache."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sft.locations import CONF_DIR

# Test workers (pytest-xdist) share the cores, and so do the runs they start: one OpenMP thread each. With
# torch's default of one thread per core, every worker and run oversubscribes the cores and OpenMP's
# spinning threads wait on each other (make test on 2 cores: 973 s with the default, 682 s with this).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
SHARED_DATA = ROOT.parent / "shared" / "data"


# The longest test files (worker seconds, from `make test --durations` on 2 cores, 2026-12-05, one thread
# each), longest first. `make test` hands out whole files (--dist loadfile) in collection order
# (--no-loadscope-reorder): starting with these keeps one long file from running alone at the end while
# the other worker idles.
LONGEST_FIRST = (
    "tests/training/test_faults.py",
    "tests/ui/test_ui_browser.py",
    "tests/bench/test_gpu_bench.py",
    "tests/sweep/test_sweep.py",
    "tests/training/test_fsdp_cpu.py",
    "tests/training/test_strategies.py",
    "tests/sweep/test_launchers.py",
    "tests/training/test_train.py",
    "tests/training/test_stages.py",
    "tests/training/test_smollm2.py",
    "tests/eval/test_harness.py",
    "tests/sweep/test_crash_recovery.py",
    "tests/training/test_adapters.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Run the longest files first (a stable sort: every other file keeps its place after them)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 300):
    """Run `python -m <module> <args>` from the project root, capturing text output."""
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def start_module(module: str, *args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `python -m <module> <args>` from the project root without waiting; its output goes to `log`.

    A file rather than a pipe: a pipe nobody reads while the test waits would fill and stall the run.
    """
    command = [sys.executable, "-m", module, *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def logged_rows(run: Path) -> list[dict]:
    """The rows of a run's CSV log (csv/metrics.csv), in the order they were logged."""
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged_series(run: Path, key: str) -> dict[int, float]:
    """step -> value for the logged rows that hold `key`."""
    return {int(r["step"]): float(r[key]) for r in logged_rows(run) if r.get(key)}


def train_processes(root: Path, cache_dir: Path, *overrides: str) -> Path:
    """Run `python -m sft.train` (which may start device processes itself) with outputs under `root`;
    return its single run directory."""
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(root)}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = run_module("sft.train", *overrides, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    runs = list((root / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 wrote into rank 0's run directory, not a second one
    assert done.stdout.count("=== sft run summary (") == 1  # printed by rank 0 only
    return runs[0]


def chat_ids(tokenizer, text: str = "Who are you?") -> dict:
    """One user turn, rendered with the tokenizer's chat template and a generation prompt, as tensors."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def new_process_tree(monkeypatch) -> None:
    """Neither a precision nor matmul rates inherited from a parent process."""
    import sft.training.precision as precision

    monkeypatch.setenv(precision.DECIDED, "")
    monkeypatch.setenv(precision.RATES, "")


@pytest.fixture
def undecided(monkeypatch, tmp_path):
    """No decision or rates inherited from an earlier run in this process (restored afterwards), nor kept in
    the cache for this CPU by an earlier test: the CPU is one never measured."""
    import sft.training.precision as precision

    new_process_tree(monkeypatch)
    monkeypatch.setattr(precision, "cpu_identity", lambda: f"a CPU of {tmp_path}")


def measured(monkeypatch, fp32: float, bf16: float) -> list:
    """Make the CPU measure `fp32` and `bf16` GFLOP/s; the returned list records each measurement as
    (dtype, side of the square matmuls)."""
    import torch

    import sft.training.precision as precision

    calls = []

    def peak(dtype, n, **_):
        calls.append((dtype, n))
        return bf16 if dtype == torch.bfloat16 else fp32

    monkeypatch.setattr(precision, "matmul_peak", peak)
    return calls


def token_ids():
    """Two rows of 24 token ids below the tiny model's vocabulary, the same every call."""
    import torch

    return torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))


def random_lora_b(model, std: float = 0.1):
    """`model` with every lora_B drawn at random (PEFT starts them at zero): its adapters move the logits."""
    import torch

    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=std)
    return model


def products(model, autocast: bool = False, ids=None):
    """Logits and every trainable gradient of one forward and backward of `ids` (token_ids() by default),
    dropout masks seeded."""
    import torch

    model.zero_grad()
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=token_ids() if ids is None else ids).logits
    logits.float().logsumexp(-1).sum().backward()
    return logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def files_under(path: Path) -> set[str]:
    """Every file below `path`, as paths relative to it."""
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def compose_train(out: Path, log_dir: Path, cache: Path, *overrides: str):
    """Compose `train.yaml` with outputs in `out`, run directories under `log_dir` and models in `cache`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={out}",
                f"paths.log_dir={log_dir}",
                f"paths.cache_dir={cache}",
                *overrides,
            ],
        )


def preview_in_process(tmp_path: Path, cache: Path, *overrides: str) -> str:
    """What `python -m sft.data <overrides>` prints, uncoloured, run in this process (outputs in tmp_path)."""
    from sft.data.preview import preview

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                "preview",
                overrides=[
                    "preview.color=false",
                    f"paths.cache_dir={cache}",
                    f"paths.output_dir={tmp_path / 'out'}",
                    f"paths.log_dir={tmp_path}",
                    *overrides,
                ],
            )
        return preview(cfg)
    finally:
        GlobalHydra.instance().clear()


def compose_step(step: str, *overrides: str):
    """Compose `conf/prepare/<step>.yaml` (a `python -m sft.prepare <step>` config) with overrides."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(f"prepare/{step}", overrides=list(overrides))


@pytest.fixture
def scripted():
    """(server, base URL) of a scripted OpenAI-compatible endpoint on loopback (tests/endpoints.py)."""
    from endpoints import serve_scripted

    with serve_scripted() as served:
        yield served


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Iterator[Path]:
    """One model cache for the session, so the tiny model is built once (removed at the end: with the
    converted SmolLM2, half a GB)."""
    path = tmp_path_factory.mktemp("cache")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def session_cache(cache_dir):
    """SFT_CACHE is the session's cache for every test and every command a test starts.

    Every config's cache_dir defaults to $SFT_CACHE, else ~/.cache/sft: a test that forgets to pass its
    cache (or a code path that falls back to the default) still shares the session's models and never
    writes into the user's real cache.
    """
    patch = pytest.MonkeyPatch()
    patch.setenv("SFT_CACHE", str(cache_dir))
    yield cache_dir
    patch.undo()


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """Compose `train.yaml` with overrides; outputs go to a fresh directory under tmp_path."""
    counter = iter(range(1000))

    def _make(*overrides: str, run: str | None = None):
        return compose_train(tmp_path / (run or f"run{next(counter)}"), tmp_path, cache_dir, *overrides)

    yield _make
    GlobalHydra.instance().clear()


# A tiny, fast, deterministic training setup: small model, few rows, no probes.
TINY = [
    "model=tiny",
    "trainer=debug",
    "logger=csv",
    "data.datasets.builtin.num_rows=40",
    "data.val_size=8",
    "data.cutoff_len=256",
    "probe.enabled=false",
    "evaluation.parity.prompts=0",  # tests/eval/test_parity.py records and checks them
    "preset=conservative",
    "trainer.micro_batch_size=4",  # the tests' batch arithmetic (accumulation 2 of effective 8)
    "reuse_initial_eval=false",  # each run evaluates its own start (tests/training/test_baseline.py: reuse)
]
