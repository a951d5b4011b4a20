"""Layer by layer: how much output error each calibrated-pruning solver leaves, on the same input statistics.

Every conv of a model is pruned alone (on the unpruned model's inputs, so both solvers see identical statistics)
by ``prune_layer`` with ``solver="sparsegpt"`` and with ``solver="admm"``, each followed by the same exact refit
with a bias; the table gives each layer's relative output error ``||W x - W' x - b||^2 / ||W x||^2`` on the
calibration images and the time each solver took. This isolates the mask choice: the refit is the same, so any
difference is the mask. The end-to-end effect (held-out mAP of whole pruned models) is in docs/results.md.

  python benchmarks/calib_solvers.py --weights ../shared/weights/yolov5n.pt --data coco128.yaml --nm 2:4 \\
      --out benchmarks/results/calib_solvers_yolov5n_2-4
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_sparse_conv import machine  # noqa: E402

SOLVERS = ("sparsegpt", "admm")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True, help="data yaml whose train split gives the calibration images")
    p.add_argument("--images", type=int, default=128, help="calibration images (first in file order)")
    p.add_argument("--img", type=int, default=640)
    p.add_argument("--nm", default=None, metavar="N:M", help="N:M pattern (default 2:4 unless --method tile)")
    p.add_argument("--nm-block", type=int, default=1, metavar="B", help="output channels sharing an N:M choice")
    p.add_argument("--method", choices=["nm", "tile"], default="nm")
    p.add_argument("--amount", type=float, default=0.5, help="--method tile: share of tiles pruned")
    p.add_argument("--include", nargs="+", default=None, metavar="PATTERN", help="only layers matching these")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)

    from sparseyolo.checkpoint import load_model
    from sparseyolo.prune import select_layers
    from sparseyolo.prune.calibration_data import as_float_images, calibration_batches
    from sparseyolo.prune.config import parse_nm
    from sparseyolo.prune.layerwise import HessianAccumulator, _row_weight, following_batchnorms, prune_layer

    torch.set_num_threads(args.threads)
    n, m = parse_nm(args.nm or "2:4")
    model = load_model(args.weights, fuse=False).float().eval()
    stride = int(max(getattr(model, "stride", torch.tensor([32])).max(), 32))
    batches = calibration_batches(args.data, args.images, args.img, 8, stride)
    selected, _ = select_layers(model, args.method, m, include=args.include)
    accs = {mod: HessianAccumulator(mod) for _, mod in selected}
    hooks = [mod.register_forward_pre_hook(lambda mod, a: accs[mod].add(a[0])) for mod in accs]
    with torch.no_grad():
        for x in batches:
            model(as_float_images(x))
    for h in hooks:
        h.remove()
    bns = following_batchnorms(model)

    rows = []
    for name, mod in selected:
        row = {"layer": name, "shape": list(mod.weight.shape)}
        for solver in SOLVERS:
            trial, bn = copy.deepcopy(mod), copy.deepcopy(bns.get(mod))
            accs[mod].module = trial
            t0 = time.perf_counter()
            if args.method == "tile":
                err = prune_layer(trial, accs[mod], amount=args.amount, tiles=True, steps=3, bn=bn,
                                  row_weight=_row_weight(bns.get(mod)), solver=solver)
            else:
                err = prune_layer(trial, accs[mod], n=n, m=m, block=args.nm_block, bn=bn, solver=solver)
            row[solver] = float(err)
            row[f"{solver}_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{name:24s} {str(tuple(mod.weight.shape)):20s} sparsegpt {row['sparsegpt']:.5f}  admm {row['admm']:.5f}"
              f"  ({row['admm'] / max(row['sparsegpt'], 1e-30):.3f})", flush=True)

    pattern = f"tiles {args.amount:g}" if args.method == "tile" else f"{n}:{m}" + (
        f", blocks of {args.nm_block}" if args.nm_block > 1 else "")
    ratios = [r["admm"] / r["sparsegpt"] for r in rows if r["sparsegpt"] > 0]
    summary = {
        "pattern": pattern, "layers": len(rows),
        "total": {s: sum(r[s] for r in rows) for s in SOLVERS},
        "seconds": {s: sum(r[f"{s}_s"] for r in rows) for s in SOLVERS},
        "median_ratio": statistics.median(ratios), "admm_lower": sum(x < 1 for x in ratios),
    }
    meta = {"machine": machine(), "threads": args.threads, "torch": torch.__version__, "images": args.images,
            "command": "python benchmarks/calib_solvers.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "date": time.strftime("%Y-%m-%d")}
    lines = [f"{Path(args.weights).name}, {pattern}, {args.images} calibration images at {args.img}; {meta['machine']},"
             f" {args.threads} threads; {meta['date']}.", "", f"`{meta['command']}`", "",
             "| solver | summed relative error over the layers | time (s) |", "|---|---|---|"]
    lines += [f"| {s} | {summary['total'][s]:.4f} | {summary['seconds'][s]:.1f} |" for s in SOLVERS]
    lines += ["", f"ADMM's error is lower in {summary['admm_lower']} of {len(ratios)} layers; median ratio admm / "
              f"sparsegpt {summary['median_ratio']:.3f}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
        out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
