"""GPU execution of :class:`~sparseyolo.sparse.SparseConv2d`: 2:4 sparse tensor cores, cuSPARSELt, or cuDNN.

For a CUDA input, :func:`cuda_forward` runs the layer on one of:

* ``"mma_sp"``: :func:`sparseyolo.ops.sparse_conv2d_24` (our implicit-GEMM ``mma.sp`` kernel, 1x1 and 3x3,
  any stride/padding, fused bias + SiLU), for fp16/bf16 inputs of a 2:4 layer with ``Cin % 8 == 0``;
* ``"mma_sp_tile128"``, ``"mma_sp_tile128x256"``, ``"mma_sp_tile256x128"``: the same op with its big-tile kernels
  (``kernel="tile128"`` ...: 64-channel k-steps, multi-stage pipeline), same conditions;
* ``"mma_sp_wgmma"``, ``"mma_sp_wgmma_overlap"``, ``"mma_sp_wgmma64"``: the same op on Hopper's
  ``wgmma.mma_async.sp`` (``kernel="wgmma"``, ``"wgmma_overlap"``, ``"wgmma64"``), sm_90 only. Not yet
  run on a GPU, so ``auto`` does not try it (a fault there would end the process's CUDA context, which the output
  check below cannot undo) unless ``SPARSEYOLO_AUTO_WGMMA=1``; or ask for it by name;
* ``"cusparselt"``: 1x1, stride 1, unpadded convs as one GEMM over NHWC through NVIDIA cuSPARSELt
  (:func:`sparseyolo.ops.cusparselt_linear`), the weight compressed once, cuSPARSELt's plan built once per input
  shape and cached, and only where :func:`cusparselt_status` found it working (a check in a subprocess);
* ``"dense"``: cuDNN ``F.conv2d`` on the cached dense weight (channels_last).

The module's ``gpu_backend`` picks one; ``"auto"`` (the default) times the applicable ones once per layer shape
and input shape (:func:`~sparseyolo.utils.torch_utils.cuda_median_ms`: CUDA events around back-to-back calls,
median) and keeps the fastest, cached per process like the CPU ``auto`` of
:func:`~sparseyolo.sparse.sparsify`. While timing, ``auto`` also compares every candidate's output with cuDNN's on
the same input and never picks one that disagrees (non-finite, or a relative difference above
``AUTO_MAX_REL_DIFF``), logging why. Anything that does not apply falls back to ``"dense"``, logging the reason
once per layer; nothing crashes or returns other values than the dense masked conv up to rounding.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sparseyolo.sparse.mma_sp import MmaSpWeight, is_24_sparse, pack_mma_sp_weight
from sparseyolo.utils.torch_utils import cuda_median_ms

LOGGER = logging.getLogger(__name__)

# Backend name -> sparseyolo.ops.sparse_conv2d_24's kernel argument.
MMA_SP_BACKENDS = {"mma_sp": "default", "mma_sp_tile128": "tile128", "mma_sp_tile128x256": "tile128x256",
                   "mma_sp_tile256x128": "tile256x128", "mma_sp_wgmma": "wgmma",
                   "mma_sp_wgmma_overlap": "wgmma_overlap", "mma_sp_wgmma64": "wgmma64"}
GPU_BACKENDS = ("auto", *MMA_SP_BACKENDS, "cusparselt", "dense")
# Backends `auto` does not try until a device run has shown them correct (see the module docstring).
_NOT_IN_AUTO = {"mma_sp_wgmma", "mma_sp_wgmma_overlap", "mma_sp_wgmma64"}
# Largest relative L2 difference from cuDNN's output that `auto` accepts: both round the same fp32-accumulated
# sums to the output dtype (~3e-4 fp16, ~2e-3 bf16 relative), so a correct backend stays far below; a wrong one is
# off by O(1).
AUTO_MAX_REL_DIFF = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
# (device name, weight shape, stride, padding, input shape, dtype, activation) -> {backend: ms}
_GPU_TIMING_CACHE: dict[tuple, dict[str, float]] = {}


@dataclass
class _GpuState:
    """Per (device, dtype) weights of one layer, built once."""

    dense_w: torch.Tensor
    bias: torch.Tensor | None  # float32
    hopper: bool  # sm_90: the wgmma kernels can run
    packed: MmaSpWeight | None = None
    cslt: object | None = None
    reason: str | None = None  # why mma.sp cannot run it ("" when it can); checked once
    choice: dict[tuple, str] = field(default_factory=dict)  # input shape -> backend
    timings: dict[tuple, dict[str, float]] = field(default_factory=dict)


class CusparseLtConv1x1:
    """A 1x1, stride-1, unpadded 2:4 conv as ``Y[P, Cout] = X[P, Cin] @ W^T`` through cuSPARSELt.

    Runs :func:`sparseyolo.ops.cusparselt_linear` (our binding of cuSPARSELt, not PyTorch's: ``torch._cslt_sparse_mm``
    in PyTorch 2.11 builds cuSPARSELt's plan on every call, and took 170-210 ms per call on an H200). The weight is
    compressed once, here, at conversion; the op builds the plan at the first call for each input shape and caches
    it, so later calls run only the matmul. The activation is read in place (channels_last is ``[P, Cin]``
    row-major) and the output is written channels_last. Algorithm configuration 0 (cuSPARSELt's default), no
    search: on an H200 with torch 2.11, cuSPARSELt's search (through ``torch._cslt_sparse_mm_search``) was followed
    by an internal error and an illegal instruction that broke the process's CUDA context. Raises at construction
    when the extension has no cuSPARSELt or cuSPARSELt rejects the layer (e.g. Cout not a multiple of 8).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, alg_id: int = 0) -> None:
        from sparseyolo import ops

        if ops.cusparselt_version() == 0:
            raise RuntimeError(_NOT_BUILT)
        self.cout, self.cin = weight.shape[:2]
        self.compressed = ops.cusparselt_compress(weight.reshape(self.cout, self.cin))
        self.bias = None if bias is None else bias.to(weight.dtype).contiguous()
        self.alg_id = alg_id

    def __call__(self, x: torch.Tensor, activation: str) -> torch.Tensor:
        from sparseyolo import ops

        n, _, h, w = x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        rows = x.permute(0, 2, 3, 1).reshape(-1, self.cin)  # a view: [N*H*W, Cin] row-major
        y = ops.cusparselt_linear(self.compressed, rows, self.cout, self.bias, self.alg_id)  # [N*H*W, Cout]
        if activation == "silu":
            y = F.silu(y, inplace=True)
        return y.reshape(n, h, w, self.cout).permute(0, 3, 1, 2)  # channels_last view


_NOT_BUILT = ("sparseyolo was built without cuSPARSELt (setup.py looks for the torch wheel's nvidia/cusparselt; "
              "rebuild with it to use the cusparselt backend)")
# Run in a subprocess by cusparselt_status(): our ops on a small problem, twice (the second call reuses the plan).
_CSLT_PROBE = r"""
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
_CSLT_STATUS: dict[str, str] = {}


def cusparselt_status() -> str:
    """"" when sparseyolo's cuSPARSELt ops run correctly on this GPU, else why not (checked once per process).

    The check runs in a subprocess: on an H200 with torch 2.11, a failing cuSPARSELt call (PyTorch's search) was
    followed by an illegal instruction, which leaves the calling process's CUDA context unusable. A layer never
    uses cuSPARSELt unless this check passed. ``SPARSEYOLO_CUSPARSELT=0`` turns the backend off.
    """
    if os.environ.get("SPARSEYOLO_CUSPARSELT", "1") == "0":
        return "disabled (SPARSEYOLO_CUSPARSELT=0)"
    if "status" not in _CSLT_STATUS:
        import subprocess
        import sys
        from pathlib import Path

        from sparseyolo import ops

        if ops.cusparselt_version() == 0:
            _CSLT_STATUS["status"] = _NOT_BUILT
        else:
            env = dict(os.environ)  # the subprocess imports this sparseyolo, installed or not
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            try:
                r = subprocess.run([sys.executable, "-c", _CSLT_PROBE], capture_output=True, text=True, timeout=120,
                                   env=env)
                ok = r.returncode == 0 and r.stdout.strip().endswith("ok")
                tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
                _CSLT_STATUS["status"] = "" if ok else f"cuSPARSELt check failed (rc {r.returncode}): {tail}"
            except Exception as e:  # noqa: BLE001 - a timeout or a missing interpreter: no cuSPARSELt
                _CSLT_STATUS["status"] = f"cuSPARSELt check did not run: {e}"
    return _CSLT_STATUS["status"]


def _disagreement(y: torch.Tensor, ref: torch.Tensor) -> str:
    """"" when ``y`` matches the dense output ``ref`` (float32) up to rounding, else how it differs."""
    if not bool(torch.isfinite(y).all()):
        return "has non-finite values where cuDNN's has none" if bool(torch.isfinite(ref).all()) else ""
    rel = float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    limit = AUTO_MAX_REL_DIFF[y.dtype]
    return f"differs from cuDNN's by {rel:.2e} relative (more than {limit:g})" if rel > limit else ""


def _log_once(module, reason: str) -> None:
    seen = module.__dict__.setdefault("_gpu_reasons", set())
    if reason not in seen:
        seen.add(reason)
        LOGGER.warning("SparseConv2d(%s): running cuDNN dense on the GPU: %s", module.extra_repr(), reason)


def _sparse_reason(module, x: torch.Tensor, dense_w: torch.Tensor) -> str:
    """Why the mma.sp kernel cannot run this layer ("" when it can)."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"{x.dtype} input (the sparse tensor cores take float16/bfloat16)"
    if torch.cuda.get_device_capability(x.device) < (8, 0):
        return "GPU older than sm_80 (no sparse tensor cores)"
    if module.in_channels % 8:
        return f"Cin = {module.in_channels} is not a multiple of 8"
    if not is_24_sparse(dense_w):
        return "weight is not 2:4 sparse along Cin"
    return ""


def _state(module, x: torch.Tensor) -> _GpuState:
    states = module.__dict__.setdefault("_gpu_states", {})
    key = (x.device, x.dtype)
    if key not in states:
        w = module.dense_weight().to(device=x.device, dtype=x.dtype).contiguous(memory_format=torch.channels_last)
        b = None if module.bias is None else module.bias.to(device=x.device, dtype=torch.float32)
        states[key] = _GpuState(dense_w=w, bias=b, hopper=torch.cuda.get_device_capability(x.device) == (9, 0))
    return states[key]


def _run(module, st: _GpuState, backend: str, x: torch.Tensor) -> torch.Tensor:
    act = module.activation
    if backend in MMA_SP_BACKENDS:
        from sparseyolo import ops

        return ops.sparse_conv2d_24(x, st.packed.values, st.packed.meta, module.out_channels, module.kernel_size,
                                    st.bias, module.stride, module.padding, act, kernel=MMA_SP_BACKENDS[backend],
                                    in_channels=module.in_channels)
    if backend == "cusparselt":
        return st.cslt(x, act)
    y = F.conv2d(x.contiguous(memory_format=torch.channels_last), st.dense_w,
                 None if st.bias is None else st.bias.to(x.dtype), module.stride, module.padding)
    return F.silu(y, inplace=True) if act == "silu" else y


@torch.no_grad()
def cuda_forward(module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` (a :class:`~sparseyolo.sparse.SparseConv2d`) on a CUDA input ``x``; see the module doc."""
    want = getattr(module, "gpu_backend", "auto")
    st = _state(module, x)
    if want == "dense":
        return _run(module, st, "dense", x)
    if want == "auto":  # after a shape's first call: straight to its choice, no candidate bookkeeping
        chosen = st.choice.get(tuple(x.shape))
        if chosen is not None:
            return _run(module, st, chosen, x)
    if st.reason is None:
        st.reason = _sparse_reason(module, x, st.dense_w)
    reason = st.reason
    candidates = ["dense"]
    if not reason:
        if st.packed is None:
            st.packed = pack_mma_sp_weight(st.dense_w, dtype=x.dtype).to(x.device)
        opt_in = os.environ.get("SPARSEYOLO_AUTO_WGMMA", "0") == "1"
        candidates += [b for b in MMA_SP_BACKENDS if (b not in _NOT_IN_AUTO or want == b or opt_in)
                       and ("wgmma" not in b or st.hopper)]
        is_1x1 = module.kernel_size == (1, 1) and module.stride == (1, 1) and module.padding == (0, 0)
        if is_1x1 and want in ("auto", "cusparselt") and st.cslt is None:
            why = cusparselt_status()
            if not why:
                try:
                    st.cslt = CusparseLtConv1x1(st.dense_w, st.bias)
                except Exception as e:  # noqa: BLE001 - a shape cuSPARSELt rejects
                    why = str(e)
            if why:
                st.cslt = False
                LOGGER.info("SparseConv2d(%s): cuSPARSELt unavailable (%s)", module.extra_repr(), why)
        if st.cslt:
            candidates.append("cusparselt")
    if want != "auto":
        if want in candidates:
            return _run(module, st, want, x)
        _log_once(module, reason or f"backend '{want}' does not apply to this layer")
        return _run(module, st, "dense", x)
    if reason:
        _log_once(module, reason)
        return _run(module, st, "dense", x)
    shape = tuple(x.shape)
    if shape not in st.choice:
        key = (torch.cuda.get_device_name(x.device), tuple(st.dense_w.shape), module.stride, module.padding, shape,
               x.dtype, module.activation)
        if key not in _GPU_TIMING_CACHE:
            times = {}
            ref = _run(module, st, "dense", x).float()
            for b in candidates:
                try:
                    why = "" if b == "dense" else _disagreement(_run(module, st, b, x), ref)
                    if why:
                        LOGGER.warning("SparseConv2d(%s): backend %s never chosen: its output %s",
                                       module.extra_repr(), b, why)
                        times[b] = float("inf")
                    else:
                        times[b] = cuda_median_ms(lambda b=b: _run(module, st, b, x), [()], reps=5, calls=3)
                except Exception as e:  # noqa: BLE001 - a failing backend is never chosen
                    LOGGER.warning("SparseConv2d(%s): backend %s failed (%s)", module.extra_repr(), b, e)
                    times[b] = float("inf")
            _GPU_TIMING_CACHE[key] = times
        times = _GPU_TIMING_CACHE[key]
        st.timings[shape] = times
        st.choice[shape] = min(times, key=times.get)
    return _run(module, st, st.choice[shape], x)
