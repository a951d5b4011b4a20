"""Does a dense runtime's time depend on what ran just before it in the same process?

Dense yolov5n (BN folded) through PyTorch fp32 compiled (channels-last, ``compile_inference``), OpenVINO f32 and
onnxruntime fp32, 2 threads, 640x640. Each step prints a median of 25 calls:

* ``torch`` / ``ov`` / ``ort``: that runtime alone, back to back;
* ``rrsN``: the three round-robin, with N ms of sleep after each call (so spinning thread pools go idle first).

    python benchmarks/experimental/runtime_order_effect.py torch ov ort rrs0 rrs5 rrs20 torch

On the Xeon without AMX (2026-12-05), three processes: OpenVINO f32 26.4-26.6 ms alone, 32.5-34.0 ms round-robin
after each PyTorch-compiled call, 30.3-31.6 ms with 5-20 ms of sleep between calls; onnxruntime 24.9-26.3 ms alone,
26.2-27.5 ms round-robin; PyTorch fp32 compiled 31.0-35.6 ms alone in these processes, before any other runtime was
built.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sparseyolo.checkpoint import load_model  # noqa: E402
from sparseyolo.dense_runtimes import dense_runtimes  # noqa: E402
from sparseyolo.sparse import sparsify  # noqa: E402
from sparseyolo.sparse.compile import compile_inference  # noqa: E402
from sparseyolo.utils.timing import median_ms  # noqa: E402

WEIGHTS = ROOT.parent / "shared" / "weights" / "yolov5n.pt"
OV, ORT = "openvino f32", "onnxruntime fp32"


def main(steps: list[str]) -> None:
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    dense = sparsify(load_model(WEIGHTS), backend="dense").eval()
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    compiled = compile_inference(dense.to(memory_format=torch.channels_last))
    compiled(x_cl)
    runtimes = None
    calls = {"torch": lambda: compiled(x_cl)}
    for step in steps or ["torch", "ov", "ort", "rrs0", "rrs5", "rrs20", "torch"]:
        if step != "torch" and runtimes is None:  # built on first use: the first torch step runs without them
            runtimes = dense_runtimes(sparsify(load_model(WEIGHTS), backend="dense"), x, 2, (OV, ORT))
            calls.update(ov=runtimes[OV].run, ort=runtimes[ORT].run)
        if step in calls:
            print(f"{step} alone: {median_ms(calls[step], reps=25, warmup=0):.2f} ms", flush=True)
        elif step.startswith("rrs"):
            gap = float(step[3:]) / 1e3
            times: dict[str, list[float]] = {k: [] for k in ("torch", "ov", "ort")}
            for _ in range(25):
                for k in times:
                    t0 = time.perf_counter()
                    calls[k]()
                    times[k].append((time.perf_counter() - t0) * 1e3)
                    time.sleep(gap)
            print(f"round robin, {gap * 1e3:.0f} ms sleep after each call: "
                  + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in times.items()), flush=True)
        else:
            raise SystemExit(f"unknown step {step!r}: torch, ov, ort or rrsN (N ms of sleep)")


if __name__ == "__main__":
    main(sys.argv[1:])
