"""Int8 weights for CPU generation: every linear layer's weights in int8, one scale per output row.

    quantize_int8(model)        # in place, after loading in bf16 (models.load(dtype="int8") does it)

Why: a profile of one bf16 decode step of the embedded model puts ~75% of it in `aten::mm`, the
one-row GEMVs that stream every weight once per token (README, Speed). Halving the bytes read is the
lever, and PyTorch ships the kernel: `aten::_weight_int8pack_mm` (int8 weights, bf16 activations,
per-row scales; the CPU path gpt-fast and torchao use) runs the 49,152 x 576 output head ~3x faster
than bf16's GEMV. torchao's int8 weight-only config dequantizes and multiplies instead on this
torch (measured 8.6 tok/s against 21.9 in bf16), so the op is called directly.

The scheme is symmetric absmax per output row (scale = max|w| / 127): lossy, and measured like the
other lossy modes (HumanEval pass@1 and perplexity beside fp32, README). Activations, norms,
attention and the embedding stay in the model's dtype (bf16).

Only decode steps use it: the kernel is a GEMV, so a forward of more than GEMV_ROWS rows (a prompt's
prefill, a wide batch) multiplies by the original bf16 weights, which are kept (memory is ~1.5x
bf16's, not half: this mode buys speed, not memory). So are forwards that need a gradient (the
attribution methods of parley.explain), and everything off CPU.
"""

from __future__ import annotations

import torch
from torch import nn

SKIP = ("lora_",)  # adapter matrices are small and trained in full precision: quantizing them saves nothing
GEMV_ROWS = 8  # rows up to which the int8 kernel beats bf16's GEMM here (1536 x 576: 43 vs 52 us at 8, 86 vs 69 at 16)


class Int8Linear(nn.Module):
    """An `nn.Linear` whose decode steps read int8 weights with one scale per output feature."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The original weights stay for prefill, wide batches and gradients (a tied output head shares
        # them with the embedding): the int8 kernel is a GEMV, ~3x slower than bf16's GEMM at 256 rows.
        self.weight, self.bias = linear.weight, linear.bias
        weight = linear.weight.detach().float()
        # The scale is rounded to the activations' dtype first, so the int8 values are chosen against the
        # scale the kernel will multiply by: each weight then lands within half a step of its original.
        scale = (weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127).to(dtype)
        self.register_buffer("qweight", torch.round(weight / scale.float()[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > GEMV_ROWS or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return nn.functional.linear(x, self.weight, self.bias)
        out = torch._weight_int8pack_mm(x.reshape(rows, self.in_features).to(self.scale.dtype), self.qweight, self.scale)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weights the int8 kernel multiplies by, in `dtype`."""
        return self.qweight.to(dtype) * self.scale[:, None].to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights for <= {GEMV_ROWS} rows"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every plain `nn.Linear` of `model` (adapters' own matrices excepted) by an `Int8Linear`,
    in place; activations keep the model's floating dtype. Returns `model`."""
    dtype = next(model.parameters()).dtype
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and not any(part in name for part in SKIP)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(module, dtype))
    return model
