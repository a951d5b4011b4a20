"""Page faults per forward and time of a PyTorch-compiled model under glibc's default allocator and with
``sparseyolo.reuse_freed_memory()``: yolov5n dense and 2:4 shared by 32 output channels (magnitude-pruned, the fp32
block kernel), both compiled, in one process, rounds of one untimed and two timed forwards each.

Run it a few times each way (the default allocator's cost varies from process to process):

    for i in 1 2 3; do python benchmarks/experimental/allocator_page_faults.py --malloc default; done
    for i in 1 2 3; do python benchmarks/experimental/allocator_page_faults.py --malloc reuse; done
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sparseyolo import load_model, reuse_freed_memory  # noqa: E402
from sparseyolo.prune import prune  # noqa: E402
from sparseyolo.sparse import sparsify  # noqa: E402
from sparseyolo.sparse.compile import compile_inference  # noqa: E402

SHARED = Path(os.environ.get("SPARSEYOLO_SHARED", ROOT.parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--malloc", choices=("reuse", "default"), default="default")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.malloc == "reuse" and not reuse_freed_memory():
        sys.exit("reuse_freed_memory: the C library is not glibc")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    base = load_model(SHARED / "weights" / "yolov5n.pt", fuse=False).eval()
    x = torch.rand(1, 3, 640, 640).contiguous(memory_format=torch.channels_last)
    pruned = copy.deepcopy(base)
    prune(pruned, method="nm", n=2, m=4, block=32, exclude=["model.0.*", "model.24.*"])
    models = {"dense": compile_inference(sparsify(base, backend="dense")),
              "2:4 b32": compile_inference(sparsify(pruned, backend="cpu_block", example_input=x))}
    ms = {k: [] for k in models}
    faults = dict.fromkeys(models, 0)
    with torch.no_grad():
        for run in models.values():
            for _ in range(3):
                run(x)
        for _ in range(args.rounds):
            for name, run in models.items():
                run(x)  # untimed: after the other model's forward
                for _ in range(2):
                    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    t0 = time.perf_counter()
                    run(x)
                    ms[name].append((time.perf_counter() - t0) * 1e3)
                    faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    print(f"malloc {args.malloc}: " + "; ".join(
        f"{k} {statistics.median(v):.1f} ms, {faults[k] / len(v):.0f} page faults per forward" for k, v in ms.items()))


if __name__ == "__main__":
    main()
