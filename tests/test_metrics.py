"""Detection metrics on hand-built cases whose answers are derived in the comments."""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseyolo.utils.metrics import DetMetrics, ap_per_class, compute_ap, process_batch, smooth

IOUV = torch.linspace(0.5, 0.95, 10)


def _det(box, conf, cls):
    return [*box, conf, cls]


class TestComputeAP:
    def test_perfect_curve_is_0995(self):
        # recall [0.5, 1], precision [1, 1] -> envelope 1 on [0, 1] then the sentinel (1, 0). The 101-point
        # interpolation is linear between 0.99 (value 1) and 1.0 (value 0): AP = 0.99 + 0.01 / 2 = 0.995.
        # (YOLOv5 reports 0.995, not 1, for perfect detections.)
        ap, mpre, mrec = compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]))
        assert ap == pytest.approx(0.995, abs=1e-12)
        np.testing.assert_array_equal(mrec, [0, 0.5, 1, 1])
        np.testing.assert_array_equal(mpre, [1, 1, 1, 0])

    def test_missed_gt(self):
        # 1 of 2 objects found at precision 1: envelope 1 up to recall 0.5, then straight to 0 at recall 1.
        # Area = 0.5 + 0.5 * 0.5 / 2 = 0.75 (breakpoints on the 0.01 grid, so the trapezoid rule is exact).
        ap, _, _ = compute_ap(np.array([0.5]), np.array([1.0]))
        assert ap == pytest.approx(0.75, abs=1e-12)

    def test_fp_ranked_above_tp(self):
        # FP then TP: recall [0, 1], precision [0, 0.5]. mrec [0, 0, 1, 1], envelope [1, .5, .5, 0].
        # np.interp at the duplicated x=0 takes the right-hand value 0.5, so the curve is 0.5 on [0, 0.99]
        # and falls linearly to 0 at 1: AP = 0.5 * 0.99 + 0.5 * 0.01 / 2 = 0.4975.
        ap, _, _ = compute_ap(np.array([0.0, 1.0]), np.array([0.0, 0.5]))
        assert ap == pytest.approx(0.4975, abs=1e-12)

    def test_envelope_is_monotone(self):
        # precision with sentinels [1, 1, .5, .75, 0]; the envelope (running max from the right) lifts .5 to .75.
        _, mpre, _ = compute_ap(np.array([0.2, 0.4, 0.6]), np.array([1.0, 0.5, 0.75]))
        np.testing.assert_array_equal(mpre, [1, 1, 0.75, 0.75, 0])


class TestSmooth:
    def test_constant_and_length(self):
        y = np.full(1000, 0.3)
        out = smooth(y, 0.1)
        assert out.shape == (1000,)
        np.testing.assert_allclose(out, 0.3)

    def test_window(self):
        # len 20, f 0.1 -> nf = round(20 * 0.1 * 2) // 2 + 1 = 3, one end copy padded on each side; a step
        # [0]*10 + [1]*10 becomes a 3-point moving average: 1/3 at index 9, 2/3 at index 10.
        y = np.array([0.0] * 10 + [1.0] * 10)
        out = smooth(y, 0.1)
        np.testing.assert_allclose(out, [0] * 9 + [1 / 3, 2 / 3] + [1] * 9)


class TestAPPerClass:
    def test_perfect(self):
        # Two objects of class 0, two correct detections: AP 0.995 at every threshold, P = R = F1 = 1.
        tp = np.ones((2, 10), dtype=bool)
        tpc, fpc, p, r, f1, ap, cls = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0.0, 0.0]), np.array([0.0, 0.0]))
        np.testing.assert_allclose(ap, 0.995)
        np.testing.assert_allclose([p[0], r[0], f1[0]], 1.0, atol=1e-9)
        assert tpc.tolist() == [2.0] and fpc.tolist() == [0.0] and cls.tolist() == [0]

    def test_fp_above_tp_sorted_by_confidence(self):
        # Given out of order: the TP (conf 0.8) is listed before the FP (conf 0.9); sorting by confidence puts the
        # FP first, so the AP is the 0.4975 of TestComputeAP.test_fp_ranked_above_tp.
        tp = np.array([[True], [False]])
        _, _, _, _, _, ap, _ = ap_per_class(tp, np.array([0.8, 0.9]), np.array([0.0, 0.0]), np.array([0.0]))
        assert ap[0, 0] == pytest.approx(0.4975, abs=1e-12)

    def test_two_classes_and_unlabelled_class(self):
        # class 0: 2 labels, 2 correct detections -> AP 0.995; class 1: 2 labels, 1 correct -> AP 0.75.
        # A detection of class 5 (no labels) is ignored. mAP = (0.995 + 0.75) / 2 = 0.8725.
        tp = np.array([[1], [1], [1], [0]], dtype=bool).repeat(10, 1)
        conf = np.array([0.9, 0.8, 0.7, 0.6])
        pred_cls = np.array([0, 0, 1, 5])
        target_cls = np.array([0, 0, 1, 1])
        _, _, p, r, _, ap, cls = ap_per_class(tp, conf, pred_cls, target_cls)
        assert cls.tolist() == [0, 1]
        np.testing.assert_allclose(ap[:, 0], [0.995, 0.75])
        assert ap.mean(1).mean() == pytest.approx(0.8725)
        # At the low-confidence end (where mean F1 is highest) class 1 has P = 1, R = 0.5.
        np.testing.assert_allclose(p, [1, 1], atol=1e-9)
        np.testing.assert_allclose(r, [1, 0.5], atol=1e-9)

    def test_class_without_detections_scores_zero(self):
        tp = np.ones((1, 10), dtype=bool)
        _, _, _, _, _, ap, cls = ap_per_class(tp, np.array([0.9]), np.array([0.0]), np.array([0.0, 3.0]))
        assert cls.tolist() == [0, 3]
        np.testing.assert_allclose(ap[1], 0)


class TestProcessBatch:
    def test_no_labels_or_no_detections(self):
        d = torch.tensor([_det([0, 0, 10, 10], 0.9, 0)])
        assert not process_batch(d, torch.zeros((0, 5)), IOUV).any()
        assert process_batch(torch.zeros((0, 6)), torch.tensor([[0, 0, 0, 10, 10.0]]), IOUV).shape == (0, 10)

    def test_iou_exactly_at_thresholds(self):
        # IoU 50/100 = 0.5 exactly (the 1e-7 eps vanishes in float32): correct at 0.5 only (>=, not >).
        lab = torch.tensor([[0, 0, 0, 10, 10.0]])
        c = process_batch(torch.tensor([_det([0, 0, 10, 5], 0.9, 0)]), lab, IOUV)
        assert c[0].tolist() == [True] + [False] * 9
        # IoU 12/16 = 0.75 exactly, and IOUV[5] is exactly 0.75 in float32: correct at 0.5 ... 0.75 (6 thresholds).
        assert IOUV[5].item() == 0.75
        c = process_batch(torch.tensor([_det([0, 0, 4, 3], 0.9, 0)]), torch.tensor([[0, 0, 0, 4, 4.0]]), IOUV)
        assert c[0].tolist() == [True] * 6 + [False] * 4

    def test_class_must_match(self):
        lab = torch.tensor([[1, 0, 0, 10, 10.0]])
        assert not process_batch(torch.tensor([_det([0, 0, 10, 10], 0.9, 0)]), lab, IOUV).any()

    def test_duplicates_count_once(self):
        # Two identical perfect detections of one object: one TP per threshold, the other is a FP.
        lab = torch.tensor([[0, 0, 0, 10, 10.0]])
        d = torch.tensor([_det([0, 0, 10, 10], 0.9, 0), _det([0, 0, 10, 10], 0.8, 0)])
        c = process_batch(d, lab, IOUV)
        assert c.sum(0).tolist() == [1] * 10

    def test_label_goes_to_lowest_index_candidate(self):
        # det0 (conf 0.9) has IoU 68/100 = 0.68 with the label, det1 (conf 0.8) IoU 1. For t in 0.5..0.65 both
        # qualify; after the per-detection np.unique the pairs are ordered by detection index, so YOLOv5 gives the
        # label to det0 although det1 overlaps better. From t = 0.7 only det1 qualifies and takes it.
        lab = torch.tensor([[0, 0, 0, 10, 10.0]])
        d = torch.tensor([_det([0, 0, 10, 6.8], 0.9, 0), _det([0, 0, 10, 10], 0.8, 0)])
        c = process_batch(d, lab, IOUV)
        assert c[0].tolist() == [True] * 4 + [False] * 6
        assert c[1].tolist() == [False] * 4 + [True] * 6

    def test_best_iou_label_per_detection(self):
        # One detection overlapping two same-class labels takes the one with the higher IoU (label 1, IoU 1);
        # the second detection then takes label 0.
        lab = torch.tensor([[0, 0, 0, 10, 10.0], [0, 2, 0, 12, 10.0]])
        d = torch.tensor([_det([2, 0, 12, 10], 0.9, 0), _det([0, 0, 10, 10], 0.8, 0)])
        c = process_batch(d, lab, IOUV)
        assert c.all()

    def test_device_follows_iouv(self):
        c = process_batch(torch.tensor([_det([0, 0, 10, 10], 0.9, 0)]), torch.tensor([[0, 0, 0, 10, 10.0]]), IOUV)
        assert c.dtype == torch.bool and c.device == IOUV.device


class TestDetMetrics:
    def test_summary(self):
        tp = np.array([[1], [1], [1], [0]], dtype=bool).repeat(10, 1)
        conf, pred_cls, target_cls = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 5]), np.array([0, 0, 1, 1])
        m = DetMetrics.from_stats(tp, conf, pred_cls, target_cls, nc=3)
        assert m.map50 == pytest.approx(0.8725) and m.map == pytest.approx(0.8725)
        assert m.mp == pytest.approx(1.0) and m.mr == pytest.approx(0.75)
        assert m.nt.tolist() == [2, 2, 0]
        np.testing.assert_allclose(m.maps(), [0.995, 0.75, 0.8725])

    def test_nothing_correct_is_zero(self):
        m = DetMetrics.from_stats(np.zeros((2, 10), bool), np.array([0.9, 0.8]), np.array([0, 0]), np.array([0]), nc=2)
        assert (m.mp, m.mr, m.map50, m.map) == (0.0, 0.0, 0.0, 0.0)
        assert m.nt.tolist() == [1, 0]


def test_reference_predictions_reproduce_val_metrics(shared: Path):
    """Ultralytics' saved coco128 predictions + our dataset labels + our metrics -> the reference P, R, mAPs.

    The predictions are rounded (3 decimals for boxes, 5 for scores), so the match is to the reference table's
    printed precision: P 0.629, R 0.478, mAP50 0.541, mAP50-95 0.350.
    """
    from sparseyolo.data.dataset import ValDataset
    from sparseyolo.utils.boxes import scale_boxes, xywh2xyxy

    ref = shared / "reference" / "ultralytics_val_coco128_yolov5n_predictions.json.gz"
    rows = json.loads(gzip.decompress(ref.read_bytes()))
    by_image = collections.defaultdict(list)
    for row in rows:
        by_image[row["image_id"]].append(row)
    ds = ValDataset(shared / "data" / "coco128" / "images" / "train2017", 640, 32, 32)
    stats = []
    for k in range(len(ds)):
        img, labels, f, shapes = ds[k]
        h, w = img.shape[1:]
        labels = labels[:, 1:]
        labels[:, 1:] *= torch.tensor((w, h, w, h))
        pr = by_image[int(Path(f).stem)]
        predn = torch.tensor([[*r["bbox"], r["score"], r["category_id"]] for r in pr]).reshape(-1, 6)
        predn[:, 2:4] += predn[:, :2]
        correct = torch.zeros(len(predn), 10, dtype=torch.bool)
        if len(labels) and len(predn):
            tbox = scale_boxes(img.shape[1:], xywh2xyxy(labels[:, 1:5]), shapes[0], shapes[1])
            correct = process_batch(predn, torch.cat((labels[:, :1], tbox), 1), IOUV)
        stats.append((correct, predn[:, 4], predn[:, 5], labels[:, 0]))
    m = DetMetrics.from_stats(*[torch.cat(x, 0).numpy() for x in zip(*stats)], nc=80)
    assert m.nt.sum() == 929
    assert (round(m.mp, 3), round(m.mr, 3), round(m.map50, 3), round(m.map, 3)) == (0.629, 0.478, 0.541, 0.35)
