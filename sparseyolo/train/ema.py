"""Exponential moving average of model weights, with YOLOv5's ramped decay."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["ModelEMA", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """Keep ``ema = d * ema + (1 - d) * model`` over every floating-point entry of the state_dict.

    The decay ramps up with the number of updates, ``d = decay * (1 - exp(-updates / tau))``, so the first
    updates follow the model closely (YOLOv5's ``ModelEMA``, after the TensorFlow EMA with num_updates).

    Args:
        model: the model to follow (a DDP wrapper is unwrapped).
        decay: asymptotic decay.
        tau: ramp time constant in updates.
        updates: updates already done (when resuming).

    Caveats:
        Non-floating entries (pruning masks ``weight_mask``, BN ``num_batches_tracked``) are copied from the
        model at every update, so masks grown during training reach the EMA at once. Weights that are exactly
        zero in both the EMA and the model stay exactly zero (``d * 0 + (1 - d) * 0``), and after the masks
        grow :meth:`update` zeroes the EMA where a mask is newly off (``sparseyolo.prune.apply_masks``).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(unwrap(model)).eval()
        self.ema.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return self.decay * (1 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s state into the EMA, then re-zero EMA weights wherever a mask is off."""
        d = self.current_decay()
        self.updates += 1
        model = unwrap(model)
        msd = model.state_dict()
        self._adopt_new_masks(model, msd)
        has_masks = False
        for k, v in self.ema.state_dict().items():
            src = msd[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src.to(v.dtype), alpha=1 - d)
            else:
                v.copy_(src)
                has_masks = has_masks or k.endswith("weight_mask")
        if has_masks:
            from sparseyolo.prune import apply_masks

            apply_masks(self.ema)

    def _adopt_new_masks(self, model: nn.Module, msd: dict[str, torch.Tensor]) -> None:
        """Give the EMA the mask buffers the model gained since (pruning during training), and keep each layer's
        recorded sparsity pattern (``weight_mask_pattern``: N:M or unstructured, used when saving) in step."""
        from sparseyolo.prune.masks import PATTERN_ATTR, masked_modules

        own = self.ema.state_dict()
        for name, mod in masked_modules(model):
            ema_mod = self.ema.get_submodule(name) if name else self.ema
            if f"{name}.weight_mask" not in own:
                ema_mod.register_buffer("weight_mask", mod.weight_mask.detach().clone(), persistent=True)
            if hasattr(mod, PATTERN_ATTR):
                setattr(ema_mod, PATTERN_ATTR, getattr(mod, PATTERN_ATTR))
