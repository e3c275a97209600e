"""`python -m sft.checklist`: the production checklist of a finished run.

The command's code is in `sft.eval.checklist`; this module keeps the command's name and
checks the command line before that code (and torch) loads.
"""

from .config import ChecklistConfig
from .config.validate import deferred_cli

cli = deferred_cli(ChecklistConfig, "sft.eval.checklist", "checklist")

if __name__ == "__main__":
    cli()
