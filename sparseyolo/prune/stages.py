"""A detector as a chain of top-level stages, and their activations on calibration images one stage at a time.

Layer-by-layer calibration (:mod:`~sparseyolo.prune.calibrated`) and stage reconstruction
(:mod:`~sparseyolo.prune.reconstruct`) both walk a model stage by stage, keeping every stage's outputs on all
calibration images only as long as a later stage still reads them. A YOLOv5 ``DetectionModel`` is the list
``model.model`` with its ``.f`` input routing (``-1``: the previous stage; an index or a list of indices for
concatenations and the detection head) and ``model.save`` (the stages whose outputs later stages read); any
other module is a single stage taking the image.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseyolo.prune.calibration_data import as_float_images

__all__ = ["ActivationStream", "model_stages"]


def model_stages(model: nn.Module) -> tuple[list[nn.Module], list, set[int]]:
    """``(stages, routes, save)``: YOLOv5's top-level layers with their ``.f`` routing and ``model.save``, else
    the whole model as one stage reading the image (``([model], [-1], set())``)."""
    seq = getattr(model, "model", None)
    if isinstance(seq, nn.Sequential) and len(seq) and all(hasattr(s, "f") for s in seq) and hasattr(model, "save"):
        return list(seq), [s.f for s in seq], set(model.save)
    return [model], [-1], set()


class ActivationStream:
    """The outputs of ``model``'s stages over all calibration ``images``, computed one stage at a time.

    ``input(i, b)`` is what stage ``i`` reads for batch ``b``; ``advance(i)`` runs stage ``i`` on every batch
    (with the stage's current weights) and drops the cached outputs no later stage reads. Outputs are kept in
    the model's device and dtype; ``images`` are uint8 or float batches (see :func:`as_float_images`).
    """

    def __init__(self, model: nn.Module, images: list[torch.Tensor]) -> None:
        self.stages, self.routes, self.save = model_stages(model)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.images = images
        self.last_use: dict[int, int] = {}
        for i, f in enumerate(self.routes):
            for j in [f] if isinstance(f, int) else f:
                self.last_use[i - 1 if j == -1 else j] = i
        self.cache: dict[int, list] = {}
        self.prev: list | None = None  # the outputs of the stage advanced last, per batch

    def __len__(self) -> int:
        return len(self.images)

    def input(self, i: int, b: int):
        if i == 0:
            return as_float_images(self.images[b], self.device, self.dtype)
        f = self.routes[i]
        if f == -1:
            return self.prev[b]
        if isinstance(f, int):
            return self.cache[f][b]
        return [self.prev[b] if j == -1 else self.cache[j][b] for j in f]

    @torch.no_grad()
    def advance(self, i: int) -> None:
        """Compute stage ``i``'s outputs (its inputs must be available)."""
        self.prev = [self.stages[i](self.input(i, b)) for b in range(len(self.images))]
        if i in self.save:
            self.cache[i] = self.prev
        for j in [j for j in self.cache if self.last_use.get(j, -1) <= i]:  # every consumer has run
            del self.cache[j]
