"""Plain LoRA layers that add the adapter's product inside the GEMM while training.

PEFT's LoRA `Linear` computes `result + lora_B(lora_A(dropout(x))) * scaling`: lora_B's product is written
as a (tokens x out_features) tensor of its own, scaled in a second pass and added to the base layer's output
in a third, and backward scales the output's gradient in a fourth. `FusedLoraLinear` scales lora_A's
(tokens x r) product instead and accumulates lora_B's product into the base output with one in-place
`addmm_` (the GEMM reads and writes that output once; the base layer's backward never needs its output).
Same products up to rounding (one rounding of the sum instead of three). Measured 1.05x on a packed
SmolLM2 step on a CPU (BENCHMARKS.md). The fused path is taken for a plain call only: no extra arguments,
adapters enabled and unmerged, exactly one active adapter, no variant (DoRA), no bias on lora_B, an
`nn.Linear` base, and either autocast on or the base in the adapter's dtype (PEFT adds a bf16 base's output
to an fp32 adapter's product in fp32, which the in-place sum in the base's dtype would not). Every other
call runs PEFT's forward.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from .precision import SwitchDuringTraining


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA Linear with lora_B's product accumulated into the base layer's output by the GEMM."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """base(x) + scaling * B(A(dropout(x))), the scaling on A's product and the sum in one addmm_."""
        name = self._plain_adapter(x)
        if name is None or args or kwargs:
            return super().forward(x, *args, **kwargs)
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        flat = x.reshape(-1, x.shape[-1])
        result = self.base_layer(flat)
        dropped = self.lora_dropout[name](self._cast_input_dtype(flat, lora_a.weight.dtype))
        low = lora_a(dropped) * self.scaling[name]
        result.addmm_(low.to(result.dtype), lora_b.weight.to(result.dtype).t())
        return result.view(*x.shape[:-1], result.shape[-1])

    def _plain_adapter(self, x: torch.Tensor) -> str | None:
        """The one active adapter's name when this call can take the fused path, else None."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None:
            return None
        if type(self.base_layer) is not torch.nn.Linear:
            return None
        same_dtype = self.base_layer.weight.dtype == self.lora_B[name].weight.dtype
        return name if same_dtype or torch.is_autocast_enabled(x.device.type) else None


def fuse_lora_adds(model: torch.nn.Module, fused: bool = True) -> int:
    """Turn each of `model`'s PEFT LoRA Linear layers into a FusedLoraLinear (or back); how many."""
    source, target = (LoraLinear, FusedLoraLinear) if fused else (FusedLoraLinear, LoraLinear)
    layers = [m for m in model.modules() if type(m) is source]
    for layer in layers:
        layer.__class__ = target
    return len(layers)


class FusedLoraAdds(SwitchDuringTraining):
    """While training, LoRA's Linear layers add the adapter's product inside the GEMM (FusedLoraLinear);
    PEFT's own layers are back when training ends or fails. Never under FSDP or DeepSpeed (the base's rule):
    ZeRO-3 gathers a module's weights only when that module itself is called (lora_B's is read, not
    called), and neither was measured with it."""

    def _switch(self, model: torch.nn.Module, on: bool) -> int:
        return fuse_lora_adds(model, fused=on)
