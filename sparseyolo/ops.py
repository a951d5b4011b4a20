"""Typed Python entry points of sparseyolo's compiled ops (``torch.ops.sparseyolo``)."""

from __future__ import annotations

import torch

from sparseyolo.extension import load_extension

load_extension()


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection-over-union of two sets of boxes.

    Args:
        boxes1 (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``.
        boxes2 (Tensor[M, 4]): same format, dtype and device as ``boxes1``.

    Returns:
        Tensor[N, M]: ``IoU(boxes1[i], boxes2[j])`` in the input dtype (computed in float32 for 16-bit
        inputs, float64 for float64).

    Caveats:
        A pair whose union is zero (two zero-area boxes) gets IoU 0, where torchvision returns NaN.
        Areas are not clamped, so inverted boxes give the same (meaningless) values as torchvision.
    """
    return torch.ops.sparseyolo.box_iou.default(boxes1, boxes2)
