"""The synthetic shapes dataset: deterministic by seed, and its labels are the shapes that were drawn."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sparseyolo.data.dataset import load_data_config
from sparseyolo.data.synthetic import SHAPES, make_synthetic_dataset, render_image


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class TestDeterminism:
    def test_same_seed_same_bytes(self, tmp_path):
        a = make_synthetic_dataset(tmp_path / "a", n_train=6, n_val=4, img_size=96, seed=3)
        b = make_synthetic_dataset(tmp_path / "b", n_train=6, n_val=4, img_size=96, seed=3)
        ta, tb = _tree(a.parent), _tree(b.parent)
        assert len(ta) == 6 + 4 + 6 + 4 + 1
        assert ta == tb

    def test_other_seed_other_images(self, tmp_path):
        a = make_synthetic_dataset(tmp_path / "a", n_train=0, n_val=3, img_size=96, seed=0)
        b = make_synthetic_dataset(tmp_path / "b", n_train=0, n_val=3, img_size=96, seed=1)
        for i in range(3):
            name = f"images/val/{i:06d}.jpg"
            assert (a.parent / name).read_bytes() != (b.parent / name).read_bytes()

    def test_splits_are_independent_streams(self):
        # image i of train and of val differ, and an image does not depend on how many others are made
        assert not np.array_equal(render_image(0, "train", 0, 64).image, render_image(0, "val", 0, 64).image)
        np.testing.assert_array_equal(render_image(5, "val", 7, 64).image, render_image(5, "val", 7, 64).image)


class TestLabels:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_boxes_are_tight_boxes_of_the_drawn_shapes(self, seed):
        for index in range(10):
            sample = render_image(seed, "val", index, img_size=128, classes=SHAPES, max_objects=8)
            for k, obj in enumerate(sample.objects):
                ys, xs = np.nonzero(obj.mask)
                assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                # the pixels of the shape that no later shape covers carry its colour (plus noise, sigma <= 10)
                visible = obj.mask.copy()
                for later in sample.objects[k + 1:]:
                    visible &= ~later.mask
                if visible.sum() >= 10:
                    diff = np.abs(sample.image[visible].astype(np.float32) - np.array(obj.colour, np.float32))
                    assert diff.mean() < 12.0

    def test_label_rows_in_bounds_and_match_boxes(self):
        for index in range(20):
            sample = render_image(0, "train", index, img_size=100, classes=SHAPES[:4])
            lab = sample.yolo_labels()
            assert lab.shape == (len(sample.objects), 5)
            if not len(lab):
                continue
            assert set(lab[:, 0].astype(int)) <= set(range(4))
            xy, wh = lab[:, 1:3], lab[:, 3:5]
            assert (wh > 0).all() and (xy - wh / 2 >= -1e-6).all() and (xy + wh / 2 <= 1 + 1e-6).all()
            x1 = (xy[:, 0] - wh[:, 0] / 2) * 100
            np.testing.assert_allclose(x1, [o.box[0] for o in sample.objects], atol=1e-3)

    def test_written_files_match_render(self, tmp_path):
        data = make_synthetic_dataset(tmp_path, n_train=0, n_val=30, img_size=80, classes=("square", "circle"), seed=4)
        cfg = load_data_config(data)
        assert cfg["names"] == ["square", "circle"] and cfg["nc"] == 2
        assert yaml.safe_load(data.read_text())["synthetic"]["seed"] == 4
        counts = []
        for i in range(30):
            text = (tmp_path / "labels" / "val" / f"{i:06d}.txt").read_text()
            rows = np.array([line.split() for line in text.splitlines()], dtype=np.float32).reshape(-1, 5)
            expected = render_image(4, "val", i, 80, ("square", "circle")).yolo_labels()
            np.testing.assert_allclose(rows, expected, atol=1e-6)
            counts.append(len(rows))
        assert 0 in counts  # some images are backgrounds only
        assert max(counts) >= 4  # and some are crowded

    def test_dataset_loads_in_the_val_loader(self, tmp_path):
        from sparseyolo.data.dataset import create_val_dataloader

        data = make_synthetic_dataset(tmp_path, n_train=0, n_val=5, img_size=64, seed=0)
        _, ds = create_val_dataloader(load_data_config(data)["val"], 64, 2, 32, workers=0)
        assert len(ds) == 5


class TestErrors:
    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="classes"):
            make_synthetic_dataset(tmp_path, 1, 1, classes=("circle", "hexagon"))
        with pytest.raises(ValueError, match="n_val"):
            make_synthetic_dataset(tmp_path, 1, 0)
        with pytest.raises(ValueError, match="size_range"):
            make_synthetic_dataset(tmp_path, 1, 1, size_range=(0.5, 0.2))
        with pytest.raises(ValueError, match="img_size"):
            render_image(0, "val", 0, img_size=16)
