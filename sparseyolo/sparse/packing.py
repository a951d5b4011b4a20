"""Packing of masked conv weights for :func:`sparseyolo.ops.sparse_conv2d` (once, at conversion time).

Format (CSR over the weight viewed as ``[Cout, Cin*KH*KW]``): ``values`` (float32, the nonzeros row by
row), ``columns`` (int32, column ``k = (cin*KH + kh)*KW + kw`` of each nonzero, strictly increasing within a
row) and ``row_ptr`` (int64, ``[Cout + 1]``, row ``c`` is ``values[row_ptr[c]:row_ptr[c+1]]``). The format
does not depend on the input size; the op turns columns into input offsets per call.

N:M weights (``nm_compress`` format) pack to the same CSR: ``n`` nonzeros per group of ``m`` input channels
at each ``(cout, kh, kw)``, so every row holds ``Cin*KH*KW*n/m`` of them (fewer where a kept weight is 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseyolo import ops


@dataclass
class PackedConvWeight:
    """A conv weight ``[Cout, Cin, KH, KW]`` in the CSR format of :func:`sparseyolo.ops.sparse_conv2d`."""

    values: torch.Tensor
    columns: torch.Tensor
    row_ptr: torch.Tensor
    shape: tuple[int, int, int, int]

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def density(self) -> float:
        numel = self.shape[0] * self.shape[1] * self.shape[2] * self.shape[3]
        return self.nnz / numel if numel else 0.0

    def to_dense(self) -> torch.Tensor:
        """The dense weight ``[Cout, Cin, KH, KW]`` (exact: zeros where nothing is stored)."""
        cout, cin, kh, kw = self.shape
        dense = torch.zeros(cout, cin * kh * kw, dtype=self.values.dtype, device=self.values.device)
        rows = torch.repeat_interleave(torch.arange(cout, device=self.values.device), self.row_ptr.diff())
        dense[rows, self.columns.long()] = self.values
        return dense.reshape(self.shape)


def pack_conv_weight(weight: torch.Tensor) -> PackedConvWeight:
    """Pack the nonzeros of a dense (masked) conv weight.

    Args:
        weight (Tensor[Cout, Cin, KH, KW]): float32 (other floating dtypes are converted); exact zeros are
            skipped, so a weight masked by :func:`sparseyolo.prune.prune` packs its kept entries (and drops
            kept entries that happen to be 0, which changes nothing).

    Returns:
        PackedConvWeight on the weight's device.
    """
    if weight.dim() != 4:
        raise ValueError(f"pack_conv_weight: expected a conv weight [Cout, Cin, KH, KW], got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float32).contiguous()
    cout = w.shape[0]
    flat = w.reshape(cout, -1)
    nz = flat != 0
    if flat.shape[1] >= 2**31:
        raise ValueError("pack_conv_weight: Cin*KH*KW must fit int32")
    row_ptr = torch.zeros(cout + 1, dtype=torch.int64, device=w.device)
    row_ptr[1:] = nz.sum(1).cumsum(0)
    columns = nz.nonzero()[:, 1].to(torch.int32)  # row-major: rows in order, columns increasing
    return PackedConvWeight(flat[nz].contiguous(), columns.contiguous(), row_ptr, tuple(w.shape))


def pack_nm_weight(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> PackedConvWeight:
    """Pack an N:M conv weight given in :func:`sparseyolo.ops.nm_compress` format.

    Args:
        values (Tensor[Cout, KH, KW, Cin*n/m]): kept values, input channels last (as ``nm_compress`` of
            ``w.permute(0, 2, 3, 1)`` returns them).
        indices (Tensor[Cout, KH, KW, Cin*n/m] uint8): their positions within each group of ``m``.
        n, m: the pattern.
    """
    dense = ops.nm_decompress(values, indices, n, m)  # [Cout, KH, KW, Cin]
    return pack_conv_weight(dense.permute(0, 3, 1, 2))
