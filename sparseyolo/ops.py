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


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with ``torchvision.ops.nms``'s semantics.

    Args:
        boxes (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``; float32, float16 or bfloat16.
        scores (Tensor[N]): one score per box, same dtype and device as ``boxes``.
        iou_threshold: a box is discarded when its IoU with a kept, higher-ranked box is ``> iou_threshold``.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score.

    Caveats:
        Ties: equal scores rank by ascending box index (torchvision's unstable sort leaves that open).
        NaN scores rank above ``+inf`` (as ``torch.sort`` puts them), so NaN-scored boxes are kept first.
        16-bit inputs are computed in float32 (torchvision has no CPU half kernel). A pair with zero union
        has IoU NaN and never suppresses. On CUDA the output size needs one device-to-host sync.
    """
    return torch.ops.sparseyolo.nms.default(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per-category NMS with ``torchvision.ops.batched_nms``'s semantics: boxes of different ``idxs`` never
    suppress each other.

    Args:
        boxes (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``.
        scores (Tensor[N]): scores, same dtype and device.
        idxs (Tensor[N]): integer category of each box.
        iou_threshold: as in :func:`nms`.

    Returns:
        Tensor[K] (int64): kept indices, by decreasing score.

    Caveats:
        Categories are separated by shifting each box by ``idx * (max coordinate + 1)`` (in float32 for
        16-bit inputs, where the shifted coordinates would lose precision); the IoU of shifted boxes can
        differ from the unshifted one in the last bits. Ties and NaN as in :func:`nms`.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    work = boxes if boxes.dtype == torch.float32 else boxes.float()
    offsets = idxs.to(work) * (work.max() + 1)
    return nms(work + offsets[:, None], scores.to(work.dtype), iou_threshold)


def _classes_tensor(classes, device: torch.device) -> torch.Tensor | None:
    if classes is None or isinstance(classes, torch.Tensor) and classes.device == device:
        return classes
    return torch.as_tensor(list(classes) if not isinstance(classes, torch.Tensor) else classes, dtype=torch.int64,
                           device=device)


def yolo_nms_padded(
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes=None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`yolo_nms` without the per-image split: everything stays on the device, no host sync.

    Returns:
        ``(dets, counts)``: dets (Tensor[B, W, 6]) rows ``(x1, y1, x2, y2, conf, cls)`` zero-padded, with
        ``W = min(max_det, max_nms, N * (nc if multi_label else 1))``; counts (Tensor[B], int64): image ``b``'s
        detections are ``dets[b, :counts[b]]``.
    """
    if isinstance(pred, (list, tuple)):
        pred = pred[0]  # (inference output, raw per-level maps), as Detect returns in eval mode
    return torch.ops.sparseyolo.yolo_nms.default(pred, conf_thres, iou_thres, _classes_tensor(classes, pred.device),
                                                 agnostic, multi_label, max_det, max_nms)


def yolo_nms(
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes=None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Raw YOLOv5 output to final detections in one op: YOLOv5's ``non_max_suppression``, fused.

    Per image: keep anchors with ``obj > conf_thres``; ``conf = obj * cls``; candidates are every class with
    ``conf > conf_thres`` (``multi_label``) or the best class if its ``conf > conf_thres``; keep ``classes``
    only; take the ``max_nms`` best; greedy NMS per class (all classes together if ``agnostic``); keep the
    first ``max_det``.

    Args:
        pred (Tensor[B, N, 5 + nc]): rows ``(cx, cy, w, h, obj, cls_0 .. cls_{nc-1})``, boxes in pixels, scores
            after the sigmoid; float32, float16 or bfloat16. A ``(pred, raw)`` tuple is accepted.
        conf_thres: score threshold in ``[0, 1]``.
        iou_thres: IoU threshold in ``[0, 1]``; a box is suppressed when its IoU with a kept box is above it.
        classes (Sequence[int] | Tensor[K] | None): keep only these class indices.
        agnostic: one NMS over all classes.
        multi_label: one candidate per passing (box, class) pair (YOLOv5 val); ignored when ``nc == 1``.
        max_det: detections kept per image (>= 1).
        max_nms: candidates per image that enter the NMS (>= 1).

    Returns:
        list[Tensor[n_b, 6]]: per image, rows ``(x1, y1, x2, y2, conf, cls)`` by decreasing ``conf``, on the
        device and in the dtype of ``pred``. Splitting needs one device-to-host sync; use
        :func:`yolo_nms_padded` to avoid it.

    Raises:
        RuntimeError: malformed ``pred`` (not 3D, ``nc < 1``, float64), thresholds outside ``[0, 1]``,
            ``max_det < 1`` or ``max_nms < 1``.

    Caveats:
        Ties: equal scores rank by ascending ``anchor * nc + class`` (the reference's stable order);
        torchvision's unstable sort may break such ties differently, the kept scores are the same.
        Non-finite scores: NaN never passes a threshold (a NaN objectness drops the anchor; a NaN class
        score drops that pair, and in single-label mode the whole anchor, as ``torch.max`` returns NaN);
        ``+inf`` passes and ranks first; ``inf * 0 = NaN`` drops the pair.
        Classes are independent; the reference's ``cls * 7680`` offset only differs for boxes wider than
        7680 px. 16-bit inputs are computed as if upcast to float32 and the outputs rounded once, which can
        differ near the thresholds from running the reference in half precision.
    """
    dets, counts = yolo_nms_padded(pred, conf_thres, iou_thres, classes, agnostic, multi_label, max_det, max_nms)
    return [d[:c] for d, c in zip(dets, counts.tolist())]
