"""Box format conversions and geometry, in pure torch/numpy.

Formats:
  * ``xyxy``: ``(x1, y1, x2, y2)`` corners, in pixels unless stated.
  * ``xywh``: ``(cx, cy, w, h)`` centre and size, in pixels.
  * ``xywhn``: ``xywh`` normalised by the image width/height (YOLO label files).
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _clone(x: ArrayLike) -> ArrayLike:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xywh2xyxy(x: ArrayLike) -> ArrayLike:
    """Convert boxes (Tensor|ndarray[..., 4]) from ``xywh`` to ``xyxy``."""
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x: ArrayLike) -> ArrayLike:
    """Convert boxes (Tensor|ndarray[..., 4]) from ``xyxy`` to ``xywh``."""
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x: ArrayLike, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0) -> ArrayLike:
    """Convert normalised ``xywhn`` boxes to pixel ``xyxy`` on a ``w x h`` image shifted by a padding."""
    y = _clone(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``xyxy`` boxes (Tensor[N, 4]) -> Tensor[N]."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU of ``xyxy`` boxes: Tensor[N, 4] x Tensor[M, 4] -> Tensor[N, M].

    Pure-torch reference (the ``eps`` in the denominator is YOLOv5's, so zero-area pairs give 0, not NaN).
    """
    (a1, a2), (b1, b2) = boxes1[:, None].chunk(2, 2), boxes2.unsqueeze(0).chunk(2, 2)
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(0).prod(2)
    return inter / (box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter + eps)


def clip_boxes(boxes: ArrayLike, shape: tuple[int, int]) -> ArrayLike:
    """Clip ``xyxy`` boxes in place to an image of ``shape = (height, width)``; returns them."""
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, shape[1])
        boxes[..., 1].clamp_(0, shape[0])
        boxes[..., 2].clamp_(0, shape[1])
        boxes[..., 3].clamp_(0, shape[0])
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, shape[1])
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, shape[0])
    return boxes


def scale_boxes(
    img1_shape: tuple[int, int],
    boxes: ArrayLike,
    img0_shape: tuple[int, int],
    ratio_pad: tuple | None = None,
) -> ArrayLike:
    """Map ``xyxy`` boxes in place from a letterboxed image back to the original image.

    Args:
        img1_shape: ``(h, w)`` of the letterboxed network input.
        boxes: boxes in ``img1_shape`` pixels; modified in place and returned.
        img0_shape: ``(h, w)`` of the original image.
        ratio_pad: ``((ratio,), (padw, padh))`` as recorded by the loader; computed from the shapes when None
            (exact only for letterboxes made with the same rule).
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)
