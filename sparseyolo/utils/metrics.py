"""Detection metrics with YOLOv5's definitions: IoU matching, per-class AP, and P/R at the best-F1 confidence.

Definitions (those of Ultralytics YOLOv5 ``val.py`` / ``utils/metrics.py``, so the numbers match):
    * A detection is correct at IoU threshold ``t`` when it is matched one-to-one to a label of the same class
      with ``IoU >= t`` (greedy by IoU, see :func:`process_batch`).
    * AP is the area under the precision envelope, sampled at 101 recall points (COCO-style) and integrated with
      the trapezoid rule (:func:`compute_ap`).
    * P and R are read, per class, at the single confidence where the class-mean F1 curve (smoothed with a box
      filter of 10% of its length) is highest (:func:`ap_per_class`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparseyolo.utils.boxes import box_iou

# numpy >= 2 renamed trapz to trapezoid (and 2.4 removed trapz).
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # type: ignore[attr-defined]


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter ``y`` (ndarray[n]) with a window of about ``f * n`` points (odd), edges padded with end values.

    Returns:
        ndarray[n], the moving average.
    """
    nf = round(len(y) * f * 2) // 2 + 1  # odd number of filter elements
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Average precision of one precision-recall curve.

    Args:
        recall: ndarray[n], increasing recall after each detection (sorted by falling confidence).
        precision: ndarray[n], precision after each detection.

    Returns:
        ``(ap, mpre, mrec)``: the AP, and the curve with sentinels (recall 0 -> precision 1 first, recall 1 ->
        precision 0 last; ndarray[n + 2] each) where ``mpre`` is the monotone precision envelope.

    Caveats:
        The envelope is interpolated at 101 recall points ``linspace(0, 1, 101)`` and integrated with the
        trapezoid rule (YOLOv5's 'interp' method), not summed as a step function, so it differs slightly from
        pycocotools' AP.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    ap = _trapezoid(np.interp(x, mrec, mpre), x)
    return float(ap), mpre, mrec


def ap_per_class(
    tp: np.ndarray,
    conf: np.ndarray,
    pred_cls: np.ndarray,
    target_cls: np.ndarray,
    eps: float = 1e-16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class AP at each IoU threshold, and P, R, F1 at the best mean-F1 confidence.

    Args:
        tp: bool ndarray[N, T], detection correct at each of the T IoU thresholds.
        conf: ndarray[N] detection confidences.
        pred_cls: ndarray[N] detection classes.
        target_cls: ndarray[M] ground-truth classes (all labels of the dataset).
        eps: guards divisions.

    Returns:
        ``(tp, fp, p, r, f1, ap, unique_classes)`` for the C classes present in ``target_cls`` (sorted):
        ``tp``, ``fp`` (ndarray[C], counts implied by P and R), ``p``, ``r``, ``f1`` (ndarray[C]),
        ``ap`` (ndarray[C, T]) and ``unique_classes`` (int ndarray[C]).

    Caveats:
        Classes without labels are ignored (detections of them count nowhere). P and R curves are
        interpolated on ``px = linspace(0, 1, 1000)`` of confidence (``-conf`` as x because confidence falls),
        with P = 1 and R = 0 above the highest confidence; the F1 argmax is taken on the class-mean F1 curve
        smoothed by ``smooth(., 0.1)``, one confidence for all classes. Detections are sorted with numpy's
        default (unstable) argsort, as YOLOv5 does, so ties are broken the same way.
    """
    i = np.argsort(-conf)
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]

    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc = unique_classes.shape[0]

    px = np.linspace(0, 1, 1000)
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_l = nt[ci]
        n_p = i.sum()
        if n_p == 0 or n_l == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_l + eps)
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        precision = tpc / (tpc + fpc)
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], _, _ = compute_ap(recall[:, j], precision[:, j])

    f1 = 2 * p * r / (p + r + eps)
    i = smooth(f1.mean(0), 0.1).argmax()
    p, r, f1 = p[:, i], r[:, i], f1[:, i]
    tp = (r * nt).round()
    fp = (tp / (p + eps) - tp).round()
    return tp, fp, p, r, f1, ap, unique_classes.astype(int)


def process_batch(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Which detections are correct at each IoU threshold (one image).

    Args:
        detections: Tensor[N, 6] ``x1, y1, x2, y2, conf, cls`` (pixels).
        labels: Tensor[M, 5] ``cls, x1, y1, x2, y2`` (same pixel space).
        iouv: Tensor[T] IoU thresholds (e.g. ``linspace(0.5, 0.95, 10)``).

    Returns:
        bool Tensor[N, T] on ``iouv.device``.

    Caveats:
        Per threshold: candidate pairs have ``IoU >= t`` and the same class; they are sorted by IoU (descending)
        and each detection keeps its highest-IoU pair (``np.unique(..., return_index=True)`` on the detection
        column). That ``np.unique`` also re-orders the pairs by detection index, so each label then goes to the
        LOWEST-INDEX detection that kept it (after NMS: the most confident), not to the one with the highest IoU.
        This is YOLOv5's matching, reproduced on purpose (``tests/test_metrics.py`` pins it). A label is matched
        at most once, so duplicate detections of one object count once, and the greedy choice is not an
        optimal assignment.
    """
    correct = np.zeros((detections.shape[0], iouv.shape[0]), dtype=bool)
    if detections.shape[0] and labels.shape[0]:
        iou = box_iou(labels[:, 1:].float(), detections[:, :4].float())
        correct_class = labels[:, 0:1] == detections[:, 5]
        for i in range(len(iouv)):
            x = torch.where((iou >= iouv[i]) & correct_class)
            if x[0].shape[0]:
                # [label, detection, iou]; float32 like YOLOv5 so argsort sees identical values
                matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()
                if x[0].shape[0] > 1:
                    matches = matches[matches[:, 2].argsort()[::-1]]
                    matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                    matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
                correct[matches[:, 1].astype(int), i] = True
    return torch.tensor(correct, dtype=torch.bool, device=iouv.device)


@dataclass
class DetMetrics:
    """Summary of a validation run.

    Attributes:
        p, r, f1: ndarray[C] per class present in the labels, at the best mean-F1 confidence.
        ap: ndarray[C, T] AP per class and IoU threshold.
        ap_class: int ndarray[C], the class index of each row.
        nt: int ndarray[nc], labels per class (all ``nc`` classes).
    """

    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    ap_class: np.ndarray
    nt: np.ndarray

    @property
    def ap50(self) -> np.ndarray:
        """ndarray[C], AP at the first IoU threshold (0.5)."""
        return self.ap[:, 0] if self.ap.size else np.zeros(0)

    @property
    def ap5095(self) -> np.ndarray:
        """ndarray[C], AP averaged over the IoU thresholds."""
        return self.ap.mean(1) if self.ap.size else np.zeros(0)

    @property
    def mp(self) -> float:
        """Mean precision over the classes present."""
        return float(self.p.mean()) if self.p.size else 0.0

    @property
    def mr(self) -> float:
        """Mean recall over the classes present."""
        return float(self.r.mean()) if self.r.size else 0.0

    @property
    def map50(self) -> float:
        """mAP at IoU 0.5."""
        return float(self.ap50.mean()) if self.ap.size else 0.0

    @property
    def map(self) -> float:
        """mAP averaged over IoU 0.5:0.95."""
        return float(self.ap5095.mean()) if self.ap.size else 0.0

    def maps(self) -> np.ndarray:
        """ndarray[nc] mAP50-95 per class; classes without labels get the overall mAP (YOLOv5's convention)."""
        out = np.zeros(len(self.nt)) + self.map
        for i, c in enumerate(self.ap_class):
            out[c] = self.ap5095[i]
        return out

    @classmethod
    def from_stats(
        cls, tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, nc: int
    ) -> DetMetrics:
        """Summarise concatenated per-image stats (shapes as in :func:`ap_per_class`) for ``nc`` classes.

        Caveats:
            As in YOLOv5, when no detection is correct at any threshold everything is 0 (not computed).
        """
        nt = np.bincount(np.asarray(target_cls).astype(int), minlength=nc)
        if len(tp) and np.asarray(tp).any():
            _, _, p, r, f1, ap, ap_class = ap_per_class(tp, conf, pred_cls, target_cls)
            return cls(p, r, f1, ap, ap_class, nt)
        t = np.asarray(tp).shape[1] if np.asarray(tp).ndim == 2 else 10
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, t)), np.zeros(0, dtype=int), nt)
