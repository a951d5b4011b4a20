"""Which cuSPARSELt calls run on this GPU, PyTorch's binding and sparseyolo's ops: each variant in its own
subprocess (a failure can leave the CUDA context unusable), one line each, the two-call variants with the wall time
of a first and a second call (a binding that rebuilds cuSPARSELt's plan on every call is as slow the second time).
Diagnostic for benchmarks/device_check.sh; run from the repository root.

  python benchmarks/experimental/probe_cusparselt.py
"""

from __future__ import annotations

import subprocess
import sys

SETUP = """
import torch
torch.manual_seed(0)
dt = torch.{dtype}
a = torch.randn(256, 128, device="cuda", dtype=dt) * (torch.arange(128, device="cuda") % 4 < 2)
b = torch.randn(128, 512, device="cuda", dtype=dt)
bias = torch.randn(256, device="cuda", dtype=dt)
ref = a.float() @ b.float()
"""
# f() returns [512, 256] = (a @ b + bias)^T; prints the error and the wall time of the first and second call.
TWO_CALLS = ("import time; ts = []; r = (ref + bias.float()[:, None]).t()\n"
             "for _ in range(2):\n"
             "    t0 = time.perf_counter(); y = f(); torch.cuda.synchronize()\n"
             "    ts.append((time.perf_counter() - t0) * 1e3)\n"
             "print('ok', float((y.float() - r).norm() / r.norm()), 'first call %.2f ms, second %.2f ms' % tuple(ts))")
VARIANTS = {
    "compress only": "c = torch._cslt_compress(a); torch.cuda.synchronize(); print('ok')",
    "mm row-major B": "c = torch._cslt_compress(a); y = torch._cslt_sparse_mm(c, b); torch.cuda.synchronize(); "
                      "print('ok', float((y.float() - ref).norm() / ref.norm()))",
    "mm col-major B": "c = torch._cslt_compress(a); y = torch._cslt_sparse_mm(c, b.t().contiguous().t()); "
                      "torch.cuda.synchronize(); print('ok', float((y.float() - ref).norm() / ref.norm()))",
    "mm col-major B, bias, transpose_result": "c = torch._cslt_compress(a); y = torch._cslt_sparse_mm(c, "
                      "b.t().contiguous().t(), bias=bias, transpose_result=True); torch.cuda.synchronize(); "
                      "r = (ref + bias.float()[:, None]).t(); print('ok', float((y.float() - r).norm() / r.norm()))",
    "torch binding, two calls timed": "c = torch._cslt_compress(a); bt = b.t().contiguous().t(); "
                      "f = lambda: torch._cslt_sparse_mm(c, bt, bias=bias, transpose_result=True); " + TWO_CALLS,
    "sparseyolo ops, two calls timed": "from sparseyolo import ops; c = ops.cusparselt_compress(a); "
                      "xt = b.t().contiguous(); f = lambda: ops.cusparselt_linear(c, xt, 256, bias); " + TWO_CALLS,
    "search": "c = torch._cslt_compress(a); print('ok alg', torch._cslt_sparse_mm_search(c, b))",
    "semi-structured (cuSPARSELt)": "from torch.sparse import to_sparse_semi_structured, "
                      "SparseSemiStructuredTensor as S; S._FORCE_CUTLASS = False; s = to_sparse_semi_structured(a); "
                      "y = s @ b; torch.cuda.synchronize(); print('ok', float((y.float() - ref).norm() / ref.norm()))",
    "semi-structured (CUTLASS)": "from torch.sparse import to_sparse_semi_structured, "
                      "SparseSemiStructuredTensor as S; S._FORCE_CUTLASS = True; s = to_sparse_semi_structured(a); "
                      "y = s @ b; torch.cuda.synchronize(); print('ok', float((y.float() - ref).norm() / ref.norm()))",
}

for dtype in ("float16",):
    for name, code in VARIANTS.items():
        r = subprocess.run([sys.executable, "-c", SETUP.format(dtype=dtype) + code], capture_output=True, text=True,
                           timeout=120)
        out = (r.stdout.strip().splitlines() or [""])[-1]
        err = (r.stderr.strip().splitlines() or [""])[-1]
        print(f"{dtype:8s} {name:40s} rc={r.returncode} {out if r.returncode == 0 else err}", flush=True)
