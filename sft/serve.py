"""`python -m sft.serve`: an OpenAI-compatible HTTP server for a trained run.

The command's code is in `sft.serving.serve`; this module keeps the command's name.
"""

from .serving.serve import cli

if __name__ == "__main__":
    cli()
