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


def _check_nms_float(dtype: torch.dtype, what: str, op: str) -> None:
    torch._check(
        dtype in (torch.float32, torch.float16, torch.bfloat16),
        lambda: f"sparseyolo::{op}: {what} should be float32, float16 or bfloat16, got {dtype}",
    )


@torch.library.register_fake("sparseyolo::nms")
def _nms_fake(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    torch._check(
        boxes.dim() == 2 and boxes.shape[1] == 4,
        lambda: f"sparseyolo::nms: boxes should be a [N, 4] tensor of (x1, y1, x2, y2), got shape {list(boxes.shape)}",
    )
    torch._check(scores.dim() == 1, lambda: f"sparseyolo::nms: scores should be a [N] tensor, got shape {list(scores.shape)}")
    torch._check(
        boxes.shape[0] == scores.shape[0],
        lambda: f"sparseyolo::nms: boxes and scores should have the same N, got {boxes.shape[0]} and {scores.shape[0]}",
    )
    torch._check(
        boxes.dtype == scores.dtype,
        lambda: f"sparseyolo::nms: boxes and scores should have the same dtype, got {boxes.dtype} and {scores.dtype}",
    )
    _check_nms_float(boxes.dtype, "boxes", "nms")
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


@torch.library.register_fake("sparseyolo::yolo_nms")
def _yolo_nms_fake(
    pred: torch.Tensor,
    conf_thres: float,
    iou_thres: float,
    classes: torch.Tensor | None,
    agnostic: bool,
    multi_label: bool,
    max_det: int,
    max_nms: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    torch._check(
        pred.dim() == 3,
        lambda: "sparseyolo::yolo_nms: pred should be a [B, N, 5 + nc] tensor of (cx, cy, w, h, obj, class scores), "
        f"got shape {list(pred.shape)}",
    )
    torch._check(
        pred.shape[2] >= 6,
        lambda: f"sparseyolo::yolo_nms: pred needs at least one class (nc >= 1), so pred.size(2) >= 6, got shape {list(pred.shape)}",
    )
    _check_nms_float(pred.dtype, "pred", "yolo_nms")
    torch._check(0.0 <= conf_thres <= 1.0, lambda: f"sparseyolo::yolo_nms: conf_thres should be in [0, 1], got {conf_thres}")
    torch._check(0.0 <= iou_thres <= 1.0, lambda: f"sparseyolo::yolo_nms: iou_thres should be in [0, 1], got {iou_thres}")
    torch._check(max_det >= 1, lambda: f"sparseyolo::yolo_nms: max_det should be >= 1, got {max_det}")
    torch._check(max_nms >= 1, lambda: f"sparseyolo::yolo_nms: max_nms should be >= 1, got {max_nms}")
    nc = pred.shape[2] - 5
    per_anchor = nc if multi_label and nc > 1 else 1
    width = min(max_det, max_nms, pred.shape[1] * per_anchor)
    dets = pred.new_empty((pred.shape[0], width, 6))
    counts = pred.new_empty((pred.shape[0],), dtype=torch.int64)
    return dets, counts
