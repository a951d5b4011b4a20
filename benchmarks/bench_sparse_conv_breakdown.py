"""Where the CPU sparse conv's time goes: fixed costs vs the inner loop, against dense oneDNN.

For a few yolov5s conv shapes (batch 1, fused bias + SiLU), times ``sparseyolo.ops.sparse_conv2d`` with
- the 2:4-pruned weight,
- the 2:4 weight with masks shared by 4 consecutive output channels (``prune(..., block=4)``), which the AVX2
  path runs 4 rows per input load (output-channel blocking),
- a weight with one nonzero per output channel. That run keeps the per-call costs (the stride-phase input copy,
  the epilogue, the stores, the indexing) and removes nearly all of the inner loop,
and dense ``F.conv2d`` in its faster layout. The inner loop's rate is the 2:4 FLOPs over (2:4 time minus the
fixed time). Medians of ``--reps`` calls after two warm-ups.

  python benchmarks/bench_sparse_conv_breakdown.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparseyolo import ops  # noqa: E402
from sparseyolo.prune import prune  # noqa: E402
from sparseyolo.sparse.packing import pack_conv_weight  # noqa: E402

SHAPES = [(64, 64, 3, 1, 80), (128, 128, 3, 1, 40), (128, 128, 1, 1, 80), (256, 256, 1, 1, 40),
          (512, 512, 1, 1, 20), (128, 256, 3, 2, 80)]  # (Cin, Cout, k, stride, input H=W)


def median_ms(fn, reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, bias + SiLU\n")
    print("| Cin | Cout | k | s | input | dense ms | dense GFLOP/s | 2:4 ms | speedup | fixed ms (share) | "
          "inner loop GFLOP/s (2:4 FLOPs) | 2:4 block4 ms | speedup | inner loop GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cin, cout, k, s, hw in SHAPES:
        p = k // 2
        x = torch.randn(1, cin, hw, hw)
        w = torch.randn(cout, cin, k, k)
        b = torch.randn(cout)
        w24 = w * ops.nm_mask(w, 2, 4)
        conv = torch.nn.Conv2d(cin, cout, k, s, p, bias=False)
        conv.weight.data.copy_(w)
        prune(conv, "nm", n=2, m=4, block=4)
        w24b = conv.weight.detach().clone()
        w1 = torch.zeros_like(w)
        w1[:, 0, 0, 0] = 1.0
        t = {}
        for name, ww in (("2:4", w24), ("2:4 block4", w24b), ("fixed", w1)):
            pk = pack_conv_weight(ww)
            t[name] = median_ms(lambda pk=pk: ops.sparse_conv2d(x, pk.values, pk.columns, pk.row_ptr, k, b, s, p,
                                                                "silu"), args.reps)
        xcl, wcl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        t["dense"] = min(median_ms(lambda: F.silu(F.conv2d(x, w, b, s, p)), args.reps),
                         median_ms(lambda: F.silu(F.conv2d(xcl, wcl, b, s, p)), args.reps))
        ho = (hw + 2 * p - k) // s + 1
        dense_flop = 2.0 * cout * cin * k * k * ho * ho
        inner = max(t["2:4"] - t["fixed"], 1e-9)
        inner_b = max(t["2:4 block4"] - t["fixed"], 1e-9)
        print(f"| {cin} | {cout} | {k} | {s} | {hw}x{hw} | {t['dense']:.3f} | {dense_flop / t['dense'] / 1e6:.0f} | "
              f"{t['2:4']:.3f} | {t['dense'] / t['2:4']:.2f}x | {t['fixed']:.3f} ({100 * t['fixed'] / t['2:4']:.0f}%) | "
              f"{dense_flop / 2 / inner / 1e6:.0f} | {t['2:4 block4']:.3f} | {t['dense'] / t['2:4 block4']:.2f}x | "
              f"{dense_flop / 2 / inner_b / 1e6:.0f} |")


if __name__ == "__main__":
    main()
