"""`python -m sft.bench` (`make bench`): sft.train against TRL's SFTTrainer on the same model, LoRA, data
and steps, in one session; throughput, padding, memory and model-FLOPs utilisation as ratios."""
