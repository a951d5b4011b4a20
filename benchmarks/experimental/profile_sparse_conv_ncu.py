"""Hardware counters of cuDNN and each 2:4 kernel on a few yolov5x layers, through Nsight Compute (ncu).

Timing says which kernel is faster; the counters say why one is slow: how busy the tensor pipes, L2 and DRAM
are, the occupancy reached, and where warps wait (barrier, long scoreboard, MIO throttle, ...). One call of each
method per layer is profiled, after a warm-up, between cudaProfilerStart/Stop:

    ncu --clock-control none --profile-from-start off --section SpeedOfLight ... --export prof \\
        python benchmarks/experimental/profile_sparse_conv_ncu.py [--layers 320,320,3,1,40,40 ...] [--wgmma]
    ncu --import prof.ncu-rep --csv --page raw --print-units base > prof.csv
    python benchmarks/experimental/profile_sparse_conv_ncu.py --summarize prof.csv > prof.md

(benchmarks/device_check.sh runs all three.) Without ncu the script only runs the calls; the start/stop marks
then do nothing. --summarize needs no GPU.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Default layers (Cin, Cout, k, stride, H, W of the input; yolov5x at 640): the large 3x3 that occurs most (20
# times), and the mid-sized 1x1 that occurs most (12 times), where the first H200 run had tile64 at 0.44x / 1.33x.
DEFAULT_LAYERS = ["320,320,3,1,40,40", "160,160,1,1,80,80"]

# (label, ncu raw metric name) for the summary table; a metric the run did not collect reads n/a.
COLUMNS = [
    ("us", "gpu__time_duration.sum"),
    ("SM %", "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("mem %", "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"),
    ("L2 %", "lts__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("DRAM GB/s", "dram__bytes.sum.per_second"),
    ("L2 hit %", "lts__t_sector_hit_rate.pct"),
    ("occupancy %", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    ("regs", "launch__registers_per_thread"),
]
TENSOR_PIPE = re.compile(r"^sm__pipe_tensor.*cycles_active.*pct_of_peak_sustained_active$")
# Warp stall reasons, in cycles per issued instruction (WarpStateStats); the older latency family if that is absent.
STALL = re.compile(r"^smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio$")
STALL_FALLBACK = re.compile(r"^smsp__average_warp_latency_issue_stalled_(\w+?)\.ratio$")


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return math.nan


def _short(name: str) -> str:
    name = re.sub(r"sparseyolo::kernels::(spconv24::)?", "", name)
    name = re.sub(r"\(.*\)$", "", name.replace("void ", "")).strip()
    return name if len(name) <= 90 else name[:87] + "..."


def summarize(csv_text: str) -> str:
    """Markdown table of an ``ncu --csv --page raw`` export: one row per profiled kernel, in launch order."""
    rows = list(csv.reader(io.StringIO(csv_text)))
    start = next((i for i, r in enumerate(rows) if r[:1] == ["ID"]), None)
    if start is None:
        return "no ncu raw CSV header (a line starting with \"ID\") found\n"
    header = rows[start]
    col = {name: i for i, name in enumerate(header)}
    data = [r for r in rows[start + 1:] if len(r) == len(header) and r[0].strip().isdigit()]  # skips the units row
    if not data:
        return "ncu profiled no kernel\n"
    pipes = [n for n in header if TENSOR_PIPE.match(n)]
    stalls = {m.group(1): n for n in header if (m := STALL.match(n))} or {
        m.group(1): n for n in header if (m := STALL_FALLBACK.match(n))}
    lines = ["| # | kernel | grid | block | " + " | ".join(c for c, _ in COLUMNS) + " | tensor pipe % | top stalls "
             "(cycles per issued instruction) |", "|" + "---|" * (len(COLUMNS) + 6)]
    for r in data:
        def get(metric: str) -> float:
            return _number(r[col[metric]]) if metric in col else math.nan

        cells = []
        for label, metric in COLUMNS:
            v = get(metric)
            if label == "us":
                v = v / 1e3  # base unit: nanoseconds
            elif label == "DRAM GB/s":
                v = v / 1e9  # base unit: bytes per second
            cells.append("n/a" if v != v else f"{v:.0f}" if label in ("regs", "DRAM GB/s") else f"{v:.1f}")
        pipe = max((get(p) for p in pipes), default=math.nan)
        top = sorted(((get(n), reason) for reason, n in stalls.items() if get(n) == get(n)), reverse=True)[:4]
        kernel = r[col["Kernel Name"]] if "Kernel Name" in col else "?"
        grid = r[col["Grid Size"]] if "Grid Size" in col else "?"
        block = r[col["Block Size"]] if "Block Size" in col else "?"
        lines.append(f"| {r[0]} | `{_short(kernel)}` | {grid} | {block} | " + " | ".join(cells) + " | "
                     + ("n/a" if pipe != pipe else f"{pipe:.1f}") + " | "
                     + (", ".join(f"{reason} {v:.1f}" for v, reason in top) or "n/a") + " |")
    return "\n".join(lines) + "\n"


def profile(layers: list[str], batch: int, wgmma: bool) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_sparse_conv_cuda import MMA_SP_METHODS  # the kernel each backend names ("default": tile64)

    from sparseyolo import ops
    from sparseyolo.sparse import pack_mma_sp_weight

    kernels = list(MMA_SP_METHODS.values())
    hopper = torch.cuda.get_device_capability() == (9, 0)
    kernels = [k for k in kernels if "wgmma" not in k or (wgmma and hopper)]  # wgmma last: a fault ends the run
    torch.backends.cudnn.benchmark = True
    for spec in layers:
        cin, cout, k, stride, h, w = (int(v) for v in spec.split(","))
        pad = k // 2
        torch.manual_seed(0)
        wt = torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k)
        wt = wt * ops.nm_mask(wt, 2, 4)
        wd = wt.to("cuda", torch.float16).contiguous(memory_format=torch.channels_last)
        bias = torch.randn(cout, device="cuda")
        bias_h = bias.half()
        packed = pack_mma_sp_weight(wt, dtype=torch.float16).to("cuda")
        x = torch.randn(batch, cin, h, w, device="cuda", dtype=torch.float16).contiguous(
            memory_format=torch.channels_last)
        methods = {"dense": lambda: F.silu(F.conv2d(x, wd, bias_h, stride, pad), inplace=True)}
        for kern in kernels:
            methods[kern] = lambda kern=kern: ops.sparse_conv2d_24(x, packed.values, packed.meta, cout, k, bias,
                                                                   stride, pad, "silu", kernel=kern)
        for name, fn in methods.items():
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
            fn()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            print(f"profiled {spec} batch {batch}: {name}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS, help="Cin,Cout,k,stride,H,W (padding k // 2)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--wgmma", action="store_true", help="also the wgmma kernels (sm_90a; run them last)")
    ap.add_argument("--summarize", type=Path, default=None, metavar="CSV",
                    help="no run: print the markdown summary of an ncu --csv --page raw export")
    args = ap.parse_args()
    if args.summarize:
        print(summarize(args.summarize.read_text(errors="replace")), end="")
        return
    profile(args.layers, args.batch, args.wgmma)


if __name__ == "__main__":
    main()
