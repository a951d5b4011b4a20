"""Per layer, 1 and 2 threads interleaved: oneDNN fp32 (prepacked, SiLU fused) against the block-sparse kernel in
fp32 (2:4 shared by 16 output channels; 75% of the 16 x 32 tiles pruned), as ms, thread scaling, and useful
zmm-FMAs per ns per thread (the MACs the pattern keeps, / 16). The layers of
``benchmarks/bench_block_sparse_conv.py`` (same weights and masks); medians of ``--reps`` rounds, each round one call
of every variant at 1 thread, then at 2.

  python benchmarks/experimental/fp32_rate_per_layer.py --reps 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_block_sparse_conv import layer_variants  # noqa: E402
from sparseyolo import ops  # noqa: E402

VARIANTS = {"onednn fp32 prepacked": 1.0, "fp32 2:4 b16": 0.5, "fp32 tiles 75%": 0.25}  # share of MACs kept
LAYERS = ((128, 128, 3, 40), (64, 64, 3, 80), (512, 256, 1, 20), (1024, 512, 1, 20))  # cin, cout, k, hw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    print(f"CPU path {ops.cpu_isa()}; medians of {args.reps} rounds; ms at 1 / 2 threads (scaling), "
          "useful zmm-FMA/ns per thread at 1 / 2 threads")
    for cin, cout, k, hw in LAYERS:
        layer = dict(cin=cin, cout=cout, k=k, stride=1, padding=k // 2, input=(1, cin, hw, hw))
        fns = layer_variants(layer, torch.Generator().manual_seed(0))
        times: dict[tuple[str, int], list[float]] = {(n, t): [] for n in VARIANTS for t in (1, 2)}
        with torch.no_grad():
            for _ in range(args.reps):
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    for name in VARIANTS:
                        t0 = time.perf_counter()
                        fns[name]()
                        times[(name, threads)].append(time.perf_counter() - t0)
        macs = cin * cout * k * k * hw * hw
        cells = []
        for name, kept in VARIANTS.items():
            ms1, ms2 = (statistics.median(times[(name, t)]) * 1e3 for t in (1, 2))
            rate1, rate2 = (macs * kept / 16 / (ms * 1e6) / t for ms, t in ((ms1, 1), (ms2, 2)))
            cells.append(f"{name}: {ms1:.3f} / {ms2:.3f} ms ({ms1 / ms2:.2f}x), {rate1:.2f} / {rate2:.2f}")
        print(f"{cin}->{cout} {k}x{k} {hw}x{hw} | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
