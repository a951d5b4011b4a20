"""``SparseConv2d``: a conv (with folded BatchNorm and fused SiLU) on packed sparse weights."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo import ops
from sparseyolo.sparse.packing import PackedConvWeight, pack_conv_weight

LOGGER = logging.getLogger(__name__)

ACTIVATIONS = ("identity", "silu")


class SparseConv2d(nn.Module):
    """Direct sparse convolution (:func:`sparseyolo.ops.sparse_conv2d`): ``act(conv(x, W) + bias)``.

    It is also the fused Conv-BN-SiLU block: :func:`sparseyolo.sparsify` folds the BatchNorm into ``W`` and
    ``bias`` and passes ``activation="silu"``, so the block is one op whose output is written once.

    Args:
        packed: the weight in CSR form (:func:`~sparseyolo.sparse.packing.pack_conv_weight`).
        bias (Tensor[Cout], optional): added before the activation.
        stride, padding: as in ``nn.Conv2d`` (groups = 1, dilation = 1).
        activation: ``"identity"`` or ``"silu"``.
        pattern: the sparsity pattern it was pruned with (``"2:4"``, ``"unstructured"``), for reports.

    Shapes:
        ``x (Tensor[N, Cin, H, W]) -> Tensor[N, Cout, H', W']``.

    Caveats:
        Inference only (no autograd). float32 CPU inputs run the sparse kernel; other dtypes or devices run
        ``F.conv2d`` on the unpacked weight (logged once), with the same result up to rounding.
    """

    def __init__(
        self,
        packed: PackedConvWeight,
        bias: torch.Tensor | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        activation: str = "identity",
        pattern: str | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"SparseConv2d: activation should be one of {ACTIVATIONS}, got '{activation}'")
        self.out_channels, self.in_channels, kh, kw = packed.shape
        self.kernel_size = (kh, kw)
        self.stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
        self.padding = tuple(padding) if isinstance(padding, (tuple, list)) else (padding, padding)
        self.activation = activation
        self.pattern = pattern
        self.register_buffer("values", packed.values)
        self.register_buffer("columns", packed.columns)
        self.register_buffer("row_ptr", packed.row_ptr)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous().clone())
        self._warned = False
        # CUDA inputs: one of sparseyolo.sparse.cuda_backend.GPU_BACKENDS ("auto", "mma_sp", ..., "dense").
        self.gpu_backend = "auto"

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        activation: str = "identity",
        pattern: str | None = None,
    ) -> SparseConv2d:
        """Pack ``conv`` (or ``weight``/``bias`` that replace its own, e.g. after folding a BatchNorm)."""
        if conv.groups != 1 or conv.dilation != (1, 1) or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(
                f"SparseConv2d supports groups=1, dilation=1, numeric zero padding; got groups={conv.groups}, "
                f"dilation={conv.dilation}, padding={conv.padding!r}, padding_mode={conv.padding_mode}"
            )
        w = conv.weight if weight is None else weight
        b = conv.bias if bias is None else bias
        return cls(pack_conv_weight(w), b, conv.stride, conv.padding, activation, pattern)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        numel = self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return 1.0 - self.nnz / numel if numel else 0.0

    def packed(self) -> PackedConvWeight:
        return PackedConvWeight(self.values, self.columns, self.row_ptr,
                                (self.out_channels, self.in_channels, *self.kernel_size))

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense weight ``[Cout, Cin, KH, KW]``."""
        return self.packed().to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32:
            return ops.sparse_conv2d(x, self.values, self.columns, self.row_ptr, self.kernel_size, self.bias,
                                     self.stride, self.padding, self.activation, in_channels=self.in_channels)
        if x.device.type == "cuda":
            from sparseyolo.sparse.cuda_backend import cuda_forward  # 2:4 tensor cores / cuSPARSELt / cuDNN

            return cuda_forward(self, x)
        if not self._warned:
            LOGGER.warning("SparseConv2d: no sparse kernel for %s %s input; running F.conv2d on the unpacked "
                           "weight", x.device.type, x.dtype)
            self._warned = True
        w = self.dense_weight().to(device=x.device, dtype=x.dtype)
        b = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        y = F.conv2d(x, w, b, self.stride, self.padding)
        return F.silu(y) if self.activation == "silu" else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, activation={self.activation}, sparsity={self.sparsity:.3f}"
                + (f", pattern={self.pattern}" if self.pattern else ""))
