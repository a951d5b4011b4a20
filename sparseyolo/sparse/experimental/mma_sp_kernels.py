"""Experimental backends on the unproven kernels of :func:`sparseyolo.ops.sparse_conv2d_24` (see the package doc).

Each is the ``"cuda_mma_sp"`` backend with another ``kernel=``: same packed format, same conditions, plus sm_90
for the wgmma kernels.
"""

from __future__ import annotations

import torch

from sparseyolo import ops
from sparseyolo.sparse.backends.base import ConvGeometry
from sparseyolo.sparse.backends.cuda_mma_sp import CudaMmaSpBackend
from sparseyolo.sparse.mma_sp import pack_mma_sp_weight

#: Backend name -> ``sparse_conv2d_24``'s ``kernel=`` name.
EXPERIMENTAL_KERNELS = {
    "cuda_mma_sp_tile128": "tile128",
    "cuda_mma_sp_tile128x256": "tile128x256",
    "cuda_mma_sp_tile256x128": "tile256x128",
    "cuda_wgmma": "wgmma",
    "cuda_wgmma_overlap": "wgmma_overlap",
    "cuda_wgmma64": "wgmma64",
}


_BUILT: dict[str, str] = {}


def not_built_reason(kernel: str) -> str:
    """"" when the extension has ``kernel`` (built with SPARSEYOLO_EXPERIMENTAL_GPU=1), else the op's message.

    Asked once per kernel with a tiny call on the current CUDA device (the op refuses a kernel it lacks before
    launching anything).
    """
    if kernel not in _BUILT:
        packed = pack_mma_sp_weight(torch.zeros(16, 32, 1, 1)).to("cuda")
        try:
            ops.sparse_conv2d_24(torch.zeros(1, 32, 1, 1, device="cuda", dtype=torch.float16), packed.values,
                                 packed.meta, 16, 1, kernel=kernel)
            _BUILT[kernel] = ""
        except RuntimeError as e:
            _BUILT[kernel] = str(e).splitlines()[0] if "not in this build" in str(e) else ""
    return _BUILT[kernel]


class ExperimentalMmaSpBackend(CudaMmaSpBackend):
    """``cuda_mma_sp`` with an experimental kernel: also refuses a kernel the extension was built without."""

    experimental = True

    def why_not(self, weight: torch.Tensor, geometry: ConvGeometry, activation: str, device: str | torch.device,
                dtype: torch.dtype) -> str | None:
        return super().why_not(weight, geometry, activation, device, dtype) or not_built_reason(self.kernel) or None


def _make(name: str, kernel: str) -> CudaMmaSpBackend:
    wgmma = kernel.startswith("wgmma")
    attrs = {"name": name, "kernel": kernel, "in_auto": not wgmma,
             "__doc__": f"``sparse_conv2d_24(kernel='{kernel}')`` (experimental: not yet run correctly on a GPU)."}
    if wgmma:  # wgmma.mma_async.sp exists on sm_90 (built for sm_90a) only
        attrs.update(min_capability=(9, 0), max_capability=(9, 0))
    cls = type(f"CudaMmaSp_{kernel}", (ExperimentalMmaSpBackend,), attrs)
    return cls()


#: The backends (not registered: :func:`sparseyolo.sparse.experimental.register_experimental_backends` does).
BACKENDS = [_make(name, kernel) for name, kernel in EXPERIMENTAL_KERNELS.items()]
