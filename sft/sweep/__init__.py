"""Optuna sweeps: the search space, pruning from inside a run (the sweeper lives in hydra_plugins/)."""
