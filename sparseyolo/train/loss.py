"""The YOLOv5 detection loss: anchor matching, CIoU box regression, IoU-target objectness, class BCE.

The semantics are those of YOLOv5 v7.0 (``utils/loss.py`` with the ``hyp.scratch-low.yaml`` gains), so a
checkpoint fine-tuned here sees the same objective it was trained with:

* **Matching.** A label is assigned to an anchor of a level when both width and height ratios between them
  are within ``anchor_t`` (``max(r, 1/r) < 4``). Each assigned label is also given to up to two neighbouring
  cells: the horizontally and vertically nearest ones, when the centre lies within ``g = 0.5`` of that
  border (and not in the outermost cell row/column), which triples the positives.
* **Box.** Predictions decode as ``xy = 2 sigmoid(t) - 0.5`` (cell offsets in [-0.5, 1.5]) and
  ``wh = (2 sigmoid(t))^2 * anchor``; the loss is ``1 - CIoU`` (Zheng et al., AAAI 2020) averaged per level.
* **Objectness.** BCE against a target that is the detached CIoU of the matched prediction clamped at 0
  (``gr = 1``), 0 elsewhere; the levels are weighted ``[4.0, 1.0, 0.4]`` (P3, P4, P5).
* **Class.** BCE on the matched predictions with optional label smoothing (targets ``1 - eps/2`` and
  ``eps/2``), skipped for single-class models.
* **Gains.** ``box 0.05, cls 0.5, obj 1.0``, scaled by ``3 / nl``, ``nc / 80`` (cls) and
  ``(imgsz / 640)^2`` (obj), as YOLOv5's ``train.py`` scales them (:func:`scaled_loss_gains`).

The total is multiplied by the batch size (YOLOv5's convention; the LR recipe is tuned for that scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sparseyolo.models.yolo import Detect

__all__ = ["LossGains", "scaled_loss_gains", "bbox_ciou", "build_targets", "YoloLoss"]

#: Objectness weight of each output level (P3, P4, P5) in YOLOv5; other level counts use its 5-level list.
_LEVEL_BALANCE = {3: (4.0, 1.0, 0.4)}
_LEVEL_BALANCE_DEFAULT = (4.0, 1.0, 0.25, 0.06, 0.02)

# Neighbour-cell offsets (self, left, up, right, down) times the half-cell reach g = 0.5.
_G = 0.5


@dataclass
class LossGains:
    """Loss weights and matching settings (``hyp.scratch-low.yaml`` values before :func:`scaled_loss_gains`).

    Attributes:
        box, obj, cls: gains of the three loss terms.
        anchor_t: anchor/label width-height ratio threshold for matching.
        cls_pw, obj_pw: BCE positive weights.
        label_smoothing: epsilon of label smoothing for the class targets (0 = off).
    """

    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_t: float = 4.0
    cls_pw: float = 1.0
    obj_pw: float = 1.0
    label_smoothing: float = 0.0


def scaled_loss_gains(gains: LossGains, nl: int, nc: int, imgsz: int) -> LossGains:
    """Scale the gains to the model and image size as YOLOv5's ``train.py`` does.

    ``box *= 3/nl``, ``cls *= nc/80 * 3/nl``, ``obj *= (imgsz/640)^2 * 3/nl``: the hyperparameters are tuned for
    3 levels, 80 classes and 640 pixels, and these keep each term's magnitude comparable elsewhere.
    """
    k = 3.0 / nl
    return LossGains(
        box=gains.box * k,
        obj=gains.obj * (imgsz / 640) ** 2 * k,
        cls=gains.cls * nc / 80 * k,
        anchor_t=gains.anchor_t,
        cls_pw=gains.cls_pw,
        obj_pw=gains.obj_pw,
        label_smoothing=gains.label_smoothing,
    )


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired boxes (Zheng et al., "Distance-IoU Loss", AAAI 2020).

    Args:
        box1, box2 (Tensor[n, 4]): ``(cx, cy, w, h)`` boxes, compared row by row.
        eps: added to heights and denominators, as in YOLOv5.

    Returns:
        Tensor[n]: ``IoU - (rho^2 / c^2 + alpha * v)``, with ``rho`` the centre distance, ``c`` the diagonal of
        the smallest enclosing box, ``v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2`` and ``alpha = v / (v - IoU + 1)``
        (``alpha`` treated as a constant for the gradient, as the paper prescribes).
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    h1, h2 = h1 + eps, h2 + eps
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(0) * (
        torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)
    ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


@dataclass
class LevelTargets:
    """Positives of one output level.

    Attributes:
        b, a, gj, gi (Tensor[n] long): image index, anchor index, cell row, cell column of each positive.
        tbox (Tensor[n, 4]): target ``(x, y, w, h)`` in grid units, ``x, y`` relative to the cell corner
            (in ``[-0.5, 1.5]`` for neighbour-cell positives).
        anchors (Tensor[n, 2]): the matched anchor sizes in grid units.
        cls (Tensor[n] long): class of each positive.
    """

    b: torch.Tensor
    a: torch.Tensor
    gj: torch.Tensor
    gi: torch.Tensor
    tbox: torch.Tensor
    anchors: torch.Tensor
    cls: torch.Tensor


def build_targets(
    preds: list[torch.Tensor], targets: torch.Tensor, anchors: torch.Tensor, anchor_t: float = 4.0
) -> list[LevelTargets]:
    """Assign labels to (level, anchor, cell) positives with YOLOv5's rule (see the module docstring).

    Args:
        preds: per level ``Tensor[B, na, H, W, 5 + nc]`` (only the shapes are read).
        targets (Tensor[n, 6]): ``image_index, cls, cx, cy, w, h`` with box coordinates normalised to the image.
        anchors (Tensor[nl, na, 2]): anchor sizes in grid units of each level (the ``Detect.anchors`` buffer).
        anchor_t: width/height ratio threshold.

    Returns:
        One :class:`LevelTargets` per level.
    """
    nl, na = anchors.shape[:2]
    nt = targets.shape[0]
    dev = targets.device
    # Every label paired with every anchor: [na, nt, 7] = (image, cls, cx, cy, w, h, anchor index).
    ai = torch.arange(na, device=dev, dtype=targets.dtype).view(na, 1).expand(na, nt)
    t_all = torch.cat((targets.unsqueeze(0).expand(na, nt, 6), ai.unsqueeze(-1)), 2)
    offsets5 = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=dev, dtype=targets.dtype) * _G

    out = []
    for i in range(nl):
        _, _, h, w, _ = preds[i].shape
        scale = torch.tensor([1, 1, w, h, w, h, 1], device=dev, dtype=targets.dtype)
        t = t_all * scale  # boxes in grid units of this level
        if nt:
            r = t[..., 4:6] / anchors[i].unsqueeze(1)
            keep = torch.maximum(r, 1 / r).amax(2) < anchor_t
            t = t[keep]
            gxy = t[:, 2:4]
            gxy_inv = torch.tensor([w, h], device=dev, dtype=targets.dtype) - gxy
            # Centre in the left/top half of its cell (and not in the first column/row): also the cell to the
            # left/above; in the right/bottom half (and not in the last): also the cell to the right/below.
            left, up = ((gxy % 1 < _G) & (gxy > 1)).T
            right, down = ((gxy_inv % 1 < _G) & (gxy_inv > 1)).T
            sel = torch.stack((torch.ones_like(left), left, up, right, down))
            t = t.unsqueeze(0).expand(5, -1, -1)[sel]
            off = (torch.zeros_like(gxy).unsqueeze(0) + offsets5.unsqueeze(1))[sel]
        else:
            t = t_all[0]
            off = torch.zeros_like(t[:, 2:4])
        b, c = t[:, 0].long(), t[:, 1].long()
        gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
        gij = (gxy - off).long()
        gi, gj = gij[:, 0].clamp(0, w - 1), gij[:, 1].clamp(0, h - 1)
        # The box offset is taken from the unclamped cell, as YOLOv5 does.
        tbox = torch.cat((gxy - gij, gwh), 1)
        out.append(LevelTargets(b=b, a=a, gj=gj, gi=gi, tbox=tbox, anchors=anchors[i][a], cls=c))
    return out


class YoloLoss:
    """YOLOv5's training loss for a :class:`~sparseyolo.models.yolo.DetectionModel`.

    Args:
        model: the detector (possibly wrapped in DDP); only its ``Detect`` head's ``anchors``, ``nl``, ``nc``
            are read, at every call, so masks or devices changed later are picked up.
        gains: already scaled gains (see :func:`scaled_loss_gains`).

    Call with ``(preds, targets)``: ``preds`` the train-mode model output (list of ``Tensor[B, na, H, W, 5 + nc]``),
    ``targets`` ``Tensor[n, 6]`` as in :func:`build_targets`. Returns ``(loss, items)``: the scalar total
    ``(box + obj + cls) * B`` and the detached ``Tensor[3]`` of the three (gain-weighted, per-image) terms.
    """

    def __init__(self, model: nn.Module, gains: LossGains | None = None) -> None:
        self.gains = gains or LossGains()
        m = model.module if hasattr(model, "module") else model
        det = m.model[-1]
        if not isinstance(det, Detect):
            raise TypeError(f"the last layer must be Detect, got {type(det).__name__}")
        self.det = det
        nl = det.nl
        self.balance = _LEVEL_BALANCE.get(nl, _LEVEL_BALANCE_DEFAULT[:nl])
        eps = self.gains.label_smoothing
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * eps, 0.5 * eps

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        det, g = self.det, self.gains
        dev = preds[0].device
        anchors = det.anchors.to(dev)
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([g.cls_pw], device=dev))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([g.obj_pw], device=dev))
        lbox = torch.zeros(1, device=dev)
        lobj = torch.zeros(1, device=dev)
        lcls = torch.zeros(1, device=dev)
        levels = build_targets(preds, targets.to(dev), anchors, g.anchor_t)
        for i, (p, lt) in enumerate(zip(preds, levels, strict=True)):
            tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=dev)
            n = lt.b.shape[0]
            if n:
                pxy, pwh, _, pcls = p[lt.b, lt.a, lt.gj, lt.gi].split((2, 2, 1, det.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * lt.anchors
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), lt.tbox)
                lbox = lbox + (1.0 - iou).mean()
                # Objectness target: how well the box fits (gr = 1), never negative. With several labels on
                # one (anchor, cell) the last written wins, as in YOLOv5.
                tobj[lt.b, lt.a, lt.gj, lt.gi] = iou.detach().clamp(0).to(tobj.dtype)
                if det.nc > 1:
                    t = torch.full_like(pcls, self.cls_neg)
                    t[torch.arange(n, device=dev), lt.cls] = self.cls_pos
                    lcls = lcls + bce_cls(pcls, t)
            lobj = lobj + bce_obj(p[..., 4], tobj) * self.balance[i]
        lbox, lobj, lcls = lbox * g.box, lobj * g.obj, lcls * g.cls
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls).sum() * bs, torch.cat((lbox, lobj, lcls)).detach()
