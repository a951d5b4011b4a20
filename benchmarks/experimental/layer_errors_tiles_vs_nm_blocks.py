"""Per conv, the calibrated relative output error of tile pruning against 2:4 shared by blocks of output channels.

Evidence for what a latency-aware profile (``sparseyolo prune --target-speedup``) could choose from on a CPU without
AMX, where the fp32 block kernel runs 2:4 shared by 32 output channels (twin blocks) faster than tiles 50%. Each
conv is pruned alone from the dense model's activations, as :func:`sparseyolo.prune.sensitivity.layer_variants` does
(ADMM masks, exact refit, the bias into a copy of its BatchNorm): tiles at 25/50/75% (3 steps, as the profile), and
2:4 shared by 16 and by 32 output channels. Errors are ``||W x - W' x||^2 / ||W x||^2`` on the calibration inputs.
A tile level that prunes nothing (a block's last tile is always kept) shows 0.

  python benchmarks/experimental/layer_errors_tiles_vs_nm_blocks.py --weights ../shared/weights/yolov5n.pt \\
      --data calib_coco128.yaml --images 64
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sparseyolo import load_model  # noqa: E402
from sparseyolo.prune.calibrated import calibration_batches  # noqa: E402
from sparseyolo.prune.calibration_data import as_float_images  # noqa: E402
from sparseyolo.prune.layerwise import HessianAccumulator, _row_weight, following_batchnorms, prune_layer  # noqa: E402
from sparseyolo.prune.methods import select_layers  # noqa: E402

VARIANTS = {
    "tiles 25%": dict(amount=0.25, tiles=True, steps=3),
    "tiles 50%": dict(amount=0.5, tiles=True, steps=3),
    "tiles 75%": dict(amount=0.75, tiles=True, steps=3),
    "2:4 b16": dict(n=2, m=4, block=16),
    "2:4 b32": dict(n=2, m=4, block=32),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True, help="data yaml whose train split gives the calibration images")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.weights, fuse=False).eval()
    batches = calibration_batches(args.data, args.images, args.img, 16, 32, split="train", workers=0)
    selected, _ = select_layers(model, "tile", 4, None, None, None)
    accs = {mod: HessianAccumulator(mod) for _, mod in selected}
    hooks = [mod.register_forward_pre_hook(lambda mod, a: accs[mod].add(a[0])) for mod in accs]
    param = next(model.parameters())
    with torch.no_grad():
        for b in batches:
            model(as_float_images(b[0] if isinstance(b, (tuple, list)) else b, param.device, param.dtype))
    for h in hooks:
        h.remove()
    bns = following_batchnorms(model)
    print(f"`python benchmarks/experimental/layer_errors_tiles_vs_nm_blocks.py {' '.join(argv or sys.argv[1:])}`\n")
    print("| conv | weight | " + " | ".join(VARIANTS) + " |")
    print("|---" * (2 + len(VARIANTS)) + "|")
    for name, mod in selected:
        acc = accs[mod]
        if acc.rows == 0:
            continue
        bn = bns.get(mod)
        errs = []
        for kw in VARIANTS.values():
            if "n" in kw and mod.weight.shape[1] % 4:
                errs.append("-")
                continue
            trial, trial_bn = copy.deepcopy(mod), copy.deepcopy(bn)
            acc.module = trial
            errs.append(f"{float(prune_layer(trial, acc, row_weight=_row_weight(bn), refit=True, bn=trial_bn, **kw)):.4f}")
        print(f"| {name} | {'x'.join(map(str, mod.weight.shape))} | " + " | ".join(errs) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
