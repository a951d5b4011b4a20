"""Experimental GPU backends: kernels and bindings that have NOT yet run correctly on a GPU.

:func:`register_experimental_backends` registers them (``sparseyolo.sparse`` calls it when
``SPARSEYOLO_EXPERIMENTAL_GPU=1``; importing this package registers nothing);
the default registry and the default ``auto`` contain only hardware-proven backends. What is here:

* ``"cuda_mma_sp_tile128"``, ``"cuda_mma_sp_tile128x256"``, ``"cuda_mma_sp_tile256x128"``: the big-tile mma.sp
  kernels of :func:`sparseyolo.ops.sparse_conv2d_24` (``kernel="tile128"`` ...), checked only under the CPU SIMT
  emulator;
* ``"cuda_wgmma"``, ``"cuda_wgmma_overlap"``, ``"cuda_wgmma64"``: the Hopper ``wgmma.mma_async.sp`` kernels
  (sm_90 only), never run on hardware; ``auto`` does not try them (a fault would end the CUDA context before
  the output check could reject them): name them in ``SparsifyConfig.backends``;
* ``"cuda_cusparselt"``: 1x1 convs through sparseyolo's cuSPARSELt binding, gated by a check in a subprocess.

Their C++/CUDA sources are compiled only when the extension is built with ``SPARSEYOLO_EXPERIMENTAL_GPU=1``; in a
build without them each backend's ``why_not`` says so. The GPU issue decides on hardware what comes back.
"""

from __future__ import annotations

from sparseyolo.sparse.backends.base import SparseBackend
from sparseyolo.sparse.backends.registry import register_backend
from sparseyolo.sparse.experimental import mma_sp_kernels
from sparseyolo.sparse.experimental.cusparselt import CUSPARSELT, CusparseLtConv1x1, cusparselt_status
from sparseyolo.sparse.experimental.mma_sp_kernels import EXPERIMENTAL_KERNELS


def experimental_backends() -> list[SparseBackend]:
    """The experimental backends (registered or not)."""
    return [*mma_sp_kernels.BACKENDS, CUSPARSELT]


def register_experimental_backends() -> list[SparseBackend]:
    """Register every experimental backend (idempotent); returns them."""
    return [register_backend(b) for b in experimental_backends()]


__all__ = ["EXPERIMENTAL_KERNELS", "CusparseLtConv1x1", "cusparselt_status", "experimental_backends",
           "register_experimental_backends"]
