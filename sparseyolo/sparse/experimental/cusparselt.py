"""Experimental backend ``"cuda_cusparselt"``: a 1x1, stride-1, unpadded 2:4 conv as one GEMM through cuSPARSELt.

``Y[P, Cout] = X[P, Cin] @ W^T`` over the channels_last activation (read in place) with sparseyolo's own
cuSPARSELt binding (:func:`sparseyolo.ops.cusparselt_linear`; ``torch._cslt_sparse_mm`` in PyTorch 2.11 built
cuSPARSELt's plan on every call and took 170-210 ms per call on an H200). The weight is compressed once, at
packing (on the GPU: the compressed bytes are a buffer); the op builds the plan at the first call per input
shape and caches it. Algorithm configuration 0 (cuSPARSELt's default), no search: on an H200 with torch 2.11,
cuSPARSELt's search was followed by an internal error and an illegal instruction that broke the CUDA context.
A layer never uses it unless :func:`cusparselt_status` found the ops working (a check in a subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from sparseyolo import ops
from sparseyolo.sparse.backends.base import ConvGeometry, SparseBackend, apply_activation
from sparseyolo.sparse.mma_sp import is_24_sparse

NOT_BUILT = ("sparseyolo was built without cuSPARSELt (it is built with SPARSEYOLO_EXPERIMENTAL_GPU=1 when the "
             "torch wheel ships nvidia/cusparselt; rebuild with it to use the cuda_cusparselt backend)")
# Run in a subprocess by cusparselt_status(): our ops on a small problem, twice (the second call reuses the plan).
_PROBE = r"""
import torch
from sparseyolo import ops
torch.manual_seed(0)
a = torch.randn(256, 128, device="cuda", dtype=torch.float16)
a = a * (torch.arange(128, device="cuda") % 4 < 2)  # 2:4 along K
x = torch.randn(520, 128, device="cuda", dtype=torch.float16)
bias = torch.randn(256, device="cuda", dtype=torch.float16)
c = ops.cusparselt_compress(a)
ref = x.float() @ a.float().t() + bias.float()
for _ in range(2):
    y = ops.cusparselt_linear(c, x, 256, bias)
    torch.cuda.synchronize()
    err = float((y.float() - ref).norm() / ref.norm())
    assert err < 1e-2, f"wrong result: relative error {err:.2e}"
print("ok")
"""
_STATUS: dict[str, str] = {}


def cusparselt_status() -> str:
    """"" when sparseyolo's cuSPARSELt ops run correctly on this GPU, else why not (checked once per process).

    The check runs in a subprocess: on an H200 with torch 2.11, a failing cuSPARSELt call (PyTorch's search) was
    followed by an illegal instruction, which leaves the calling process's CUDA context unusable.
    ``SPARSEYOLO_CUSPARSELT=0`` turns the backend off.
    """
    if os.environ.get("SPARSEYOLO_CUSPARSELT", "1") == "0":
        return "disabled (SPARSEYOLO_CUSPARSELT=0)"
    if "status" not in _STATUS:
        if ops.cusparselt_version() == 0:
            _STATUS["status"] = NOT_BUILT
        else:
            env = dict(os.environ)  # the subprocess imports this sparseyolo, installed or not
            root = str(Path(__file__).resolve().parents[3])
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            try:
                r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, env=env)
                ok = r.returncode == 0 and r.stdout.strip().endswith("ok")
                tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
                _STATUS["status"] = "" if ok else f"cuSPARSELt check failed (rc {r.returncode}): {tail}"
            except Exception as e:  # noqa: BLE001 - a timeout or a missing interpreter: no cuSPARSELt
                _STATUS["status"] = f"cuSPARSELt check did not run: {e}"
    return _STATUS["status"]


def conv1x1(compressed: torch.Tensor, x: torch.Tensor, cout: int, bias: torch.Tensor | None, activation: str,
            alg_id: int = 0) -> torch.Tensor:
    """The 1x1 conv of ``x`` (NCHW shape, any layout; read in place when channels_last) -> channels_last output."""
    n, cin, h, w = x.shape
    x = x.contiguous(memory_format=torch.channels_last)
    rows = x.permute(0, 2, 3, 1).reshape(-1, cin)  # a view: [N*H*W, Cin] row-major
    y = ops.cusparselt_linear(compressed, rows, cout, bias, alg_id)  # [N*H*W, Cout]
    y = apply_activation(y, activation)
    return y.reshape(n, h, w, cout).permute(0, 3, 1, 2)  # channels_last view


class CusparseLtConv1x1:
    """A compressed 1x1 conv weight and its call (for benchmarks that time cuSPARSELt's algorithm ids directly).

    Raises at construction when the extension has no cuSPARSELt or cuSPARSELt rejects the layer (e.g. Cout not a
    multiple of 16).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, alg_id: int = 0) -> None:
        if ops.cusparselt_version() == 0:
            raise RuntimeError(NOT_BUILT)
        self.cout, self.cin = weight.shape[:2]
        self.compressed = ops.cusparselt_compress(weight.reshape(self.cout, self.cin))
        self.bias = None if bias is None else bias.to(weight.dtype).contiguous()
        self.alg_id = alg_id

    def __call__(self, x: torch.Tensor, activation: str) -> torch.Tensor:
        return conv1x1(self.compressed, x, self.cout, self.bias, activation, self.alg_id)


class CusparseLtBackend(SparseBackend):
    name = "cuda_cusparselt"
    devices = ("cuda",)
    dtypes = (torch.float16, torch.bfloat16)
    memory_format = torch.channels_last
    experimental = True

    def why_not(self, weight: torch.Tensor, geometry: ConvGeometry, activation: str, device: str | torch.device,
                dtype: torch.dtype) -> str | None:
        why = self.supports(device, dtype)
        if why:
            return why
        if geometry.kernel_size != (1, 1) or geometry.stride != (1, 1) or geometry.padding != (0, 0):
            return "1x1, stride 1, unpadded convs only"
        if geometry.in_channels % 16 or geometry.out_channels % 16:
            return "Cin and Cout must be multiples of 16"
        if not is_24_sparse(weight):
            return "weight is not 2:4 sparse along Cin"
        status = cusparselt_status()
        return status or None

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry, activation: str,
             dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor | None]:
        if ops.cusparselt_version() == 0:
            raise RuntimeError(NOT_BUILT)
        w = weight.detach().reshape(geometry.out_channels, geometry.in_channels).to("cuda", dtype)
        return {"compressed": ops.cusparselt_compress(w.contiguous()), "weight_dense": weight.detach().to(dtype),
                "bias": None if bias is None else bias.detach().to("cuda", dtype).contiguous()}

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b = module.bias
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return conv1x1(module.compressed, x, module.out_channels, b, module.activation)

    def unpack(self, module: nn.Module) -> torch.Tensor:
        # cuSPARSELt's compressed bytes are opaque: the dense weight is kept beside them (small: 1x1 layers).
        return module.weight_dense.detach().to(torch.float32)


CUSPARSELT = CusparseLtBackend()  # registered by sparseyolo.sparse.experimental.register_experimental_backends
