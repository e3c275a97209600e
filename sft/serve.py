"""`python -m sft.serve`: an OpenAI-compatible HTTP server for a trained run.

The command's code is in `sft.serving.serve`; this module keeps the command's name and
checks the command line before that code (and torch) loads.
"""

from .config import ServeConfig
from .config.validate import deferred_cli

cli = deferred_cli(ServeConfig, "sft.serving.serve", "serve")

if __name__ == "__main__":
    cli()
