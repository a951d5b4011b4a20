"""Sparse inference: sparse backends, :class:`SparseConv2d`, and :func:`sparsify`.

Quick reference::

    from sparseyolo.prune import prune
    from sparseyolo.sparse import SparsifyConfig, sparsify
    prune(model, "nm", n=2, m=4)
    fast = sparsify(model, backend="auto")     # folds BatchNorms, sparse where it is faster here (CPU, fp32)
    print(fast.sparsify_report)                # per-layer decision, backend, dense vs sparse ms
    gpu = sparsify(model, SparsifyConfig(device="cuda", dtype=torch.float16, example_input=x))

Backends (:mod:`sparseyolo.sparse.backends`, docs/backends.md): ``"dense"``, ``"cpu_csr"``, ``"cuda_mma_sp"``;
experimental GPU backends (:mod:`sparseyolo.sparse.experimental`) register only with
``SPARSEYOLO_EXPERIMENTAL_GPU=1`` (or a call of its ``register_experimental_backends()``).
"""

from __future__ import annotations

import os

from sparseyolo.sparse.backends import (
    ConvGeometry,
    SparseBackend,
    available_backends,
    get_backend,
    register_backend,
)
from sparseyolo.sparse.compile import compile_inference
from sparseyolo.sparse.convert import BACKENDS, SparsifyConfig, sparsify
from sparseyolo.sparse.mma_sp import MmaSpWeight, pack_mma_sp_weight, unpack_mma_sp_weight
from sparseyolo.sparse.modules import SparseConv2d
from sparseyolo.sparse.packing import PackedConvWeight, pack_conv_weight, pack_nm_weight
from sparseyolo.sparse.report import LayerDecision, SparsifyReport, sparsify_report

if os.environ.get("SPARSEYOLO_EXPERIMENTAL_GPU", "0") == "1":
    from sparseyolo.sparse.experimental import register_experimental_backends

    register_experimental_backends()

__all__ = [
    "BACKENDS",
    "ConvGeometry",
    "LayerDecision",
    "MmaSpWeight",
    "PackedConvWeight",
    "SparseBackend",
    "SparseConv2d",
    "SparsifyConfig",
    "SparsifyReport",
    "available_backends",
    "compile_inference",
    "get_backend",
    "pack_conv_weight",
    "pack_mma_sp_weight",
    "pack_nm_weight",
    "register_backend",
    "sparsify",
    "sparsify_report",
    "unpack_mma_sp_weight",
]


def _isa_name() -> str:
    """Which SIMD path the CPU kernels take here (:func:`sparseyolo.ops.cpu_isa`), for benchmark reports."""
    from sparseyolo import ops

    return ops.cpu_isa()
