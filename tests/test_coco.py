"""COCO conversion and pycocotools evaluation."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseyolo.utils.coco import (
    coco_class_map,
    evaluate_coco,
    image_id_for,
    predictions_to_coco,
    yolo_labels_to_coco,
)

REFERENCE_STATS = [0.3541, 0.5477, 0.3733, 0.199, 0.469, 0.5064, 0.3074, 0.4759, 0.5303, 0.3077, 0.616, 0.6888]


class TestClassMap:
    def test_sorted_category_ids(self):
        gt = {"categories": [{"id": 7}, {"id": 1}, {"id": 90}, {"id": 3}]}
        assert coco_class_map(gt, 3) == [1, 3, 7]
        assert coco_class_map(gt, 4) == [1, 3, 7, 90]

    def test_identity_without_json(self):
        assert coco_class_map(None, 4) == [0, 1, 2, 3]

    def test_too_few_categories(self):
        with pytest.raises(ValueError, match="2 categories but .* nc=3"):
            coco_class_map({"categories": [{"id": 1}, {"id": 2}]}, 3)

    def test_from_path(self, tmp_path):
        p = tmp_path / "instances_val.json"
        p.write_text(json.dumps({"categories": [{"id": 5}, {"id": 2}]}))
        assert coco_class_map(p, 2) == [2, 5]


class TestImageIds:
    def test_numeric_stem(self):
        assert image_id_for("/a/images/000000000009.jpg") == 9
        assert image_id_for(Path("42.png")) == 42

    def test_non_numeric_is_stable_and_distinct(self):
        a, b = image_id_for("/x/cat.jpg"), image_id_for("/y/cat.png")
        assert a == b  # same stem -> same id, no hidden state
        assert a != image_id_for("dog.jpg")
        assert a >= 1 << 48 and a < 1 << 63


def _tiny_gt():
    # image 1: 100x50 with one class-0 box at pixels (10, 5)-(50, 25); image "b": 20x20, background.
    labels = [np.array([[0, 0.3, 0.3, 0.4, 0.4]], np.float32), np.zeros((0, 5), np.float32)]
    files = ["/d/images/1.jpg", "/d/images/b.jpg"]
    return yolo_labels_to_coco(files, labels, np.array([[100, 50], [20, 20]]), ["a", "b"])


class TestYoloToCoco:
    def test_fields(self):
        gt = _tiny_gt()
        assert [im["id"] for im in gt["images"]] == [1, image_id_for("b.jpg")]
        assert gt["images"][0] == {"id": 1, "file_name": "1.jpg", "width": 100, "height": 50}
        (ann,) = gt["annotations"]
        np.testing.assert_allclose(ann["bbox"], [10, 5, 40, 20], atol=1e-5)
        assert ann["area"] == pytest.approx(800, abs=1e-3)
        assert (ann["iscrowd"], ann["category_id"], ann["image_id"]) == (0, 0, 1)
        assert [c["id"] for c in gt["categories"]] == [0, 1]

    def test_duplicate_ids_rejected(self):
        with pytest.raises(ValueError, match="same COCO image id"):
            yolo_labels_to_coco(["a/1.jpg", "b/1.jpg"], [np.zeros((0, 5))] * 2, np.array([[9, 9]] * 2), ["x"])


class TestPredictions:
    def test_rows(self):
        predn = torch.tensor([[10.0, 5.0, 50.0, 25.0, 0.123456789, 1.0], [0.0, 0.0, 1.0 / 3, 2.0, 0.5, 0.0]])
        rows = predictions_to_coco(predn, "/d/images/000000000001.jpg", [7, 9])
        assert rows[0] == {"image_id": 1, "category_id": 9, "bbox": [10.0, 5.0, 40.0, 20.0], "score": 0.12346}
        assert rows[1]["bbox"] == [0.0, 0.0, 0.333, 2.0] and rows[1]["category_id"] == 7

    def test_empty(self):
        assert predictions_to_coco(torch.zeros((0, 6)), "1.jpg", [0]) == []


class TestEvaluate:
    def test_perfect_prediction(self, capsys):
        gt = _tiny_gt()
        preds = [{"image_id": 1, "category_id": 0, "bbox": [10, 5, 40, 20], "score": 0.9}]
        stats = evaluate_coco(gt, preds, [1, image_id_for("b.jpg")])
        assert len(stats) == 12
        assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)
        assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in capsys.readouterr().out
        assert "segmentation" not in preds[0]  # the caller's rows are not modified

    def test_empty_predictions(self, caplog):
        with caplog.at_level(logging.WARNING):
            stats = evaluate_coco(_tiny_gt(), [], [1])
        assert stats == [0.0] * 12
        assert "no predictions" in caplog.text

    def test_predictions_for_unknown_images_dropped(self, caplog):
        preds = [
            {"image_id": 1, "category_id": 0, "bbox": [10, 5, 40, 20], "score": 0.9},
            {"image_id": 12345, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.9},
        ]
        with caplog.at_level(logging.WARNING):
            stats = evaluate_coco(_tiny_gt(), preds, None)
        assert stats[0] == pytest.approx(1.0)
        assert "not in the COCO ground truth" in caplog.text

    def test_paths(self, tmp_path):
        gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json.gz"
        gt_path.write_text(json.dumps(_tiny_gt()))
        rows = [{"image_id": 1, "category_id": 0, "bbox": [10, 5, 40, 13.5], "score": 0.5}]
        pred_path.write_bytes(gzip.compress(json.dumps(rows).encode()))
        stats = evaluate_coco(gt_path, pred_path, [1])
        # IoU = 540 / 800 = 0.675: a hit at 0.5, 0.55, 0.6, 0.65 -> AP50 = 1, AP50-95 = 4/10.
        assert stats[1] == pytest.approx(1.0) and stats[0] == pytest.approx(0.4)


def test_reference_coco_stats(shared: Path):
    ann = shared / "data" / "coco128" / "annotations" / "instances_train2017.json"
    ref = shared / "reference" / "ultralytics_val_coco128_yolov5n_predictions.json.gz"
    rows = json.loads(gzip.decompress(ref.read_bytes()))
    class_map = coco_class_map(ann, 80)
    for r in rows:  # the reference file keeps YOLO classes 0..79
        r["category_id"] = class_map[r["category_id"]]
    img_ids = [im["id"] for im in json.loads(ann.read_text())["images"]]
    stats = evaluate_coco(ann, rows, img_ids)
    np.testing.assert_allclose(stats, REFERENCE_STATS, atol=1e-3)


def test_coco128_labels_to_coco(shared: Path):
    from sparseyolo.data.dataset import ValDataset

    ds = ValDataset(shared / "data" / "coco128" / "images" / "train2017")
    gt = yolo_labels_to_coco(ds.im_files, ds.labels, ds.shapes, [str(i) for i in range(80)])
    assert len(gt["images"]) == 128 and len(gt["annotations"]) == 929
    # The generated GT agrees with the official json on image sizes.
    ann = json.loads((shared / "data" / "coco128" / "annotations" / "instances_train2017.json").read_text())
    official = {im["id"]: (im["width"], im["height"]) for im in ann["images"]}
    assert {im["id"]: (im["width"], im["height"]) for im in gt["images"]} == official
