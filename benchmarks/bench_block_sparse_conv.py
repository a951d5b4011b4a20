"""Per layer: the block-sparse channels-last kernel against oneDNN, on every distinct conv of YOLOv5s with Cin >= 32.

Each layer runs as the model runs it, ``act(conv(x) + bias)`` with SiLU, channels-last, batch ``--batch``:

* ``onednn fp32`` / ``onednn bf16``: ``F.silu(F.conv2d(x, w, b))`` (oneDNN; bf16 uses AMX where the CPU has it,
  else AVX-512 BF16);
* ``onednn fp32 prepacked`` / ``onednn bf16 prepacked``: what a dense model compiled with Inductor's freezing runs
  for each conv (:func:`sparseyolo.sparse.compile.compile_inference`; read from its output code): the weight
  reordered once (``mkldnn._reorder_convolution_weight``) and ``mkldnn._convolution_pointwise`` with SiLU fused
  (``"swish"``). They are the bars: the fp32 one for the fp32 variants, the bf16 one for the bf16 variants;
* ``fp32 tiles 0%``: :func:`sparseyolo.ops.block_sparse_conv2d`, fp32, nothing pruned (the kernel's efficiency
  against oneDNN; neighbouring blocks share every unit, so they run as twins on AVX-512);
* ``fp32 2:4 b16`` / ``b32``: the same kernel, 2:4 masks shared by 16 / 32 output channels (b32: twin blocks,
  two weight vectors per broadcast);
* ``fp32 tiles 50%`` / ``75%``: the same kernel in fp32 on tile-pruned weights (whole 16 x 32 tiles of a tap:
  32 input rows skipped for a block of 16 output channels); ``fp32 tiles32 75%``: tiles of 32 x 32 (twins);
* ``bf16 2:4 b16`` / ``b32``: the same in bf16 (gather ``pairs24``: vdpbf16ps, or two fp32 FMAs without AVX-512
  BF16);
* ``bf16 tiles 0%`` / ``50%`` / ``75%``: gather ``tiles32`` (AMX where the CPU has it, else pairs on vdpbf16ps)
  with that share of its 16 x 32 tiles pruned (0%: the dense work, the kernel's efficiency against oneDNN).

Sparse speedups are against oneDNN in the same precision (prepacked); the summary adds each variant's model conv
time against the fastest dense bar in either precision (bf16 on a CPU with AMX; fp32 was faster on a CPU with
AVX-512 BF16 but no AMX). All variants of a layer are timed round-robin, one call each per round, ``--reps`` rounds
after a warm-up: medians. ``--clock cpu`` times process CPU time instead of wall time (for a loaded machine; use
it with ``--threads 1``). Summaries: the median speedup over layers, and the model's conv time (each shape times
its count).

  python benchmarks/bench_block_sparse_conv.py --threads 2 --json benchmarks/results/block_sparse_conv_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_sparse_conv import conv_shapes, machine  # noqa: E402
from sparseyolo import ops  # noqa: E402
from sparseyolo.sparse.block_packing import BLOCK, pack_block_sparse  # noqa: E402
from sparseyolo.utils.memory import reuse_freed_memory  # noqa: E402

VARIANTS = ("onednn fp32", "onednn fp32 prepacked", "onednn bf16", "onednn bf16 prepacked", "fp32 tiles 0%",
            "fp32 2:4 b16", "fp32 2:4 b32", "fp32 tiles 50%", "fp32 tiles 75%", "fp32 tiles32 75%", "bf16 2:4 b16",
            "bf16 2:4 b32", "bf16 tiles 0%", "bf16 tiles 50%", "bf16 tiles 75%")
FP32_BASELINE, BF16_BASELINE = "onednn fp32 prepacked", "onednn bf16 prepacked"
BARS = (FP32_BASELINE, BF16_BASELINE)


def baseline(variant: str) -> str:
    """The dense bar of a sparse variant: oneDNN prepacked in the same precision."""
    return FP32_BASELINE if variant.startswith("fp32") else BF16_BASELINE


def block_24_mask(cout: int, cin: int, k: int, gen: torch.Generator, block: int = BLOCK) -> torch.Tensor:
    """A random 2:4 mask (along Cin) shared by each block of ``block`` output channels."""
    nb = (cout + block - 1) // block
    score = torch.rand(nb, cin // 4, 4, k, k, generator=gen)
    mask = torch.zeros_like(score).scatter_(2, score.topk(2, dim=2).indices, 1.0)
    return mask.reshape(nb, 1, cin, k, k).expand(nb, block, cin, k, k).reshape(nb * block, cin, k, k)[:cout]


def tile_mask(cout: int, cin: int, k: int, pruned: float, gen: torch.Generator, block: int = BLOCK) -> torch.Tensor:
    """Whole ``block`` x 32 tiles (output x input channels) of each tap pruned at random, ``pruned`` of them."""
    nb, nq = (cout + block - 1) // block, (cin + 31) // 32
    keep = (torch.rand(nb, 1, nq, 1, k, k, generator=gen) >= pruned).float()
    return keep.expand(nb, block, nq, 32, k, k).reshape(nb * block, nq * 32, k, k)[:cout, :cin]


def layer_variants(layer: dict, gen: torch.Generator) -> dict:
    cin, cout, k, s, p = layer["cin"], layer["cout"], layer["k"], layer["stride"], layer["padding"]
    w = torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5
    b = torch.randn(cout, generator=gen) * 0.1
    x = torch.randn(*layer["input"], generator=gen).contiguous(memory_format=torch.channels_last)
    xb = x.bfloat16()
    dense32, dense16 = w.contiguous(memory_format=torch.channels_last), w.bfloat16().contiguous(
        memory_format=torch.channels_last)
    b16 = b.bfloat16()

    def ours(packed, inp):
        return lambda: ops.block_sparse_conv2d(inp, packed.weight, packed.taps, packed.block_ptr, cin, cout, k, b, s,
                                               p, "silu", packed.gather)

    def onednn_prepacked(inp, weight, bias):
        packed = torch.ops.mkldnn._reorder_convolution_weight(weight, [p, p], [s, s], [1, 1], 1, list(inp.shape))
        return lambda: torch.ops.mkldnn._convolution_pointwise(inp, packed, bias, [p, p], [s, s], [1, 1], 1, "swish",
                                                               [None], "")

    m24 = block_24_mask(cout, cin, k, gen) if cin % 4 == 0 else None
    t50, t75 = tile_mask(cout, cin, k, 0.5, gen), tile_mask(cout, cin, k, 0.75, gen)
    fns = {
        "onednn fp32": lambda: F.silu(F.conv2d(x, dense32, b, s, p)),
        "onednn fp32 prepacked": onednn_prepacked(x, w, b),
        "onednn bf16": lambda: F.silu(F.conv2d(xb, dense16, b16, s, p)),
        "onednn bf16 prepacked": onednn_prepacked(xb, w.bfloat16(), b16),
        "fp32 tiles 0%": ours(pack_block_sparse(w, torch.float32), x),
        "fp32 tiles 50%": ours(pack_block_sparse(w * t50, torch.float32), x),
        "fp32 tiles32 75%": ours(pack_block_sparse(w * tile_mask(cout, cin, k, 0.75, gen, 32), torch.float32), x),
        "fp32 tiles 75%": ours(pack_block_sparse(w * t75, torch.float32), x),
        "bf16 tiles 0%": ours(pack_block_sparse(w, torch.bfloat16, "tiles32"), xb),
        "bf16 tiles 50%": ours(pack_block_sparse(w * t50, torch.bfloat16, "tiles32"), xb),
        "bf16 tiles 75%": ours(pack_block_sparse(w * t75, torch.bfloat16, "tiles32"), xb),
    }
    if m24 is not None:
        fns["fp32 2:4 b16"] = ours(pack_block_sparse(w * m24, torch.float32), x)
        fns["bf16 2:4 b16"] = ours(pack_block_sparse(w * m24, torch.bfloat16), xb)
        m24_32 = block_24_mask(cout, cin, k, gen, 32)
        fns["fp32 2:4 b32"] = ours(pack_block_sparse(w * m24_32, torch.float32), x)
        fns["bf16 2:4 b32"] = ours(pack_block_sparse(w * m24_32, torch.bfloat16), xb)
    return fns


def bench_layer(layer: dict, reps: int, clock, gen: torch.Generator) -> dict:
    fns = layer_variants(layer, gen)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(reps):
            for name, fn in fns.items():
                t0 = clock()
                fn()
                samples[name].append((clock() - t0) * 1e3)
    ms = {name: statistics.median(v) for name, v in samples.items()}
    return {**layer, "ms": {v: ms.get(v, math.nan) for v in VARIANTS}}


def speedup(row: dict, variant: str) -> float:
    return row["ms"][baseline(variant)] / row["ms"][variant]


def markdown(result: dict) -> str:
    sparse = [v for v in VARIANTS if not v.startswith("onednn")]
    lines = [f"Machine: {result['machine']}; CPU path: {result['isa']}; threads {result['threads']}; batch "
             f"{result['batch']}; clock {result['clock']}; malloc {result.get('malloc', 'default')}; medians of "
             f"{result['reps']} interleaved rounds.",
             f"Command: `{result['command']}`", "",
             "| layer (Cin->Cout k/s, input HxW) x count | " + " | ".join(f"{v} ms" for v in VARIANTS) + " | "
             + " | ".join(f"{v} speedup" for v in sparse) + " |",
             "|---" * (1 + len(VARIANTS) + len(sparse)) + "|"]
    for r in result["layers"]:
        h, w = r["input"][2:]
        lines.append(f"| {r['cin']}->{r['cout']} {r['k']}/{r['stride']}, {h}x{w} x{r['count']} | "
                     + " | ".join(f"{r['ms'][v]:.3f}" for v in VARIANTS) + " | "
                     + " | ".join(f"{speedup(r, v):.2f}x" for v in sparse) + " |")
    s = result["summary"]
    lines += ["", "| summary | " + " | ".join(sparse) + " |", "|---" * (1 + len(sparse)) + "|",
              "| median speedup over layers | " + " | ".join(f"{s['median'][v]:.2f}x" for v in sparse) + " |",
              "| model conv time, ms, and speedup over the same precision (dense: onednn fp32 {:.1f}, prepacked "
              "{:.1f}; bf16 {:.1f}, prepacked {:.1f}) | ".format(
                  s["model_ms"]["onednn fp32"], s["model_ms"][FP32_BASELINE], s["model_ms"]["onednn bf16"],
                  s["model_ms"][BF16_BASELINE])
              + " | ".join(f"{s['model_ms'][v]:.1f} ({s['model_speedup'][v]:.2f}x)" for v in sparse) + " |",
              f"| model conv time: speedup over the faster bar ({s['bar']}) | "
              + " | ".join(f"{s['model_speedup_vs_bar'][v]:.2f}x" for v in sparse) + " |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cfg", default="yolov5s.yaml")
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--min-cin", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="write the table to this file")
    ap.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                    help="reuse: glibc keeps freed outputs for reuse, as the sparseyolo command sets it "
                         "(sparseyolo.reuse_freed_memory); default: the allocator as it is")
    args = ap.parse_args(argv)
    if args.malloc == "reuse":
        reuse_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    gen = torch.Generator().manual_seed(0)
    layers = [lay for lay in conv_shapes(args.cfg, args.img, args.batch) if lay["cin"] >= args.min_cin]
    rows = []
    for lay in layers:
        rows.append(bench_layer(lay, args.reps, clock, gen))
        print(f"{lay['cin']}->{lay['cout']} k{lay['k']}s{lay['stride']} {lay['input'][2:]}: "
              + " ".join(f"{v}={rows[-1]['ms'][v]:.3f}" for v in VARIANTS), flush=True)
    sparse = [v for v in VARIANTS if not v.startswith("onednn")]
    model_ms = {v: sum(r["ms"][v] * r["count"] for r in rows if r["ms"][v] == r["ms"][v]) for v in VARIANTS}
    # 2:4 rows exist only where Cin % 4 == 0; compare like with like
    def bar_ms(bar: str, v: str) -> float:
        return sum(r["ms"][bar] * r["count"] for r in rows if r["ms"][v] == r["ms"][v])

    bar = min(BARS, key=lambda b: model_ms[b])  # the faster dense precision over the model's convs
    summary = {
        "median": {v: statistics.median([speedup(r, v) for r in rows if r["ms"][v] == r["ms"][v]]) for v in sparse},
        "model_ms": model_ms,
        "model_speedup": {v: bar_ms(baseline(v), v) / model_ms[v] for v in sparse},
        "bar": bar,
        "model_speedup_vs_bar": {v: bar_ms(bar, v) / model_ms[v] for v in sparse},
    }
    result = {"machine": machine(), "isa": ops.cpu_isa(), "threads": torch.get_num_threads(), "batch": args.batch,
              "reps": args.reps, "clock": args.clock, "cfg": args.cfg, "img": args.img, "malloc": args.malloc,
              "command": "python benchmarks/bench_block_sparse_conv.py " + shlex.join(argv or sys.argv[1:]),
              "layers": rows, "summary": summary}
    table = markdown(result)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
