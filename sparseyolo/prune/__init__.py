"""Pruning of detector weights: magnitude (per layer or global) and N:M masks, kept through training.

Quick reference::

    from sparseyolo.prune import prune, sparsity_report, enforce_masks
    report = prune(model, "nm", n=2, m=4)          # or prune(model, "l1", 0.3) / prune(model, "global", 0.3)
    print(sparsity_report(model))                  # per-layer table, dense vs compressed size
    handle = enforce_masks(model, optimizer)        # pruned weights stay exactly zero while training
    save_checkpoint(model, "pruned.pt")            # masked weights are stored compressed

Masks are persistent bool buffers ``<module>.weight_mask`` (True = kept). The contract with the sparse
kernels is "dense weights with exact zeros": a masked weight is +0.0 wherever its mask is False.
"""

from __future__ import annotations

import logging

from sparseyolo.prune.baseline import global_sparsity, l1_unstructured_
from sparseyolo.prune.config import PruneConfig, parse_nm
from sparseyolo.prune.masks import (
    MaskEnforcer,
    apply_masks,
    enforce_masks,
    get_masks,
    mask_gradients,
    mask_patterns,
    remove_masks,
    set_mask,
)
from sparseyolo.prune.methods import METHODS, PruneReport, is_nm_mask, prune, select_layers
from sparseyolo.prune.report import LayerSparsity, SparsityReport, masked_sparsity, sparsity_report

__all__ = [
    "METHODS",
    "LayerSparsity",
    "MaskEnforcer",
    "PruneConfig",
    "PruneReport",
    "SparsityReport",
    "apply_masks",
    "enforce_masks",
    "get_masks",
    "global_sparsity",
    "is_nm_mask",
    "l1_unstructured_",
    "mask_gradients",
    "mask_patterns",
    "masked_sparsity",
    "parse_nm",
    "prune",
    "prune_from_spec",
    "remove_masks",
    "select_layers",
    "set_mask",
    "sparsity_report",
]

LOGGER = logging.getLogger(__name__)


def prune_from_spec(model, spec: float | str, method: str | None = None, **kwargs) -> PruneReport:
    """Prune as ``val``'s ``prune`` argument says: an amount (``0.3``) or an N:M pattern (``"2:4"``).

    ``method`` defaults to ``"nm"`` for a pattern and ``"l1"`` for an amount (:meth:`PruneConfig.from_spec`);
    ``kwargs`` go to :func:`prune` (``include``, ``exclude``, ...).
    """
    cfg = PruneConfig.from_spec(spec, method)
    report = prune(model, cfg.method, **{**cfg.prune_kwargs(), **kwargs})
    LOGGER.info("Model pruned to %.3g global sparsity", global_sparsity(model))  # YOLOv5's line
    return report
