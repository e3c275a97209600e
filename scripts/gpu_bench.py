"""Run `python -m sft.bench` (sft.train against TRL's SFTTrainer) unattended on a GPU machine.

Called by scripts/gpu_bench.sh. Where PyPI is reachable, `--fetch-wheels` puts into wheels/ what an offline
GPU machine needs beyond the checkout and its CUDA PyTorch: the pure-Python wheels of TRL and of every
other distribution the bench imports (at the versions installed here), and a copy of the Alpaca rows.
On the GPU machine the script then

1. checks that PyTorch sees a CUDA device (`--allow-cpu` runs on the CPU instead, e.g. with `model=tiny`),
2. installs from wheels/ (`pip install --no-index --find-links wheels/`) whatever the bench needs and
   the environment lacks, TRL above all,
3. runs the bench on the Qwen2.5-0.5B-shaped random model (`model=qwen2_5_0_5b_shape`, no download), in
   bf16 when it measures faster, each run with a timeout and the whole script under a deadline,
4. prints the table and the results' path, and exits non-zero when anything failed.

Exit status: 0 every run finished; 1 a run or the bench failed (each failed run is named); 2 bad arguments;
3 the machine lacks something (CUDA, PyTorch, a package, the data: the message says what); 124 the
deadline passed. Extra `key=value` / `~key` / `+key=value` arguments are Hydra overrides of conf/bench.yaml,
applied after the script's own.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a file, the script must import the `sft` of its own checkout, not whichever one is installed.
sys.path.insert(0, str(ROOT))

from sft.locations import default_data_dir  # noqa: E402  (standard library only: no torch)

DATA_NAME = "alpaca_en_demo.json"  # the bench's default data_file, in the default data directory
# The distributions the bench imports beyond the standard library (sft.bench, its workers, sft.train's
# stack, TRL). torch is checked, never installed: it must be the machine's own CUDA build.
NEEDS = (
    "trl",
    "transformers",
    "peft",
    "lightning",
    "datasets",
    "hydra-core",
    "omegaconf",
    "gguf",  # sft.train's end-of-run export path imports it
    "rich",
    "safetensors",
    "numpy",
    "pyyaml",
)
# Never fetched or installed: PyTorch and the CUDA stack it was built with (the GPU machine's own).
MACHINE_OWN = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|pytorch-triton.*)$")
# The same settings on every GPU: the Qwen2.5-0.5B shape (random weights, byte tokenizer: no download),
# rows up to 1024 tokens, enough steps to time after the warm-up, matmuls large enough to find the GPU's
# peak, and sft.train with its GPU preset (micro-batch 8, one optimizer step in one micro-batch like TRL).
GPU_OVERRIDES = (
    "model=qwen2_5_0_5b_shape",
    "cutoff=1024",
    "steps=30",
    "warmup=5",
    "peak_matrix=8192",
    'runs.sft.sft_overrides=["trainer=gpu"]',
    'runs.sft_packed.sft_overrides=["data.packing=true","trainer=gpu"]',
)
CPU_OVERRIDES = ("model=qwen2_5_0_5b_shape",)  # --allow-cpu without a GPU: bench.yaml's own settings
# A Hydra override: key=value, +key=value, ++key=value, ~key or ~key=value.
OVERRIDE = re.compile(r"^(~\w[\w.@/-]*(=.*)?|\+{0,2}\w[\w.@/-]*=.*)$", re.DOTALL)
ENVIRONMENT = 3  # exit status when the machine lacks something
DEADLINE = 124  # exit status when the deadline passed


class Missing(Exception):
    """Something the machine lacks (CUDA, PyTorch, a package, the data); the message says what to do."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options, with every `key=value`, `~key` or `+key=value` argument kept as a Hydra override."""
    parser = argparse.ArgumentParser(prog="gpu_bench.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fetch-wheels",
        action="store_true",
        help="download the wheels (and copy the Alpaca rows) into --wheels, then exit; needs PyPI",
    )
    parser.add_argument("--wheels", type=Path, default=ROOT / "wheels", help="the wheels folder")
    parser.add_argument(
        "--python-versions",
        default="3.10,3.11,3.12,3.13",
        help="--fetch-wheels: Python versions of the GPU machine, for wheels tagged with one",
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on the CPU when no CUDA device is visible"
    )
    parser.add_argument(
        "--deadline", type=float, default=570, help="seconds for the whole script (default 570)"
    )
    parser.add_argument("--run-timeout", type=float, default=120, help="seconds per run (default 120)")
    parser.add_argument("--out", type=Path, default=None, help="the bench's output folder")
    parser.add_argument("--dry-run", action="store_true", help="check the machine, print the command")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not OVERRIDE.match(a)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = rest
    if args.out is None:
        args.out = ROOT / "outputs" / "gpu_bench" / time.strftime("%Y-%m-%d_%H-%M-%S")
    args.out = args.out.resolve()
    args.wheels = args.wheels.resolve()
    return args


def say(text: str) -> None:
    """One line of the script's own progress, marked as such."""
    print(f"gpu_bench: {text}", flush=True)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, str]:
    """name -> requirement of the bench's needs, with the version bounds pyproject.toml declares."""
    specs = {canonical(n): n for n in NEEDS}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the names without their bounds
        return specs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"] + project["optional-dependencies"]["bench"]:
        name = canonical(re.match(r"[A-Za-z0-9_.-]+", line).group())
        if name in specs:
            specs[name] = line.split(";")[0].strip()
    return specs


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unsatisfied(requirements: dict[str, str], version_of=installed_version) -> list[str]:
    """The requirements that no installed distribution meets (absent, or outside the declared bounds)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # without packaging, any installed version will do
        return [line for name, line in requirements.items() if version_of(name) is None]
    missing = []
    for name, line in requirements.items():
        have = version_of(name)
        if have is None or not Requirement(line).specifier.contains(have, prereleases=True):
            missing.append(line)
    return missing


def closure(roots: tuple[str, ...] = NEEDS) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions the roots need, transitively, without PyTorch and its CUDA stack."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in found or MACHINE_OWN.match(name):
            continue
        try:
            found[name] = dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise Missing(f"{name} is not installed here, so its wheel cannot be fetched") from None
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def wheel_tags(dist: importlib.metadata.Distribution) -> tuple[bool, list[str]]:
    """Whether an installed distribution is pure Python, and its wheel tags."""
    text = dist.read_text("WHEEL") or ""
    pure = "Root-Is-Purelib: true" in text
    return pure, [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


def fetch_plan(dists: dict[str, importlib.metadata.Distribution]) -> dict[str, list[str]]:
    """Pinned requirements by kind of wheel: `any` Python, `per_python` (py311-none-any) or `compiled`.

    Compiled ones are not fetched: the GPU machine must have them (its numpy, pyarrow, tokenizers, ...).
    """
    plan: dict[str, list[str]] = {"any": [], "per_python": [], "compiled": []}
    for name, dist in sorted(dists.items()):
        pure, tags = wheel_tags(dist)
        pin = f"{name}=={dist.version}"
        if not pure:
            plan["compiled"].append(pin)
        elif tags and all(re.match(r"py\d{2,}-", t) for t in tags):
            plan["per_python"].append(pin)
        else:
            plan["any"].append(pin)
    return plan


def fetch_wheels(args: argparse.Namespace) -> int:
    """Download the pure-Python wheels the bench needs into args.wheels and copy the Alpaca rows there."""
    plan = fetch_plan(closure())
    args.wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    say(f"fetching {len(plan['any'])} wheels into {args.wheels}")
    # `pip wheel` takes a wheel from PyPI, or builds one from an sdist-only release (antlr4's).
    done = subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(args.wheels), *plan["any"]])
    if done.returncode != 0:
        say("pip wheel failed (is PyPI reachable from here?)")
        return 1
    for version in [v for v in args.python_versions.split(",") if v]:
        cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "-q", "--python-version", version]
        done = subprocess.run([*cmd, "-d", str(args.wheels), *plan["per_python"]])
        if done.returncode != 0:
            say(f"warning: no wheel of {', '.join(plan['per_python'])} for Python {version}")
    data = Path(default_data_dir()) / DATA_NAME
    if data.is_file():
        (args.wheels / "data").mkdir(exist_ok=True)
        shutil.copyfile(data, args.wheels / "data" / DATA_NAME)
        say(f"copied the Alpaca rows {data} to {args.wheels / 'data'}")
    else:
        say(f"warning: no {data} to copy; pass data_file=... on the GPU machine")
    size = sum(p.stat().st_size for p in args.wheels.rglob("*") if p.is_file()) / 2**20
    say(f"{args.wheels}: {size:.1f} MiB. Compiled, so expected on the GPU machine already (not fetched): ")
    print("  " + " ".join(plan["compiled"]), flush=True)
    say("copy the checkout with wheels/ (git-ignored) to the GPU machine and run scripts/gpu_bench.sh")
    return 0


# Run in a child process, so this one never initialises CUDA (nor crashes with a broken PyTorch).
DEVICE_PROBE = """
import json, sys
try:
    import torch
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    sys.exit()
cuda = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if cuda else None}))
"""


def check_device(allow_cpu: bool) -> str | None:
    """The CUDA device's name, or None on the CPU with --allow-cpu; raises Missing otherwise."""
    done = subprocess.run([sys.executable, "-c", DEVICE_PROBE], capture_output=True, text=True)
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Missing(
            f"{sys.executable} could not check for a CUDA device (exit {done.returncode}): {last}"
        ) from None
    if "error" in found:
        raise Missing(
            f"PyTorch cannot be imported by {sys.executable} ({found['error']}). Install a CUDA build of "
            "PyTorch (torch>=2.5,<2.14) for this Python, or point PYTHON= at the interpreter that has one."
        )
    if found["gpu"]:
        return found["gpu"]
    if allow_cpu:
        return None
    build = f"CUDA {found['cuda']}" if found["cuda"] else "a CPU-only build"
    raise Missing(
        f"no CUDA device is visible to {sys.executable} (torch {found['torch']}, {build}; "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}). This script "
        "benchmarks on a GPU: check nvidia-smi and install a CUDA build of PyTorch, or pass --allow-cpu "
        "to run on the CPU anyway (e.g. --allow-cpu model=tiny steps=2 cutoff=128 for a quick check)."
    )


def ensure_packages(wheels: Path) -> list[str]:
    """Install from `wheels` what the bench needs and this environment lacks; what was installed."""
    missing = unsatisfied(declared())
    if not missing:
        return []
    fetch = "run scripts/gpu_bench.sh --fetch-wheels where PyPI is reachable and copy wheels/ here"
    if not any(wheels.glob("*.whl")):
        raise Missing(f"missing {', '.join(missing)} and no wheels in {wheels}: {fetch}")
    say(f"installing {', '.join(missing)} from {wheels}")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *missing]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        raise Missing(
            f"pip could not install {', '.join(missing)} from {wheels}: "
            + " / ".join(lines[-3:])
            + f". {fetch} (a compiled dependency must be installed on this machine already)."
        )
    probe = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    modules = ["trl", "datasets", "hydra", "omegaconf", "gguf", "peft", "lightning", "transformers", "rich"]
    done = subprocess.run([sys.executable, "-c", probe, *modules], capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        raise Missing(f"installed {', '.join(missing)}, but the bench's packages do not import: {last}")
    return missing


def data_dir(overrides: list[str], wheels: Path) -> str | None:
    """SFT_DATA_DIR for the bench: None when the default data directory (or data_file=) serves."""
    if any(o.lstrip("+").startswith("data_file=") for o in overrides):
        return None
    if (Path(default_data_dir()) / DATA_NAME).is_file():
        return None
    if (wheels / "data" / DATA_NAME).is_file():
        return str(wheels / "data")
    raise Missing(
        f"no Alpaca rows: {Path(default_data_dir()) / DATA_NAME} is absent and --fetch-wheels copied none "
        f"into {wheels / 'data'}; pass data_file=<rows.json> or set SFT_DATA_DIR"
    )


def bench_command(gpu: bool, run_timeout: float, out: Path, overrides: list[str]) -> list[str]:
    """The `python -m sft.bench` command: the script's settings, then the caller's overrides."""
    own = GPU_OVERRIDES if gpu else CPU_OVERRIDES
    timeout = f"timeout={int(run_timeout) if run_timeout == int(run_timeout) else run_timeout}"
    return [sys.executable, "-m", "sft.bench", *own, timeout, f"hydra.run.dir={out}", *overrides]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process and everything in its process group: SIGTERM, then SIGKILL after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bench(cmd: list[str], env: dict, seconds: float) -> int | None:
    """Run the bench (output passed through); its exit status, or None when `seconds` ran out.

    It runs in its own process group, so at the deadline the bench and its workers are stopped together;
    so are they when this script is interrupted (Ctrl-C) or terminated.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)

    def interrupted(signum, frame):
        stop_group(proc)
        raise SystemExit(128 + signum)

    handlers = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait(timeout=max(seconds, 1))
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def report(out: Path, returncode: int | None) -> int:
    """Print the table (Markdown), the machine and each failed run; the script's exit status."""
    results = out / "results.json"
    if returncode is None or not results.is_file():
        finished = sorted(p.parent.name for p in out.glob("*/result.json"))
        started = sorted(p.parent.name for p in out.glob("*/spec.json"))
        unfinished = [name for name in started if name not in finished]
        why = "the deadline passed" if returncode is None else f"the bench exited {returncode}"
        say(f"FAILED: {why} before the table was written (output: {out})")
        say(f"runs finished: {', '.join(finished) or 'none'}; unfinished: {', '.join(unfinished) or 'none'}")
        return DEADLINE if returncode is None else (returncode or 1)
    saved = json.loads(results.read_text())
    machine, runs = saved["machine"], saved["runs"]
    print(flush=True)
    print((out / "table.md").read_text(), flush=True)
    device = machine.get("gpu") or f"CPU ({machine.get('processor')}, {machine.get('cpus')} cores)"
    dtype = "bf16" if machine.get("bf16") else "fp32"
    say(
        f"{device}; torch {machine.get('torch')}; trained in {dtype}; matmul peak fp32 "
        f"{machine['fp32_gflops']:,.0f}, bf16 {machine['bf16_gflops']:,.0f} GFLOP/s"
    )
    say(f"results: {results} and {out / 'table.md'}")
    failed = {name: run["error"] for name, run in runs.items() if "error" in run}
    for name, error in failed.items():
        say(f"FAILED run {name}: {error} (log: {out / name / 'log.txt'})")
    if failed:
        return 1
    if returncode != 0:
        say(f"FAILED: the bench exited {returncode}")
        return returncode
    say(f"all {len(runs)} runs finished: {', '.join(runs)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Fetch the wheels, or check the machine, install what is missing, run the bench and report."""
    start = time.monotonic()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.fetch_wheels:
        try:
            return fetch_wheels(args)
        except Missing as err:
            say(str(err))
            return ENVIRONMENT
    try:
        gpu = check_device(args.allow_cpu)
        say(f"device: {gpu or 'CPU (--allow-cpu: no CUDA device visible)'}")
        installed = ensure_packages(args.wheels)
        if installed:
            say(f"installed from {args.wheels}: {', '.join(installed)}")
        data = data_dir(args.overrides, args.wheels)
    except Missing as err:
        say(f"cannot run: {err}")
        return ENVIRONMENT
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("COLUMNS", "200")  # the bench's own (rich) table, unwrapped in a log
    if gpu and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = "0"  # one GPU: TRL would spread a batch over all of them, sft.train DDP
    if data:
        env["SFT_DATA_DIR"] = data
        say(f"data: {data}/{DATA_NAME} (from --fetch-wheels)")
    cmd = bench_command(gpu is not None, args.run_timeout, args.out, args.overrides)
    say(("would run: " if args.dry_run else "running: ") + " ".join(cmd[1:]))
    if args.dry_run:
        return 0
    left = args.deadline - (time.monotonic() - start) - 5  # the report's seconds
    returncode = run_bench(cmd, env, left)
    status = report(args.out, returncode)
    say(f"took {time.monotonic() - start:.0f} s (deadline {args.deadline:.0f} s); exit {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
