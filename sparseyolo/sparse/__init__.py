"""Sparse inference on the CPU: packed conv weights, :class:`SparseConv2d`, and :func:`sparsify`.

Quick reference::

    from sparseyolo.prune import prune
    from sparseyolo.sparse import sparsify
    prune(model, "nm", n=2, m=4)
    fast = sparsify(model, backend="auto")     # folds BatchNorms, sparse where it is faster here
    print(fast.sparsify_report)                # per-layer decision, dense vs sparse ms
"""

from __future__ import annotations

from sparseyolo.sparse.convert import BACKENDS, LayerDecision, SparsifyReport, sparsify, sparsify_report
from sparseyolo.sparse.modules import SparseConv2d
from sparseyolo.sparse.mma_sp import MmaSpWeight, pack_mma_sp_weight, unpack_mma_sp_weight
from sparseyolo.sparse.packing import PackedConvWeight, pack_conv_weight, pack_nm_weight

__all__ = [
    "BACKENDS",
    "LayerDecision",
    "MmaSpWeight",
    "PackedConvWeight",
    "SparseConv2d",
    "SparsifyReport",
    "pack_conv_weight",
    "pack_mma_sp_weight",
    "pack_nm_weight",
    "sparsify",
    "sparsify_report",
    "unpack_mma_sp_weight",
]


def _isa_name() -> str:
    """Which SIMD path the CPU kernels take here (:func:`sparseyolo.ops.cpu_isa`), for benchmark reports."""
    from sparseyolo import ops

    return ops.cpu_isa()
