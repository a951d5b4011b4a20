"""Sparse backends: one module per way of running a pruned conv, and the registry that names them.

Default backends (registered on import): ``"dense"`` (:mod:`.dense`), ``"cpu_csr"`` (:mod:`.cpu_csr`),
``"cpu_block"`` and ``"cpu_block_tiles"`` (:mod:`.cpu_block`: channels-last fp32/bf16, AMX for tiles),
``"cuda_mma_sp"`` (:mod:`.cuda_mma_sp`, the hardware-proven tile64 kernel). Experimental GPU backends live in
:mod:`sparseyolo.sparse.experimental` and register only when it is imported. The protocol is in :mod:`.base`;
docs/backends.md describes how to add one.
"""

from __future__ import annotations

from sparseyolo.sparse.backends.base import ConvGeometry, SparseBackend, apply_activation
from sparseyolo.sparse.backends.registry import (
    available_backends,
    backend_names,
    get_backend,
    register_backend,
    unregister_backend,
)
# Registration order is the order the autotuner lists candidates in: dense first.
from sparseyolo.sparse.backends import dense  # noqa: E402,F401,I001  (registers "dense")
from sparseyolo.sparse.backends import cpu_csr  # noqa: E402,F401  (registers "cpu_csr")
from sparseyolo.sparse.backends import cpu_block  # noqa: E402,F401  (registers "cpu_block", "cpu_block_tiles")
from sparseyolo.sparse.backends import cuda_mma_sp  # noqa: E402,F401  (registers "cuda_mma_sp")

__all__ = [
    "ConvGeometry",
    "SparseBackend",
    "apply_activation",
    "available_backends",
    "backend_names",
    "get_backend",
    "register_backend",
    "unregister_backend",
]
