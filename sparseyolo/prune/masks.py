"""Persistent pruning masks: registering, reading, re-imposing and enforcing them during training.

A pruned layer carries a bool buffer ``weight_mask`` of its weight's shape (True = kept), registered as a
persistent buffer so it is saved and loaded with the ``state_dict`` (key ``<module>.weight_mask``). Its
weight is exactly zero wherever the mask is False; :func:`apply_masks` restores that after any update, in
one multi-tensor op call per device (``sparseyolo::apply_masks_``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from sparseyolo import ops

LOGGER = logging.getLogger(__name__)

MASK_NAME = "weight_mask"
#: Plain attribute naming a layer's sparsity pattern: ``"2:4"`` (N:M along input channels) or ``"unstructured"``.
PATTERN_ATTR = "weight_mask_pattern"


def has_mask(module: nn.Module) -> bool:
    return isinstance(getattr(module, MASK_NAME, None), torch.Tensor) and MASK_NAME in module._buffers


def masked_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module holding a ``weight_mask`` buffer, in ``named_modules`` order."""
    return [(name, mod) for name, mod in model.named_modules() if has_mask(mod)]


def set_mask(module: nn.Module, mask: torch.Tensor, pattern: str | None = None) -> None:
    """Register (or overwrite in place) ``module.weight_mask`` and zero the weight where it is False.

    Args:
        module: a module with a ``weight`` tensor.
        mask (Tensor[bool]): same shape as ``module.weight``.
        pattern: ``"N:M"`` or ``"unstructured"``, kept as the plain attribute ``weight_mask_pattern``.
    """
    weight = module.weight
    if mask.shape != weight.shape or mask.dtype != torch.bool:
        raise ValueError(f"a mask must be a bool tensor of the weight's shape {tuple(weight.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    mask = mask.to(weight.device)
    if has_mask(module) and module.weight_mask.shape == mask.shape:
        module.weight_mask.copy_(mask)
    else:
        module.register_buffer(MASK_NAME, mask.clone(), persistent=True)
    if pattern is not None:
        setattr(module, PATTERN_ATTR, pattern)
    with torch.no_grad():
        ops.apply_masks_([weight.data], [module.weight_mask])


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks by module-qualified weight name, e.g. ``{"model.3.conv.weight": Tensor[bool]}`` (the buffers
    themselves, not copies)."""
    return {f"{name}.weight" if name else "weight": mod.weight_mask for name, mod in masked_modules(model)}


def mask_patterns(model: nn.Module) -> dict[str, str]:
    """Recorded pattern (``"2:4"``, ``"unstructured"``) by module-qualified weight name."""
    return {
        f"{name}.weight" if name else "weight": getattr(mod, PATTERN_ATTR, "unstructured")
        for name, mod in masked_modules(model)
    }


def _by_device(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[torch.device, tuple[list, list]]:
    groups: dict[torch.device, tuple[list, list]] = {}
    for t, mk in pairs:
        ts, ms = groups.setdefault(t.device, ([], []))
        ts.append(t)
        ms.append(mk if mk.device == t.device else mk.to(t.device))
    return groups


@torch.no_grad()
def apply_masks(model: nn.Module) -> int:
    """Zero every masked weight where its mask is False: one ``apply_masks_`` call per device.

    Returns:
        The number of masked tensors.
    """
    pairs = [(mod.weight.data, mod.weight_mask) for _, mod in masked_modules(model)]
    for ts, ms in _by_device(pairs).values():
        ops.apply_masks_(ts, ms)
    return len(pairs)


@torch.no_grad()
def mask_gradients(model: nn.Module) -> int:
    """Zero the gradients of masked weights where the mask is False (one op call per device)."""
    pairs = [(mod.weight.grad, mod.weight_mask) for _, mod in masked_modules(model) if mod.weight.grad is not None]
    for ts, ms in _by_device(pairs).values():
        ops.apply_masks_(ts, ms)
    return len(pairs)


class MaskEnforcer:
    """Handle returned by :func:`enforce_masks`; ``remove()`` detaches its optimizer hooks."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    # Optimizer hooks must return None (a pre-hook's non-None result replaces the step's arguments).
    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        mask_gradients(self.model)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        apply_masks(self.model)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> MaskEnforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def enforce_masks(model: nn.Module, optimizer: torch.optim.Optimizer) -> MaskEnforcer:
    """Keep pruned weights at exactly zero while ``optimizer`` trains ``model``.

    Before every ``optimizer.step()`` the gradients of masked weights are zeroed where the mask is False;
    after it the weights are re-masked (weight decay and momentum would otherwise revive them). Masks are
    looked up at each step, so masks grown by a later :func:`~sparseyolo.prune.prune` call are honoured.

    Returns:
        A handle; ``handle.remove()`` (or leaving it as a context manager) stops the enforcement.

    Caveats:
        With ``torch.amp.GradScaler`` a skipped step (inf/NaN gradients) still runs the hooks, which is
        harmless. Optimizer state (momentum) at pruned positions is not cleared; it cannot leak into the
        weights because they are re-masked after every step.
    """
    return MaskEnforcer(model, optimizer)


def remove_masks(model: nn.Module) -> int:
    """Delete every ``weight_mask`` buffer; the weights keep their zeros but are free to change.

    Returns:
        The number of masks removed.
    """
    mods = masked_modules(model)
    for _, mod in mods:
        del mod._buffers[MASK_NAME]
        if hasattr(mod, PATTERN_ATTR):
            delattr(mod, PATTERN_ATTR)
    return len(mods)


def register_masks_for_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], patterns: dict[str, str] | None = None
) -> int:
    """Register a placeholder ``weight_mask`` on every module whose mask key is in ``state_dict``, so that
    ``load_state_dict`` can fill it (used when loading pruned checkpoints).

    Returns:
        The number of masks registered.

    Raises:
        KeyError: a mask key names no module of ``model``.
    """
    modules = dict(model.named_modules())
    count = 0
    for key, mask in state_dict.items():
        if not key.endswith("." + MASK_NAME):
            continue
        name = key[: -len(MASK_NAME) - 1]
        mod = modules.get(name)
        if mod is None or not isinstance(getattr(mod, "weight", None), torch.Tensor):
            raise KeyError(f"the checkpoint has a pruning mask '{key}' but the model has no layer '{name}' with a weight")
        if not has_mask(mod):
            mod.register_buffer(MASK_NAME, torch.ones(mod.weight.shape, dtype=torch.bool, device=mod.weight.device))
        pattern = (patterns or {}).get(f"{name}.weight")
        if pattern:
            setattr(mod, PATTERN_ATTR, pattern)
        count += 1
    return count
