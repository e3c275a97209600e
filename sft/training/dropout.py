"""LoRA's input dropout with half the random draws: the same distribution, a quarter of the cost on a CPU.

PEFT drops each adapter's input with `nn.Dropout`, whose mask costs one 32-bit draw from the CPU's
sequential generator per element: on SmolLM2-135M that was a fifth of a bf16 training step (BENCHMARKS.md,
"Performance, second round"). Here one 31-bit draw gives two 15-bit lanes, each compared with
round(p x 32768): an element is dropped with probability p to within 1/65536, and kept ones are scaled by the
exact inverse of the kept fraction, so the expectation is unchanged. The mask is a bool tensor (what
autograd keeps for backward, as with `nn.Dropout`). Other devices use torch's dropout unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LANES = 1 << 15  # the resolution of p


class HalfDrawDropout(torch.nn.Module):
    """Dropout with probability `p` in training, two mask elements per random draw on the CPU."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * LANES)
        self.scale = LANES / (LANES - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with elements zeroed at rate p and the rest scaled by 1 / (1 - p), in training mode."""
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        draws = torch.empty((n + 1) // 2, dtype=torch.int32).random_()  # uniform on [0, 2^31)
        keep = (draws.view(torch.int16)[:n] & (LANES - 1)) >= self.threshold
        return torch.where(keep.view(x.shape), x, 0) * self.scale

    def extra_repr(self) -> str:
        """As nn.Dropout prints itself."""
        return f"p={self.p}"


def halve_dropout_draws(model: torch.nn.Module) -> int:
    """Replace every LoRA layer's `nn.Dropout` with HalfDrawDropout of the same p; how many were replaced."""
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in drops.items():
            if type(drop) is torch.nn.Dropout:
                drops[name] = HalfDrawDropout(drop.p)
                replaced += 1
    return replaced
