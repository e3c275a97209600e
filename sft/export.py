"""`python -m sft.export`: merge a run's adapter into its base and save it.

The command's code is in `sft.serving.export`; this module keeps the command's name and
checks the command line before that code (and torch) loads.
"""

from .config import ExportConfig
from .config.validate import deferred_cli

cli = deferred_cli(ExportConfig, "sft.serving.export", "export")

if __name__ == "__main__":
    cli()
