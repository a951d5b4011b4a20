"""Reference non-maximum suppression with YOLOv5 semantics (pure torch + torchvision).

This is the oracle that faster implementations are tested against; it favours clarity over speed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torchvision

from sparseyolo.utils.boxes import xywh2xyxy

__all__ = ["non_max_suppression", "MAX_WH"]

LOGGER = logging.getLogger(__name__)

#: Per-class box offset (pixels) used to run one batched NMS over all classes; larger than any image side
#: YOLOv5 handles (7680 = 8K width), so boxes of different classes never overlap.
MAX_WH = 7680


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"non_max_suppression: {name} must be in [0, 1], got {value}")


def non_max_suppression(
    prediction: torch.Tensor | Sequence[torch.Tensor],
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    labels: Sequence[torch.Tensor] = (),
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Filter raw detector outputs to final detections, per image.

    Args:
        prediction: ``Tensor[B, N, 5 + nc]`` rows ``(cx, cy, w, h, obj, cls_0 .. cls_{nc-1})`` in pixels with
            sigmoid scores, as ``Detect`` returns in eval mode (a ``(pred, raw)`` tuple/list is accepted too).
        conf_thres: minimum objectness, and minimum ``obj * cls`` score of a kept candidate.
        iou_thres: IoU above which a lower-scored box of the same class is suppressed.
        classes: keep only these class indices.
        agnostic: suppress across classes (one NMS for all classes).
        multi_label: one candidate per (box, class) whose score passes ``conf_thres``; otherwise only the
            best class of each box.
        labels: per image, ``Tensor[M, 5]`` rows ``(cls, cx, cy, w, h)`` added as score-1 candidates
            (auto-labelling, as in YOLOv5).
        max_det: detections kept per image.
        max_nms: candidates (best scores first) fed to the NMS per image.

    Returns:
        One ``Tensor[n, 6]`` per image with rows ``(x1, y1, x2, y2, conf, cls)``, sorted by ``conf``
        descending, on the device and in the dtype of ``prediction``.

    Raises:
        ValueError: a threshold outside ``[0, 1]`` or a malformed ``prediction``.

    Caveats:
        Candidates are ordered with a stable descending sort on score before the NMS, then
        ``torchvision.ops.nms`` decides ties. The per-class offset (``cls * 7680``) is applied to the
        boxes, so classes are independent unless ``agnostic``.
    """
    _check_prob("conf_thres", conf_thres)
    _check_prob("iou_thres", iou_thres)
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]  # (inference output, raw per-level maps)
    if prediction.dim() != 3 or prediction.shape[2] < 6:
        raise ValueError(
            f"non_max_suppression: prediction should be Tensor[B, N, 5 + nc], got {tuple(prediction.shape)}"
        )

    bs = prediction.shape[0]
    nc = prediction.shape[2] - 5
    multi_label &= nc > 1  # a single class has nothing to multi-label
    xc = prediction[..., 4] > conf_thres  # objectness pre-filter

    output = [torch.zeros((0, 6), device=prediction.device, dtype=prediction.dtype)] * bs
    for xi, x in enumerate(prediction):
        x = x[xc[xi]]

        if labels and len(labels[xi]):
            lb = labels[xi]
            v = torch.zeros((len(lb), nc + 5), device=x.device, dtype=x.dtype)
            v[:, :4] = lb[:, 1:5]
            v[:, 4] = 1.0
            v[range(len(lb)), lb[:, 0].long() + 5] = 1.0
            x = torch.cat((x, v), 0)

        if not x.shape[0]:
            continue

        x = x.clone()
        x[:, 5:] *= x[:, 4:5]  # conf = obj * cls
        box = xywh2xyxy(x[:, :4])

        if multi_label:
            i, j = (x[:, 5:] > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], x[i, j + 5, None], j[:, None].to(x.dtype)), 1)
        else:
            conf, j = x[:, 5:].max(1, keepdim=True)
            x = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]

        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(list(classes), device=x.device, dtype=x.dtype)).any(1)]

        n = x.shape[0]
        if not n:
            continue
        x = x[x[:, 4].argsort(descending=True, stable=True)[:max_nms]]

        c = x[:, 5:6] * (0 if agnostic else MAX_WH)
        keep = torchvision.ops.nms(x[:, :4] + c, x[:, 4], iou_thres)[:max_det]
        output[xi] = x[keep]
    return output
