"""Sparsity report of a model: per layer and total, with dense vs compressed storage size."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sparseyolo.prune.masks import PATTERN_ATTR, has_mask
from sparseyolo.prune.storage import compress_state_dict, tensor_bytes


@dataclass
class LayerSparsity:
    """One Conv2d/Linear weight: ``pattern`` is ``"2:4"``-like, ``"unstructured"`` or ``"dense"`` (no mask)."""

    name: str
    shape: tuple[int, ...]
    pattern: str
    numel: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / max(self.numel, 1)


@dataclass
class SparsityReport:
    """What :func:`sparsity_report` measured.

    Attributes:
        layers: every Conv2d/Linear weight, masked or not.
        skipped: ``[(name, reason)]`` copied from a :class:`~sparseyolo.prune.PruneReport` when given.
        params, nonzero_params: all parameters of the model (biases, BN...) and their nonzeros.
        dense_bytes, compressed_bytes: tensor bytes of the state_dict stored dense (masks excluded) and as
            :func:`~sparseyolo.prune.storage.compress_state_dict` stores it, in ``dtype``.
        dtype: the storage dtype the sizes were computed for.
    """

    layers: list[LayerSparsity] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    params: int = 0
    nonzero_params: int = 0
    dense_bytes: int = 0
    compressed_bytes: int = 0
    dtype: torch.dtype = torch.float16

    @property
    def masked_layers(self) -> list[LayerSparsity]:
        return [lay for lay in self.layers if lay.pattern != "dense"]

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all parameters."""
        return 1.0 - self.nonzero_params / max(self.params, 1)

    @property
    def masked_sparsity(self) -> float:
        """Fraction of zeros over the weights of masked layers."""
        lay = self.masked_layers
        return 1.0 - sum(x.nonzeros for x in lay) / max(sum(x.numel for x in lay), 1)

    def table(self) -> str:
        """The report as a fixed-width text table (what ``sparseyolo prune`` prints)."""
        w = max([len(x.name) for x in self.layers] + [5])
        head = f"{'layer':<{w}}  {'shape':<18} {'pattern':>12} {'sparsity':>9} {'nonzeros':>10} {'numel':>10}"
        lines = [head, "-" * len(head)]
        for x in self.layers:
            shape = "x".join(str(s) for s in x.shape)
            lines.append(f"{x.name:<{w}}  {shape:<18} {x.pattern:>12} {100 * x.sparsity:>8.2f}% {x.nonzeros:>10d} "
                         f"{x.numel:>10d}")
        lines.append("-" * len(head))
        ml = self.masked_layers
        lines.append(f"masked layers: {len(ml)}/{len(self.layers)}, "
                     f"{100 * self.masked_sparsity:.2f}% of their {sum(x.numel for x in ml)} weights are zero")
        lines.append(f"all parameters: {self.params}, nonzero {self.nonzero_params} "
                     f"({100 * self.sparsity:.2f}% zero)")
        dt = str(self.dtype).replace("torch.", "")
        ratio = self.compressed_bytes / max(self.dense_bytes, 1)
        lines.append(f"storage ({dt}): dense {self.dense_bytes / 1e6:.3f} MB, compressed "
                     f"{self.compressed_bytes / 1e6:.3f} MB ({100 * ratio:.1f}% of dense)")
        for name, reason in self.skipped:
            lines.append(f"skipped {name}: {reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@torch.no_grad()
def masked_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over the weights of the masked (pruned) layers; 0 when no layer is masked.

    The sparsity the pruning produced, the figure :attr:`SparsityReport.masked_sparsity` reports, without the
    report's per-layer table and storage sizes (cheap enough for a training loop's progress line). A wrapper
    (DDP, EMA) must be unwrapped first: its layers are found by their ``weight_mask`` buffers.
    """
    from sparseyolo.prune.masks import masked_modules

    numel = nonzero = 0
    for _, mod in masked_modules(model):
        numel += mod.weight.numel()
        nonzero += int(torch.count_nonzero(mod.weight))
    return 1.0 - nonzero / numel if numel else 0.0


@torch.no_grad()
def sparsity_report(
    model: nn.Module, dtype: torch.dtype | None = torch.float16, skipped: list[tuple[str, str]] | None = None
) -> SparsityReport:
    """Per-layer and total sparsity of ``model``, and the size of its weights stored dense vs compressed.

    Args:
        model: any module; every Conv2d/Linear weight is listed.
        dtype: storage dtype for the sizes (float16, as released YOLOv5 files; None: as held).
        skipped: the ``skipped`` list of a :class:`~sparseyolo.prune.PruneReport`, printed with the table.

    Returns:
        A :class:`SparsityReport`; ``str()`` gives the table.
    """
    from sparseyolo.prune.masks import mask_patterns

    rep = SparsityReport(skipped=list(skipped or []), dtype=dtype or next(model.parameters()).dtype)
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            wt = mod.weight
            pattern = getattr(mod, PATTERN_ATTR, "unstructured") if has_mask(mod) else "dense"
            rep.layers.append(LayerSparsity(f"{name}.weight", tuple(wt.shape), pattern, wt.numel(),
                                            int(torch.count_nonzero(wt))))
    for p in model.parameters():
        rep.params += p.numel()
        rep.nonzero_params += int(torch.count_nonzero(p))

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    sd = {k: cast(v) for k, v in model.state_dict().items()}
    rep.dense_bytes = tensor_bytes({k: v for k, v in sd.items() if not k.endswith(".weight_mask")})
    dense, sparse = compress_state_dict(sd, mask_patterns(model))
    rep.compressed_bytes = tensor_bytes(dense) + tensor_bytes(sparse)
    return rep
