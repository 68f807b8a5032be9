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

Only one-row forwards use it (a chat, one API client, each decode step): the kernel is a GEMV, whose
cost grows with every row, so a forward of more rows (a batch of clients, a prompt's prefill)
multiplies by the original bf16 weights in oneDNN's packed layout instead (`torch.ops.mkldnn`, the
kernels inductor's CPU backend calls after freezing): the same products as `F.linear`, bit for bit,
without repacking the weights on every call. Over the embedded model's 211 linear layers, one
thread, ms per forward (`bench/linears.py`):

    rows       1     2     4     8     16     64
    int8     22.5  24.2  34.5  47.0  86.6  299.6
    bf16     44.1  37.4  49.6  50.6  66.3  125.9    (F.linear: packs the weights on every call)
    packed   24.7  29.0  29.9  25.6  36.7   95.3

So a batch decodes in bf16 (the packed products are the same whatever the rows, so neighbours never
change a row's numbers), and one row alone in int8; this lossy mode's quality is measured on both
(README, Speed). The plain bf16 weights are kept too, for forwards that need a gradient (the
attribution methods of parley.explain), for a tied embedding, and off CPU; memory is then ~2.5x
bf16's: this mode buys speed, not memory.
"""

from __future__ import annotations

import torch
from torch import nn

SKIP = ("lora_",)  # adapter matrices are small and trained in full precision: quantizing them saves nothing
GEMV_ROWS = 1  # rows up to which the int8 GEMV beats packed bf16 (at 2 they tie; see the module docstring)
PACK_ROWS = 8  # the rows oneDNN lays the packed weights out for (the serving batch); any count works


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
        self.packed = _Packed(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return nn.functional.linear(x, self.weight, self.bias)
        if rows > GEMV_ROWS:
            if self.packed.tensor is None:
                return nn.functional.linear(x, self.weight, self.bias)
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed.tensor, self.bias, "none", [], "")
        out = torch._weight_int8pack_mm(x.reshape(rows, self.in_features).to(self.scale.dtype), self.qweight, self.scale)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weights the int8 kernel multiplies by, in `dtype`."""
        return self.qweight.to(dtype) * self.scale[:, None].to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights for <= {GEMV_ROWS} rows, packed bf16 for more"


class _Packed:
    """A weight in oneDNN's packed layout, or None where oneDNN has no bf16 kernel (then `F.linear` runs).
    Not part of the module's state: copies and pickles of the module start without it (the compile
    skeleton of parley.compiled is one: its weights are on the meta device, which has no such layout)."""

    tensor: torch.Tensor | None = None  # also what an unpickled copy, which has no state, reads

    def __init__(self, weight: torch.Tensor):
        if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and (
                torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            with torch.no_grad():
                self.tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS)

    def __getstate__(self) -> dict:
        return {}


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
