"""Backends ``"cpu_block"`` and ``"cpu_block_tiles"``: :func:`sparseyolo.ops.block_sparse_conv2d` (CPU, channels-last).

Output channels in vector lanes, the reduction over units shared by each block of 16 output channels
(:mod:`sparseyolo.sparse.block_packing`); bias and SiLU fused; float32 or bfloat16 in and out, fp32 accumulation.

* ``"cpu_block"``: fp32 (one value per unit, AVX-512/AVX2 FMAs) or bf16 (pairs: ``vdpbf16ps``; any pair of a 2:4
  group through the ``pairs24`` gather when the mask is shared by the block). Pays for 2:4 or row sparsity shared
  by 16 output channels (``prune(..., block=16)``); any other pattern runs, doing the work of every unit a block
  touches.
* ``"cpu_block_tiles"``: bf16 on AMX: a unit is a 16 x 32 tile (output x input channels) at one tap; pays for tile
  sparsity. The autotuner tries it only on CPUs with AMX (elsewhere it runs, as pairs, but slowly).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from sparseyolo import ops
from sparseyolo.sparse.backends.base import ConvGeometry, SparseBackend
from sparseyolo.sparse.backends.registry import register_backend
from sparseyolo.sparse.block_packing import GATHERS, BlockSparseWeight, pack_block_sparse

LOGGER = logging.getLogger(__name__)


class CpuBlockBackend(SparseBackend):
    name = "cpu_block"
    devices = ("cpu",)
    dtypes = (torch.float32, torch.bfloat16)
    memory_format = torch.channels_last
    gather: str | None = None  # None: pack_block_sparse's choice

    def why_not(self, weight: torch.Tensor, geometry: ConvGeometry, activation: str, device: str | torch.device,
                dtype: torch.dtype) -> str | None:
        why = super().why_not(weight, geometry, activation, device, dtype)
        if why is None and dtype == torch.bfloat16 and self.gather != "tiles32" and geometry.in_channels % 2:
            why = f"bf16 pairs need an even number of input channels, got {geometry.in_channels}"
        return why

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry, activation: str,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor | None]:
        p = pack_block_sparse(weight, dtype, self.gather)
        return {"weight": p.weight, "taps": p.taps, "block_ptr": p.block_ptr,
                "gather_id": torch.tensor(GATHERS.index(p.gather), dtype=torch.int8),
                "bias": None if bias is None else bias.detach().to(torch.float32).contiguous().clone()}

    def static(self, module: nn.Module) -> dict[str, object]:
        return {"gather": GATHERS[int(module.gather_id)]}

    def _packed(self, module: nn.Module) -> BlockSparseWeight:
        return BlockSparseWeight(module.weight, module.taps, module.block_ptr, module.geometry.weight_shape,
                                 module.static["gather"])

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != module.weight.dtype:  # e.g. a float32 image into a bf16 model's first sparse layer
            x = x.to(module.weight.dtype)
        g = module.geometry
        return ops.block_sparse_conv2d(x, module.weight, module.taps, module.block_ptr, g.in_channels,
                                       g.out_channels, g.kernel_size, module.bias, g.stride, g.padding,
                                       module.activation, module.static["gather"])

    def unpack(self, module: nn.Module) -> torch.Tensor:
        return self._packed(module).to_dense()


class CpuBlockTilesBackend(CpuBlockBackend):
    name = "cpu_block_tiles"
    dtypes = (torch.bfloat16,)
    gather = "tiles32"

    @property
    def in_auto(self) -> bool:  # type: ignore[override]
        return ops.cpu_isa() == "amx"


CPU_BLOCK = register_backend(CpuBlockBackend())
CPU_BLOCK_TILES = register_backend(CpuBlockTilesBackend())
