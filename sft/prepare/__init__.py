"""Data preparation steps run as `python -m sft.prepare <step>`: generate, score, filter, dedup, balance,
augment, report. Each reads any file the data pipeline reads and writes JSONL the pipeline reads back."""
