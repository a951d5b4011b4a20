"""What a conv's epilogue costs: the block-sparse kernel and oneDNN, each with SiLU and without, per layer.

For a few yolov5s layers (bf16, channels-last, batch 1): ``sparseyolo.ops.block_sparse_conv2d`` with 16 x 32 AMX
tiles 0% and 75% pruned, ``activation="silu"`` and ``"identity"``, against oneDNN with the weight prepacked
(``mkldnn._convolution_pointwise``, as a frozen compiled model runs it) with ``"swish"`` and ``"none"``. The
difference between a layer's two times is what its SiLU (and, for the kernel, the rest of the store) costs. All
variants of a layer round-robin, medians of ``--reps``.

  python benchmarks/bench_conv_epilogue.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_block_sparse_conv import tile_mask  # noqa: E402
from sparseyolo import ops  # noqa: E402
from sparseyolo.sparse.block_packing import pack_block_sparse  # noqa: E402

# (Cin, Cout, k, stride, input side): yolov5s layers from 20 to 320 px
LAYERS = [(512, 256, 1, 1, 20), (128, 128, 3, 1, 40), (64, 64, 1, 1, 80), (32, 64, 3, 2, 320), (128, 255, 1, 1, 80),
          (64, 32, 1, 1, 160)]


def layer_fns(cin: int, cout: int, k: int, s: int, hw: int, gen: torch.Generator) -> dict:
    p = k // 2
    w = torch.randn(cout, cin, k, k, generator=gen)
    x = torch.randn(1, cin, hw, hw, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
    b = torch.randn(cout, generator=gen)
    fns = {}
    for amount in (0.0, 0.75):
        pk = pack_block_sparse(w * tile_mask(cout, cin, k, amount, gen), torch.bfloat16, "tiles32")
        for act in ("silu", "identity"):
            fns[f"tiles {amount:.0%} {act}"] = (lambda pk=pk, act=act: ops.block_sparse_conv2d(
                x, pk.weight, pk.taps, pk.block_ptr, cin, cout, k, b, s, p, act, pk.gather))
    pre = torch.ops.mkldnn._reorder_convolution_weight(w.bfloat16(), [p, p], [s, s], [1, 1], 1, list(x.shape))
    for attr, label in (("swish", "silu"), ("none", "identity")):
        fns[f"onednn {label}"] = (lambda attr=attr: torch.ops.mkldnn._convolution_pointwise(
            x, pre, b.bfloat16(), [p, p], [s, s], [1, 1], 1, attr, [None], ""))
    return fns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"us per call, medians of {args.reps} interleaved rounds; {torch.get_num_threads()} threads; "
          f"CPU path {ops.cpu_isa()}")
    for cin, cout, k, s, hw in LAYERS:
        fns = layer_fns(cin, cout, k, s, hw, gen)
        samples: dict[str, list[float]] = {name: [] for name in fns}
        with torch.no_grad():
            for fn in fns.values():
                fn()
            for _ in range(args.reps):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append((time.perf_counter() - t0) * 1e6)
        print(f"{cin}->{cout} {k}x{k}/{s} at {hw}x{hw}: "
              + ", ".join(f"{name} {statistics.median(v):.0f}" for name, v in samples.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
