"""``sparseyolo demo``: prune a detector several ways, recover one, and measure accuracy, size and CPU speed.

By default everything ships with the package or is made on the spot, so it runs offline: the small detector in
``sparseyolo/assets`` (YOLOv5n with 3 shape classes, mAP50-95 0.81 on its val split, trained by
``benchmarks/train_demo_model.py``) and a freshly generated synthetic shapes dataset (the checkpoint's held-out
val split, and a small train split for the recovery fine-tune). With ``--weights`` and ``--data`` the same
steps run on a real model and dataset.

The variants, each evaluated with pycocotools on the val split:

* ``dense``: the checkpoint as it is;
* ``l1 30%``: every conv pruned by 30% of its smallest weights (YOLOv5's ``--prune``), no retraining;
* ``2:4 one-shot``: two of every four input-channel weights kept by magnitude, no retraining;
* ``2:4 calibrated``: 2:4 chosen and compensated layer by layer on calibration images from the train split
  (:func:`sparseyolo.prune.calibrated.calibrated_prune`), no retraining;
* ``2:4 recovered``: the calibrated model (else the one-shot one) fine-tuned a few epochs with its masks enforced;
* ``2:4 b32 calibrated``: calibrated 2:4 with each choice shared by 32 output channels, the pattern the block-sparse
  CPU kernel runs fastest (less accurate than per-row 2:4);
* ``global 75%``: 75% of all conv weights pruned by global magnitude (where CPU sparse kernels can pay).

For each: mAP50-95, checkpoint size (fp16, pruned weights stored compressed), CPU latency per image of the
BN-folded dense model in its faster memory layout, NCHW or channels-last (the same baseline for every row),
and of the ``sparsify(backend="auto")`` model (per layer the faster of dense and sparse, and never slower than
dense as a whole), and their ratio. On the synthetic data latency is timed at 320 x 320 (the model evaluates at
128, where no layer is large enough for a sparse kernel to pay; the model is fully convolutional).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseyolo.utils.errors import ParameterError

__all__ = ["DemoConfig", "DemoRow", "DemoResult", "run_demo", "packaged_weights", "format_table", "demo_plots"]

LOGGER = logging.getLogger(__name__)

#: The packaged checkpoint (written by benchmarks/train_demo_model.py).
PACKAGED_WEIGHTS = "shapes_yolov5n.pt.xz"
#: Generator settings used when the checkpoint does not record its dataset (they match the packaged one).
#: The size the demo times latency at on its synthetic data (see DemoConfig.bench_imgsz).
SYNTHETIC_BENCH_IMGSZ = 320
#: Output channels sharing each 2:4 choice in the "2:4 b32 calibrated" row: the block-sparse CPU kernel skips what
#: 16 channels share, and runs two blocks of 16 per broadcast when 32 share it (docs/backends.md).
KERNEL_BLOCK = 32
DEFAULT_DATASET = {"seed": 0, "img_size": 128, "max_objects": 8, "size_range": [0.1, 0.45],
                   "classes": ["circle", "square", "triangle"]}


#: Extra one-shot points of the mAP-vs-sparsity curves (method, amount); mAP only, no timing.
SWEEP: tuple[tuple[str, float], ...] = (("l1", 0.5), ("global", 0.5), ("global", 0.9))


def packaged_weights() -> Path:
    """Path of the checkpoint shipped in ``sparseyolo/assets``."""
    path = Path(__file__).resolve().parent / "assets" / PACKAGED_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"the packaged demo checkpoint {path} is missing; reinstall sparseyolo, or make it with "
            "`python benchmarks/train_demo_model.py`, or pass --weights and --data"
        )
    return path


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        weights, data: checkpoint and data yaml; None: the packaged model and a generated synthetic dataset.
        out: output folder (data, checkpoints, plots, table).
        imgsz: inference and fine-tune size; None: the synthetic data's size (128), else 640.
        bench_imgsz: the size latency is timed at; None: :data:`SYNTHETIC_BENCH_IMGSZ` for the synthetic data (at
            128 px every layer of the model is too small for a sparse kernel to pay), else ``imgsz``.
        n_val, n_train: synthetic images generated for evaluation and for calibration and the recovery fine-tune.
        calib_images: train images for "2:4 calibrated" and "2:4 b32 calibrated" (0 skips both rows).
        finetune_epochs: epochs of masked fine-tuning for "2:4 recovered" (0 skips the row).
        finetune_batches: stop each fine-tune epoch after this many batches (None: full epochs).
        global_amount: sparsity of the global-magnitude row (0 skips it).
        plots: write the PNG figures.
        sweep: with ``plots``, also evaluate the one-shot sparsities of :data:`SWEEP` for the mAP curves.
        reps: timed forwards per latency measurement (median).
        threads: torch threads (None: leave as is).
        batch_size: val batch size.
        workers: dataloader workers.
    """

    weights: str | None = None
    data: str | None = None
    out: str = "runs/demo"
    imgsz: int | None = None
    bench_imgsz: int | None = None
    n_val: int = 100
    n_train: int = 128
    calib_images: int = 64
    finetune_epochs: int = 3
    finetune_batches: int | None = None
    global_amount: float = 0.75
    plots: bool = True
    sweep: bool = True
    reps: int = 15
    threads: int | None = None
    batch_size: int = 16
    workers: int = 1


@dataclass
class DemoRow:
    """One variant of the model and what was measured on it."""

    name: str
    method: str  # "dense", "l1", "nm", "global"
    sparsity: float  # zero fraction over the pruned convs' weights (0 for dense)
    map5095: float
    map50: float
    size_mb: float
    dense_ms: float
    sparse_ms: float
    sparse_layers: int = 0
    pruned_layers: int = 0
    recovered: bool = False
    calibrated: bool = False
    model: nn.Module | None = field(default=None, repr=False)
    sparse_model: nn.Module | None = field(default=None, repr=False)

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms if self.sparse_ms > 0 else float("nan")


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    rows: list[DemoRow]
    out: Path
    data: str
    imgsz: int
    threads: int
    seconds: float
    bench_imgsz: int  # the size latency was timed at
    plots: list[Path] = field(default_factory=list)
    sweep: list[tuple[str, float, float]] = field(default_factory=list)  # (method, sparsity, mAP50-95)

    def table(self) -> str:
        return format_table(self.rows, self.bench_imgsz, self.threads)


def format_table(rows: list[DemoRow], imgsz: int, threads: int) -> str:
    """The demo's one table, fixed width."""
    head = (f"{'model':<18} {'sparsity':>8} {'mAP50-95':>8} {'mAP50':>6} {'size MB':>7} {'dense ms':>8} "
            f"{'sparse ms':>9} {'speedup':>7}  sparse convs")
    lines = [head, "-" * len(head)]
    for r in rows:
        conv = f"{r.sparse_layers}/{r.pruned_layers}" if r.pruned_layers else "-"
        lines.append(f"{r.name:<18} {100 * r.sparsity:>7.1f}% {r.map5095:>8.3f} {r.map50:>6.3f} {r.size_mb:>7.3f} "
                     f"{r.dense_ms:>8.2f} {r.sparse_ms:>9.2f} {r.speedup:>6.2f}x  {conv}")
    lines.append(f"mAP: pycocotools on the val split; size: fp16 checkpoint, pruned weights compressed; latency: "
                 f"median per image, batch 1, {imgsz}x{imgsz}, {threads} CPU threads; dense = BN-folded dense model, "
                 "sparse = sparsify(backend='auto'), speedup = dense / sparse; dense in its faster layout (NCHW or "
                 "channels-last)")
    return "\n".join(lines)


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Silence the library's logs, progress bars and pycocotools' prints around a step (unless verbose)."""
    if verbose:
        yield
        return
    root = logging.getLogger("sparseyolo")
    level = root.level
    root.setLevel(logging.WARNING)
    try:  # tqdm writes to sys.stderr, pycocotools prints to sys.stdout
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _interleaved_ms(a: nn.Module, b: nn.Module, x: torch.Tensor, reps: int) -> tuple[float, float]:
    """Median forward ms of ``a`` and of ``b``, timed alternately so load changes hit both alike."""
    from sparseyolo.utils.timing import time_round_robin

    t = time_round_robin({"a": (a, x), "b": (b, x)}, max(reps, 1), warmup=3)
    return t["a"], t["b"]


def _evaluate(model: nn.Module, data: str, imgsz: int, cfg: DemoConfig, out: Path) -> tuple[float, float]:
    from sparseyolo import val

    res = val.run(weights="", data=data, imgsz=imgsz, batch_size=cfg.batch_size, device="cpu", workers=cfg.workers,
                  cocoeval=True, project=str(out / "val"), model=model)
    map5095 = res.coco_stats[0] if res.coco_stats else res.map
    return float(map5095), float(res.coco_stats[1] if res.coco_stats else res.map50)


def _synthetic_data(out: Path, meta: dict, cfg: DemoConfig) -> tuple[str, int]:
    from sparseyolo.data.synthetic import make_synthetic_dataset

    ds = {**DEFAULT_DATASET, **(meta.get("dataset") or {})}
    classes = meta.get("classes") or ds["classes"]
    n_train = cfg.n_train if cfg.finetune_epochs > 0 or cfg.calib_images > 0 else 0
    yaml_path = make_synthetic_dataset(out / "data", n_train=n_train, n_val=cfg.n_val, img_size=int(ds["img_size"]),
                                       classes=classes, seed=int(ds["seed"]), max_objects=int(ds["max_objects"]),
                                       size_range=tuple(ds["size_range"]))
    return str(yaml_path), int(ds["img_size"])


def _finetune(pruned_ckpt: Path, data: str, imgsz: int, cfg: DemoConfig, out: Path) -> tuple[nn.Module, Any]:
    from sparseyolo.checkpoint import load_model
    from sparseyolo.train import TrainConfig, train

    tcfg = TrainConfig(
        weights=str(pruned_ckpt), data=data, epochs=cfg.finetune_epochs, imgsz=imgsz, batch_size=cfg.batch_size,
        nbs=cfg.batch_size, lr0=0.002, lrf=0.1, cos_lr=True, warmup_epochs=0.0, mosaic=False, device="cpu",
        workers=cfg.workers, project=str(out), name="finetune_2of4", exist_ok=True, noval=True,
        ema_tau=50.0,  # a few dozen steps: a short EMA horizon
        max_batches=cfg.finetune_batches,
    )
    result = train(tcfg)
    return load_model(result.best, fuse=False), result.final


def _calibrated(dense: nn.Module, data: str, imgsz: int, cfg: DemoConfig, block: int = 1) -> nn.Module:
    from sparseyolo.prune.calibrated import calibrated_prune, calibration_batches

    model = copy.deepcopy(dense)
    stride = int(max(model.stride)) if hasattr(model, "stride") else 32
    batches = calibration_batches(data, cfg.calib_images, imgsz, cfg.batch_size, stride, split="train",
                                  workers=cfg.workers)
    calibrated_prune(model, batches, n=2, m=4, block=block)
    return model


def _detections_image(result: DemoResult) -> tuple[Any, list[str]] | None:
    """An image of the val split with several labelled objects (the first with the most, among the first 20)."""
    import cv2
    import numpy as np

    from sparseyolo.data.dataset import img2label_paths, list_image_files, load_data_config

    cfg = load_data_config(result.data)
    files = list_image_files(cfg["val"])[:20]
    if not files:
        return None
    counts = []
    for lb in img2label_paths(files):
        p = Path(lb)
        counts.append(len(p.read_text().splitlines()) if p.is_file() else 0)
    best = files[int(np.argmax(counts))]
    image = cv2.imread(best)
    return (image, list(cfg["names"])) if image is not None else None


def demo_plots(result: DemoResult, out: Path, sparsity_report: Any) -> list[Path]:
    """Every figure of the demo, into ``out``; returns the paths written."""
    from sparseyolo.plots import (detect, plot_detections, plot_latency, plot_layer_sparsity, plot_layer_speedup,
                                  plot_map_vs_sparsity)

    rows = result.rows
    pruned = [r for r in rows if r.method != "dense"]
    # a recovered model has the masks of its one-shot parent: show each mask set once in the per-layer figures
    recovered = {r.method for r in pruned if r.recovered}
    distinct = [r for r in pruned if r.recovered or r.method not in recovered]
    written = [
        plot_map_vs_sparsity(rows, result.sweep, out / "map_vs_sparsity.png"),
        plot_layer_sparsity({r.name: sparsity_report(r.model) for r in distinct}, out / "layer_sparsity.png"),
    ]
    timed = {r.name: r.sparse_model.sparsify_report for r in distinct if r.sparse_model is not None
             and getattr(r.sparse_model, "sparsify_report", None) is not None}
    if timed:
        written.append(plot_layer_speedup(timed, out / "layer_speedup.png"))
    written.append(plot_latency(rows, out / "latency.png", result.bench_imgsz, result.threads))
    found = _detections_image(result)
    if found is not None and pruned:
        image, names = found
        dense = rows[0]
        sparse = next((r for r in rows if r.recovered), pruned[0])
        panels = [(f"{dense.name} (mAP50-95 {dense.map5095:.3f})", detect(dense.model, image, result.imgsz)),
                  (f"{sparse.name}, sparsified (mAP50-95 {sparse.map5095:.3f})",
                   detect(sparse.sparse_model, image, result.imgsz))]
        written.append(plot_detections(image, panels, names, out / "detections.png"))
    return written


def run_demo(cfg: DemoConfig, verbose: bool = False) -> DemoResult:
    """Run the demo (see the module docstring); progress is logged, the table is returned.

    Args:
        cfg: settings.
        verbose: keep the library's own logs (val reports, training progress).

    Returns:
        A :class:`DemoResult` with one :class:`DemoRow` per variant.

    Raises:
        FileNotFoundError, ValueError, CheckpointError: unusable weights or data (named in the message).
    """
    from sparseyolo.checkpoint import load_model, save_checkpoint
    from sparseyolo.data.dataset import load_data_config
    from sparseyolo.prune import masked_sparsity, prune, sparsity_report
    from sparseyolo.prune.masks import masked_modules
    from sparseyolo.sparse import sparsify

    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    out = Path(cfg.out)
    (out / "weights").mkdir(parents=True, exist_ok=True)
    if (cfg.weights is None) != (cfg.data is None) and cfg.data is None:
        raise ParameterError("weights needs data (a dataset whose classes it detects)", "weights", "data")

    weights = Path(cfg.weights) if cfg.weights else packaged_weights()
    dense = load_model(weights, fuse=False)
    if cfg.data is None:
        data, imgsz = _synthetic_data(out, dense.meta or {}, cfg)
        LOGGER.info("demo: %s (%d classes) on a generated synthetic val split (%d images, %d px) in %s", weights.name,
                    dense.nc, cfg.n_val, imgsz, out / "data")
    else:
        data, imgsz = cfg.data, 640
        LOGGER.info("demo: %s on %s", weights, data)
    imgsz = cfg.imgsz or imgsz
    bench_imgsz = cfg.bench_imgsz or (SYNTHETIC_BENCH_IMGSZ if cfg.data is None else imgsz)
    has_train = bool(load_data_config(data).get("train")) and (cfg.data is not None or cfg.n_train > 0)
    x = torch.rand(1, 3, bench_imgsz, bench_imgsz)

    rows: list[DemoRow] = []
    dense_folded = sparsify(dense, backend="dense")  # the latency baseline of every row, in its faster layout
    dense_cl = copy.deepcopy(dense_folded).to(memory_format=torch.channels_last)
    t_nchw, t_cl = _interleaved_ms(dense_folded, dense_cl, x, cfg.reps)
    if t_cl < t_nchw:
        dense_folded = dense_cl
    LOGGER.info("demo: dense baseline %s (NCHW %.2f ms, channels-last %.2f ms per image)",
                "channels-last" if t_cl < t_nchw else "NCHW", t_nchw, t_cl)

    def measure(name: str, method: str, model: nn.Module, recovered: bool = False, metrics=None,
                calibrated: bool = False) -> DemoRow:
        t0 = time.time()
        sparsity, n_pruned = masked_sparsity(model), len(masked_modules(model))
        slug = name.replace(" ", "_").replace("%", "pct").replace(":", "of")
        with _quiet(verbose):
            if metrics is None:
                metrics = _evaluate(model, data, imgsz, cfg, out)
            path = save_checkpoint(copy.deepcopy(model).half(), out / "weights" / f"{slug}.pt")
            # Right after val.run its dataloader worker winds down for a few seconds and slows every forward
            # (measured here: 3.4 ms before val, 36-268 ms just after, 6 ms three seconds later): let it go.
            gc.collect()
            time.sleep(3.0)
            if n_pruned:  # the same dense baseline every time, timed alternately with this variant
                fast = sparsify(model, backend="auto", example_input=x)
                dense_ms, sparse_ms = _interleaved_ms(dense_folded, fast, x, cfg.reps)
            else:  # the dense model has nothing to sparsify: speedup 1 by definition
                fast = dense_folded
                dense_ms = sparse_ms = _interleaved_ms(dense_folded, dense_folded, x, (cfg.reps + 1) // 2)[0]
        n_sparse = len(fast.sparsify_report.sparse_layers) if n_pruned else 0
        row = DemoRow(name, method, sparsity, metrics[0], metrics[1], path.stat().st_size / 1e6, dense_ms, sparse_ms,
                      n_sparse, n_pruned, recovered=recovered, calibrated=calibrated, model=model, sparse_model=fast)
        rows.append(row)
        LOGGER.info("  %-14s mAP50-95 %.3f  %.1f%% sparse  %.2f MB  %.2f -> %.2f ms  (%.0f s)", name, row.map5095,
                    100 * sparsity, row.size_mb, dense_ms, sparse_ms, time.time() - t0)
        return row

    measure("dense", "dense", dense)
    def pruned(method: str, *args: Any, **kwargs: Any) -> nn.Module:
        model = copy.deepcopy(dense)
        with _quiet(verbose):
            prune(model, method, *args, **kwargs)
        return model

    measure("l1 30%", "l1", pruned("l1", 0.3))
    nm = pruned("nm", n=2, m=4)
    start = measure("2:4 one-shot", "nm", nm)
    if cfg.calib_images > 0 and has_train:
        t0 = time.time()
        with _quiet(verbose):
            cal = _calibrated(dense, data, imgsz, cfg)
        LOGGER.info("  2:4 calibrated on %d train images (%.0f s)", cfg.calib_images, time.time() - t0)
        start = measure("2:4 calibrated", "nm", cal, calibrated=True)
        t0 = time.time()
        with _quiet(verbose):
            cal32 = _calibrated(dense, data, imgsz, cfg, block=KERNEL_BLOCK)
        LOGGER.info("  2:4 shared by %d output channels, calibrated (%.0f s)", KERNEL_BLOCK, time.time() - t0)
        measure(f"2:4 b{KERNEL_BLOCK} calibrated", "nm", cal32, calibrated=True)
    elif cfg.calib_images > 0:
        LOGGER.info("  %s has no train split: no calibrated pruning", data)
    if cfg.finetune_epochs > 0 and has_train:
        t0 = time.time()
        LOGGER.info("  fine-tuning the %s model with its masks for %d epoch(s)...", start.name, cfg.finetune_epochs)
        with _quiet(verbose):
            oneshot_ckpt = save_checkpoint(copy.deepcopy(start.model), out / "weights" / "2of4_start_fp32.pt")
            recovered, final = _finetune(oneshot_ckpt, data, imgsz, cfg, out)
        LOGGER.info("  fine-tune done (%.0f s)", time.time() - t0)
        metrics = (float(final.coco_stats[0]), float(final.coco_stats[1])) if final and final.coco_stats else None
        measure("2:4 recovered", "nm", recovered, recovered=True, metrics=metrics)
    elif cfg.finetune_epochs > 0:
        LOGGER.info("  %s has no train split: no recovery fine-tune", data)
    if cfg.global_amount > 0:
        measure(f"global {100 * cfg.global_amount:.0f}%", "global", pruned("global", cfg.global_amount))

    result = DemoResult(rows, out, data, imgsz, threads, 0.0, bench_imgsz)
    if cfg.plots and cfg.sweep:
        t0 = time.time()
        for method, amount in SWEEP:
            m = pruned(method, amount)
            with _quiet(verbose):
                result.sweep.append((method, masked_sparsity(m), _evaluate(m, data, imgsz, cfg, out)[0]))
        LOGGER.info("  mAP at %d more one-shot sparsities for the curves (%.0f s)", len(SWEEP), time.time() - t0)
    if cfg.plots:
        t0 = time.time()
        with _quiet(verbose):
            result.plots = demo_plots(result, out, sparsity_report)
        LOGGER.info("  plots: %s (%.0f s)", ", ".join(p.name for p in result.plots), time.time() - t0)
    result.seconds = time.time() - t_start
    (out / "table.txt").write_text(result.table() + "\n", encoding="utf-8")
    return result
