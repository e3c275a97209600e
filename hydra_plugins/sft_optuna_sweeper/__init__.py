"""sft's Optuna sweeper for Hydra (select it with hydra/sweeper=optuna; settings in conf/hydra/sweeper/)."""
