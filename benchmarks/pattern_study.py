"""Accuracy and speed of each pruning method x pattern on held-out images, in one table and one plot.

For yolov5n (../shared/weights/yolov5n.pt): every variant is pruned with the ``sparseyolo prune`` command shown in
the table (calibrated on coco128's 128 train2017 images), scored on coco_val124 (124 held-out COCO val2017
images; YOLOv5 val.py settings: 640, conf 0.001, IoU 0.65; pycocotools AP beside it), its fp16 checkpoint
weighed, and timed by ``sparseyolo bench`` in bf16 on this CPU: ``sparsify(auto)`` through ``torch.compile``
against every dense runtime (the compiled dense bf16 model among them), interleaved in one process, speedup over
the fastest dense one. Masked fine-tunes made elsewhere (their commands in docs/results.md) join with
``--extra NAME=CHECKPOINT``; their size is that of the checkpoint saved in fp16.

Pruned checkpoints are kept in ``--work`` and reused when present (delete one to prune it again).

  python benchmarks/pattern_study.py --shared ../shared --work runs/pattern_study \\
      --extra "calibrated 2:4 + fine-tune (distilled)=runs/ft/nm24_kd/weights/last.pt" \\
      --out benchmarks/results/pattern_study_yolov5n
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_sparse_conv import machine  # noqa: E402

SPARSEGPT = ["--calib-solver", "sparsegpt"]
#: (name, file stem, ``sparseyolo prune`` options; None: the dense checkpoint itself, calibrated: uses --calibrate).
VARIANTS: tuple[tuple[str, str, list[str] | None], ...] = (
    ("dense", "dense", None),
    ("magnitude 2:4", "mag24", ["--nm", "2:4"]),
    ("magnitude 2:4 + permutation", "mag24p", ["--nm", "2:4", "--permute"]),
    ("calibrated 2:4", "nm24a", ["--calibrate", "{calib}", "--nm", "2:4"]),
    ("calibrated 2:4 + permutation", "nm24pa", ["--calibrate", "{calib}", "--nm", "2:4", "--permute"]),
    ("calibrated 2:4, blocks of 4", "nm24b4a", ["--calibrate", "{calib}", "--nm", "2:4", "--nm-block", "4"]),
    ("calibrated 2:4, blocks of 16", "nm24b16a", ["--calibrate", "{calib}", "--nm", "2:4", "--nm-block", "16"]),
    ("calibrated tiles 50%", "tile50a", ["--calibrate", "{calib}", "--method", "tile", "--amount", "0.5"]),
    # the same patterns with SparseGPT's masks (the default before ADMM)
    ("calibrated 2:4, SparseGPT", "nm24", ["--calibrate", "{calib}", "--nm", "2:4", *SPARSEGPT]),
    ("calibrated 2:4 + permutation, SparseGPT", "nm24p",
     ["--calibrate", "{calib}", "--nm", "2:4", "--permute", *SPARSEGPT]),
    ("calibrated 2:4, blocks of 4, SparseGPT", "nm24b4",
     ["--calibrate", "{calib}", "--nm", "2:4", "--nm-block", "4", *SPARSEGPT]),
    ("calibrated 2:4, blocks of 8, SparseGPT", "nm24b8",
     ["--calibrate", "{calib}", "--nm", "2:4", "--nm-block", "8", *SPARSEGPT]),
    ("calibrated 2:4, blocks of 16, SparseGPT", "nm24b16",
     ["--calibrate", "{calib}", "--nm", "2:4", "--nm-block", "16", *SPARSEGPT]),
    ("calibrated 2:4, blocks of 16 + permutation, SparseGPT", "nm24b16p",
     ["--calibrate", "{calib}", "--nm", "2:4", "--nm-block", "16", "--permute", *SPARSEGPT]),
    ("calibrated tiles 50%, SparseGPT", "tile50",
     ["--calibrate", "{calib}", "--method", "tile", "--amount", "0.5", *SPARSEGPT]),
    ("calibrated tiles 75%, SparseGPT", "tile75",
     ["--calibrate", "{calib}", "--method", "tile", "--amount", "0.75", *SPARSEGPT]),
)


def write_yamls(shared: Path, work: Path, names: list[str]) -> tuple[Path, Path]:
    """The calibration (coco128) and evaluation (coco_val124) data yamls."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib_coco128.yaml"
    calib.write_text(yaml.safe_dump({"path": str(shared.resolve() / "data"), "train": "coco128/images/train2017",
                                     "val": "coco128/images/train2017", "names": names}))
    val = work / "coco_val124.yaml"
    val.write_text(yaml.safe_dump({"path": str(shared.resolve() / "data" / "coco_val124"), "val": "images/val2017",
                                   "names": names}))
    return calib, val


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the project's shared folder")
    p.add_argument("--work", default="runs/pattern_study", help="pruned checkpoints and data yamls")
    p.add_argument("--out", default="benchmarks/results/pattern_study_yolov5n", help="writes OUT.json/.md/.png")
    p.add_argument("--only", nargs="+", default=None, metavar="STEM", help="variants by file stem (default all; dense is always in)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=CHECKPOINT", help="another checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=9, help="timed forwards per runtime (median)")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="accuracy and size only")
    args = p.parse_args(argv)

    from sparseyolo import val
    from sparseyolo.bench import run_bench
    from sparseyolo.checkpoint import load_model, save_checkpoint

    torch.set_num_threads(args.threads)
    shared, work = Path(args.shared), Path(args.work)
    weights = shared / "weights" / "yolov5n.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights} not found: --shared must point at the project's shared folder")
    calib, val_yaml = write_yamls(shared, work, list(load_model(weights, fuse=False).names))
    runs: list[tuple[str, Path, str]] = []
    for name, stem, opts in VARIANTS:
        if args.only and stem not in args.only and opts is not None:  # dense always: the reference
            continue
        ckpt = work / f"{stem}.pt"
        if opts is None:
            if not ckpt.is_file():
                save_checkpoint(load_model(weights, fuse=False).half(), ckpt)
            runs.append((name, ckpt, "the official checkpoint (saved fp16 by save_checkpoint for its size)"))
            continue
        opts = [o.format(calib=calib) for o in opts]
        cmd = [sys.executable, "-m", "sparseyolo", "prune", "--weights", str(weights), *opts, "--out", str(ckpt)]
        shown = "sparseyolo prune " + " ".join(shlex.quote(o) for o in opts).replace(str(calib), "coco128.yaml")
        if not ckpt.is_file():
            print(f"[{name}] {shown}", flush=True)
            t0 = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            print(f"[{name}] pruned in {time.time() - t0:.0f} s", flush=True)
        runs.append((name, ckpt, shown))
    sizes: dict[str, Path] = {}
    for i, spec in enumerate(args.extra):
        name, _, path = spec.partition("=")
        runs.append((name, Path(path), "see docs/results.md"))
        # a training checkpoint is float32: weigh the fp16 file a user would ship (masks kept, zeros compressed)
        sizes[name] = save_checkpoint(load_model(path, fuse=False).half(), work / f"extra{i}_fp16.pt")

    rows = []
    for name, ckpt, shown in runs:
        res = val.run(weights=str(ckpt), data=str(val_yaml), imgsz=640, batch_size=32, conf_thres=0.001,
                      iou_thres=0.65, device="cpu", workers=2, cocoeval=True, project=str(work / "val"))
        row = {"name": name, "checkpoint": str(ckpt), "command": shown, "map50_95": res.map, "map50": res.map50,
               "coco_ap": res.coco_stats[0] if res.coco_stats else None,
               "file_mb": sizes.get(name, ckpt).stat().st_size / 1e6}
        if args.bench:
            b = run_bench(str(ckpt), imgsz=640, batch=1, threads=args.threads, reps=args.reps, plots=False,
                          progress=False, dtype=torch.bfloat16)
            fastest = b.fastest_dense
            # the compiled auto model where there is one: the dense bar includes the compiled dense model
            auto = next((r for r in b.rows if r.name == "sparsify (auto) compiled"),
                        next((r for r in b.rows if r.name == "sparsify (auto)"), fastest))
            row.update(dense_runtime=fastest.name, dense_ms=fastest.ms, auto_ms=auto.ms, auto_note=auto.note,
                       speedup=fastest.ms / auto.ms, sparsity=b.sparsity,
                       rows={r.name: r.ms for r in b.rows})
        print(f"[{name}] mAP50-95 {res.map:.3f}" + (f", {row['speedup']:.2f}x" if args.bench else ""), flush=True)
        rows.append(row)

    dense = next(r for r in rows if r["name"] == "dense")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine(), "threads": args.threads, "reps": args.reps, "torch": torch.__version__,
            "command": "python benchmarks/pattern_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "date": time.strftime("%Y-%m-%d")}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, dense, meta))
    if args.bench:
        from sparseyolo.plots import plot_accuracy_vs_speed

        plot_accuracy_vs_speed([(r["name"], r["speedup"], r["map50_95"]) for r in rows if r is not dense],
                               dense["map50_95"], out.with_suffix(".png"),
                               title=f"yolov5n on coco_val124: accuracy vs speed ({args.threads} CPU threads, bf16)")
    print(out.with_suffix(".md").read_text())
    return 0


def markdown(rows: list[dict], dense: dict, meta: dict) -> str:
    bench = "speedup" in dense
    head = "| variant | mAP50-95 | of dense | COCO AP | file MB |"
    sep = "|---|---|---|---|---|"
    if bench:
        head += " fastest dense ms | sparsify(auto), compiled, ms | speedup |"
        sep += "---|---|---|"
    lines = [f"yolov5n, coco_val124 (124 held-out val2017 images), 640 px; {meta['machine']}, {meta['threads']} "
             f"threads, batch 1, bf16, medians of {meta['reps']}; {meta['date']}.", "", head, sep]
    for r in rows:
        ap = f"{r['coco_ap']:.3f}" if r["coco_ap"] is not None else "-"
        line = (f"| {r['name']} | {r['map50_95']:.3f} | {100 * r['map50_95'] / dense['map50_95']:.0f}% | {ap} | "
                f"{r['file_mb']:.2f} |")
        if bench:
            line += f" {r['dense_ms']:.1f} ({r['dense_runtime']}) | {r['auto_ms']:.1f} | {r['speedup']:.2f}x |"
        lines.append(line)
    lines += ["", "Commands (calibration on coco128's 128 images):", ""]
    lines += [f"- {r['name']}: `{r['command']}`" for r in rows]
    lines += ["", f"`{meta['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
