"""Data yaml parsing, image listing, image/label verification and the val dataset."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from sparseyolo.data.dataset import (
    ValDataset,
    create_val_dataloader,
    img2label_paths,
    list_image_files,
    load_data_config,
    verify_image_label,
)
from sparseyolo.utils.boxes import scale_boxes, xywh2xyxy


def _image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return (rng.random(shape) * 255).astype(np.uint8)


def _write(path: Path, im: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), im)
    return path


def _label(root: Path, name: str, text: str) -> None:
    p = root / "labels" / "val" / f"{name}.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


# ----------------------------------------------------------------------------------------------------------------------
# load_data_config
# ----------------------------------------------------------------------------------------------------------------------
class TestDataConfig:
    def _dataset(self, root: Path) -> None:
        _write(root / "images" / "val" / "a.jpg", _image(20, 20))

    def test_list_names_relative_path(self, tmp_path):
        self._dataset(tmp_path / "ds")
        cfg_file = tmp_path / "cfg" / "data.yaml"
        cfg_file.parent.mkdir()
        cfg = {"path": "../ds", "train": "images/val", "val": "images/val", "names": ["a", "b"]}
        cfg_file.write_text(yaml.safe_dump(cfg))
        cfg = load_data_config(cfg_file)
        assert cfg["path"] == str((tmp_path / "ds").resolve())
        assert cfg["val"] == str((tmp_path / "ds" / "images" / "val").resolve())
        assert cfg["names"] == ["a", "b"] and cfg["nc"] == 2
        assert cfg["test"] is None and cfg["coco_json"] is None
        assert cfg["yaml_file"] == str(cfg_file.resolve())

    def test_dict_names_and_nc(self, tmp_path):
        self._dataset(tmp_path)
        cfg = load_data_config({"path": str(tmp_path), "val": "images/val", "names": {1: "b", 0: "a"}, "nc": 2})
        assert cfg["names"] == ["a", "b"] and cfg["nc"] == 2

    def test_path_falls_back_to_cwd(self, tmp_path, monkeypatch):
        self._dataset(tmp_path / "work" / "ds")
        cfg_file = tmp_path / "elsewhere" / "d.yaml"
        cfg_file.parent.mkdir()
        cfg_file.write_text(yaml.safe_dump({"path": "ds", "val": "images/val", "names": ["a"]}))
        monkeypatch.chdir(tmp_path / "work")
        assert load_data_config(cfg_file)["path"] == str((tmp_path / "work" / "ds").resolve())

    def test_no_path_key_uses_yaml_folder(self, tmp_path):
        self._dataset(tmp_path)
        (tmp_path / "d.yaml").write_text("val: images/val\nnames: [a]\n")
        assert load_data_config(tmp_path / "d.yaml")["val"] == str((tmp_path / "images" / "val").resolve())

    def test_coco_json_matches_split(self, tmp_path):
        self._dataset(tmp_path)
        (tmp_path / "annotations").mkdir()
        (tmp_path / "annotations" / "instances_train.json").write_text("{}")
        (tmp_path / "annotations" / "instances_val.json").write_text("{}")
        cfg = load_data_config({"path": str(tmp_path), "val": "images/val", "names": ["a"]})
        assert cfg["coco_json"] == str(tmp_path.resolve() / "annotations" / "instances_val.json")
        (tmp_path / "annotations" / "instances_val.json").unlink()
        # only one other instances file left: used as the single candidate
        cfg = load_data_config({"path": str(tmp_path), "val": "images/val", "names": ["a"]})
        assert cfg["coco_json"].endswith("instances_train.json")

    def test_txt_list_split(self, tmp_path):
        self._dataset(tmp_path)
        (tmp_path / "val.txt").write_text("./images/val/a.jpg\n")
        cfg = load_data_config({"path": str(tmp_path), "val": "val.txt", "names": ["a"]})
        assert list_image_files(cfg["val"]) == [str(tmp_path.resolve() / "images" / "val" / "a.jpg")]

    @pytest.mark.parametrize(
        "cfg, exc, match",
        [
            ({"names": ["a"]}, ValueError, "'val:' field is missing"),
            ({"val": "images/val"}, ValueError, "'names:' field is missing"),
            ({"val": "images/val", "names": ["a", "b"], "nc": 3}, ValueError, "nc=3 but 2 names"),
            ({"val": "images/val", "names": {0: "a", 2: "b"}}, ValueError, "without gaps"),
            ({"val": "images/val", "names": {"0": "a"}}, ValueError, "keys must be integers"),
            ({"val": "images/nope", "names": ["a"]}, FileNotFoundError, "val images not found"),
        ],
    )
    def test_errors(self, tmp_path, cfg, exc, match):
        self._dataset(tmp_path)
        with pytest.raises(exc, match=match):
            load_data_config({"path": str(tmp_path), **cfg})

    def test_missing_yaml(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="data yaml not found"):
            load_data_config(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------
class TestFiles:
    def test_list_sources(self, tmp_path, monkeypatch):
        a = _write(tmp_path / "images" / "a.jpg", _image(12, 12))
        b = _write(tmp_path / "images" / "sub" / "b.PNG", _image(12, 12))
        (tmp_path / "images" / "notes.txt").write_text("x")
        c = _write(tmp_path / "other" / "c.bmp", _image(12, 12))
        assert list_image_files(tmp_path / "images") == sorted([str(a), str(b)])
        assert list_image_files([tmp_path / "images", c]) == sorted([str(a), str(b), str(c)])
        assert list_image_files(str(c)) == [str(c)]
        # txt list: './' relative to the list's folder; plain relative lines fall back to it when not in the cwd
        monkeypatch.chdir(tmp_path / "other")
        (tmp_path / "list.txt").write_text("./images/a.jpg\nimages/sub/b.PNG\n" + str(c) + "\n\n")
        assert list_image_files(tmp_path / "list.txt") == sorted([str(a), str(b), str(c)])

    def test_list_errors(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            list_image_files(tmp_path / "missing")
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError, match="no images found"):
            list_image_files(tmp_path / "empty")

    def test_img2label_paths(self):
        s = os.sep
        paths = [f"{s}d{s}images{s}x{s}images{s}b.jpg", f"{s}d{s}images{s}a.v2.png"]
        assert img2label_paths(paths) == [f"{s}d{s}images{s}x{s}labels{s}b.txt", f"{s}d{s}labels{s}a.v2.txt"]


# ----------------------------------------------------------------------------------------------------------------------
# A small dataset with every kind of problem
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    """10 images in tmp_path/images/val, labels in tmp_path/labels/val.

    good   64x48 colour, 2 boxes            -> kept, found
    gray   40x30 grayscale PNG, 1 box       -> kept, found (read back as 3-channel BGR)
    rgba   30x40 4-channel PNG, 1 box       -> kept, found
    dup    50x50, the same row twice        -> kept, found, 1 duplicate removed (warning)
    empty  50x20, empty label file          -> kept, found, empty (background)
    bg     20x50, no label file             -> kept, missing (background)
    badrow 50x50, a row with 4 columns      -> corrupt (label), but its label file counts as found
    small  8x40 image                       -> corrupt (< 10 px)
    trunc  JPEG cut in half                 -> corrupt (cannot decode)
    junk   random bytes named .jpg          -> corrupt (not an image)
    """
    img = tmp_path / "images" / "val"
    _write(img / "good.jpg", _image(48, 64, 1))
    _label(tmp_path, "good", "0 0.5 0.5 0.25 0.5\n3 0.25 0.75 0.1 0.2\n")
    _write(img / "gray.png", _image(30, 40, 2, channels=1))
    _label(tmp_path, "gray", "1 0.5 0.5 0.5 0.5\n")
    _write(img / "rgba.png", _image(40, 30, 3, channels=4))
    _label(tmp_path, "rgba", "2 0.5 0.5 0.5 0.5\n")
    _write(img / "dup.jpg", _image(50, 50, 4))
    _label(tmp_path, "dup", "1 0.5 0.5 0.2 0.2\n0 0.4 0.4 0.2 0.2\n1 0.5 0.5 0.2 0.2\n")
    _write(img / "empty.jpg", _image(20, 50, 5))
    _label(tmp_path, "empty", "")
    _write(img / "bg.jpg", _image(50, 20, 6))
    _write(img / "badrow.jpg", _image(50, 50, 7))
    _label(tmp_path, "badrow", "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n")
    _write(img / "small.jpg", _image(40, 8, 8))
    _label(tmp_path, "small", "0 0.5 0.5 0.2 0.2\n")
    data = _write(img / "trunc.jpg", _image(60, 60, 9)).read_bytes()
    (img / "trunc.jpg").write_bytes(data[: len(data) // 2])
    _label(tmp_path, "trunc", "0 0.5 0.5 0.2 0.2\n")
    (img / "junk.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    return tmp_path


class TestVerify:
    def test_good(self, messy):
        r = verify_image_label(str(messy / "images/val/good.jpg"), str(messy / "labels/val/good.txt"))
        assert not r.corrupt and r.found and r.shape == (64, 48) and r.message == ""
        np.testing.assert_allclose(r.labels, [[0, 0.5, 0.5, 0.25, 0.5], [3, 0.25, 0.75, 0.1, 0.2]])
        assert r.labels.dtype == np.float32

    @pytest.mark.parametrize(
        "text, reason",
        [
            ("0 0.5 0.5 0.2\n", "5 columns"),
            ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n", "5 columns"),
            ("-1 0.5 0.5 0.2 0.2\n", "negative label values"),
            ("0 0.5 0.5 1.2 0.2\n", "non-normalized"),
            ("0 0.5 zero 0.2 0.2\n", "could not convert"),
        ],
    )
    def test_bad_labels(self, tmp_path, caplog, text, reason):
        im = _write(tmp_path / "images" / "x.jpg", _image(20, 20))
        lb = tmp_path / "labels" / "x.txt"
        lb.parent.mkdir()
        lb.write_text(text)
        with caplog.at_level(logging.WARNING):
            r = verify_image_label(str(im), str(lb), prefix="val: ")
        assert r.corrupt and r.labels is None and r.found
        assert reason in r.message and str(im) in caplog.text and "val: " in caplog.text

    def test_tolerance_is_opt_in(self, tmp_path):
        im = _write(tmp_path / "images" / "x.jpg", _image(20, 20))
        lb = tmp_path / "labels" / "x.txt"
        lb.parent.mkdir()
        lb.write_text("0 0.5 0.5 1.0001 0.2\n")
        assert verify_image_label(str(im), str(lb)).corrupt  # YOLOv5: no tolerance
        assert not verify_image_label(str(im), str(lb), coord_tol=1e-3).corrupt

    def test_polygon_rows_become_boxes(self, tmp_path):
        im = _write(tmp_path / "images" / "x.jpg", _image(20, 20))
        lb = tmp_path / "labels" / "x.txt"
        lb.parent.mkdir()
        lb.write_text("2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n")
        r = verify_image_label(str(im), str(lb))
        np.testing.assert_allclose(r.labels, [[2, 0.3, 0.4, 0.4, 0.4]], atol=1e-7)
        assert len(r.segments) == 1

    def test_jpeg_without_end_marker_is_repaired_in_memory(self, tmp_path, caplog):
        # YOLOv5 re-encodes such a file in place; the user's dataset must stay untouched (issue 20, item 3;
        # more in tests/test_bad_input.py).
        im = _write(tmp_path / "images" / "x.jpg", _image(20, 20))
        im.write_bytes(im.read_bytes() + b"\x00\x00")  # trailing bytes after the end-of-image marker
        before = im.read_bytes()
        with caplog.at_level(logging.WARNING):
            r = verify_image_label(str(im), str(tmp_path / "labels" / "x.txt"))
        assert not r.corrupt and r.missing and r.repair_jpeg
        assert "corrupt JPEG" in caplog.text and "repaired in memory; file left unchanged" in caplog.text
        assert im.read_bytes() == before

    def test_exif_rotation_swaps_size(self, tmp_path):
        from PIL import Image

        p = tmp_path / "r.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90
        Image.fromarray(_image(20, 30)).save(p, exif=exif.tobytes())
        r = verify_image_label(str(p), str(tmp_path / "none.txt"))
        assert r.shape == (20, 30)  # (w, h) after rotation; the stored image is 30 wide, 20 high
        assert cv2.imread(str(p)).shape[:2] == (30, 20)  # cv2 applies the same rotation


class TestValDataset:
    def test_scan(self, messy, caplog):
        with caplog.at_level(logging.INFO):
            ds = ValDataset(messy / "images" / "val", img_size=64, batch_size=4, prefix="val: ")
        names = sorted(Path(f).stem for f in ds.im_files)
        assert names == ["bg", "dup", "empty", "good", "gray", "rgba"]
        assert (ds.n_found, ds.n_missing, ds.n_empty, ds.n_corrupt) == (6, 1, 1, 4)
        expected = f"val: Scanning {messy / 'labels' / 'val'}... 6 images, 2 backgrounds, 4 corrupt"
        assert ds.scan_message == expected and expected in caplog.text
        for bad in ("badrow", "small", "trunc", "junk"):
            assert f"{bad}.jpg: ignoring corrupt image/label" in caplog.text
        assert "1 duplicate labels removed" in caplog.text
        labels = dict(zip((Path(f).stem for f in ds.im_files), ds.labels))
        # duplicates removed; np.unique leaves the rows sorted, as in YOLOv5
        np.testing.assert_allclose(labels["dup"], [[0, 0.4, 0.4, 0.2, 0.2], [1, 0.5, 0.5, 0.2, 0.2]])
        assert labels["bg"].shape == (0, 5) and labels["empty"].shape == (0, 5)
        assert ds.label_files == img2label_paths(ds.im_files)
        # every kept image loads as 3-channel uint8
        for i in range(len(ds)):
            img, lb, f, shapes = ds[i]
            assert img.dtype == torch.uint8 and img.shape[0] == 3 and lb.shape[1] == 6

    def test_all_corrupt(self, tmp_path):
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / "junk.jpg").write_bytes(b"not an image at all")
        with pytest.raises(RuntimeError, match="are corrupt"):
            ValDataset(tmp_path / "images")

    @pytest.fixture()
    def shapes_ds(self, tmp_path: Path) -> Path:
        # (w, h): A 100x50 (h/w 0.5), D 60x40 (0.667), C 80x80 (1), E 40x60 (1.5), B 50x100 (2)
        sizes = {"A": (100, 50), "B": (50, 100), "C": (80, 80), "D": (60, 40), "E": (40, 60)}
        for k, (w, h) in sizes.items():
            _write(tmp_path / "images" / "val" / f"{k}.png", _image(h, w, ord(k)))
            _label(tmp_path, k, "3 0.5 0.5 0.5 0.5\n")
        return tmp_path

    def test_rect_batch_shapes(self, shapes_ds):
        # img 64, stride 32, pad 0.5, batch 2 -> sorted by h/w: [A, D], [C, E], [B].
        #   [A, D]: max h/w 0.667 < 1 -> (0.667, 1) -> ceil(0.667 * 2 + 0.5) = 2, ceil(2.5) = 3 -> (64, 96)
        #   [C, E]: min 1 is not > 1, max 1.5 is not < 1 -> (1, 1) -> (96, 96)
        #   [B]:    min 2 > 1 -> (1, 0.5) -> ceil(2.5) = 3, ceil(1.5) = 2 -> (96, 64)
        ds = ValDataset(shapes_ds / "images" / "val", img_size=64, batch_size=2, stride=32, pad=0.5)
        assert [Path(f).stem for f in ds.im_files] == ["A", "D", "C", "E", "B"]
        assert ds.batch_shapes.tolist() == [[64, 96], [96, 96], [96, 64]]
        assert ds.batch.tolist() == [0, 0, 1, 1, 2]
        assert ds.shapes.tolist() == [[100, 50], [60, 40], [80, 80], [40, 60], [50, 100]]
        assert [tuple(ds[i][0].shape[1:]) for i in range(5)] == [(64, 96), (64, 96), (96, 96), (96, 96), (96, 64)]

    def test_not_rect_is_square(self, shapes_ds):
        ds = ValDataset(shapes_ds / "images" / "val", img_size=64, batch_size=2, rect=False)
        assert [Path(f).stem for f in ds.im_files] == ["A", "B", "C", "D", "E"]
        assert all(tuple(ds[i][0].shape) == (3, 64, 64) for i in range(5))

    def test_item_letterbox_and_label_mapping(self, shapes_ds):
        ds = ValDataset(shapes_ds / "images" / "val", img_size=64, batch_size=2)
        img, labels, f, shapes = ds[0]  # A: 100x50 -> r = 0.64 -> 64x32 (INTER_AREA), letterboxed into (64, 96)
        assert Path(f).stem == "A"
        assert shapes == ((50, 100), ((0.64, 0.64), (16.0, 16.0)))
        # pixels: the resized image (BGR->RGB) sits in the middle, the border is grey 114
        src = cv2.resize(cv2.imread(f), (64, 32), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(img[:, 16:48, 16:80].permute(1, 2, 0).numpy(), src[..., ::-1])
        assert (img[:, :16] == 114).all() and (img[:, 48:] == 114).all()
        # the box (centre, half size) lands at pixel centre (16 + 32, 16 + 16), size (32, 16) of a 96x64 input
        torch.testing.assert_close(labels, torch.tensor([[0, 3, 48 / 96, 32 / 64, 32 / 96, 16 / 64]]))
        # and maps back to the original pixels (25, 12.5)-(75, 37.5) with shapes' ratio_pad
        box = xywh2xyxy(labels[:, 2:] * torch.tensor([96, 64, 96, 64]))
        scale_boxes(img.shape[1:], box, shapes[0], shapes[1])
        torch.testing.assert_close(box, torch.tensor([[25.0, 12.5, 75.0, 37.5]]))

    def test_upscale_uses_linear(self, shapes_ds):
        # C is 80x80; at img_size 160 r = 2 > 1 -> INTER_LINEAR to exactly 160x160, no letterbox scale-up after.
        ds = ValDataset(shapes_ds / "images" / "val", img_size=160, batch_size=1, stride=32, pad=0.0)
        i = [Path(f).stem for f in ds.im_files].index("C")
        im, hw0, hw = ds.load_image(i)
        ref = cv2.resize(cv2.imread(ds.im_files[i]), (160, 160), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(im, ref)
        assert (hw0, hw) == ((80, 80), (160, 160))

    def test_resize_rounds_up(self, tmp_path):
        # 99x70 at 64: r = 64/99, w = 64, h = ceil(70 * 64/99) = ceil(45.25) = 46 (YOLOv5 uses math.ceil)
        _write(tmp_path / "images" / "x.jpg", _image(70, 99))
        ds = ValDataset(tmp_path / "images", img_size=64)
        assert ds.load_image(0)[2] == (46, 64) == (math.ceil(70 * 64 / 99), 64)

    def test_single_cls(self, shapes_ds):
        ds = ValDataset(shapes_ds / "images" / "val", img_size=64, single_cls=True)
        assert all((lb[:, 0] == 0).all() for lb in ds.labels)

    def test_collate_and_loader(self, messy):
        loader, ds = create_val_dataloader(messy / "images" / "val", 64, batch_size=4, stride=32, workers=0)
        assert loader.batch_size == 4 and loader.num_workers == 0
        imgs, labels, paths, shapes = next(iter(loader))
        assert imgs.shape[0] == 4 and imgs.dtype == torch.uint8 and len(paths) == len(shapes) == 4
        expected = torch.cat([torch.full((len(ds[i][1]),), float(i)) for i in range(4)])
        torch.testing.assert_close(labels[:, 0], expected)
        assert list(paths) == ds.im_files[:4]


def test_coco128(shared: Path):
    root = shared / "data" / "coco128"
    ds = ValDataset(root / "images" / "train2017", img_size=640, batch_size=32, stride=32, pad=0.5)
    assert len(ds) == 128
    assert (ds.n_found, ds.n_missing, ds.n_empty, ds.n_corrupt) == (126, 2, 0, 0)
    assert ds.scan_message.endswith("126 images, 2 backgrounds, 0 corrupt")
    assert sum(len(lb) for lb in ds.labels) == 929
    # Batch shapes recomputed from the official json's image sizes (an independent source):
    # h/w sorted, 4 batches of 32; (maxi, 1) when maxi < 1, (1, 1/mini) when mini > 1, else (1, 1).
    images = json.loads((root / "annotations" / "instances_train2017.json").read_text())["images"]
    ar = np.sort([im["height"] / im["width"] for im in images])
    expected = []
    for b in range(4):
        a = ar[b * 32 : (b + 1) * 32]
        s = [a.max(), 1] if a.max() < 1 else [1, 1 / a.min()] if a.min() > 1 else [1, 1]
        expected.append([int(np.ceil(x * 640 / 32 + 0.5)) * 32 for x in s])
    assert ds.batch_shapes.tolist() == expected == [[448, 672], [512, 672], [672, 672], [672, 608]]
    cfg = load_data_config({"path": str(root), "val": "images/train2017", "names": [str(i) for i in range(80)]})
    assert cfg["coco_json"] == str(root.resolve() / "annotations" / "instances_train2017.json")
