"""`python -m sft.checklist`: the production checklist of a finished run.

The command's code is in `sft.eval.checklist`; this module keeps the command's name.
"""

from .eval.checklist import cli

if __name__ == "__main__":
    cli()
