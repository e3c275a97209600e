"""LoRA's input dropout drawing only the positions it zeroes: the same distribution, half the cost on a CPU.

PEFT drops each adapter's input with `nn.Dropout`, whose mask costs one 32-bit draw from the CPU's
sequential generator per element, a bool mask and two passes each way (select, scale): on SmolLM2-135M that
was a fifth of a bf16 training step (BENCHMARKS.md). At LoRA's rates (0.05-0.1) almost every element is
kept, so this draws where the zeros go instead. A Poisson number of uniform positions, with mean
n x ln(1 / (1 - p)), hits each of the n elements a Poisson(ln(1 / (1 - p))) number of times, independently
of the others (Poisson splitting), so each is missed, and kept, with probability exactly 1 - p. The kept ones
are scaled by 1 / (1 - p), so the expectation is unchanged. Forward and backward are one scaling pass and a
scatter of zeros each; autograd keeps the positions, 8 bytes each: 0.41 bytes per element at p = 0.05 and
0.84 at p = 0.1, against 1 byte for a bool mask (more than that above p = 0.115). Other devices, and graphs
being compiled (a count drawn at run time would break them), use torch's dropout unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _ScaleAndZero(torch.autograd.Function):
    """`x * scale` with the flat positions `hits` set to zero; the gradient the same."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, hits: torch.Tensor, scale: float) -> torch.Tensor:
        """One pass over `x`, then the scatter."""
        ctx.save_for_backward(hits)
        ctx.scale = scale
        return _scale_and_zero(x, hits, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        """The same positions zeroed, the rest scaled."""
        (hits,) = ctx.saved_tensors
        return _scale_and_zero(grad, hits, ctx.scale), None, None


def _scale_and_zero(x: torch.Tensor, hits: torch.Tensor, scale: float) -> torch.Tensor:
    """A new row-major tensor `x * scale` with the flat positions `hits` zeroed."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    torch.mul(x, scale, out=out)
    out.view(-1).index_fill_(0, hits, 0)
    return out  # not the flat view: autograd forbids in-place changes to views a Function returns


class ScatterDropout(torch.nn.Module):
    """Dropout with probability `p` in training, drawing on the CPU only the positions it zeroes."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.hits_per_element = -math.log1p(-p)
        self.scale = 1 / (1 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with elements zeroed at rate p and the rest scaled by 1 / (1 - p), in training mode."""
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.dropout(x, self.p, True)
        n = x.numel()
        mean = torch.tensor([n * self.hits_per_element], dtype=torch.float64)
        count = int(torch.poisson(mean).item())
        # 63-bit draws reduced modulo n: the positions are uniform to within n / 2^63 (32-bit draws, what
        # `randint` takes below 2^32, would favour some positions by up to n / 2^32).
        hits = torch.empty(count, dtype=torch.int64).random_().remainder_(n)
        return _ScaleAndZero.apply(x, hits, self.scale)

    def extra_repr(self) -> str:
        """As nn.Dropout prints itself."""
        return f"p={self.p}"


def scatter_lora_dropout(model: torch.nn.Module) -> int:
    """Replace every LoRA layer's `nn.Dropout` with ScatterDropout of the same p; how many were replaced."""
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in drops.items():
            if type(drop) is torch.nn.Dropout:
                drops[name] = ScatterDropout(drop.p)
                replaced += 1
    return replaced
