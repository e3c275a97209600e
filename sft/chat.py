"""`python -m sft.chat`: a streamed multi-turn chat with a trained run in the terminal.

The command's code is in `sft.serving.chat`; this module keeps the command's name and
checks the command line before that code (and torch) loads.
"""

from .config import ChatConfig
from .config.validate import deferred_cli

cli = deferred_cli(ChatConfig, "sft.serving.chat", "chat")

if __name__ == "__main__":
    cli()
