"""Which calls of PyTorch's cuSPARSELt binding run on this GPU: each variant in its own subprocess (a failure can
leave the CUDA context unusable), one line each. Diagnostic for benchmarks/device_check.sh.

  python benchmarks/probe_cusparselt.py
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
VARIANTS = {
    "compress only": "c = torch._cslt_compress(a); torch.cuda.synchronize(); print('ok')",
    "mm row-major B": "c = torch._cslt_compress(a); y = torch._cslt_sparse_mm(c, b); torch.cuda.synchronize(); "
                      "print('ok', float((y.float() - ref).norm() / ref.norm()))",
    "mm col-major B": "c = torch._cslt_compress(a); y = torch._cslt_sparse_mm(c, b.t().contiguous().t()); "
                      "torch.cuda.synchronize(); print('ok', float((y.float() - ref).norm() / ref.norm()))",
    "mm col-major B, bias, transpose_result": "c = torch._cslt_compress(a); y = torch._cslt_sparse_mm(c, "
                      "b.t().contiguous().t(), bias=bias, transpose_result=True); torch.cuda.synchronize(); "
                      "r = (ref + bias.float()[:, None]).t(); print('ok', float((y.float() - r).norm() / r.norm()))",
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
