"""`python -m sft.chat`: a streamed multi-turn chat with a trained run in the terminal.

The command's code is in `sft.serving.chat`; this module keeps the command's name.
"""

from .serving.chat import main

if __name__ == "__main__":
    main()
