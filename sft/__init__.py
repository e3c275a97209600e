"""sft: a Hydra-based research framework for supervised fine-tuning of language models."""

__version__ = "0.1.0"
