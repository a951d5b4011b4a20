"""What offering 2:4 shared by 32 output channels adds to ``--target-speedup``, with everything else held fixed.

Between two ``sparseyolo prune --target-speedup`` runs the whole-model anchors move by 10-25% on this VM (dense
yolov5n 24.7-31.9 ms), which changes how much each run must prune: comparing two runs compares their anchors as much
as their levels. Here one process measures the per-conv latencies, the anchors and the per-conv calibrated variants
ONCE, at every level, and then for each target searches two profiles on the same measurements: tile sparsities only,
and tiles plus ``2:4b32``. Each profile is pruned for real (calibrated, as the command does), evaluated on held-out
coco_val124, and all pruned models are compiled and timed interleaved with the dense one at the end.

    python benchmarks/experimental/profile_levels_ab.py --shared ../shared --targets 1.1 1.2 1.3 \\
        --out benchmarks/results/profile_levels_ab_yolov5n

About 25 minutes on 2 cores for three targets.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_sparse_conv import machine  # noqa: E402
from benchmarks.pattern_study import write_yamls  # noqa: E402

from sparseyolo import val  # noqa: E402
from sparseyolo.checkpoint import load_model, save_checkpoint  # noqa: E402
from sparseyolo.prune import select_layers  # noqa: E402
from sparseyolo.prune.calibrated import calibrated_prune, calibration_batches  # noqa: E402
from sparseyolo.prune.sensitivity import layer_variants, model_outputs, output_distortion  # noqa: E402
from sparseyolo.sparse.speedup_profile import (  # noqa: E402
    compiled_model_ms,
    layer_latencies,
    measure_anchors,
    search_profile,
)

TILES = (0.25, 0.5, 0.75)
OFFERS = {"tiles": TILES, "tiles + 2:4 b32": (*TILES, "2:4b32")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the project's shared folder")
    p.add_argument("--work", default="runs/profile_levels_ab", help="pruned checkpoints and data yamls")
    p.add_argument("--out", default="benchmarks/results/profile_levels_ab_yolov5n", help="writes OUT.md")
    p.add_argument("--targets", type=float, nargs="+", default=[1.1, 1.2, 1.3])
    p.add_argument("--images", type=int, default=64, help="calibration images (the first of coco128)")
    p.add_argument("--search-iters", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared, work = Path(args.shared), Path(args.work)
    weights = shared / "weights" / "yolov5n.pt"
    model = load_model(weights, fuse=False)
    calib, val_yaml = write_yamls(shared, work, list(model.names))
    batches = calibration_batches(str(calib), args.images, 640, 8, int(max(model.stride)))
    names = {name for name, _ in select_layers(model, "tile", 4)[0]}
    everything = OFFERS["tiles + 2:4 b32"]

    t0 = time.time()
    lat = layer_latencies(model, everything, names=names)
    anchors = measure_anchors(model, lat, max(TILES))
    variants = layer_variants(model, batches, everything, steps=3)
    print(f"measured in {time.time() - t0:.0f} s: dense {anchors.dense_ms:.2f} ms, kernel {anchors.kernel_ms:.2f} "
          f"ms, tiles 75% {anchors.sparse_ms:.2f} ms", flush=True)
    images = [b[0] if isinstance(b, (tuple, list)) else b for b in batches][:1]
    reference = model_outputs(model, images)

    def distortion(amounts):
        return output_distortion(variants.stitch(model, amounts), images, reference)

    rows, pruned = [], {}
    for target in args.targets:
        for offer, levels in OFFERS.items():
            keep = {0.0, *levels}
            lat_k = {n: replace(v, kernel_ms={k: ms for k, ms in v.kernel_ms.items() if k in keep})
                     for n, v in lat.items()}
            errs = {n: {k: e for k, e in by.items() if k in keep} for n, by in variants.errors.items()}
            prof = search_profile(lat_k, errs, anchors, target, distortion, iters=args.search_iters)
            m = copy.deepcopy(model)
            calibrated_prune(m, batches, amounts=prof.amounts(), method="tile", steps=3, progress=False)
            key = f"{target:g} {offer}"
            ckpt = save_checkpoint(copy.deepcopy(m).half(), work / f"t{target:g}_{len(levels)}levels.pt")
            res = val.run(weights=str(ckpt), data=str(val_yaml), imgsz=640, batch_size=32, conf_thres=0.001,
                          iou_thres=0.65, device="cpu", workers=2, project=str(work / "val"))
            counts: dict[str, int] = {}
            for r in prof.rows:
                counts[r.choice] = counts.get(r.choice, 0) + 1
            zeros = sum(int((~mod.weight_mask).sum()) for mod in m.modules() if hasattr(mod, "weight_mask"))
            total = sum(mod.weight.numel() for mod in m.modules() if hasattr(mod, "weight_mask"))
            rows.append(dict(key=key, target=target, offer=offer, predicted=prof.predicted_speedup,
                             distortion=prof.distortion, counts=counts, zero=zeros / max(total, 1), map=res.map))
            pruned[key] = m
            print(f"[{key}] predicted {prof.predicted_speedup:.2f}x, distortion {prof.distortion:.4f}, "
                  f"mAP50-95 {res.map:.3f}", flush=True)
    dense_map = val.run(weights=str(weights), data=str(val_yaml), imgsz=640, batch_size=32, conf_thres=0.001,
                        iou_thres=0.65, device="cpu", workers=2, project=str(work / "val")).map
    ms = compiled_model_ms({"dense": model, **pruned})
    lines = [f"yolov5n, `--target-speedup` profiles searched on ONE set of measurements (per-conv latencies, anchors "
             f"dense {anchors.dense_ms:.2f} / kernel at 0 {anchors.kernel_ms:.2f} / tiles 75% "
             f"{anchors.sparse_ms:.2f} ms, per-conv calibrated variants on the first {args.images} coco128 images), "
             f"with and without the 2:4 b32 level; each profile pruned (calibrated, ADMM) and evaluated on "
             f"coco_val124 (dense mAP50-95 {dense_map:.3f}); speed: all models compiled and timed interleaved "
             f"against the faster dense model (fp32 {ms['dense fp32']:.2f} ms, bf16 {ms['dense bf16']:.2f} ms). "
             f"{machine()}, {args.threads} threads, {time.strftime('%Y-%m-%d')}.", "",
             f"Command: `python benchmarks/experimental/profile_levels_ab.py "
             f"{' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}`", "",
             "| target | levels offered | profile | predicted | measured | output distortion | zero weights of the convs on the kernel | "
             "mAP50-95 (share of dense) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        profile = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()))
        lines.append(f"| {r['target']:g} | {r['offer']} | {profile} | {r['predicted']:.2f}x | "
                     f"{ms['dense'] / ms[r['key']]:.2f}x | {r['distortion']:.4f} | {100 * r['zero']:.1f}% | "
                     f"{r['map']:.3f} ({100 * r['map'] / dense_map:.0f}%) |")
    out = Path(args.out).with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# " + __doc__.splitlines()[0] + "\n\n" + "\n".join(lines) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
