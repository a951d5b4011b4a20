"""Backend ``"cpu_csr"``: :func:`sparseyolo.ops.sparse_conv2d`, direct sparse conv on CSR weights (CPU, fp32).

Takes NCHW float32 input and writes NCHW output; any sparsity pattern (the CSR format of
:mod:`sparseyolo.sparse.packing` stores the nonzeros of each output channel's row). Bias and SiLU are fused.
A CPU input of another floating dtype runs ``F.conv2d`` on the unpacked weight (logged once per layer): same
result up to rounding. Inputs on another device raise in :class:`~sparseyolo.sparse.SparseConv2d` (re-sparsify
for that device).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo import ops
from sparseyolo.sparse.backends.base import ConvGeometry, SparseBackend, apply_activation
from sparseyolo.sparse.backends.registry import register_backend
from sparseyolo.sparse.packing import PackedConvWeight, pack_conv_weight

LOGGER = logging.getLogger(__name__)


class CpuCsrBackend(SparseBackend):
    name = "cpu_csr"
    devices = ("cpu",)
    dtypes = (torch.float32,)

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry, activation: str,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor | None]:
        if dtype != torch.float32:
            raise ValueError(f"cpu_csr packs float32 weights only, not {dtype}")
        p = pack_conv_weight(weight)
        return {"values": p.values, "columns": p.columns, "row_ptr": p.row_ptr,
                "bias": None if bias is None else bias.detach().to(torch.float32).contiguous().clone()}

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return ops.sparse_conv2d(x, module.values, module.columns, module.row_ptr, module.kernel_size, module.bias,
                                     module.stride, module.padding, module.activation, in_channels=module.in_channels)
        if not module.__dict__.get("_fallback_logged"):
            LOGGER.warning("SparseConv2d: no sparse kernel for %s input; running F.conv2d on the unpacked weight",
                           x.dtype)
            module.__dict__["_fallback_logged"] = True
        w = self.unpack(module).to(x.dtype)
        b = None if module.bias is None else module.bias.to(x.dtype)
        return apply_activation(F.conv2d(x, w, b, module.stride, module.padding), module.activation)

    def unpack(self, module: nn.Module) -> torch.Tensor:
        return PackedConvWeight(module.values, module.columns, module.row_ptr, module.geometry.weight_shape).to_dense()


CPU_CSR = register_backend(CpuCsrBackend())
