"""Gradual magnitude pruning during training (Zhu & Gupta, "To prune, or not to prune", 2017).

The target sparsity follows the cubic schedule

    s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3,   t0 <= t <= t0 + n dt,

which prunes fast while the network has many redundant weights and slowly near the end. Here ``t`` counts
training batches, ``t0 = prune_start * batches_per_epoch`` and ``t0 + n dt = prune_end * batches_per_epoch - 1``
(the last batch of epoch ``prune_end - 1``), so the final sparsity is reached inside the pruning window and the
epochs after it fine-tune at that sparsity.

Masks only grow: every update prunes the current (masked) weights again with a higher target through
``sparseyolo.prune.prune``, and pruned weights are exactly zero, so they rank first.

N:M sparsity cannot take a fractional ratio, so for ``method="nm"`` the schedule's sparsity is reached by
giving the N:M pattern to a growing fraction ``s(t) / (1 - N/M)`` of each layer's groups (M consecutive input
channels at a fixed output channel and kernel position), the groups whose N:M pruning removes the least
magnitude first; at the end of the window every group of every N:M layer holds the pattern. Each update
re-derives the N:M pattern of the groups from the current weights, so the pattern moves with training for
the groups not yet pruned. With ``block`` B > 1 (the pattern shared by B consecutive output channels, what the
CPU kernel skips work for) the unit is a block-group: the same M input channels at the same kernel position in
B consecutive output channels, chosen by the magnitude the shared pattern removes from all B rows.
Tiles (``method="tile"``, 16 or 32 output channels high) prune whole tiles by the schedule's amount.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from sparseyolo.prune.config import PruneConfig
from sparseyolo.prune.obs import block_sums

__all__ = ["cubic_sparsity", "PruneRecipe", "GradualPruner", "mask_buffers"]

LOGGER = logging.getLogger(__name__)

def cubic_sparsity(t: float, t0: float, t1: float, s_i: float, s_f: float) -> float:
    """The cubic schedule: ``s_i`` up to ``t0``, ``s_f`` from ``t1`` on, ``s_f + (s_i - s_f)(1 - p)^3`` between,
    with ``p = (t - t0) / (t1 - t0)``."""
    if t >= t1 and t >= t0:
        return s_f
    if t <= t0:
        return s_i  # exact at both ends, so "reached the final sparsity" compares equal
    p = (t - t0) / (t1 - t0)
    return s_f + (s_i - s_f) * (1.0 - p) ** 3


#: What to prune before or during training: the one pruning configuration (training's former name for it).
PruneRecipe = PruneConfig


def mask_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: weight_mask}`` of every masked module (bool, True = kept; the buffers themselves)."""
    from sparseyolo.prune.masks import masked_modules

    return {name: mod.weight_mask for name, mod in masked_modules(model)}


def _partial_nm_mask(
    w: torch.Tensor, full: torch.Tensor, old: torch.Tensor | None, m: int, frac: float, block: int = 1
) -> torch.Tensor:
    """Apply the N:M mask ``full`` to the fraction ``frac`` of M-groups it costs least, keep the rest dense.

    Groups are M consecutive input channels at fixed ``(cout, kh, kw)`` (the sparsyolo N:M convention), or with
    ``block`` > 1 the same M channels and ``(kh, kw)`` in ``block`` consecutive output channels (the last block
    may be shorter; ``full`` then shares its pattern over each block); ``w``, ``full``, ``old`` are
    ``[Cout, Cin, kh, kw]`` with ``Cin % m == 0``.
    """
    cout, cin, kh, kw = w.shape
    # [Cout, kh, kw, Cin/m, m]: the last axis is one group.
    g = lambda x: x.permute(0, 2, 3, 1).reshape(cout, kh, kw, cin // m, m)  # noqa: E731
    removed = (g(w.abs().float()) * ~g(full)).sum(-1)
    if block > 1:
        removed = block_sums(removed, block)  # [ceil(Cout / block), kh, kw, Cin/m]
    flat = removed.flatten()
    k = min(flat.numel(), math.ceil(frac * flat.numel() - 1e-9))
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        # Stable order on ties: lowest group index first, so every rank picks the same groups.
        order = torch.sort(flat, stable=True).indices
        chosen[order[:k]] = True
    chosen = chosen.view(*removed.shape, 1)
    if block > 1:
        chosen = chosen[torch.arange(cout, device=w.device) // block]
    mask5 = g(full) | ~chosen
    mask = mask5.reshape(cout, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    return mask & old if old is not None else mask


class GradualPruner:
    """Update masks along :func:`cubic_sparsity` during training.

    Args:
        model: the (unwrapped) training model; masks are set on its convolutions.
        recipe: a gradual :class:`PruneRecipe`.
        batches_per_epoch: training batches per epoch on this process.

    Call :meth:`maybe_update` before every optimizer step with the global batch index; it returns True when the
    masks changed (the caller then re-applies them to the EMA and re-synchronises ranks).

    Attributes:
        sparsity: the schedule sparsity the masks currently implement.
        next_t: the batch index at or after which the next update happens.
    """

    def __init__(self, model: nn.Module, recipe: PruneRecipe, batches_per_epoch: int) -> None:
        self.model = model
        self.recipe = recipe
        nb = max(batches_per_epoch, 1)
        self.t0 = recipe.start * nb
        self.t1 = max(recipe.end * nb - 1, self.t0)
        self.freq = recipe.freq or max(1, nb // 4)
        self.sparsity = -1.0
        self.next_t = self.t0

    def target(self, t: int) -> float:
        """Scheduled sparsity at batch ``t``."""
        return cubic_sparsity(t, self.t0, self.t1, self.recipe.initial, self.recipe.final)

    @property
    def done(self) -> bool:
        return self.sparsity >= self.recipe.final

    def maybe_update(self, t: int) -> bool:
        """Prune to the scheduled sparsity when an update is due at batch ``t``; True when masks were set."""
        if self.done or t < self.next_t:
            return False
        self.update(self.target(t) if t < self.t1 else self.recipe.final)
        self.next_t = t + self.freq
        return True

    @torch.no_grad()
    def update(self, sparsity: float) -> None:
        """Set the masks for ``sparsity`` (never shrinking the pruned set) and zero the pruned weights."""
        from sparseyolo.prune import apply_masks, is_nm_mask, prune, set_mask
        from sparseyolo.prune.methods import nm_magnitude_mask, select_layers

        r = self.recipe
        if r.method == "nm":
            frac = sparsity / r.final
            selected, _ = select_layers(self.model, "nm", r.m, r.include, r.exclude)
            own = mask_buffers(self.model)
            for name, module in selected:
                w = module.weight.detach()
                old = own.get(name)
                # The full N:M pattern of the current weights, kept weights ranked before pruned ones (a kept
                # exact zero beats a pruned weight), so groups already given the pattern keep it.
                rank = w.abs().float() if old is None else old * (1.0 + w.abs().float())
                full = nm_magnitude_mask(rank, r.n, r.m, r.block)
                if frac >= 1.0 or w.dim() != 4:
                    new = full & old if old is not None else full
                else:
                    new = _partial_nm_mask(w, full, old, r.m, frac, r.block)
                set_mask(module, new, f"{r.n}:{r.m}" if is_nm_mask(new, r.n, r.m) else "unstructured")
        elif sparsity > 0:
            prune(self.model, method=r.method, **{**r.prune_kwargs(), "amount": sparsity})
        apply_masks(self.model)
        self.sparsity = sparsity
        LOGGER.info("gradual pruning: masks set for %.4g sparsity (%s)", sparsity, r.method)

    def state_dict(self) -> dict:
        return {"sparsity": self.sparsity, "next_t": self.next_t}

    def load_state_dict(self, state: dict) -> None:
        self.sparsity = float(state.get("sparsity", -1.0))
        self.next_t = int(state.get("next_t", self.t0))
