"""Training: the steps of a run, model and adapter, the Lightning module and trainer, and run safety."""
