"""Per-layer sensitivity to tile pruning: each conv's calibrated output error at each tile sparsity, alone.

What a latency-aware profile (:mod:`sparseyolo.sparse.speedup_profile`, SPDY's idea) trades against the time each
level saves. For every selected conv, the input statistics are gathered once on the DENSE model's activations
(one forward pass per calibration batch, every layer at once); then, for each level, a copy of the layer is pruned
exactly as :func:`sparseyolo.prune.calibrated.calibrated_prune` would (OBS tile choice, ``steps`` increments, exact
refit with the bias folded into a copy of its BatchNorm) and the relative output error it leaves is recorded. The
model itself is not changed.

The errors are of each layer pruned alone from dense inputs: they do not include what earlier pruned layers do to
a layer's input, which is why the profile's choice is then pruned for real, layer by layer, with the dense-output
target (and why its accuracy is measured, not predicted).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from sparseyolo.prune.calibration_data import as_float_images
from sparseyolo.prune.layerwise import HessianAccumulator, _row_weight, following_batchnorms, prune_layer
from sparseyolo.prune.methods import select_layers
from sparseyolo.prune.obs import DEFAULT_DAMP

LOGGER = logging.getLogger(__name__)

__all__ = ["tile_errors"]


@torch.no_grad()
def tile_errors(
    model: nn.Module,
    batches: Iterable,
    levels: Sequence[float],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    steps: int = 3,
    damp: float = DEFAULT_DAMP,
    progress: bool = True,
) -> dict[str, dict[float, float]]:
    """``{conv name: {level: relative output error}}`` for every conv :func:`~sparseyolo.prune.select_layers`
    selects for ``"tile"`` (see the module docstring).

    Args:
        model: the dense model (unfused: BatchNorms kept, as for calibrated pruning); left unchanged.
        batches: calibration batches as for :func:`~sparseyolo.prune.calibrated.calibrated_prune` (image tensors,
            or tuples whose first item is one).
        levels: tile sparsities in ``(0, 1)``; level 0 (no tile pruned) has error 0 and needs no entry.
        include, exclude, filter_fn: layer selection, as in :func:`sparseyolo.prune.prune`.
        steps, damp: as in :func:`~sparseyolo.prune.calibrated.calibrated_prune`.
        progress: a progress bar over the layers (on stderr).

    Raises:
        ValueError: a level outside ``(0, 1)``, no calibration image, or no layer selected.
    """
    levels = sorted({float(v) for v in levels})
    if not levels or not all(0.0 < v < 1.0 for v in levels):
        raise ValueError(f"tile sparsity levels must be fractions in (0, 1), got {levels}")
    selected, _ = select_layers(model, "tile", 4, include, exclude, filter_fn)
    if not selected:
        raise ValueError("no conv selected for tile pruning (check include/exclude)")
    images = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not images:
        raise ValueError("tile_errors needs calibration images; the calibration data is empty")
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    accs = {mod: HessianAccumulator(mod) for _, mod in selected}

    def add(mod, args):
        accs[mod].add(args[0])

    hooks = [mod.register_forward_pre_hook(add) for mod in accs]
    try:
        for x in images:
            model(as_float_images(x, param.device, param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    bns = following_batchnorms(model)
    out: dict[str, dict[float, float]] = {}
    for name, mod in tqdm(selected, desc="sensitivity", unit="layer", disable=not progress,
                          bar_format="{l_bar}{bar:20}{r_bar}"):
        acc = accs.pop(mod)
        if acc.rows == 0:
            LOGGER.warning("tile_errors: %s not reached by the forward pass; left out", name)
            continue
        bn = bns.get(mod)
        out[name] = {}
        for level in levels:
            trial, trial_bn = copy.deepcopy(mod), copy.deepcopy(bn)
            acc.module = trial
            out[name][level] = float(prune_layer(trial, acc, amount=level, damp=damp, row_weight=_row_weight(bn),
                                                 refit=True, bn=trial_bn, steps=steps, tiles=True))
        LOGGER.debug("%s: %s", name, ", ".join(f"{lv:g}: {e:.4f}" for lv, e in out[name].items()))
    return out
