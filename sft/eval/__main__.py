"""`python -m sft.eval run=<run dir>`: the evaluation suites on a finished run and its base model, or
`artifact=<export>` checked against the run's recorded answers.

The command's code is in `sft.eval.command`; this module checks the command line before that code (and
torch) loads.
"""

from ..config import EvalConfig
from ..config.validate import deferred_cli

cli = deferred_cli(EvalConfig, "sft.eval.command", "eval")

if __name__ == "__main__":
    cli()
