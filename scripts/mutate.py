"""Mutation testing of the modules where a silent bug costs most, and a score per module.

    python scripts/mutate.py                          # every module below
    python scripts/mutate.py sft/training/loss.py     # one (or several) of them
    python scripts/mutate.py --report [MODULE ...]    # the scores of the last run, running nothing

mutmut ([tool.mutmut] in pyproject.toml) mutates the modules; each mutant runs only the selected fast
tests that touched its function. Where a module is large and only part of it is the risk, only those
functions' mutants run (FUNCTIONS). Prints killed / total per module, then every survivor's name
(`mutmut show NAME` prints its diff).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).with_name("mutmut")

# The functions that carry the risk in modules that also hold unrelated code; None: the whole module.
FUNCTIONS: dict[str, list[str] | None] = {
    "sft/training/loss.py": None,
    "sft/training/preference_losses.py": None,
    "sft/data/collate.py": None,
    "sft/data/packing.py": None,
    # Label building (masks); truncation's length search is exercised by test_masks but is not a mask.
    "sft/data/tokenize.py": ["trained_spans", "overlap_labels", "_labelled", "encode"],
    "sft/training/strategy.py": [
        "gradient_divisor",
        "finish_gradients",
        "_scale_deepspeed_gradients",
        "at_step_boundary",
    ],
    "sft/training/module.py": ["SFTModule.training_step", "SFTModule.on_before_optimizer_step"],
    "sft/sweep/pruning.py": None,
    "sft/training/checkpoint.py": ["verify_checkpoint", "resolve_resume", "load_checkpoint", "atomic_save"],
    "sft/sweep/sweeper.py": ["StudySweeper._tell", "StudySweeper._fail", "StudySweeper.sweep"],
}
# Exit codes mutmut records per mutant (mutmut.__main__.status_by_exit_code): killed, or caught by a timeout.
KILLED = {1, 3, -24, 24, 36, 152, 255}


def globs(module: str) -> list[str]:
    """mutmut's mutant-name patterns for the module's chosen functions."""
    dotted = module.removesuffix(".py").replace("/", ".")
    names = FUNCTIONS[module]
    if names is None:
        return [f"{dotted}.*"]
    out = []
    for name in names:
        cls, _, fn = name.rpartition(".")
        out.append(f"{dotted}.xǁ{cls}ǁ{fn}__mutmut_*" if cls else f"{dotted}.x_{fn}__mutmut_*")
    return out


def score(module: str) -> tuple[int, int, list[str]]:
    """(mutants, killed, survivors) of the module's chosen functions, from mutmut's record."""
    from fnmatch import fnmatchcase

    meta = json.loads((ROOT / "mutants" / f"{module}.meta").read_text())
    patterns = globs(module)
    codes = {k: v for k, v in meta["exit_code_by_key"].items() if any(fnmatchcase(k, p) for p in patterns)}
    unchecked = [k for k, v in codes.items() if v is None]
    if unchecked:
        raise SystemExit(f"{module}: {len(unchecked)} mutants not run yet (an interrupted run?)")
    survivors = sorted(k for k, v in codes.items() if v not in KILLED)
    return len(codes), len(codes) - len(survivors), survivors


def main(argv: list[str]) -> int:
    report_only = "--report" in argv
    modules = [a for a in argv if a != "--report"] or list(FUNCTIONS)
    unknown = [m for m in modules if m not in FUNCTIONS]
    if unknown:
        print(f"not a mutation-tested module: {', '.join(unknown)}; choose from {', '.join(FUNCTIONS)}")
        return 2
    patterns = [p for m in modules for p in globs(m)]
    children = os.environ.get("MUTATE_JOBS", "2")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutants must shadow sft
    if not report_only:
        subprocess.run(
            [str(MUTMUT), "run", "--max-children", children, *patterns], cwd=ROOT, env=env, check=True
        )
    print("\nmodule | mutants | killed | score")
    survivors = []
    for m in modules:
        total, killed, left = score(m)
        print(f"{m} | {total} | {killed} | {killed / max(total, 1):.1%}")
        survivors += left
    if survivors:
        print("\nsurvivors (mutmut show NAME):\n  " + "\n  ".join(survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
