"""Figures of the demo and the bench (``sparseyolo demo --plots``, ``bench --plots``): accuracy, sparsity, speed
and detections.

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on machines without a
display. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

__all__ = [
    "plot_map_vs_sparsity",
    "plot_layer_sparsity",
    "plot_layer_speedup",
    "plot_latency",
    "plot_detections",
    "detect",
]

#: One colour per pruning method, used by every figure.
METHOD_COLOURS = {"dense": "#444444", "l1": "#1f77b4", "nm": "#d62728", "global": "#2ca02c"}
METHOD_LABELS = {"dense": "dense", "l1": "l1 per layer", "nm": "N:M (2:4)", "global": "global magnitude"}


class ModelRow(Protocol):
    """What the figures read of one model variant (:class:`sparseyolo.demo.DemoRow` is one)."""

    name: str
    method: str
    sparsity: float
    map5095: float
    recovered: bool
    calibrated: bool
    dense_ms: float
    sparse_ms: float

    @property
    def speedup(self) -> float: ...


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _short(name: str) -> str:
    """'model.13.cv1.conv' -> '13.cv1': layer names short enough for an axis."""
    return name.removeprefix("model.").removesuffix(".weight").removesuffix(".conv")


def plot_map_vs_sparsity(
    rows: Sequence[ModelRow], sweep: Sequence[tuple[str, float, float]], path: Path, title: str = ""
) -> Path:
    """mAP50-95 against the pruned convs' sparsity, one line per method (one-shot magnitude), calibrated one-shot
    models as diamonds, recovered models starred.

    Args:
        rows: the demo's variants (dense is the 0% point of every line).
        sweep: extra one-shot points ``(method, sparsity, mAP50-95)``.
        path: output PNG.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dense = next((r for r in rows if r.method == "dense"), None)
    points: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.method != "dense" and not r.recovered and not r.calibrated:
            points.setdefault(r.method, []).append((r.sparsity, r.map5095))
    for method, s, m in sweep:
        points.setdefault(method, []).append((s, m))
    for method, pts in points.items():
        if dense is not None:
            pts = [(0.0, dense.map5095), *pts]
        pts = sorted(set(pts))
        ax.plot([100 * s for s, _ in pts], [m for _, m in pts], "o-", color=METHOD_COLOURS.get(method),
                label=f"{METHOD_LABELS.get(method, method)}, one-shot")
    calibrated_seen: set[str] = set()
    for r in rows:
        if r.recovered:
            ax.plot(100 * r.sparsity, r.map5095, "*", ms=14, color=METHOD_COLOURS.get(r.method),
                    label=f"{r.name} (masked fine-tune)")
        elif r.calibrated:  # a second calibrated model of the same method (another pattern) is drawn hollow
            fill = "full" if r.method not in calibrated_seen else "none"
            calibrated_seen.add(r.method)
            ax.plot(100 * r.sparsity, r.map5095, "D", ms=8, color=METHOD_COLOURS.get(r.method), fillstyle=fill,
                    label=f"{r.name} (one-shot)")
    if dense is not None:
        ax.axhline(dense.map5095, color="#888888", lw=0.8, ls="--", label=f"dense {dense.map5095:.3f}")
    ax.set_xlabel("sparsity of the pruned conv weights (%)")
    ax.set_ylabel("mAP50-95 (pycocotools)")
    ax.set_xlim(-3, 100)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Accuracy vs sparsity")
    return _save(fig, path)


def plot_layer_sparsity(reports: dict[str, Any], path: Path) -> Path:
    """Per-layer sparsity bars, one panel per pruned variant.

    Args:
        reports: ``{variant name: SparsityReport}`` (:func:`sparseyolo.prune.sparsity_report`).
        path: output PNG.
    """
    plt = _plt()
    n = max(len(reports), 1)
    layers = [lay.name for lay in next(iter(reports.values())).layers] if reports else []
    fig, axes = plt.subplots(n, 1, figsize=(max(8.0, 0.16 * len(layers) + 2), 1.9 * n + 0.8), sharex=True,
                             squeeze=False)
    for ax, (name, rep) in zip(axes[:, 0], reports.items()):
        vals = [100 * lay.sparsity for lay in rep.layers]
        colours = ["#bbbbbb" if lay.pattern == "dense" else "#1f77b4" for lay in rep.layers]
        ax.bar(range(len(vals)), vals, color=colours, width=0.8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("sparsity %")
        ax.set_title(f"{name}: {100 * rep.masked_sparsity:.1f}% of the pruned weights are zero "
                     f"(grey: layers left dense)", fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(range(len(layers)))
    axes[-1, 0].set_xticklabels([_short(s) for s in layers], rotation=90, fontsize=6)
    axes[-1, 0].set_xlabel("conv layer (in model order)")
    return _save(fig, path)


def plot_layer_speedup(reports: dict[str, Any], path: Path) -> Path:
    """Per-layer speedup of the sparse kernel over dense ``conv2d`` as ``sparsify(auto)`` timed it.

    Bars above 1 are layers where the sparse kernel was faster (``auto`` then uses it: solid); below 1 the
    layer stays dense (hatched). Layers not timed (not eligible) are left out.

    Args:
        reports: ``{variant name: SparsifyReport}`` (``model.sparsify_report``).
        path: output PNG.
    """
    plt = _plt()
    n = max(len(reports), 1)
    width = max((len(r.layers) for r in reports.values()), default=10)
    fig, axes = plt.subplots(n, 1, figsize=(max(8.0, 0.16 * width + 2), 2.0 * n + 0.8), squeeze=False)
    for ax, (name, rep) in zip(axes[:, 0], reports.items()):
        timed = [d for d in rep.layers if not math.isnan(d.speedup)]
        vals = [d.speedup for d in timed]
        for i, d in enumerate(timed):  # bars start at 1 (no change) on a log axis: up = faster, down = slower
            ax.bar(i, d.speedup - 1.0, bottom=1.0, color="#2ca02c" if d.backend == "sparse" else "#d62728",
                   width=0.8, hatch=None if d.backend == "sparse" else "//", alpha=0.85)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("dense / sparse (log)")
        n_sparse = sum(d.backend == "sparse" for d in timed)
        geo = math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")
        ax.set_title(f"{name}: {n_sparse}/{len(rep.layers)} convs run sparse (green); geometric mean "
                     f"per-layer speedup {geo:.2f}x; {rep.threads} threads", fontsize=9, loc="left")
        ax.set_xticks(range(len(timed)))
        ax.set_xticklabels([_short(d.name) for d in timed], rotation=90, fontsize=6)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_latency(rows: Sequence[ModelRow], path: Path, imgsz: int, threads: int) -> Path:
    """Per-image CPU latency of each variant: BN-folded dense model vs ``sparsify(auto)``, side by side."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 1.5), 4.0))
    idx = np.arange(len(rows))
    ax.bar(idx - 0.2, [r.dense_ms for r in rows], 0.4, label="dense (BN folded)", color="#7f7f7f")
    ax.bar(idx + 0.2, [r.sparse_ms for r in rows], 0.4, label="sparsify(auto)", color="#2ca02c")
    for i, r in enumerate(rows):
        ax.text(i + 0.2, r.sparse_ms, f"{r.speedup:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(idx)
    ax.set_xticklabels([r.name for r in rows], fontsize=8)
    ax.set_ylabel("ms per image (median)")
    ax.set_title(f"CPU latency, batch 1, {imgsz}x{imgsz}, {threads} threads", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_bench_latency(result: Any, path: Path) -> Path:
    """``sparseyolo bench``: ms per image of each variant (horizontal bars), speedup over the fastest dense."""
    plt = _plt()
    rows = [r for r in result.rows if r.ms == r.ms]  # a runtime that is not installed has no bar
    fig, ax = plt.subplots(figsize=(8.0, 0.55 * len(rows) + 1.4))
    idx = np.arange(len(rows))[::-1]
    colors = ["#7f7f7f" if r.name in result.dense_rows else "#2ca02c" for r in rows]
    per_img = [r.ms / result.batch for r in rows]
    ax.barh(idx, per_img, color=colors, height=0.6)
    for i, r, v in zip(idx, rows, per_img, strict=True):
        ax.text(v, i, f" {v:.2f} ms ({result.dense_ms / r.ms:.2f}x)", va="center", fontsize=8)
    ax.set_yticks(idx)
    ax.set_yticklabels([r.name for r in rows], fontsize=8)
    ax.set_xlabel("ms per image (median)")
    ax.set_xlim(0, max(per_img) * 1.35)
    ax.set_title(f"{Path(result.weights).name}: {result.device} {result.dtype}, batch {result.batch}, "
                 f"{result.imgsz}x{result.imgsz}, {result.threads} threads", fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs_speed(points: Sequence[tuple[str, float, float]], dense_map: float, path: Path,
                           title: str = "") -> Path:
    """mAP50-95 against speedup over the fastest dense runtime, one labelled point per pruned variant.

    Args:
        points: ``(name, speedup, mAP50-95)`` per variant.
        dense_map: the dense model's mAP50-95 (a dashed line; the dense model sits at 1.0x on it).
        path: output PNG.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10.0, 4.6))
    ax.axhline(dense_map, color="#888888", lw=0.8, ls="--")
    ax.axvline(1.0, color="#888888", lw=0.8, ls=":")
    ax.plot([1.0], [dense_map], "s", color="#444444", ms=8)
    ax.annotate(f"dense {dense_map:.3f}", (1.0, dense_map), textcoords="offset points", xytext=(6, 4), fontsize=8)
    cmap = plt.get_cmap("tab20")
    markers = "oDs^vP*X"
    for i, (name, speedup, m) in enumerate(points):
        ax.plot([speedup], [m], markers[i // 10 % len(markers)], color=cmap(2 * i % 20 + i // 10 % 2), ms=7,
                label=f"{name}: {m:.3f}, {speedup:.2f}x")
    ax.set_xlabel("speedup over the fastest dense runtime (same run)")
    ax.set_ylabel("mAP50-95, held-out images")
    ax.set_ylim(bottom=0, top=max([dense_map, *(m for *_, m in points)]) * 1.12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title(title or "Accuracy vs speed", fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def detect(model: torch.nn.Module, image_bgr: np.ndarray, imgsz: int, conf: float = 0.25,
           iou: float = 0.45) -> np.ndarray:
    """Detections ``float[n, 6]`` (x1, y1, x2, y2 in image pixels, conf, cls) of one BGR image."""
    from sparseyolo.data.augment import letterbox
    from sparseyolo.ops import yolo_nms
    from sparseyolo.utils.boxes import scale_boxes

    stride = int(max(getattr(model, "stride", torch.tensor([32.0])).max(), 32))
    im, _, _ = letterbox(image_bgr, imgsz, auto=False, stride=stride)
    x = torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
    model.eval()
    det = yolo_nms(model(x)[0], conf, iou)[0]
    det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], image_bgr.shape[:2])
    return det.numpy()


def plot_detections(image_bgr: np.ndarray, panels: Sequence[tuple[str, np.ndarray]], names: Sequence[str],
                    path: Path) -> Path:
    """The same image with each model's boxes, side by side.

    Args:
        image_bgr: uint8[H, W, 3] BGR image.
        panels: ``(title, detections float[n, 6])`` per model (x1, y1, x2, y2, conf, cls).
        names: class names.
        path: output PNG.
    """
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.5), squeeze=False)
    rgb = image_bgr[:, :, ::-1]
    for ax, (title, det) in zip(axes[0], panels):
        ax.imshow(rgb)
        for x1, y1, x2, y2, c, k in det:
            colour = cmap(int(k) % 10)
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.6, ec=colour))
            ax.text(x1, y1 - 1, f"{names[int(k)]} {c:.2f}", color="white", fontsize=6.5, va="bottom",
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.5, "lw": 0})
        ax.set_title(f"{title}: {len(det)} boxes (conf > 0.25)", fontsize=9)
        ax.axis("off")
    return _save(fig, path)
