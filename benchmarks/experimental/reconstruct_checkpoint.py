"""Stage reconstruction of a checkpoint that is already pruned (``sparseyolo prune --reconstruct`` does it while
pruning): the dense source the file records (``meta["pruning"]["source"]``, or ``--dense``), permuted as the file
records (``meta["channel_permutation"]``), is what each stage learns to reproduce on the calibration images.

    python benchmarks/experimental/reconstruct_checkpoint.py --weights t12.pt --data calib_coco128.yaml \\
        --images 128 --iters 300 --out t12_rec.pt

Then ``sparseyolo val --weights t12_rec.pt --data coco_val124.yaml ...`` as usual. Never pass the evaluation
images as ``--data``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sparseyolo.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from sparseyolo.prune.calibration_data import calibration_batches  # noqa: E402
from sparseyolo.prune.permute import apply_permutations  # noqa: E402
from sparseyolo.prune.reconstruct import reconstruct_stages  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="a pruned sparseyolo checkpoint")
    ap.add_argument("--dense", default=None, help="its unpruned source (default: the path the file records)")
    ap.add_argument("--data", required=True, help="data yaml of the calibration images (its train split)")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    meta = load_checkpoint(args.weights).meta
    source = args.dense or (meta.get("pruning") or {}).get("source")
    if not source:
        sys.exit(f"{args.weights} records no dense source; pass --dense")
    model = load_model(args.weights, fuse=False).float()
    dense = load_model(source, fuse=False).float()
    perms = meta.get("channel_permutation")
    if (meta.get("pruning") or {}).get("permute") and not perms:
        sys.exit(f"{args.weights} had its channels permuted (prune --permute) but does not record how: the dense "
                 "model cannot be put in its channel order; prune it again with this version")
    if perms:
        apply_permutations(dense, perms)
    t0 = time.perf_counter()
    batches = calibration_batches(args.data, args.images, args.img, args.batch, int(max(model.stride)))
    report = reconstruct_stages(model, dense, batches, iters=args.iters, lr=args.lr)
    print(report.table())
    meta = dict(meta)
    meta["pruning"] = {**meta.get("pruning", {}), "reconstruct": args.iters, "reconstruct_lr": args.lr}
    meta["reconstruction"] = {"data": str(args.data), "images": report.images, "img": args.img,
                              "minutes": round((time.perf_counter() - t0) / 60, 1)}
    path = save_checkpoint(model.half(), args.out, **meta)
    print(f"saved {path} ({(time.perf_counter() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    main()
