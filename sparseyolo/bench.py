"""``sparseyolo bench``: how fast one checkpoint runs dense and sparsified, on this machine.

Times a forward pass of the checkpoint several ways on the same random input. Every variant has its BatchNorms
folded, and the dense ones run the model as pruned: zeros multiplied.

* ``dense (NCHW)`` and ``dense (channels_last)``: PyTorch's own kernels (oneDNN on CPU, cuDNN on GPU);
* ``onnxruntime (dense)``: the same dense model exported to ONNX, CPU only, when onnxruntime is installed
  (``pip install .[bench]``). It is the deployment baseline a user would otherwise reach for;
* ``sparsify (sparse)``: every eligible pruned conv on the sparse kernel;
* ``sparsify (auto)``: what :func:`sparseyolo.sparsify` returns: per layer the faster path, and then the fastest
  of that model, dense NCHW and dense channels-last.

Speedups are against the faster of the two dense PyTorch variants. Medians of ``reps`` timed forwards after
warm-up, interleaved round-robin so that a change in machine load hits every variant alike.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from sparseyolo.utils.errors import ParameterError

LOGGER = logging.getLogger(__name__)


@dataclass
class BenchRow:
    """One timed variant."""

    name: str
    ms: float  # median per forward (the whole batch)
    note: str = ""


@dataclass
class BenchResult:
    """What :func:`run_bench` measured."""

    weights: str
    device: str
    dtype: str
    imgsz: int
    batch: int
    threads: int
    rows: list[BenchRow]
    reports: dict[str, object] = field(default_factory=dict)  # variant -> SparsifyReport
    pruned_layers: int = 0
    sparsity: float = 0.0
    plots: list[Path] = field(default_factory=list)

    @property
    def dense_ms(self) -> float:
        return min(r.ms for r in self.rows if r.name.startswith("dense"))

    def table(self) -> str:
        head = f"{'variant':<24} {'ms/batch':>9} {'ms/img':>8} {'speedup':>8}  notes"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            sp = self.dense_ms / r.ms if r.ms == r.ms and r.ms > 0 else float("nan")
            lines.append(f"{r.name:<24} {r.ms:>9.2f} {r.ms / self.batch:>8.2f} {sp:>7.2f}x  {r.note}")
        lines.append(f"{self.weights}: {self.pruned_layers} pruned convs, {100 * self.sparsity:.1f}% of their weights "
                     f"zero; {self.device} {self.dtype}, batch {self.batch}, {self.imgsz}x{self.imgsz}, "
                     f"{self.threads} threads; speedup = fastest dense PyTorch / variant")
        return "\n".join(lines)


@torch.no_grad()
def time_round_robin(variants: dict[str, tuple[object, torch.Tensor]], reps: int, sync=lambda: None,
                     warmup: int = 2, progress: bool = False) -> dict[str, float]:
    """Median ms per variant ``{name: (fn, x)}``: ``warmup`` calls each, then ``reps`` rounds calling every variant
    once, round-robin, so that a change of machine load hits every variant alike. ``progress``: a bar over the
    rounds (on stderr)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn, x in variants.values():
        for _ in range(warmup):
            fn(x)
    sync()
    for _ in tqdm(range(max(reps, 1)), desc="bench", unit="round", disable=not progress,
                  bar_format="{l_bar}{bar:20}{r_bar}"):
        for k, (fn, x) in variants.items():
            t0 = time.perf_counter()
            fn(x)
            sync()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def onnxruntime_session(model: nn.Module, x: torch.Tensor, threads: int):
    """``x -> outputs`` through onnxruntime (CPU, ``threads`` intra-op threads, no spin-waiting) for ``model``
    exported at ``x``'s shape; None, with the reason logged, when onnxruntime is missing or the export fails."""
    try:
        import onnxruntime as ort
    except ImportError:
        LOGGER.info("bench: onnxruntime not installed (pip install .[bench]); its row is skipped")
        return None
    try:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model.onnx"
            torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["images"])
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            # no spin-waiting after a run: its threads would steal the cores from the next variant timed
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - an export or runtime failure only loses this row
        LOGGER.warning("bench: onnxruntime session failed (%s: %s); its row is skipped", type(e).__name__, e)
        return None
    return lambda t: sess.run(None, {"images": t.numpy()})


@torch.no_grad()
def run_bench(weights: str, imgsz: int = 640, batch: int = 1, device: str = "cpu", threads: int | None = None,
              reps: int = 20, onnx: bool = True, plots: bool = True, out: str | Path = "runs/bench",
              progress: bool = True) -> BenchResult:
    """Time ``weights`` dense and sparsified (see the module doc); returns the rows, optionally writes plots.

    Args:
        weights: a checkpoint :func:`sparseyolo.load_model` reads; pruned sparseyolo checkpoints keep their masks.
        imgsz, batch: input ``[batch, 3, imgsz, imgsz]`` (random, fixed seed).
        device: ``"cpu"`` or a CUDA device (``"cuda"``, ``"0"``): then fp16, and ``sparsify`` uses the GPU
            backends (2:4 ``mma.sp``, cuDNN) per layer.
        threads: torch CPU threads (default: torch's choice).
        reps: timed forwards per variant (median).
        onnx: add the onnxruntime row on CPU when onnxruntime is installed.
        plots: write ``bench_latency.png`` and, for a pruned model, ``bench_layer_speedup.png`` under ``out``.
        progress: a progress bar over the timed rounds.
    """
    from sparseyolo.checkpoint import load_model
    from sparseyolo.prune import sparsity_report
    from sparseyolo.sparse import sparsify

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device("cuda" if device in ("cuda", "gpu") else f"cuda:{device}" if device.isdigit() else device)
    gpu = dev.type == "cuda"
    if gpu and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} asks for a GPU but torch sees none; use device 'cpu'", "device")
    dtype = torch.float16 if gpu else torch.float32
    base = load_model(weights, fuse=False).float().eval()
    rep = sparsity_report(base)
    pruned = len(rep.masked_layers)
    x_cpu = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    x = x_cpu.to(dev, dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def prep(m: nn.Module) -> nn.Module:
        return m.to(dev, dtype).eval()

    dense = prep(sparsify(base, backend="dense"))
    variants: dict[str, tuple[object, torch.Tensor]] = {
        "dense (NCHW)": (dense, x),
        "dense (channels_last)": (copy.deepcopy(dense).to(memory_format=torch.channels_last), x_cl),
    }
    notes: dict[str, str] = {"dense (NCHW)": "BN folded", "dense (channels_last)": "BN folded"}
    if onnx and not gpu:
        sess = onnxruntime_session(dense, x_cpu, torch.get_num_threads())
        if sess is not None:
            variants["onnxruntime (dense)"] = (sess, x_cpu)
            notes["onnxruntime (dense)"] = "CPUExecutionProvider, opset 17"
    reports: dict[str, object] = {}
    if pruned:
        if gpu:  # the GPU backends decide per layer at the first call, on the device
            sp = prep(sparsify(base, backend="sparse")).to(memory_format=torch.channels_last)
            sp(x_cl)
            variants["sparsify (sparse, GPU auto)"] = (sp, x_cl)
            notes["sparsify (sparse, GPU auto)"] = "per layer: mma.sp 2:4, cuSPARSELt or cuDNN, timed at first call"
        else:
            sp = sparsify(base, backend="sparse")
            variants["sparsify (sparse)"] = (sp, x)
            r = sp.sparsify_report
            notes["sparsify (sparse)"] = f"{len(r.sparse_layers)}/{len(r.layers)} convs on the sparse kernel"
            auto = sparsify(base, backend="auto", example_input=x, reps=max(3, reps // 4))
            ra = auto.sparsify_report
            reports["sparsify (auto)"] = ra
            x_auto = x_cl if ra.chosen == "dense_channels_last" else x
            variants["sparsify (auto)"] = (auto, x_auto)
            notes["sparsify (auto)"] = (f"{len(ra.sparse_layers)}/{len(ra.layers)} convs sparse; returned "
                                        f"{(ra.chosen or 'sparse').replace('_', ' ')}")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    times = time_round_robin(variants, reps, sync, progress=progress)
    result = BenchResult(weights=str(weights), device=str(dev), dtype=str(dtype).replace("torch.", ""), imgsz=imgsz,
                         batch=batch, threads=torch.get_num_threads(),
                         rows=[BenchRow(k, times[k], notes.get(k, "")) for k in variants], reports=reports,
                         pruned_layers=pruned, sparsity=rep.masked_sparsity if pruned else 0.0)
    if plots:
        result.plots = _plots(result, Path(out))
    return result


def _plots(result: BenchResult, out: Path) -> list[Path]:
    from sparseyolo import plots

    out.mkdir(parents=True, exist_ok=True)
    paths = [plots.plot_bench_latency(result, out / "bench_latency.png")]
    if result.reports:
        paths.append(plots.plot_layer_speedup(result.reports, out / "bench_layer_speedup.png"))
    return paths
