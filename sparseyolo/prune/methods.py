"""Choosing which weights to prune: layer selection and the l1 / global / N:M criteria.

Every method writes persistent masks (:mod:`sparseyolo.prune.masks`) and zeroes the pruned weights. Masks
only grow: pruning an already-masked model keeps everything pruned before and adds to it, which is what a
gradual (e.g. cubic) schedule needs: call :func:`prune` with increasing ``amount`` and the pruned sets nest.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sparseyolo import ops
from sparseyolo.prune.config import METHODS
from sparseyolo.prune.masks import PATTERN_ATTR, has_mask, set_mask
from sparseyolo.prune.obs import block_sums
from sparseyolo.prune.tiles import is_tile_mask, pattern_tile_rows, tile_height, tile_mask, tile_pattern

LOGGER = logging.getLogger(__name__)



@dataclass
class PruneReport:
    """What :func:`prune` did.

    Attributes:
        method: ``"l1"``, ``"global"`` or ``"nm"``.
        amount: target fraction for l1/global (None for nm).
        n, m: the N:M pattern (nm only).
        pruned: ``{weight name: sparsity of that weight after pruning}`` for the selected layers.
        skipped: ``[(module name, reason)]`` for candidate layers left dense.
        zeros, numel: pruned weights and total weights over the selected layers.
    """

    method: str
    amount: float | None = None
    n: int | None = None
    m: int | None = None
    pruned: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    zeros: int = 0
    numel: int = 0

    @property
    def sparsity(self) -> float:
        """Fraction of masked-out weights over the selected layers."""
        return self.zeros / max(self.numel, 1)

    def __str__(self) -> str:
        what = f"{self.n}:{self.m}" if self.method == "nm" else f"amount {self.amount:g}"
        lines = [f"pruned {len(self.pruned)} layer(s) with {self.method} ({what}): "
                 f"{self.zeros}/{self.numel} weights masked ({100 * self.sparsity:.2f}%)"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def _patterns(p: str | Sequence[str] | None) -> list[str]:
    if p is None:
        return []
    return [p] if isinstance(p, str) else list(p)


def select_layers(
    model: nn.Module,
    method: str = "l1",
    m: int = 4,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, str]]]:
    """The layers :func:`prune` would prune, and the candidates it would skip with the reason.

    Candidates are every ``nn.Conv2d`` and ``nn.Linear`` of ``model``. ``include``/``exclude`` are
    ``fnmatch`` patterns on module names (``"model.24.*"``); a layer must match one ``include`` pattern (when
    any are given) and no ``exclude`` pattern. Grouped/depthwise convolutions are skipped (a group would mix
    channels of different filters' slices), and for ``nm`` so is every layer whose input channels are not a
    multiple of ``m`` (e.g. the 3-channel stem), and for ``tile`` every ``nn.Linear``.
    """
    inc, exc = _patterns(include), _patterns(exclude)
    selected, skipped = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        cin = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
        if inc and not any(fnmatch.fnmatchcase(name, p) for p in inc):
            skipped.append((name, f"not matched by --include {' '.join(inc)}"))
        elif hit := next((p for p in exc if fnmatch.fnmatchcase(name, p)), None):
            skipped.append((name, f"excluded by pattern '{hit}'"))
        elif isinstance(mod, nn.Conv2d) and mod.groups != 1:
            skipped.append((name, f"grouped convolution (groups={mod.groups})"))
        elif method == "nm" and cin % m != 0:
            skipped.append((name, f"{cin} input channels, not a multiple of m={m}"))
        elif method == "tile" and not isinstance(mod, nn.Conv2d):
            skipped.append((name, "a Linear layer (tiles are of conv taps)"))
        elif filter_fn is not None and not filter_fn(name, mod):
            skipped.append((name, "rejected by filter_fn"))
        else:
            selected.append((name, mod))
    return selected, skipped


def _scores(mod: nn.Module) -> torch.Tensor:
    """|w| in float32 (float64 for float64 weights), with already-pruned weights at -1 so they rank first."""
    w = mod.weight.detach()
    s = w.abs().to(torch.float64 if w.dtype == torch.float64 else torch.float32).flatten()
    if has_mask(mod):
        s = torch.where(mod.weight_mask.flatten(), s, torch.full_like(s, -1.0))
    return s


def _prune_count(mod: nn.Module) -> int:
    return int((~mod.weight_mask).sum()) if has_mask(mod) else 0


def _mask_lowest(mod: nn.Module, k: int, order: torch.Tensor | None = None) -> torch.Tensor:
    """Mask pruning the ``k`` lowest scores of ``mod`` (stable: equal scores prune the lower index first)."""
    if order is None:
        order = torch.sort(_scores(mod), stable=True).indices
    keep = torch.ones(mod.weight.numel(), dtype=torch.bool, device=mod.weight.device)
    keep[order[:k]] = False
    return keep.view(mod.weight.shape)


def _check_fraction(value: float | None, what: str) -> float:
    if value is None:
        raise ValueError(f"{what} is required (a fraction in [0, 1))")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value}")
    return float(value)


@torch.no_grad()
def prune(
    model: nn.Module,
    method: str = "l1",
    amount: float | None = None,
    n: int = 2,
    m: int = 4,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    min_layer_sparsity: float = 0.0,
    max_layer_sparsity: float | None = None,
    block: int = 1,
) -> PruneReport:
    """Prune ``model`` in place and keep the masks.

    Each selected layer (see :func:`select_layers`) gets a persistent bool buffer ``weight_mask`` and its
    weight zeroed where the mask is False.

    Methods:
        ``"l1"``: per layer, mask the ``round(amount * numel)`` smallest ``|w|`` (YOLOv5's
        ``torch_utils.prune``; on a BN-fused model it reproduces ``val.py --prune``).
        ``"global"``: one magnitude threshold over all selected layers, masking ``round(amount * total)``
        weights, with each layer's sparsity held in ``[min_layer_sparsity, max_layer_sparsity]``.
        ``"nm"``: N:M along input channels, keep the ``n`` largest ``|w|`` of every ``m`` consecutive input
        channels at each ``(cout, kh, kw)`` (:func:`sparseyolo.ops.nm_mask`).
        ``"tile"``: per layer, mask the ``round(amount * tiles)`` 16 x 32 (output x input channel) tiles of each
        tap with the smallest L2 norm (:mod:`sparseyolo.prune.tiles`): the unit the AMX CPU kernel skips;
        ``block=32``: 32 x 32 tiles, which the CPU kernel without AMX runs two blocks at a time.

    Args:
        model: any module; Conv2d/Linear weights are pruned, biases never.
        method: ``"l1"``, ``"global"`` or ``"nm"``.
        amount: fraction in ``[0, 1)`` for ``l1``/``global``/``tile``; must be None for ``nm``.
        n, m: the N:M pattern, ``1 <= n < m <= 16``.
        include, exclude: ``fnmatch`` patterns on module names.
        filter_fn: ``(name, module) -> bool``; False skips the layer.
        min_layer_sparsity, max_layer_sparsity: per-layer floor and cap of ``global`` (fractions).
        block: ``nm``: share each N:M choice across ``block`` consecutive output channels, keeping the
            positions with the largest ``|w|`` summed over the block (the last block may be shorter). Every
            row is still N:M. Patterns shared by 16 output channels are what the CPU kernel skips work for (32:
            two blocks at a time); it costs accuracy against per-row N:M. ``tile``: the tiles' output channels,
            16 (or 1, the same) or 32.

    Returns:
        A :class:`PruneReport` (pruned layers with their sparsity, skipped layers with reasons).

    Raises:
        ValueError: unknown method, ``amount`` outside ``[0, 1)``, ``n >= m``, or no prunable layer.

    Caveats:
        Masks only grow. On a model that already has masks, already-pruned weights rank below every
        other weight, the new mask is intersected with the old one, and a layer already sparser than the
        target stays as it is; so calling with ``amount = s1 < s2 < ...`` gives nested pruned sets (the
        building block of gradual pruning). ``nm`` on an N:M-masked layer keeps its kept set when nothing
        changed. Pruning an N:M layer with ``l1``/``global`` makes it unstructured.
        Ties: equal magnitudes prune the lower flat index first (``l1``, ``global``); ``nm`` keeps the lower
        channel. ``torch.topk`` (used by YOLOv5) leaves ties open, so masks can differ from YOLOv5's among
        exactly equal magnitudes.
        Before or after BN fusion: fusion scales each output channel's weights by ``gamma / sigma``. ``nm``
        groups lie within one output channel, so its masks are the same either way (up to rounding ties);
        ``l1``/``global`` compare across output channels and give different masks.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method '{method}'; choose one of {', '.join(METHODS)}")
    if not (isinstance(block, int) and block >= 1):
        raise ValueError(f"block must be a positive int, got {block!r}")
    if method == "tile":
        rows = tile_height(block)
    elif block > 1 and method != "nm":
        raise ValueError(f"block (output channels sharing a pattern) is for methods 'nm' and 'tile', not '{method}'")
    if method == "nm":
        if amount is not None:
            raise ValueError("method 'nm' takes n and m, not amount")
        if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m <= 16):
            raise ValueError(f"N:M pruning needs 1 <= n < m <= 16 (keep n of every m), got {n}:{m}")
    else:
        amount = _check_fraction(amount, "amount")
    selected, skipped = select_layers(model, method, m, include, exclude, filter_fn)
    if not selected:
        why = "; ".join(f"{name}: {reason}" for name, reason in skipped[:5]) or "the model has no Conv2d/Linear layer"
        raise ValueError(f"no prunable layer for method '{method}' ({why})")

    report = PruneReport(method=method, amount=amount, n=n if method == "nm" else None, m=m if method == "nm" else None,
                         skipped=skipped)
    if method == "nm":
        for _, mod in selected:
            _prune_nm(mod, n, m, block)
    elif method == "l1":
        for _, mod in selected:
            k = max(round(amount * mod.weight.numel()), _prune_count(mod))
            _set(mod, _mask_lowest(mod, k), "unstructured")
    elif method == "tile":
        for _, mod in selected:
            w = mod.weight * mod.weight_mask if has_mask(mod) else mod.weight
            _set(mod, tile_mask(w, amount, rows=rows), tile_pattern(rows))
    else:
        _prune_global(selected, amount, min_layer_sparsity, max_layer_sparsity)

    for name, mod in selected:
        zeros = int((~mod.weight_mask).sum())
        report.pruned[f"{name}.weight"] = zeros / mod.weight.numel()
        report.zeros += zeros
        report.numel += mod.weight.numel()
    LOGGER.info("%s", report)
    return report


def is_nm_mask(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive input channels (dim 1) keeps exactly ``n``."""
    if mask.dim() < 2 or mask.shape[1] % m:
        return False
    return bool((_move_axis1_last(mask).reshape(-1, m).sum(-1) == n).all())


def _set(mod: nn.Module, new: torch.Tensor, pattern: str) -> None:
    """Intersect with the existing mask (masks only grow) and record the pattern that actually results."""
    if has_mask(mod):
        old = mod.weight_mask
        new = new & old
        if torch.equal(new, old):
            pattern = getattr(mod, PATTERN_ATTR, pattern)
    rows = pattern_tile_rows(pattern)
    if rows is not None:
        if not is_tile_mask(new, rows):
            pattern = "unstructured"
    elif pattern != "unstructured":
        n, m = (int(v) for v in pattern.split(":"))
        if not is_nm_mask(new, n, m):
            pattern = "unstructured"
    set_mask(mod, new, pattern)


def _move_axis1_last(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(1, -1) if t.dim() > 2 else t


def nm_magnitude_mask(weight: torch.Tensor, n: int, m: int, block: int = 1) -> torch.Tensor:
    """The N:M mask keeping the ``n`` largest of every ``m`` input channels, by ``|w|`` summed over each ``block``
    consecutive output channels (one choice per block; 1: per row)."""
    w = weight.detach()
    return ops.nm_mask(block_sums(w.abs().float(), block, repeat=True), n, m) if block > 1 else ops.nm_mask(w, n, m)


def _prune_nm(mod: nn.Module, n: int, m: int, block: int = 1) -> None:
    w = mod.weight.detach()
    if block > 1:
        if has_mask(mod):
            raise ValueError("block > 1 needs a layer without masks (prune the unpruned model)")
        new = nm_magnitude_mask(w, n, m, block)
    elif not has_mask(mod):
        new = nm_magnitude_mask(w, n, m)
    else:
        # Rank the kept weights first (a kept exact zero beats a pruned one), then by magnitude.
        wl = _move_axis1_last(w).contiguous()
        values, idx = ops.nm_compress(wl, n, m, mask=_move_axis1_last(mod.weight_mask).contiguous())
        kept = ops.nm_decompress(torch.ones_like(values, dtype=torch.bool), idx, n, m)
        new = kept.movedim(-1, 1) if w.dim() > 2 else kept
    _set(mod, new.contiguous(), f"{n}:{m}")


def _prune_global(
    selected: list[tuple[str, nn.Module]], amount: float, floor: float, cap: float | None
) -> None:
    floor = _check_fraction(floor, "min_layer_sparsity")
    cap = 1.0 if cap is None else float(cap)
    if not floor <= cap <= 1.0:
        raise ValueError(f"max_layer_sparsity must be in [min_layer_sparsity, 1], got {cap} (floor {floor})")
    orders, sorted_scores, forced, eligible = [], [], [], []
    for _, mod in selected:
        s = _scores(mod)
        srt = torch.sort(s, stable=True)
        numel = s.numel()
        already = _prune_count(mod)
        lo = max(round(floor * numel), already)
        hi = max(min(int(cap * numel), numel), lo)
        orders.append(srt.indices)
        sorted_scores.append(srt.values)
        forced.append(lo)
        eligible.append(srt.values[lo:hi].cpu())
    total = sum(mod.weight.numel() for _, mod in selected)
    target = round(amount * total)
    extra = target - sum(forced)
    counts = list(forced)
    if extra > 0:
        pool = torch.cat(eligible)
        layer_of = torch.cat([torch.full((e.numel(),), i, dtype=torch.int64) for i, e in enumerate(eligible)])
        if extra > pool.numel():
            LOGGER.warning("global pruning: the per-layer caps allow only %d of the %d weights asked for",
                           sum(forced) + pool.numel(), target)
            extra = pool.numel()
        # Stable over the concatenation: ties go to the earlier layer, then the lower index, and what a layer
        # gives up is always a prefix of its own sorted order.
        chosen = torch.sort(pool, stable=True).indices[:extra]
        counts = [c + int(k) for c, k in zip(forced, torch.bincount(layer_of[chosen], minlength=len(selected)))]
    for (_, mod), order, k in zip(selected, orders, counts):
        _set(mod, _mask_lowest(mod, k, order), "unstructured")
