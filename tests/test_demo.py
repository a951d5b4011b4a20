"""``sparseyolo demo`` end to end in a tiny configuration, and the compressed checkpoints it relies on."""

from __future__ import annotations

import gzip
import lzma

import pytest
import torch

from sparseyolo import cli
from sparseyolo.checkpoint import CheckpointError, load_model, save_checkpoint
from sparseyolo.demo import PACKAGED_WEIGHTS, packaged_weights
from sparseyolo.models import CONFIG_DIR, DetectionModel
from sparseyolo.prune import prune

PNGS = ("map_vs_sparsity.png", "layer_sparsity.png", "layer_speedup.png", "latency.png", "detections.png")


def _tiny_model() -> DetectionModel:
    import yaml

    cfg = yaml.safe_load((CONFIG_DIR / "yolov5n.yaml").read_text())
    cfg.update(width_multiple=0.125, nc=3)
    torch.manual_seed(0)
    model = DetectionModel(cfg).eval()
    model.names = ["circle", "square", "triangle"]
    return model


class TestCompressedCheckpoint:
    @pytest.mark.parametrize("compress", [lzma.compress, gzip.compress], ids=["xz", "gzip"])
    def test_load_model_reads_compressed_files(self, tmp_path, compress):
        model = _tiny_model()
        prune(model, "nm", n=2, m=4)
        plain = save_checkpoint(model, tmp_path / "m.pt")
        packed = tmp_path / "m.pt.xz"
        packed.write_bytes(compress(plain.read_bytes()))
        a, b = load_model(plain, fuse=False), load_model(packed, fuse=False)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)

    def test_truncated_compressed_file_is_refused(self, tmp_path):
        plain = save_checkpoint(_tiny_model(), tmp_path / "m.pt")
        bad = tmp_path / "bad.pt.xz"
        bad.write_bytes(lzma.compress(plain.read_bytes())[:200])
        with pytest.raises(CheckpointError, match="compressed"):
            load_model(bad)


@pytest.fixture(scope="module")
def demo_weights():
    try:
        return packaged_weights()
    except FileNotFoundError:
        pytest.skip(f"sparseyolo/assets/{PACKAGED_WEIGHTS} not built (python benchmarks/train_demo_model.py)")


def test_packaged_checkpoint_is_small_and_loads(demo_weights):
    assert demo_weights.stat().st_size < 4_000_000
    model = load_model(demo_weights, fuse=False)
    assert model.nc == 3 and model.meta["dataset"]["seed"] == 0


def test_packaged_checkpoint_detects_its_shapes(demo_weights, tmp_path):
    # the demo's accuracy columns mean something only if the shipped model is trained: on 32 of its held-out
    # val images it must find the shapes (mAP50-95 0.29, mAP50 0.43 on all 200 when it was trained)
    from sparseyolo import val
    from sparseyolo.data.synthetic import make_synthetic_dataset

    model = load_model(demo_weights, fuse=True)
    ds = model.meta["dataset"]
    data = make_synthetic_dataset(tmp_path / "shapes", 0, 32, ds["img_size"], model.meta["classes"], seed=ds["seed"],
                                  max_objects=ds["max_objects"], size_range=tuple(ds["size_range"]))
    res = val.run(weights="", data=str(data), imgsz=ds["img_size"], batch_size=16, device="cpu", workers=0,
                  cocoeval=False, project=str(tmp_path / "val"), model=model)
    assert res.map50 > 0.25 and res.map > 0.15, (res.map50, res.map)


def test_demo_tiny_end_to_end(demo_weights, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli.main(["demo", "--out", str(out), "--n-val", "6", "--n-train", "8", "--calib-images", "4",
                   "--finetune-epochs", "1", "--finetune-batches", "1", "--batch", "4", "--reps", "1", "--no-sweep",
                   "--workers", "0"])
    assert rc == 0
    printed = capsys.readouterr().out
    table = (out / "table.txt").read_text()
    for name in ("dense", "l1 30%", "2:4 one-shot", "2:4 calibrated", "2:4 b32 calibrated", "2:4 recovered",
                 "global 75%"):
        assert name in table
    assert table.strip() in printed
    assert "batch 1, 320x320" in table  # latency at the synthetic data's bench size, not its 128 px
    for png in PNGS:
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000, png
    # the 2:4 rows keep exactly half of every pruned conv, and their checkpoints are smaller than dense
    rows = {line[:18].strip(): line[18:].split() for line in table.splitlines()[2:9]}
    assert rows["2:4 calibrated"][0] == "50.0%" and rows["2:4 recovered"][0] == "50.0%"
    assert rows["2:4 b32 calibrated"][0] == "50.0%"
    assert float(rows["2:4 one-shot"][3]) < float(rows["dense"][3])


def test_demo_without_plots_and_finetune(demo_weights, tmp_path):
    out = tmp_path / "demo"
    rc = cli.main(["demo", "--out", str(out), "--n-val", "4", "--finetune-epochs", "0", "--calib-images", "0",
                   "--global-amount", "0", "--reps", "1", "--no-plots", "--workers", "0"])
    assert rc == 0
    table = (out / "table.txt").read_text()
    assert "2:4 one-shot" in table and "recovered" not in table and "global" not in table
    assert "calibrated" not in table
    assert not list(out.glob("*.png"))


def test_demo_argument_errors(capsys):
    assert cli.main(["demo", "--weights", "x.pt"]) == 2
    assert "--weights needs --data" in capsys.readouterr().err
    assert cli.main(["demo", "--calib-images", "-1"]) == 2
    assert "--calib-images" in capsys.readouterr().err
    assert cli.main(["demo", "--global-amount", "1.5"]) == 2
    assert cli.main(["demo", "--bench-img", "0"]) == 2
    assert "--bench-img" in capsys.readouterr().err


def test_val_bf16_sparse_matches_fp32_masked(demo_weights, tmp_path):
    """val's dtype='bf16' (+ sparsify): the bf16 model on the block-sparse kernel scores as the fp32 masked model."""
    from sparseyolo import val
    from sparseyolo.data.synthetic import make_synthetic_dataset
    from sparseyolo.prune import prune

    model = load_model(demo_weights, fuse=True)
    ds = model.meta["dataset"]
    prune(model, "l1", 0.3)  # a pruned model that still detects (one-shot 2:4 would score ~0 here)
    data = make_synthetic_dataset(tmp_path / "shapes", 0, 16, ds["img_size"], model.meta["classes"], seed=ds["seed"],
                                  max_objects=ds["max_objects"], size_range=tuple(ds["size_range"]))
    kw = dict(weights="", data=str(data), imgsz=ds["img_size"], batch_size=8, device="cpu", workers=0,
              cocoeval=False, project=str(tmp_path / "val"))
    ref = val.run(model=model, **kw)
    bf16 = val.run(model=model, dtype="bf16", sparsify="cpu_block", **kw)
    assert ref.map > 0.1, ref.map  # something to lose
    assert abs(bf16.map - ref.map) < 0.01 and abs(bf16.map50 - ref.map50) < 0.02, (ref.map, bf16.map)
    with pytest.raises(ValueError, match="dtype must be 'fp32' or 'bf16'"):
        val.run(model=model, dtype="fp16", **kw)
