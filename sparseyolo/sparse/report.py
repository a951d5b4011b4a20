"""What :func:`~sparseyolo.sparse.sparsify` did, per pruned conv: :class:`LayerDecision`, :class:`SparsifyReport`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LayerDecision:
    """What :func:`sparsify` did with one pruned conv.

    ``backend`` is ``"sparse"`` (the layer is a :class:`~sparseyolo.sparse.SparseConv2d`) or ``"dense"``;
    ``backend_name`` is the registered backend that runs it (``"cpu_csr"``, ``"cuda_mma_sp"``, ... or
    ``"dense"``). ``dense_ms``/``sparse_ms`` are the autotuner's times of dense and of the fastest sparse
    candidate (NaN when not timed); ``times`` has every candidate's.
    """

    name: str
    weight_shape: tuple[int, ...]
    stride: tuple[int, int]
    input_shape: tuple[int, ...] | None
    sparsity: float
    pattern: str
    backend: str  # "sparse" or "dense"
    dense_ms: float = float("nan")
    sparse_ms: float = float("nan")
    reason: str = ""
    backend_name: str = "dense"
    times: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms if self.sparse_ms == self.sparse_ms and self.sparse_ms > 0 else float("nan")


@dataclass
class SparsifyReport:
    """Per-layer decisions of :func:`sparsify`; ``str()`` gives a table."""

    backend: str
    threads: int
    layers: list[LayerDecision] = field(default_factory=list)
    folded_bn: int = 0
    #: "auto" only: whole-model forward times (ms) of the candidates it compared on ``example_input``:
    #: "sparse" (the per-layer choices), "dense" (all dense, NCHW) and "dense_channels_last".
    model_ms: dict[str, float] = field(default_factory=dict)
    #: "auto" only: which candidate was returned ("sparse", "dense" or "dense_channels_last").
    chosen: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    #: The input layout the returned model reads without a copy: "channels_last" when most of its sparse layers
    #: (or its dense layers, for "dense_channels_last") read channels-last, else "contiguous". Feed it
    #: ``x.contiguous(memory_format=report.memory_format)``; an NCHW input into a channels-last model costs a layout
    #: change at the first sparse layer and layout mixes at every concatenation after it.
    layout: str = "contiguous"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.layout == "channels_last" else torch.contiguous_format

    @property
    def sparse_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.backend == "sparse"]

    def table(self) -> str:
        head = (f"{'layer':<24} {'weight':<18} {'s':>1} {'input':<18} {'sparsity':>8} {'pattern':<12} "
                f"{'dense ms':>9} {'sparse ms':>9} {'speedup':>7}  backend")
        rows = [head]
        for d in self.layers:
            inp = "x".join(map(str, d.input_shape)) if d.input_shape else "-"
            rows.append(
                f"{d.name:<24} {'x'.join(map(str, d.weight_shape)):<18} {d.stride[0]:>1} {inp:<18} {d.sparsity:>8.3f} "
                f"{d.pattern:<12} {d.dense_ms:>9.3f} {d.sparse_ms:>9.3f} {d.speedup:>7.2f}  "
                + (f"sparse ({d.backend_name})" if d.backend == "sparse" else "dense")
                + (f" ({d.reason})" if d.reason else "")
            )
        rows.append(f"{len(self.sparse_layers)}/{len(self.layers)} pruned convs sparse (backend={self.backend}, "
                    f"{self.device} {self.dtype}, {self.threads} threads), {self.folded_bn} BatchNorms folded")
        if self.model_ms:
            times = ", ".join(f"{k} {v:.2f} ms" for k, v in self.model_ms.items())
            rows.append(f"whole model on example_input: {times} -> {self.chosen}")
        if self.layout == "channels_last":
            rows.append("feed it channels-last inputs: x.contiguous(memory_format=torch.channels_last)")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def sparsify_report(model: nn.Module) -> SparsifyReport | None:
    """The :class:`SparsifyReport` of a model returned by :func:`sparsify` (None otherwise)."""
    return getattr(model, "sparsify_report", None)
