"""Entry point of test_train_ddp.py, run by ``python -m torch.distributed.run``: a few DDP steps, then each rank
writes the hash of its weights and masks to OUT/rank{RANK}.json."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from sparseyolo.train import PruneRecipe, TrainConfig, train


def main() -> None:
    weights, data, out, method = sys.argv[1:5]
    out = Path(out)
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    if method == "nm":
        recipe = PruneRecipe(method="nm", n=2, m=4)
    else:  # gradual per-layer unstructured, masks growing during the run
        recipe = PruneRecipe(method="l1", amount=0.5, gradual=True, start=0, end=1)
    cfg = TrainConfig(
        weights=weights,
        data=data,
        epochs=1,
        imgsz=128,
        batch_size=2,
        nbs=2,
        warmup_epochs=0,
        workers=0,
        project=str(out / "runs"),
        prune=recipe,
        noval=True,
        max_batches=2,
    )
    violations, steps = [], [0]

    def check(model, ema, step):
        for which, net in (("model", model), ("ema", ema.ema if ema is not None else None)):
            for name, m in net.named_modules() if net is not None else ():
                if hasattr(m, "weight_mask") and (m.weight[~m.weight_mask] != 0).any():
                    violations.append(f"step {step} {which} {name}")
        steps[0] = step

    r = train(cfg, step_callback=check)
    masks = [m.weight_mask for m in r.model.modules() if hasattr(m, "weight_mask")]
    weights = hashlib.sha256()
    for k, v in r.model.named_parameters():
        weights.update(k.encode() + v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    report = {
        "weights": weights.hexdigest(),
        "masks": hashlib.sha256(b"".join(m.numpy().tobytes() for m in masks)).hexdigest(),
        "n_masks": len(masks),
        "sparsity": sum(int((~m).sum()) for m in masks) / max(1, sum(m.numel() for m in masks)),
        "violations": violations,
        "steps": steps[0],
        "last_exists": r.last.exists(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
