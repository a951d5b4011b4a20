"""Acceptance: `sparseyolo val` reproduces the Ultralytics YOLOv5 numbers on coco128 (needs ../shared)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sparseyolo import cli


def _coco128_yaml(shared: Path, tmp_path: Path) -> Path:
    from sparseyolo.checkpoint import load_checkpoint

    names = load_checkpoint(shared / "weights" / "yolov5n.pt").names
    cfg = {"path": str(shared / "data" / "coco128"), "train": "images/train2017", "val": "images/train2017",
           "names": dict(enumerate(names))}
    path = tmp_path / "coco128.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _val(shared: Path, tmp_path: Path, capsys, *extra: str) -> str:
    data = _coco128_yaml(shared, tmp_path)
    argv = ["val", "--weights", str(shared / "weights" / "yolov5n.pt"), "--data", str(data), "--img", "640",
            "--batch", "32", "--conf-thres", "0.001", "--iou-thres", "0.65", "--device", "cpu", "--workers", "2",
            "--project", str(tmp_path / "runs"), *extra]
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def _all_row(out: str) -> list[float]:
    row = re.search(r"^\s+all\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", out, re.M)
    assert row, out
    return [float(x) for x in row.groups()]


@pytest.mark.slow
def test_val_reproduces_ultralytics(shared, tmp_path, capsys):
    out = _val(shared, tmp_path, capsys, "--save-json")
    images, instances, p, r, map50, map5095 = _all_row(out)
    assert (images, instances) == (128, 929)
    # ../shared/reference/README.md: P 0.629 R 0.478 mAP50 0.541 mAP50-95 0.350, pycocotools AP 0.354.
    for got, want in ((p, 0.629), (r, 0.478), (map50, 0.541), (map5095, 0.350)):
        assert abs(got - want) <= 0.003, (got, want)
    assert "126 images, 2 backgrounds, 0 corrupt" in out
    assert re.search(r"Speed: [\d.]+ms pre-process, [\d.]+ms inference, [\d.]+ms NMS per image at shape "
                     r"\(32, 3, 640, 640\)", out)
    stats = re.search(r"Average Precision\s+\(AP\) @\[ IoU=0.50:0.95 \| area=\s+all \| maxDets=100 \] = ([\d.]+)", out)
    assert stats and abs(float(stats.group(1)) - 0.354) <= 0.003, out[-2000:]
    saved = list((tmp_path / "runs").rglob("*_predictions.json"))
    assert len(saved) == 1 and len(json.loads(saved[0].read_text())) > 1000


@pytest.mark.slow
def test_val_prune_matches_ultralytics(shared, tmp_path, capsys):
    out = _val(shared, tmp_path, capsys, "--prune", "0.3", "--no-cocoeval")
    assert re.search(r"Model pruned to 0\.\d+ global sparsity", out)
    _, _, _, _, _, map5095 = _all_row(out)
    assert abs(map5095 - 0.0999) <= 0.01, map5095


def test_val_bad_arguments_are_clear(shared, tmp_path, capsys):
    data = _coco128_yaml(shared, tmp_path)
    code = cli.main(["val", "--weights", str(tmp_path / "missing.pt"), "--data", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and "missing.pt" in err and "Traceback" not in err
    code = cli.main(["val", "--weights", str(shared / "weights" / "yolov5n.pt"), "--data", str(data),
                     "--conf-thres", "1.5", "--device", "cpu"])
    assert code == 2 and "conf-thres" in capsys.readouterr().err


def test_fused_and_reference_nms_give_identical_metrics(shared, tmp_path):
    from sparseyolo import val
    from sparseyolo.checkpoint import load_checkpoint

    names = load_checkpoint(shared / "weights" / "yolov5n.pt").names
    data = {"path": str(shared / "data" / "coco8"), "train": "images/train", "val": "images/val",
            "names": dict(enumerate(names))}
    results = {
        nms: val.run(shared / "weights" / "yolov5n.pt", data, imgsz=320, batch_size=2, device="cpu", workers=0,
                     nms=nms, project=tmp_path)
        for nms in ("fused", "reference")
    }
    fused, ref = results["fused"], results["reference"]
    assert fused.instances > 0
    assert (fused.precision, fused.recall, fused.map50, fused.map) == (ref.precision, ref.recall, ref.map50, ref.map)
    assert fused.coco_stats == ref.coco_stats
