"""``sparseyolo bench``: how fast one checkpoint runs dense and sparsified, on this machine.

Times a forward pass of the checkpoint several ways on the same random input. Every variant has its BatchNorms
folded, and the dense ones run the model as pruned: zeros multiplied.

* On the CPU, every dense runtime a user could pick instead (:mod:`sparseyolo.dense_runtimes`): PyTorch fp32
  (NCHW and channels-last), PyTorch bf16 autocast channels-last, with ``compiled`` the fp32 and the bf16 model
  through ``torch.compile`` (Inductor, freezing), and, with ``onnx`` (``pip install .[bench]``),
  onnxruntime fp32 and OpenVINO in its default precision and in f32, from the ONNX export of the same model. A
  runtime that is not installed is a row that says so. On a GPU: PyTorch (cuDNN) NCHW and channels-last, fp16.
* ``sparsify (sparse)``: every eligible pruned conv on a sparse kernel;
* ``sparsify (auto)``: what :func:`sparseyolo.sparsify` returns: per layer the fastest backend, and then the fastest
  of that model, dense NCHW and dense channels-last;
* ``sparsify (auto) compiled`` (CPU, with ``compiled``): that model through the same ``torch.compile`` as the dense
  row (:func:`sparseyolo.sparse.compile.compile_inference`): the ops between the convs fused, as for dense.

The sparse variants run in ``dtype`` (CPU: float32 or bfloat16; GPU: float16). Speedups are against the fastest
dense row, whichever runtime it is. Medians of ``reps`` timed forwards after warm-up, interleaved round-robin so
that a change in machine load hits every variant alike (with ``burst`` > 1, short bursts of forwards per variant,
the first of each untimed, so no variant is timed right after another's).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sparseyolo.utils.errors import ParameterError
from sparseyolo.utils.timing import time_round_robin

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

    dense_rows: tuple[str, ...] = ()  # the rows that are dense runtimes

    @property
    def fastest_dense(self) -> BenchRow:
        """The fastest dense row that ran (a runtime that is not installed has ms NaN)."""
        return min((r for r in self.rows if r.name in self.dense_rows and r.ms == r.ms), key=lambda r: r.ms)

    @property
    def dense_ms(self) -> float:
        return self.fastest_dense.ms

    def table(self) -> str:
        head = f"{'variant':<24} {'ms/batch':>9} {'ms/img':>8} {'speedup':>8}  notes"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            sp = self.dense_ms / r.ms if r.ms == r.ms and r.ms > 0 else float("nan")
            lines.append(f"{r.name:<24} {r.ms:>9.2f} {r.ms / self.batch:>8.2f} {sp:>7.2f}x  {r.note}")
        lines.append(f"{self.weights}: {self.pruned_layers} pruned convs, {100 * self.sparsity:.1f}% of their weights "
                     f"zero; {self.device}, sparse variants {self.dtype}, batch {self.batch}, "
                     f"{self.imgsz}x{self.imgsz}, {self.threads} threads; speedup = fastest dense runtime "
                     f"({self.fastest_dense.name}) / variant")
        return "\n".join(lines)


@torch.no_grad()
def run_bench(weights: str, imgsz: int = 640, batch: int = 1, device: str = "cpu", threads: int | None = None,
              reps: int = 20, onnx: bool = True, plots: bool = True, out: str | Path = "runs/bench",
              progress: bool = True, dtype: torch.dtype | None = None, compiled: bool = True,
              sparse_backend: str = "sparse", compiled_variant: str = "auto", burst: int = 2) -> BenchResult:
    """Time ``weights`` dense and sparsified (see the module doc); returns the rows, optionally writes plots.

    Args:
        weights: a checkpoint :func:`sparseyolo.load_model` reads; pruned sparseyolo checkpoints keep their masks.
        imgsz, batch: input ``[batch, 3, imgsz, imgsz]`` (random, fixed seed).
        device: ``"cpu"`` or a CUDA device (``"cuda"``, ``"0"``): then fp16, and ``sparsify`` uses the GPU
            backends (2:4 ``mma.sp``, cuDNN) per layer.
        threads: torch CPU threads (default: torch's choice).
        reps: timed forwards per variant (median).
        onnx: add the rows of the exported model on CPU: onnxruntime and OpenVINO (rows that say so when they are
            not installed).
        plots: write ``bench_latency.png`` and, for a pruned model, ``bench_layer_speedup.png`` under ``out``.
        progress: a progress bar over the timed rounds.
        dtype: the sparse variants' dtype: CPU ``torch.float32`` (default) or ``torch.bfloat16``; GPU
            ``torch.float16`` (default).
        compiled: on the CPU, add the ``torch.compile`` rows (dense fp32 and bf16, and the auto model);
            compiling takes seconds to a minute per model on 2 cores.
        sparse_backend: the backend of the ``sparsify (sparse)`` row (``"sparse"``: the device's default; e.g.
            ``"cpu_block_tiles"`` for a tile-pruned model).
        compiled_variant: which sparsified model the compiled row compiles: ``"auto"`` or ``"sparse"`` (every
            pruned conv on ``sparse_backend``, as a speedup profile chose them).
        burst: forwards of a variant back to back per round, the first untimed
            (:func:`~sparseyolo.utils.timing.time_round_robin`), so no variant is timed right after another's
            forward; 1: one timed forward per round.
    """
    if compiled_variant not in ("auto", "sparse"):
        raise ParameterError(f"compiled_variant must be auto or sparse, got {compiled_variant!r}", "compiled_variant")
    if burst < 1:
        raise ParameterError(f"burst must be >= 1 (forwards per variant per round), got {burst}", "burst")
    from sparseyolo.checkpoint import load_model
    from sparseyolo.dense_runtimes import (COMPILED_RUNTIMES, DENSE_RUNTIMES, ONNXRUNTIME, OPENVINO, OPENVINO_F32,
                                           dense_runtimes)
    from sparseyolo.prune import sparsity_report
    from sparseyolo.sparse import sparsify

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device("cuda" if device in ("cuda", "gpu") else f"cuda:{device}" if device.isdigit() else device)
    gpu = dev.type == "cuda"
    if gpu and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} asks for a GPU but torch sees none; use device 'cpu'", "device")
    dtype = dtype or (torch.float16 if gpu else torch.float32)
    allowed = (torch.float16,) if gpu else (torch.float32, torch.bfloat16)
    if dtype not in allowed:
        raise ParameterError(f"dtype {dtype} is not one of {allowed} on {dev.type}", "dtype")
    base = load_model(weights, fuse=False).float().eval()
    rep = sparsity_report(base)
    pruned = len(rep.masked_layers)
    x_cpu = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    x = x_cpu.to(dev, dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def prep(m: nn.Module) -> nn.Module:
        return m.to(dev, dtype).eval()

    variants: dict[str, tuple[object, torch.Tensor]] = {}
    notes: dict[str, str] = {}
    missing: list[str] = []
    if gpu:
        dense = prep(sparsify(base, backend="dense"))
        variants["dense (NCHW)"] = (dense, x)
        variants["dense (channels_last)"] = (copy.deepcopy(dense).to(memory_format=torch.channels_last), x_cl)
        notes = {k: "BN folded, cuDNN" for k in variants}
    else:
        skip = (() if onnx else (ONNXRUNTIME, OPENVINO, OPENVINO_F32)) + (() if compiled else COMPILED_RUNTIMES)
        names = tuple(n for n in DENSE_RUNTIMES if n not in skip)
        for name, rt in dense_runtimes(sparsify(base, backend="dense"), x_cpu, torch.get_num_threads(),
                                       names).items():
            notes[name] = f"BN folded; {rt.note}"
            if rt.run is None:
                missing.append(name)
            else:
                variants[name] = (lambda _x, run=rt.run: run(), x_cpu)
    dense_rows = tuple(variants) + tuple(missing)
    reports: dict[str, object] = {}
    if pruned:
        if gpu:  # the GPU backends decide per layer at the first call, on the device
            sp = prep(sparsify(base, backend="sparse")).to(memory_format=torch.channels_last)
            sp(x_cl)
            variants["sparsify (sparse, GPU auto)"] = (sp, x_cl)
            notes["sparsify (sparse, GPU auto)"] = "per layer: mma.sp 2:4, cuSPARSELt or cuDNN, timed at first call"
        else:
            sp = sparsify(base, backend=sparse_backend, dtype=dtype)
            variants["sparsify (sparse)"] = (sp, x.contiguous(memory_format=sp.sparsify_report.memory_format))
            r = sp.sparsify_report
            kinds = sorted({d.backend_name for d in r.sparse_layers})
            notes["sparsify (sparse)"] = (f"{len(r.sparse_layers)}/{len(r.layers)} convs on {', '.join(kinds) or '-'}")
            auto = sparsify(base, backend="auto", example_input=x, reps=max(3, reps // 4), dtype=dtype)
            ra = auto.sparsify_report
            reports["sparsify (auto)"] = ra
            x_auto = x.contiguous(memory_format=ra.memory_format)  # the layout its layers read without a copy
            variants["sparsify (auto)"] = (auto, x_auto)
            notes["sparsify (auto)"] = (f"{len(ra.sparse_layers)}/{len(ra.layers)} convs sparse; returned "
                                        f"{(ra.chosen or 'sparse').replace('_', ' ')}")
            if compiled:
                from sparseyolo.sparse.compile import compile_inference

                label = f"sparsify ({compiled_variant})"
                src, xs = variants[label]
                run = compile_inference(src)
                run(xs)  # compiles
                variants[f"{label} compiled"] = (lambda xi, run=run: run(xi), xs)
                notes[f"{label} compiled"] = notes[label] + "; torch.compile (inductor, freezing)"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    times = time_round_robin(variants, reps, sync, progress=progress, burst=burst)
    rows = [BenchRow(k, times[k], notes.get(k, "")) for k in variants]
    rows[len(dense_rows) - len(missing):len(dense_rows) - len(missing)] = [BenchRow(k, float("nan"), notes[k])
                                                                          for k in missing]
    result = BenchResult(weights=str(weights), device=str(dev), dtype=str(dtype).replace("torch.", ""), imgsz=imgsz,
                         batch=batch, threads=torch.get_num_threads(), rows=rows, reports=reports,
                         pruned_layers=pruned, sparsity=rep.masked_sparsity if pruned else 0.0,
                         dense_rows=dense_rows)
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
