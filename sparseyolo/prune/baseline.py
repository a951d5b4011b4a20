"""The Ultralytics-compatible pruning baseline, without masks.

Per-layer L1 unstructured pruning of every ``nn.Conv2d`` (YOLOv5's ``utils.torch_utils.prune`` does the same
with ``torch.nn.utils.prune.l1_unstructured``), applied in place with no masks kept. The masked, persistent
version is ``sparseyolo.prune.prune(model, "l1", amount)``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)


def global_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero values over all parameters (weights and biases), as YOLOv5 reports it."""
    total, zeros = 0, 0
    for p in model.parameters():
        total += p.numel()
        zeros += int((p == 0).sum())
    return zeros / max(total, 1)


@torch.no_grad()
def l1_unstructured_(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``round(amount * numel)`` smallest-magnitude weights of every ``nn.Conv2d``, layer by layer.

    Args:
        model: any module; its Conv2d weights are modified in place (biases untouched).
        amount: fraction in [0, 1) of each layer's weights to zero.

    Returns:
        The same model.

    Caveats:
        Among equal magnitudes at the threshold, which ones are zeroed follows ``torch.topk``, exactly as
        ``torch.nn.utils.prune.l1_unstructured``; on a BN-fused model this is what YOLOv5's val/prune does.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"prune amount must be in [0, 1), got {amount}")
    n_layers = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight
            k = round(amount * w.numel())
            if k > 0:
                idx = torch.topk(w.detach().abs().flatten().float(), k, largest=False).indices
                w.view(-1)[idx] = 0
            n_layers += 1
    if n_layers == 0:
        raise ValueError("no nn.Conv2d layer to prune in this model")
    LOGGER.info("Model pruned to %.3g global sparsity", global_sparsity(model))
    return model
