"""Per-layer sensitivity: each conv pruned alone at each sparsity level, its error and its weights.

What a latency-aware profile (:mod:`sparseyolo.sparse.speedup_profile`, SPDY's idea) trades against the time each
level saves. Levels are tile sparsities and N:M-block patterns (:mod:`sparseyolo.prune.levels`).
:func:`layer_variants` gathers every selected conv's input statistics once on the DENSE model's activations (one
forward pass per calibration batch, every layer at once); then, for each level, a copy of the layer is pruned
exactly as :func:`sparseyolo.prune.calibrated.calibrated_prune` would (OBS mask choice, exact refit with the bias
folded into a copy of its BatchNorm), and its relative output error and pruned weights are kept (SPDY's
reconstruction database). :meth:`LayerVariants.stitch` builds a model from any choice of variants in a moment, and
:func:`output_distortion` scores it against the dense model on calibration images: what the profile search compares
candidate profiles by. The model itself is not changed.

The variants are of each layer pruned alone from dense inputs: they do not include what earlier pruned layers do to
a layer's input, which is why the profile's choice is then pruned for real, layer by layer, with the dense-output
target (and why its accuracy is measured, not predicted).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from sparseyolo.prune.calibration_data import as_float_images
from sparseyolo.prune.layerwise import HessianAccumulator, following_batchnorms, prune_layer_at
from sparseyolo.prune.levels import Level, canonical_level, level_fits, level_label, level_order, level_pattern
from sparseyolo.prune.methods import _set, select_layers
from sparseyolo.prune.obs import DEFAULT_DAMP

LOGGER = logging.getLogger(__name__)

__all__ = ["LayerVariants", "layer_variants", "model_outputs", "output_distortion"]

Variant = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]  # pruned weight, mask, BatchNorm running mean


@dataclass
class LayerVariants:
    """Every selected conv pruned alone at each level (:func:`layer_variants`).

    Attributes:
        errors: ``{conv name: {level: relative output error}}``; a level a conv cannot take (an N:M level on input
            channels that are not a multiple of M) is absent.
        weights: ``{conv name: {level: (pruned weight, mask, its BatchNorm's running mean or None)}}``, on the CPU.
    """

    errors: dict[str, dict[Level, float]] = field(default_factory=dict)
    weights: dict[str, dict[Level, Variant]] = field(default_factory=dict)

    @torch.no_grad()
    def stitch(self, model: nn.Module, amounts: Mapping[str, Level]) -> nn.Module:
        """A copy of ``model`` with each conv of ``amounts`` replaced by its variant at that level (level 0 and the
        convs not named stay as they are), masks registered with their level's pattern."""
        out = copy.deepcopy(model)
        bns = following_batchnorms(out)
        for name, level in amounts.items():
            if level == 0.0:
                continue
            weight, mask, mean = self.weights[name][canonical_level(level)]
            conv = out.get_submodule(name)
            conv.weight.data.copy_(weight.to(conv.weight))
            _set(conv, mask.to(conv.weight.device), level_pattern(level))
            if mean is not None:
                bns[conv].running_mean.copy_(mean.to(bns[conv].running_mean))
        return out


@torch.no_grad()
def layer_variants(
    model: nn.Module,
    batches: Iterable,
    levels: Sequence[Level],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    steps: int = 3,
    damp: float = DEFAULT_DAMP,
    progress: bool = True,
    solver: str = "admm",
) -> LayerVariants:
    """Every conv :func:`~sparseyolo.prune.select_layers` selects for ``"tile"``, pruned alone at each level (see
    the module docstring).

    Args:
        model: the dense model (unfused: BatchNorms kept, as for calibrated pruning); left unchanged.
        batches: calibration batches as for :func:`~sparseyolo.prune.calibrated.calibrated_prune` (image tensors,
            or tuples whose first item is one).
        levels: tile sparsities in ``(0, 1)`` and N:M-block levels (:mod:`sparseyolo.prune.levels`); level 0 (no
            tile pruned) has error 0 and needs no entry.
        include, exclude, filter_fn: layer selection, as in :func:`sparseyolo.prune.prune`.
        steps, damp, solver: as in :func:`~sparseyolo.prune.calibrated.calibrated_prune` (``steps``: tile levels;
            N:M levels prune in one step, :func:`~sparseyolo.prune.layerwise.prune_layer_at`).
        progress: a progress bar over the layers (on stderr).

    Raises:
        ValueError: a level outside ``(0, 1)``, no calibration image, or no layer selected.
    """
    levels = sorted({canonical_level(v) for v in levels}, key=level_order)
    if not levels or 0.0 in levels:
        raise ValueError(f"levels must be tile sparsities in (0, 1) or N:M-block levels such as 2:4b32, got {levels}")
    selected, _ = select_layers(model, "tile", 4, include, exclude, filter_fn)
    if not selected:
        raise ValueError("no conv selected for tile pruning (check include/exclude)")
    images = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not images:
        raise ValueError("layer_variants needs calibration images; the calibration data is empty")
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
    out = LayerVariants()
    for name, mod in tqdm(selected, desc="sensitivity", unit="layer", disable=not progress,
                          bar_format="{l_bar}{bar:20}{r_bar}"):
        acc = accs.pop(mod)
        if acc.rows == 0:
            LOGGER.warning("layer_variants: %s not reached by the forward pass; left out", name)
            continue
        bn = bns.get(mod)
        out.errors[name], out.weights[name] = {}, {}
        for level in levels:
            if not level_fits(level, mod.in_channels):
                continue  # not offered to this conv
            trial, trial_bn = copy.deepcopy(mod), copy.deepcopy(bn)
            acc.module = trial
            out.errors[name][level] = prune_layer_at(trial, acc, level, trial_bn, steps, damp, solver)
            out.weights[name][level] = (trial.weight.detach().cpu(), trial.weight_mask.cpu(),
                                        None if trial_bn is None else trial_bn.running_mean.detach().cpu())
        LOGGER.debug("%s: %s", name, ", ".join(f"{level_label(lv)}: {e:.4f}" for lv, e in out.errors[name].items()))
    return out


def _head_maps(out) -> list[torch.Tensor]:
    """What a model's output is compared on: YOLOv5's raw head maps (the second item of its eval-mode
    ``(decoded, maps)``, whose decoded boxes in pixels would drown the logits), else every tensor in the output."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (tuple, list)):
        out = out[1]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in (out if isinstance(out, (tuple, list)) else ()) for t in _head_maps(o)]


@torch.no_grad()
def model_outputs(model: nn.Module, images: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The output maps :func:`output_distortion` compares, per batch of ``images`` (uint8 or float)."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        return [[t.float() for t in _head_maps(model(as_float_images(x, param.device, param.dtype)))]
                for x in images]
    finally:
        model.train(was_training)


def output_distortion(model: nn.Module, images: Sequence[torch.Tensor], reference: list[list[torch.Tensor]]) -> float:
    """The mean over output maps of ``||y - y_ref||^2 / ||y_ref||^2`` on ``images``, each map (YOLOv5: each
    detection scale) weighing the same; ``reference``: :func:`model_outputs` of the dense model."""
    outs = model_outputs(model, images)
    per_map = []
    for k in range(len(reference[0])):
        num = sum(float((o[k] - r[k]).pow(2).sum()) for o, r in zip(outs, reference))
        den = sum(float(r[k].pow(2).sum()) for r in reference)
        per_map.append(num / max(den, 1e-30))
    return sum(per_map) / len(per_map)
