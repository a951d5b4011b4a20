"""Backend ``"cuda_mma_sp"``: :func:`sparseyolo.ops.sparse_conv2d_24` with ``kernel="tile64"``, 2:4 sparse tensor
cores (``mma.sp``), the GPU kernel that has run correctly on hardware (an H200).

Implicit-GEMM 1x1 and 3x3 convs, any stride/padding, bias + SiLU fused; float16/bfloat16 inputs of a layer whose
weight is 2:4 sparse along Cin with ``Cin % 8 == 0``, on sm_80 or newer. Reads channels_last input without a copy
(NCHW is copied) and writes channels_last output. The weight is packed once, in the model's dtype, in mma.sp
fragment order (:mod:`sparseyolo.sparse.mma_sp`).
"""

from __future__ import annotations

import torch
from torch import nn

from sparseyolo import ops
from sparseyolo.sparse.backends.base import ConvGeometry, SparseBackend
from sparseyolo.sparse.backends.registry import register_backend
from sparseyolo.sparse.mma_sp import MmaSpWeight, is_24_sparse, pack_mma_sp_weight, unpack_mma_sp_weight


class CudaMmaSpBackend(SparseBackend):
    """``sparse_conv2d_24`` with one of its kernels (``kernel``: the op's ``kernel=`` name)."""

    name = "cuda_mma_sp"
    kernel = "tile64"
    devices = ("cuda",)
    dtypes = (torch.float16, torch.bfloat16)
    memory_format = torch.channels_last
    min_capability: tuple[int, int] = (8, 0)
    max_capability: tuple[int, int] | None = None

    def why_not(self, weight: torch.Tensor, geometry: ConvGeometry, activation: str, device: str | torch.device,
                dtype: torch.dtype) -> str | None:
        why = self.supports(device, dtype)
        if why:
            return why
        if geometry.in_channels % 8:
            return f"Cin = {geometry.in_channels} is not a multiple of 8"
        if not is_24_sparse(weight):
            return "weight is not 2:4 sparse along Cin"
        if not torch.cuda.is_available():
            return "no CUDA device here"
        cap = torch.cuda.get_device_capability(device)
        if cap < self.min_capability:
            return f"GPU sm_{cap[0]}{cap[1]} is older than sm_{self.min_capability[0]}{self.min_capability[1]}"
        if self.max_capability is not None and cap > self.max_capability:
            return f"kernel '{self.kernel}' runs on sm_{self.max_capability[0]}{self.max_capability[1]} only"
        return None

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry, activation: str,
             dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor | None]:
        p = pack_mma_sp_weight(weight, dtype=dtype)
        return {"values": p.values, "meta": p.meta,
                "bias": None if bias is None else bias.detach().to(torch.float32).contiguous().clone()}

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != module.values.dtype:
            raise RuntimeError(f"SparseConv2d({self.name}): packed for {module.values.dtype} inputs, got {x.dtype}; "
                               f"cast the input, or re-sparsify with dtype={x.dtype}")
        b = module.bias
        if b is not None and b.dtype != torch.float32:  # a module cast with .half() after conversion
            b = b.float()
        return ops.sparse_conv2d_24(x, module.values, module.meta, module.out_channels, module.kernel_size, b,
                                    module.stride, module.padding, module.activation, kernel=self.kernel,
                                    in_channels=module.in_channels)

    def unpack(self, module: nn.Module) -> torch.Tensor:
        packed = MmaSpWeight(module.values, module.meta, module.geometry.weight_shape)
        return unpack_mma_sp_weight(packed).to(module.values.device)


CUDA_MMA_SP = register_backend(CudaMmaSpBackend())
