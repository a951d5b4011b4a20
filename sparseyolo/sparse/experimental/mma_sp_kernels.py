"""Experimental backends on the unproven kernels of :func:`sparseyolo.ops.sparse_conv2d_24` (see the package doc).

Each is the ``"cuda_mma_sp"`` backend with another ``kernel=``: same packed format, same conditions, plus sm_90
for the wgmma kernels.
"""

from __future__ import annotations

from sparseyolo.sparse.backends.cuda_mma_sp import CudaMmaSpBackend

#: Backend name -> ``sparse_conv2d_24``'s ``kernel=`` name.
EXPERIMENTAL_KERNELS = {
    "cuda_mma_sp_tile128": "tile128",
    "cuda_mma_sp_tile128x256": "tile128x256",
    "cuda_mma_sp_tile256x128": "tile256x128",
    "cuda_wgmma": "wgmma",
    "cuda_wgmma_overlap": "wgmma_overlap",
    "cuda_wgmma64": "wgmma64",
}


def _make(name: str, kernel: str) -> CudaMmaSpBackend:
    wgmma = kernel.startswith("wgmma")
    attrs = {"name": name, "kernel": kernel, "experimental": True, "in_auto": not wgmma,
             "__doc__": f"``sparse_conv2d_24(kernel='{kernel}')`` (experimental: not yet run correctly on a GPU)."}
    if wgmma:  # wgmma.mma_async.sp exists on sm_90 (built for sm_90a) only
        attrs.update(min_capability=(9, 0), max_capability=(9, 0))
    cls = type(f"CudaMmaSp_{kernel}", (CudaMmaSpBackend,), attrs)
    return cls()


#: The backends (not registered: :func:`sparseyolo.sparse.experimental.register_experimental_backends` does).
BACKENDS = [_make(name, kernel) for name, kernel in EXPERIMENTAL_KERNELS.items()]
