"""Per-layer: sparseyolo's direct sparse conv vs dense ``F.conv2d`` on every distinct conv of YOLOv5s.

The conv shapes are collected from a yolov5s forward at ``--img`` (640) batch ``--batch`` (1). Each layer's
weight is masked at 2:4 (N:M along Cin, :func:`sparseyolo.ops.nm_mask`), at 2:4 with masks shared by 4 consecutive
output channels ("2:4 block4", ``prune(..., block=4)``: the kernel's output-channel blocking) and at 50/75/90% unstructured
(random positions); the sparse kernel runs the packed weight (identity activation, no bias), dense is
``F.conv2d`` of the same masked weight in channels-first and channels-last, and the faster of the two counts.
All with the same thread count. Times are medians of ``--reps`` runs after a warm-up, dense and sparse
interleaved per round so a burst of machine load hits both. A method that fails records NaN.

GFLOP/s: dense counts all 2*Cout*Cin*KH*KW*Ho*Wo flops; sparse counts the useful ones (2*nnz*Ho*Wo).

  python benchmarks/bench_sparse_conv.py --json benchmarks/results_sparse_conv_cpu.json --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparseyolo import ops  # noqa: E402
from sparseyolo.models import DetectionModel  # noqa: E402
from sparseyolo.sparse import pack_conv_weight  # noqa: E402

LOGGER = logging.getLogger("bench_sparse_conv")
SPARSITIES = ["2:4", "2:4 block4", "0.5", "0.75", "0.9"]


def conv_shapes(cfg: str, img: int, batch: int) -> list[dict]:
    """Distinct (Cin, Cout, k, stride, padding, input shape) of the model's convs, in first-use order."""
    model = DetectionModel(cfg).eval()
    seen: dict[tuple, dict] = {}

    def hook(mod, args):
        x = args[0]
        key = (mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0], *x.shape)
        if key in seen:
            seen[key]["count"] += 1
        else:
            seen[key] = {"cin": mod.in_channels, "cout": mod.out_channels, "k": mod.kernel_size[0],
                         "stride": mod.stride[0], "padding": mod.padding[0], "input": list(x.shape), "count": 1}

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(batch, 3, img, img))
    for h in hooks:
        h.remove()
    return list(seen.values())


def masked_weight(cout: int, cin: int, k: int, sparsity: str, gen: torch.Generator) -> torch.Tensor | None:
    w = torch.randn(cout, cin, k, k, generator=gen)
    if sparsity == "dense":
        return w
    if ":" in sparsity:  # "2:4", or "2:4 block4": masks shared by 4 consecutive output channels
        pattern, _, blk = sparsity.partition(" block")
        n, m = (int(v) for v in pattern.split(":"))
        if cin % m:
            return None
        if blk:
            from sparseyolo.prune import prune

            conv = torch.nn.Conv2d(cin, cout, k, bias=False)
            with torch.no_grad():
                conv.weight.copy_(w)
            prune(conv, "nm", n=n, m=m, block=int(blk))
            return conv.weight.detach().clone()
        return w * ops.nm_mask(w, n, m)
    return w * (torch.rand(w.shape, generator=gen) >= float(sparsity))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_layer(layer: dict, reps: int, gen: torch.Generator) -> dict:
    cin, cout, k, s, p = layer["cin"], layer["cout"], layer["k"], layer["stride"], layer["padding"]
    x = torch.randn(*layer["input"], generator=gen)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ho = (x.shape[2] + 2 * p - k) // s + 1
    wo = (x.shape[3] + 2 * p - k) // s + 1
    flops = 2.0 * x.shape[0] * cout * cin * k * k * ho * wo
    w0 = masked_weight(cout, cin, k, "dense", gen)
    w0_cl = w0.contiguous(memory_format=torch.channels_last)
    fns = {"dense_cf": lambda: F.conv2d(x, w0, None, s, p), "dense_cl": lambda: F.conv2d(x_cl, w0_cl, None, s, p)}
    nnz = {}
    for sp in SPARSITIES:
        w = masked_weight(cout, cin, k, sp, gen)
        if w is None:
            continue
        pk = pack_conv_weight(w)
        nnz[sp] = pk.nnz
        fns[sp] = (lambda pk=pk: ops.sparse_conv2d(x, pk.values, pk.columns, pk.row_ptr, k, None, s, p))
    times: dict[str, list[float]] = {name: [] for name in fns}
    failed = set()
    for name, fn in fns.items():  # warm-up
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a failing method records NaN
            LOGGER.warning("%s failed: %s", name, e)
            failed.add(name)
    for _ in range(reps):
        for name, fn in fns.items():
            if name not in failed:
                times[name].append(timed(fn))
    med = {name: (statistics.median(t) * 1e3 if t and name not in failed else math.nan) for name, t in times.items()}
    best = {name: (min(t) * 1e3 if t and name not in failed else math.nan) for name, t in times.items()}
    dense_ms = min(med["dense_cf"], med["dense_cl"])
    row = dict(layer, output=[x.shape[0], cout, ho, wo], gflop=flops / 1e9, dense_cf_ms=med["dense_cf"],
               dense_cl_ms=med["dense_cl"], dense_ms=dense_ms, dense_gflops=flops / dense_ms / 1e6, sparse={})
    for sp in SPARSITIES:
        if sp not in nnz or math.isnan(med.get(sp, math.nan)):
            row["sparse"][sp] = {"ms": math.nan, "speedup": math.nan, "gflops": math.nan, "min_speedup": math.nan}
            continue
        useful = 2.0 * x.shape[0] * nnz[sp] * ho * wo
        row["sparse"][sp] = {"ms": med[sp], "speedup": dense_ms / med[sp], "gflops": useful / med[sp] / 1e6,
                             "density": nnz[sp] / (cout * cin * k * k), "min_ms": best[sp],
                             "min_speedup": min(best["dense_cf"], best["dense_cl"]) / best[sp]}
    return row


def machine() -> str:
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"### Sparse conv per layer (yolov5s {meta['img']}x{meta['img']}, batch {meta['batch']}), cpu "
        f"({meta['machine']}, {meta['threads']} threads), {meta['date']}",
        "",
        f"torch {meta['torch']}; ISA path: {meta['isa']}; load average before/after: {meta['load_before']} / "
        f"{meta['load_after']}; medians of {meta['reps']} runs.",
        f"Command: `{meta['command']}`",
        "",
        "| Cin | Cout | k | s | input | GFLOP | dense ms (cf / cl) | dense GFLOP/s | "
        + " | ".join(f"{sp} ms (x, GFLOP/s)" for sp in SPARSITIES) + " |",
        "|" + "---|" * (8 + len(SPARSITIES)),
    ]
    for r in result["layers"]:
        cells = []
        for sp in SPARSITIES:
            v = r["sparse"][sp]
            cells.append("n/a" if math.isnan(v["ms"]) else f"{v['ms']:.2f} ({v['speedup']:.2f}x, {v['gflops']:.0f})")
        lines.append(f"| {r['cin']} | {r['cout']} | {r['k']} | {r['stride']} | {'x'.join(map(str, r['input'][2:]))} "
                     f"| {r['gflop']:.2f} | {r['dense_cf_ms']:.2f} / {r['dense_cl_ms']:.2f} | {r['dense_gflops']:.0f} | "
                     + " | ".join(cells) + " |")
    s = result["summary"]
    lines.append("| **median over layers** | | | | | | | | " + " | ".join(
        f"**{s[sp]['median_speedup']:.2f}x**" for sp in SPARSITIES) + " |")
    lines.append("| **time-weighted (sum dense / sum sparse)** | | | | | | | | " + " | ".join(
        f"{s[sp]['total_speedup']:.2f}x" for sp in SPARSITIES) + " |")
    lines.append("| **median over layers of best-of-runs ratios (load-robust)** | | | | | | | | " + " | ".join(
        f"{s[sp]['median_min_speedup']:.2f}x" for sp in SPARSITIES) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cfg", default="yolov5s.yaml")
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    layers = []
    for layer in conv_shapes(args.cfg, args.img, args.batch):
        row = bench_layer(layer, args.reps, gen)
        LOGGER.info("%4d->%-4d k%d s%d %-12s dense %7.2f ms | %s", row["cin"], row["cout"], row["k"], row["stride"],
                    "x".join(map(str, row["input"][2:])), row["dense_ms"],
                    "  ".join(f"{sp}: {v['ms']:.2f} ({v['speedup']:.2f}x)" for sp, v in row["sparse"].items()))
        layers.append(row)
    summary = {}
    for sp in SPARSITIES:
        ok = [r for r in layers if not math.isnan(r["sparse"][sp]["ms"])]
        summary[sp] = {
            "median_speedup": statistics.median(r["sparse"][sp]["speedup"] for r in ok) if ok else math.nan,
            "total_speedup": (sum(r["dense_ms"] * r["count"] for r in ok) / sum(r["sparse"][sp]["ms"] * r["count"] for r in ok))
            if ok else math.nan,
            "median_min_speedup": statistics.median(r["sparse"][sp]["min_speedup"] for r in ok) if ok else math.nan,
            "layers": len(ok),
        }
        LOGGER.info("%s: median speedup %.2fx over %d layers, time-weighted %.2fx", sp, summary[sp]["median_speedup"],
                    len(ok), summary[sp]["total_speedup"])
    from sparseyolo.sparse import _isa_name

    result = {
        "meta": {"machine": machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "img": args.img, "batch": args.batch, "reps": args.reps, "isa": _isa_name(),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": load_before,
                 "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
                 "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])},
        "layers": layers,
        "summary": summary,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    md = markdown(result)
    print(md)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
