"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"): uniform noise on
the input embeddings of training batches, never in validation or generation.

The paper scales the noise by alpha / sqrt(L * d), L the sequence length and d the embedding width. Here L
is each token's own sequence (its unpadded length, or its segment of a packed row), so a sequence gets the
same noise whatever it is batched or packed with; for an unpadded batch this is the paper's scale exactly.
"""

from __future__ import annotations

import lightning as L
import torch


def sequence_lengths(batch: dict) -> torch.Tensor:
    """(batch, length) tensor: for every position, the length of the sequence that holds it."""
    if "attention_mask" in batch:  # padded rows: one sequence per row
        mask = batch["attention_mask"]
        return mask.sum(-1, keepdim=True).expand_as(mask)
    positions = batch["position_ids"]  # packed rows: a sequence starts where its positions restart at 0
    starts = (positions == 0).long().cumsum(-1)
    lengths = torch.zeros_like(positions).scatter_add_(-1, starts - 1, torch.ones_like(positions))
    return lengths.gather(-1, starts - 1)


def neftune_noise(embeds: torch.Tensor, lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """Noise uniform in +-alpha / sqrt(L * d) for every embedding, L from `lengths` (batch, length)."""
    scale = alpha / torch.sqrt(lengths.clamp(min=1).to(embeds.dtype) * embeds.shape[-1])
    return torch.empty_like(embeds).uniform_(-1, 1) * scale.unsqueeze(-1)


class NEFTune(L.Callback):
    """Adds `neftune_noise` to the input embeddings' output during training steps only."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._lengths: torch.Tensor | None = None  # set for the training batch in flight
        self._handle = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Hook the model's input embeddings."""
        embeddings = pl_module.model.get_input_embeddings()
        self._handle = embeddings.register_forward_hook(self._add_noise)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Note the sequence lengths of the batch about to be trained on."""
        self._lengths = sequence_lengths(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """No noise outside a training batch (validation, probes, generation)."""
        self._lengths = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Unhook, so the model is its plain self for the final validation and what follows."""
        self._remove()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Unhook on a crash too."""
        self._remove()

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._lengths = None, None

    def _add_noise(self, module, args, output):
        if not module.training or self._lengths is None:
            return output
        return output + neftune_noise(output, self._lengths.to(output.device), self.alpha)
