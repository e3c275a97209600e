"""`python -m sft.export run=<dir>`: merge a run's adapter into its base and save it.

The command's code is in `sft.serving.export`; this module keeps the command's name.
"""

import torch

from .serving.export import cli

if __name__ == "__main__":
    torch.set_grad_enabled(False)  # nothing here trains; merging and saving need no autograd graph
    cli()
