"""`python -m sft.human_eval`: human rating sheets: export, validate, aggregate.

The command's code is in `sft.eval.human`; this module keeps the command's name.
"""

from .eval.human import main

if __name__ == "__main__":
    raise SystemExit(main())
