"""Backend ``"dense"``: ``F.conv2d`` on the folded dense weight (oneDNN on the CPU, cuDNN on CUDA).

The reference every other backend is checked against (the autotuner compares outputs with it), and what a layer
runs when no sparse backend pays. Any device, any floating dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.sparse.backends.base import ConvGeometry, SparseBackend, apply_activation
from sparseyolo.sparse.backends.registry import register_backend


class DenseBackend(SparseBackend):
    """``act(F.conv2d(x, weight, bias))``; CUDA inputs run channels_last (cuDNN's fast layout for fp16/bf16)."""

    name = "dense"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry, activation: str,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor | None]:
        return {"weight": weight.detach().to(dtype).contiguous().clone(),
                "bias": None if bias is None else bias.detach().to(dtype).contiguous().clone()}

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w, b = module.weight, module.bias
        if w.dtype != x.dtype:  # a model cast after conversion (e.g. .double() for a check)
            w = w.to(x.dtype)
            b = None if b is None else b.to(x.dtype)
        if x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return apply_activation(F.conv2d(x, w, b, module.stride, module.padding), module.activation)

    def unpack(self, module: nn.Module) -> torch.Tensor:
        return module.weight.detach().to(torch.float32)


DENSE = register_backend(DenseBackend())
