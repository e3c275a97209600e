"""`python -m sft.chat`: a streamed multi-turn chat with a trained run in the terminal.

The command's code is in `sft.serving.chat`; this module keeps the command's name.
"""

from .serving.chat import cli

if __name__ == "__main__":
    cli()
