"""End to end on the CPU: pruned YOLOv5 through ``sparsify`` against every dense runtime a user could pick instead.

Per model and batch, all in one process and timed round-robin (``--burst`` forwards of each variant per round, all
but the first timed, ``--reps`` rounds after two warm-up forwards; medians), so a change of machine load hits every
variant alike:

* the dense runtimes of :mod:`sparseyolo.dense_runtimes` on the BN-folded model: PyTorch fp32 (NCHW and
  channels-last), PyTorch bf16 autocast channels-last, with ``--compile 1`` the fp32 and the bf16 model through
  torch.compile, onnxruntime fp32, OpenVINO (its default precision on this CPU, bf16 where it has bf16) and
  OpenVINO f32; a runtime that is not installed is a row that says so;
* pruned models converted by ``sparsify`` in fp32 and bf16: 2:4 masks shared by 16 output channels
  (``prune(..., "nm", block=16)``), and tile pruning at 0%, 50% and 75% (``prune(..., "tile", amount)``: whole
  16 x 32 tiles of a tap, the unit the AMX kernel skips, and 32 whole input rows of a block of 16 output channels
  for the fp32 and the bf16 pair kernels), tiles of 32 x 32 at 75% (``block=32``: two neighbouring blocks
  pruned alike, run as twins without AMX), each with ``backend="auto"`` (per layer the fastest backend timed for
  this input, then the whole-model check) and with the block-sparse backend forced on every pruned conv
  (``cpu_block``, or ``cpu_block_tiles`` for tiles in bf16); ``tiles 0%``: no tile pruned, the kernel doing the
  dense model's work, which tells the kernel's own gain (its fused epilogue) from the gain of skipping tiles;
* with ``--compile 1``, each sparse model also through the same torch.compile as the dense rows (``... compiled``).

``--processes K`` runs the whole measurement in K fresh processes, one after another, and reports per variant the
median of its times and the median (and range) of its per-process ratio to that process's fastest dense runtime.
With glibc's default allocator the PyTorch models, dense and sparse alike, fault the pages of many activations in
again on every forward (5-6 ms of yolov5n's 24-30 ms), more or less in each process, while onnxruntime and OpenVINO
keep their own arenas: ``--malloc reuse`` (the default, as the ``sparseyolo`` command sets it) keeps freed blocks
in the heap (:mod:`sparseyolo.utils.memory`); ``--malloc default`` measures the allocator as it is. ``--burst K``
times K-1 forwards after an untimed one per variant and round, so that no variant is timed right after another's.

The stem (3 input channels) and the Detect head stay dense (``exclude``). Speedups are against the fastest dense
runtime of the same run. Weights: ../shared/weights/<model>.pt when present, else the config's random initialisation
(speed does not depend on the values; ``auto``'s choices can).

  python benchmarks/bench_e2e_cpu.py --threads 2 --json benchmarks/results/e2e_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_sparse_conv import machine  # noqa: E402
from sparseyolo import ops  # noqa: E402
from sparseyolo.dense_runtimes import COMPILED_RUNTIMES, DENSE_RUNTIMES, dense_runtimes, fastest  # noqa: E402
from sparseyolo.models import DetectionModel  # noqa: E402
from sparseyolo.prune import prune  # noqa: E402
from sparseyolo.sparse import sparsify, sparsify_report  # noqa: E402
from sparseyolo.sparse.compile import compile_inference  # noqa: E402
from sparseyolo.utils.memory import reuse_freed_memory  # noqa: E402
from sparseyolo.utils.timing import time_round_robin  # noqa: E402

LOGGER = logging.getLogger("bench_e2e_cpu")
SHARED = Path(os.environ.get("SPARSEYOLO_SHARED", ROOT.parent / "shared"))
EXCLUDE = ["model.0.*", "model.24.*"]  # the stem (Cin = 3) and the Detect head stay dense
FP32, BF16 = torch.float32, torch.bfloat16
PATTERNS = {  # label -> (prune kwargs, {dtype: backend forced on every pruned conv})
    # no tile pruned: the kernel doing the dense work, to tell its own gain (epilogue, fusion) from sparsity's
    "tiles 0%": (dict(method="tile", amount=0.0), {FP32: "cpu_block", BF16: "cpu_block_tiles"}),
    "2:4 b16": (dict(method="nm", n=2, m=4, block=16), {FP32: "cpu_block", BF16: "cpu_block"}),
    # shared by 32 output channels: neighbouring blocks of the kernel run as twins (two weight vectors per broadcast)
    "2:4 b32": (dict(method="nm", n=2, m=4, block=32), {FP32: "cpu_block", BF16: "cpu_block"}),
    "tiles 50%": (dict(method="tile", amount=0.5), {FP32: "cpu_block", BF16: "cpu_block_tiles"}),
    "tiles 75%": (dict(method="tile", amount=0.75), {FP32: "cpu_block", BF16: "cpu_block_tiles"}),
    # 32 x 32 tiles: two neighbouring blocks pruned alike, which the kernel without AMX runs as twins
    "tiles32 75%": (dict(method="tile", amount=0.75, block=32), {FP32: "cpu_block", BF16: "cpu_block_tiles"}),
}


def load(name: str) -> tuple[torch.nn.Module, str]:
    weights = SHARED / "weights" / f"{name}.pt"
    if weights.is_file():
        from sparseyolo import load_model

        return load_model(weights, fuse=False).eval(), str(weights.name)
    torch.manual_seed(0)
    return DetectionModel(f"{name}.yaml").eval(), "random init"


def sparse_variants(base: torch.nn.Module, x: torch.Tensor, compiled: bool,
                    patterns: list[str] | None = None) -> tuple[dict, dict]:
    fns, notes = {}, {}
    for label, (kw, forced_by_dtype) in PATTERNS.items():
        if patterns is not None and label not in patterns:
            continue
        pruned = copy.deepcopy(base)
        prune(pruned, exclude=EXCLUDE, **kw)
        for dtype, forced in forced_by_dtype.items():
            xin = x.to(dtype).contiguous(memory_format=torch.channels_last)
            tag = "fp32" if dtype == torch.float32 else "bf16"
            for backend in ("auto", forced):
                m = sparsify(pruned, backend=backend, dtype=dtype, example_input=xin)
                rep = sparsify_report(m)
                key = f"{label} {tag} {backend}"
                xm = xin.contiguous(memory_format=rep.memory_format)  # the layout its layers read
                fns[key] = (lambda m=m, xm=xm: m(xm))
                notes[key] = (f"{len(rep.sparse_layers)}/{len(rep.layers)} sparse"
                              + (f", returned {rep.chosen}" if rep.chosen else ""))
                if compiled:
                    run = compile_inference(m)
                    run(xm)  # compiles
                    fns[key + " compiled"] = (lambda run=run, xm=xm: run(xm))
                    notes[key + " compiled"] = notes[key] + "; torch.compile (inductor, freezing)"
    return fns, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["yolov5n", "yolov5s"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", type=int, default=1, choices=(0, 1),
                    help="1: also the compiled rows (dense fp32 and bf16 and every sparse model through "
                         "torch.compile; ~25 s of compiling per model on 2 cores)")
    ap.add_argument("--patterns", nargs="+", choices=list(PATTERNS), default=None,
                    help="the pruning patterns to time (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="write the table to this file")
    ap.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                    help="reuse: glibc keeps freed activations for reuse, as the sparseyolo command sets it "
                         "(sparseyolo.reuse_freed_memory); default: the allocator as it is (pages faulted in on every "
                         "forward)")
    ap.add_argument("--burst", type=int, default=2,
                    help="calls of a variant back to back per round; the first of each burst is not timed "
                         "(removes the effect of the variant before it; default 2; 1: one timed call per round, "
                         "right after another variant's)")
    ap.add_argument("--processes", type=int, default=1,
                    help="repeat the whole measurement in this many fresh processes and report medians over them")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.processes < 1:
        ap.error("--processes must be at least 1")
    if args.burst < 1:
        ap.error("--burst must be at least 1")
    if args.processes > 1:
        return _over_processes(args, argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.malloc == "reuse" and not reuse_freed_memory():
        LOGGER.warning("--malloc reuse: not glibc, the allocator is left as it is")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = []
    for name in args.models:
        base, source = load(name)
        dense = sparsify(base, backend="dense")
        for batch in args.batch:
            x = torch.rand(batch, 3, args.img, args.img)
            runtimes = dense_runtimes(dense, x, names=DENSE_RUNTIMES if args.compile else
                                      tuple(n for n in DENSE_RUNTIMES if n not in COMPILED_RUNTIMES))
            fns = {k: r.run for k, r in runtimes.items() if r.run is not None}
            notes = {k: r.note for k, r in runtimes.items()}
            sfns, snotes = sparse_variants(base, x, args.compile, args.patterns)
            fns.update(sfns)
            notes.update(snotes)
            with torch.no_grad():
                times = time_round_robin({k: (lambda _x, f=f: f(), None) for k, f in fns.items()}, args.reps,
                                         burst=args.burst)
            dense_ms = {k: times.get(k, math.nan) for k in runtimes}
            best_name, best_ms = fastest(dense_ms)
            rows.append({"model": name, "weights": source, "batch": batch, "ms": {k: times.get(k, math.nan)
                                                                              for k in notes},
                         "notes": notes, "fastest_dense": best_name, "fastest_dense_ms": best_ms})
            LOGGER.warning("%s b%d: fastest dense %s %.1f ms", name, batch, best_name, best_ms)
    meta = {"machine": machine(), "isa": ops.cpu_isa(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "img": args.img, "reps": args.reps, "burst": args.burst, "malloc": args.malloc,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_before": load_before, "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "command": "python benchmarks/bench_e2e_cpu.py " + shlex.join(argv)}
    _write(args, meta, rows)
    return 0


def _write(args: argparse.Namespace, meta: dict, rows: list[dict]) -> None:
    """Print the table (and write ``--json`` / ``--markdown``)."""
    processes = meta.get("processes", 1)
    rounds = (f"{args.reps} round-robin forwards" if args.burst == 1 else
              f"{args.reps} round-robin bursts of {args.burst} forwards (the first of each untimed)")
    rounds += "; malloc " + meta.get("malloc", "default")
    how = (f"medians of {rounds}" if processes == 1 else
           (f"{processes} processes, each timing {rounds}; ms: median over the processes of "
            f"each one's median; ratio: median (range) over the processes of each one's ratio to its fastest dense "
            f"runtime"))
    lines = [f"Machine: {meta['machine']}; CPU path {meta['isa']}; {meta['threads']} threads; {args.img}x{args.img}; "
             f"torch {meta['torch']}; load average before/after {meta['load_before']} / {meta['load_after']}; "
             f"{how}; {meta['date']}.", f"Command: `{meta['command']}`", ""]
    for r in rows:
        lines += [f"**{r['model']} ({r['weights']}), batch {r['batch']}**: fastest dense runtime "
                  f"{r['fastest_dense']} {r['fastest_dense_ms']:.1f} ms", ""]
        if processes == 1:
            lines += ["| variant | ms | vs fastest dense | note |", "|---|---|---|---|"]
            for k, ms in r["ms"].items():
                ratio = r["fastest_dense_ms"] / ms if ms == ms else math.nan
                lines.append(f"| {k} | {ms:.1f} | {ratio:.2f}x | {r['notes'][k]} |")
        else:
            lines += ["| variant | ms | vs fastest dense | range over processes | note |", "|---|---|---|---|---|"]
            for k, ms in r["ms"].items():
                lo, mid, hi = r["ratio_range"][k]
                lines.append(f"| {k} | {ms:.1f} | {mid:.2f}x | {lo:.2f}-{hi:.2f}x | {r['notes'][k]} |")
        lines.append("")
    md = "\n".join(lines)
    print(md)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.write_text(md + "\n")


def _nanmedian(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def merge_processes(runs: list[dict]) -> list[dict]:
    """One row per (model, batch) from several processes' JSON rows: each variant's median ms, and the median and
    range of its ratio to the fastest dense runtime of the same process (``ratio_range``: ``(min, median, max)``)."""
    merged = []
    for i, first in enumerate(runs[0]["rows"]):
        rows = [run["rows"][i] for run in runs]
        ms = {k: _nanmedian([r["ms"].get(k, math.nan) for r in rows]) for k in first["ms"]}
        ratio_range = {}
        for k in first["ms"]:
            ratios = [r["fastest_dense_ms"] / r["ms"][k] for r in rows if not math.isnan(r["ms"].get(k, math.nan))]
            ratio_range[k] = (min(ratios), statistics.median(ratios), max(ratios)) if ratios else (math.nan,) * 3
        dense_ms = {k: ms[k] for k in first["ms"] if k in DENSE_RUNTIMES}
        best_name, best_ms = fastest(dense_ms)
        merged.append({**{k: first[k] for k in ("model", "weights", "batch", "notes")}, "ms": ms,
                       "ratio_range": ratio_range, "fastest_dense": best_name, "fastest_dense_ms": best_ms,
                       "per_process": [{"ms": r["ms"], "fastest_dense": r["fastest_dense"]} for r in rows]})
    return merged


def _over_processes(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this script ``args.processes`` times in fresh processes and report the medians over them."""
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = Path(tmp) / f"run{i}"
            # argparse keeps an option's last value: the child runs once and writes its files here, not the parent's
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--processes", "1",
                   "--json", str(out.with_suffix(".json")), "--markdown", str(out.with_suffix(".md"))]
            LOGGER.warning("process %d of %d: %s", i + 1, args.processes, shlex.join(cmd))
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            runs.append(json.loads(out.with_suffix(".json").read_text()))
    meta = {**runs[-1]["meta"], "processes": args.processes, "load_before": load_before,
            "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "command": "python benchmarks/bench_e2e_cpu.py " + shlex.join(argv)}
    _write(args, meta, merge_processes(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
