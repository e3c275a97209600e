"""`python -m sft.report`: runs, sweeps and ablations as tables and plots.

The command's code is in `sft.sweep.report`; this module keeps the command's name.
"""

from .sweep.report import main

if __name__ == "__main__":
    main()
