"""End to end on the CPU: YOLOv5n/s forward, dense PyTorch vs sparsified (2:4 and 75% global), batch 1 and 8.

Dense PyTorch is the BN-fused model (``DetectionModel.fuse()``) in channels-first and channels-last; the
faster is the baseline. Sparsified models are pruned (``prune(model, "nm", 2, 4)`` or
``prune(model, "global", 0.75)``, and 2:4 with masks shared by 4 output channels: ``block=4``) then converted by ``sparsify`` with ``backend="auto"`` (per layer, the
faster of dense and sparse, timed for the benchmarked input shape, then the fastest of that model, dense NCHW and
dense channels-last) and ``backend="sparse"`` (every pruned conv sparse). onnxruntime (dense, CPUExecutionProvider, same thread count) is the deployment baseline when
installed (``pip install sparseyolo[bench]``), NaN otherwise. Weights: ../shared/weights/<model>.pt when
present, else the config's random initialisation (speed does not depend on the values, but "75% global"
then distributes sparsity by the initial magnitudes). All variants of a (model, batch) are built first and then timed
round-robin, one forward each per round, ``--reps`` rounds after two warm-up forwards: medians. Interleaving
makes a change of machine load hit every variant alike.

  python benchmarks/bench_e2e_cpu.py --json benchmarks/results_e2e_cpu.json --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_sparse_conv import machine  # noqa: E402
from sparseyolo.bench import onnxruntime_session, time_round_robin  # noqa: E402
from sparseyolo.models import DetectionModel  # noqa: E402
from sparseyolo.prune import prune  # noqa: E402
from sparseyolo.sparse import sparsify, sparsify_report  # noqa: E402

LOGGER = logging.getLogger("bench_e2e_cpu")
SHARED = Path(os.environ.get("SPARSEYOLO_SHARED", ROOT.parent / "shared"))


def load(name: str) -> tuple[torch.nn.Module, str]:
    weights = SHARED / "weights" / f"{name}.pt"
    if weights.is_file():
        from sparseyolo import load_model

        return load_model(weights, fuse=False).eval(), str(weights.name)
    torch.manual_seed(0)
    return DetectionModel(f"{name}.yaml").eval(), "random init"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["yolov5n", "yolov5s"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = []
    for name in args.models:
        base, source = load(name)
        dense = copy.deepcopy(base).fuse().eval()
        pruned = {}
        for label, kw in (("2:4", dict(method="nm", n=2, m=4)), ("2:4 block4", dict(method="nm", n=2, m=4, block=4)),
                          ("75% global", dict(method="global", amount=0.75))):
            p = copy.deepcopy(base)
            prune(p, **kw)
            pruned[label] = p
        dense_cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
        for batch in args.batch:
            x = torch.rand(batch, 3, args.img, args.img)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            row = {"model": name, "weights": source, "batch": batch}
            # every variant is built first, then all are timed round-robin: load changes hit all alike
            variants = {"dense_cf": (dense, x), "dense_cl": (dense_cl, x_cl)}
            ort = onnxruntime_session(dense, x, torch.get_num_threads())
            if ort is not None:
                variants["onnxruntime"] = (ort, x)
            reports = {}
            for label, p in pruned.items():
                for backend in ("auto", "sparse"):
                    m = sparsify(p, backend=backend, example_input=x)
                    rep = sparsify_report(m)
                    xin = x_cl if rep.chosen == "dense_channels_last" else x
                    variants[f"{label} {backend}"] = (m, xin)
                    reports[f"{label} {backend}"] = rep
            times = time_round_robin(variants, args.reps)
            row["dense_cf_ms"], row["dense_cl_ms"] = times["dense_cf"], times["dense_cl"]
            row["dense_ms"] = min(row["dense_cf_ms"], row["dense_cl_ms"])
            row["onnxruntime_ms"] = times.get("onnxruntime", math.nan)
            for key, rep in reports.items():
                ms = times[key]
                row[key] = {"ms": ms, "speedup": row["dense_ms"] / ms, "sparse_layers": len(rep.sparse_layers),
                            "pruned_layers": len(rep.layers), "chosen": rep.chosen, "model_ms": rep.model_ms}
                if key.endswith("auto"):
                    row[key]["decisions"] = [
                        {"name": d.name, "weight": d.weight_shape, "input": d.input_shape, "sparsity": d.sparsity,
                         "dense_ms": d.dense_ms, "sparse_ms": d.sparse_ms, "backend": d.backend} for d in rep.layers]
            del variants
            LOGGER.info("%s b%d: dense %.1f ms (cf %.1f, cl %.1f), ort %.1f | %s", name, batch, row["dense_ms"],
                        row["dense_cf_ms"], row["dense_cl_ms"], row["onnxruntime_ms"],
                        "  ".join(f"{k}: {v['ms']:.1f} ({v['speedup']:.2f}x, {v['sparse_layers']}/{v['pruned_layers']})"
                                  for k, v in row.items() if isinstance(v, dict)))
            rows.append(row)
    meta = {"machine": machine(), "threads": torch.get_num_threads(), "torch": torch.__version__, "img": args.img,
            "reps": args.reps, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": load_before,
            "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}
    keys = ["2:4 auto", "2:4 sparse", "2:4 block4 auto", "2:4 block4 sparse", "75% global auto", "75% global sparse"]
    lines = [f"### End to end, cpu ({meta['machine']}, {meta['threads']} threads), {args.img}x{args.img}, {meta['date']}",
             "", f"torch {meta['torch']}; load average before/after: {meta['load_before']} / {meta['load_after']}; "
             f"medians of {args.reps} forwards.", f"Command: `{meta['command']}`", "",
             "| model (weights) | batch | dense ms (cf / cl) | onnxruntime ms | " + " | ".join(
                 f"{k} ms (speedup, sparse/pruned layers)" for k in keys) + " |",
             "|" + "---|" * (4 + len(keys))]
    for r in rows:
        lines.append(f"| {r['model']} ({r['weights']}) | {r['batch']} | {r['dense_cf_ms']:.1f} / {r['dense_cl_ms']:.1f} | "
                     f"{r['onnxruntime_ms']:.1f} | " + " | ".join(
                         f"{r[k]['ms']:.1f} ({r[k]['speedup']:.2f}x, {r[k]['sparse_layers']}/{r[k]['pruned_layers']}"
                         + (f"; returned {r[k]['chosen'].replace('_', ' ')}" if r[k].get("chosen") else "") + ")"
                         for k in keys) + " |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
