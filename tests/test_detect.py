"""``sparseyolo detect``: Ultralytics' detections on bus.jpg and zidane.jpg, its txt format, bad images skipped."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sparseyolo.checkpoint import load_model, save_checkpoint
from sparseyolo.cli import main
from sparseyolo.demo import PACKAGED_WEIGHTS, packaged_weights
from sparseyolo.detect import run_detect
from sparseyolo.prune import prune

BOX_TOL_PX = 1.0  # the reference rounds boxes to whole pixels
CONF_TOL = 1e-3


@pytest.fixture(scope="module")
def demo_weights():
    try:
        return packaged_weights()
    except FileNotFoundError:
        pytest.skip(f"sparseyolo/assets/{PACKAGED_WEIGHTS} not built (python benchmarks/train_demo_model.py)")


@pytest.fixture(scope="module")
def shapes(demo_weights, tmp_path_factory):
    """A folder of 4 synthetic shapes images the demo model was trained to find (its held-out val split)."""
    from sparseyolo.data.synthetic import make_synthetic_dataset

    ds = load_model(demo_weights, fuse=False).meta["dataset"]
    root = tmp_path_factory.mktemp("shapes")
    make_synthetic_dataset(root, 0, 4, ds["img_size"], seed=ds["seed"], max_objects=ds["max_objects"],
                           size_range=tuple(ds["size_range"]))
    return root / "images" / "val", ds["img_size"]


def test_matches_ultralytics_detect(shared, tmp_path):
    ref = json.loads((shared / "reference" / "ultralytics_detect_yolov5n.json").read_text())
    res = run_detect(shared / "weights" / "yolov5n.pt", shared / "data" / "images", out=tmp_path, progress=False)
    assert [Path(im.file).name for im in res.images] == ["bus.jpg", "zidane.jpg"]
    for im in res.images:
        name = Path(im.file).name
        cfg = ref[name]["detect"]
        assert [im.height, im.width, 3] == ref[name]["orig_shape"]
        want = np.array(cfg["boxes_xyxy_conf_cls"], dtype=np.float64).reshape(-1, 6)
        got = im.as_array()
        assert len(got) == cfg["n"] == len(want)
        # few, well-separated scores: same order as Ultralytics
        np.testing.assert_array_equal(got[:, 5], want[:, 5])
        assert np.abs(got[:, :4] - want[:, :4]).max() <= BOX_TOL_PX
        assert np.abs(got[:, 4] - want[:, 4]).max() <= CONF_TOL

        # labels/<stem>.txt: class xc yc w h conf, normalised by the image size
        rows = np.loadtxt(tmp_path / "labels" / name.replace(".jpg", ".txt"), ndmin=2)
        assert rows.shape == (len(want), 6)
        w, h = im.width, im.height
        xc, yc = (want[:, 0] + want[:, 2]) / 2 / w, (want[:, 1] + want[:, 3]) / 2 / h
        np.testing.assert_array_equal(rows[:, 0], want[:, 5])
        np.testing.assert_allclose(rows[:, 1], xc, atol=BOX_TOL_PX / w)
        np.testing.assert_allclose(rows[:, 2], yc, atol=BOX_TOL_PX / h)
        np.testing.assert_allclose(rows[:, 3], (want[:, 2] - want[:, 0]) / w, atol=2 * BOX_TOL_PX / w)
        np.testing.assert_allclose(rows[:, 5], want[:, 4], atol=CONF_TOL)

        drawn = cv2.imread(str(tmp_path / name))
        assert drawn is not None and drawn.shape == (h, w, 3)
        assert not np.array_equal(drawn, cv2.imread(im.file))  # boxes were drawn

    record = json.loads((tmp_path / "detections.json").read_text())
    assert record["skipped"] == [] and len(record["images"]) == 2
    assert [d["name"] for d in record["images"][0]["detections"]] == ["person"] * 4 + ["bus"]


def test_corrupt_image_is_reported_and_skipped(demo_weights, shapes, tmp_path):
    folder, imgsz = shapes
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(folder.glob("*.jpg"))[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    res = run_detect(demo_weights, src, imgsz=imgsz, out=tmp_path / "out", progress=False)
    assert len(res.images) == 2
    assert [Path(s["file"]).name for s in res.skipped] == ["broken.jpg"]
    assert "cannot decode" in res.skipped[0]["reason"]
    assert not (tmp_path / "out" / "labels" / "broken.txt").exists()
    assert sum(len(im.detections) for im in res.images) > 0  # the shipped model finds its shapes
    assert "broken.jpg: skipped" in res.summary()


def test_sparsify_gives_the_pruned_models_detections(demo_weights, shapes, tmp_path):
    folder, imgsz = shapes
    model = load_model(demo_weights, fuse=False)
    prune(model, "global", amount=0.3)
    weights = save_checkpoint(model, tmp_path / "pruned.pt")
    dense = run_detect(weights, folder, imgsz=imgsz, out=tmp_path / "dense", progress=False, save_images=False)
    sparse = run_detect(weights, folder, imgsz=imgsz, sparsify="sparse", out=tmp_path / "sparse", progress=False,
                        save_images=False)
    assert sum(len(im.detections) for im in dense.images) > 0
    for a, b in zip(dense.images, sparse.images, strict=True):
        da, db = a.as_array(), b.as_array()
        assert da.shape == db.shape
        np.testing.assert_array_equal(da[:, 5], db[:, 5])
        np.testing.assert_allclose(da[:, :5], db[:, :5], atol=1e-2)


def test_cli_and_bad_arguments(demo_weights, shapes, tmp_path, capsys):
    folder, imgsz = shapes
    one = sorted(folder.glob("*.jpg"))[0]
    out = tmp_path / "exp"
    assert main(["detect", "--weights", str(demo_weights), "--source", str(one), "--img", str(imgsz), "--out",
                 str(out), "--no-progress"]) == 0
    assert f"{one}: {imgsz}x{imgsz}" in capsys.readouterr().out and (out / "detections.json").is_file()
    assert (out / one.name).is_file() and (out / "labels" / f"{one.stem}.txt").is_file()
    assert main(["detect", "--weights", str(demo_weights), "--source", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["detect", "--weights", str(demo_weights), "--source", str(one), "--conf-thres", "2"]) == 2
    assert "conf_thres must be in [0, 1]" in capsys.readouterr().err


def test_ultralytics_txt_line_format():
    from sparseyolo.detect import Detection, ImageDetections, txt_lines

    im = ImageDetections("x.jpg", 200, 100, [Detection(3, "c", 0.5, [10.0, 20.0, 50.0, 60.0])])
    assert txt_lines(im) == ["3 0.15 0.4 0.2 0.4 0.5"]
    assert torch.tensor(im.as_array()).shape == (1, 6)
