"""What `python -m sft.eval run=<run dir>` runs (`sft.eval.__main__` checks the command line first): answer
the evaluation suites with the tuned model and its base.

Writes `<run>/eval/`: `scores.json` (every suite for both models and their comparison), `report.md`,
and `generations.jsonl` (prompt, tuned answer, base answer per row), which is what
`python -m sft.human_eval export` turns into a rating sheet.

`python -m sft.eval run=<run dir> artifact=<export>` checks an exported model against the greedy answers the
run recorded at its end instead (`sft.eval.parity`), writes `<run>/eval/parity.json` and exits 1 on drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ..config import EvalConfig, check
from ..errors import ConfigError, ExportError, SuiteError
from ..locations import CONF_DIR
from ..run_dir import PARITY
from . import parity
from .run import evaluate


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a missing run or a bad suite file exits with the message, not a traceback."""
    try:
        typed = check(cfg, EvalConfig)
        if typed.artifact is None:
            evaluate(typed.run, typed.evaluation, typed.cache_dir, typed.out)
            return
        result = parity.check(Path(typed.run), Path(typed.artifact), typed.out and Path(typed.out) / PARITY)
    except (ConfigError, ExportError, SuiteError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    print(parity.describe(result))
    if not result["passed"]:
        sys.exit(1)
