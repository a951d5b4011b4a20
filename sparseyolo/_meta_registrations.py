"""Fake (meta) kernels of the compiled ops, so they trace under torch.compile and torch.export.

Each repeats the checks of the C++ op with ``torch._check`` and the same messages.
"""

from __future__ import annotations

import torch


@torch.library.register_fake("sparseyolo::box_iou")
def _box_iou_fake(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    torch._check(
        boxes1.dim() == 2 and boxes1.shape[1] == 4,
        lambda: f"sparseyolo::box_iou: boxes1 should be a [N, 4] tensor of (x1, y1, x2, y2), got shape {list(boxes1.shape)}",
    )
    torch._check(
        boxes2.dim() == 2 and boxes2.shape[1] == 4,
        lambda: f"sparseyolo::box_iou: boxes2 should be a [M, 4] tensor of (x1, y1, x2, y2), got shape {list(boxes2.shape)}",
    )
    torch._check(
        boxes1.dtype == boxes2.dtype,
        lambda: f"sparseyolo::box_iou: boxes1 and boxes2 should have the same dtype, got {boxes1.dtype} and {boxes2.dtype}",
    )
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))
