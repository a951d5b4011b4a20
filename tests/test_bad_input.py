"""Bad input and faults (issue 20): each case failed before its fix and must stay fixed.

Grouped by the issue's items: checkpoint memory bounds (1), out-of-range class ids (2), JPEGs left untouched (3),
paths used as given (4), sparse-op channel and metadata checks (5), concurrent saves and run folders (6),
exact resume and a resumable finishing step (7), disk-full / unwritable output (8), COCO matching by file name
(9), checksums and tampered files (10). docs/reliability.md lists what these guarantee.
"""

from __future__ import annotations

import copy
import errno
import io
import json
import logging
import lzma
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import sparseyolo.checkpoint as ckpt
import sparseyolo.checkpoint.load as ckpt_load  # where the decompression limit is applied
from sparseyolo import ops
from sparseyolo.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    attempt_download,
    check_model_size,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from sparseyolo.data.dataset import ValDataset, repaired_jpeg
from sparseyolo.models import DetectionModel
from sparseyolo.models.yolo import load_config
from sparseyolo.utils.coco import match_coco_images

NC = 3


def _tiny_cfg(**changes) -> dict:
    cfg, _ = load_config("yolov5n.yaml")
    cfg = copy.deepcopy(cfg)
    cfg.update({"width_multiple": 0.125, "nc": NC}, **changes)
    return cfg


@pytest.fixture(scope="module")
def tiny_model() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel(_tiny_cfg(), nc=NC).eval()


@pytest.fixture
def tiny_ckpt(tmp_path: Path, tiny_model) -> Path:
    return save_checkpoint(tiny_model, tmp_path / "tiny.pt")


def _raw(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------------
# 1. Memory exhaustion from a tiny checkpoint
# ---------------------------------------------------------------------------------------------------------------


def test_class_count_beyond_limit_refused(tmp_path: Path, tiny_ckpt: Path) -> None:
    obj = _raw(tiny_ckpt)
    obj.pop("checksum")
    obj["nc"], obj["names"] = ckpt.MAX_CLASSES + 1, []  # 10**10 in the report; just past the limit here
    torch.save(obj, tmp_path / "nc.pt")
    with pytest.raises(CheckpointError, match=r"nc\.pt: number of classes nc=100001"):
        load_checkpoint(tmp_path / "nc.pt")


class _BigBuffer:
    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self):  # pickles as builtins.bytearray(n): a few bytes in the file
        return (bytearray, (self.n,))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_bytearray_size_refused(tmp_path: Path, tiny_model, legacy: bool) -> None:
    path = tmp_path / "buf.pt"
    obj = {"state_dict": tiny_model.state_dict(), "note": _BigBuffer(ckpt.MAX_PICKLE_BUFFER_BYTES + 1)}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    assert path.stat().st_size < 10 * 2**20  # the file does not hold the buffer, it asks for it
    with pytest.raises(CheckpointError, match=r"buf\.pt: .*bytearray of 16777217 bytes"):
        load_checkpoint(path)


class _BigSet:
    def __reduce__(self):  # set(range(n)); 10**12 in an attack, just past the limit here
        return (set, (range(ckpt.MAX_PICKLE_ITEMS + 1),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")  # protocol 4 is how `range` gets pickled
def test_pickled_range_refused(tmp_path: Path, tiny_model) -> None:
    path = tmp_path / "set.pt"
    torch.save({"state_dict": tiny_model.state_dict(), "ids": _BigSet()}, path, pickle_protocol=4)
    with pytest.raises(CheckpointError, match=r"set\.pt: .*range of 0\.\.1000001"):
        load_checkpoint(path)


def test_compression_bomb_refused(tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    # Zeros compress ~1000x; the floor is lowered so that the test file stays small.
    monkeypatch.setattr(ckpt_load, "MIN_DECOMPRESSED_LIMIT", 2**20, raising=False)
    buf = io.BytesIO()
    torch.save({"state_dict": {"x": torch.ones(1)}, "pad": torch.zeros(2**22)}, buf)  # 16 MiB, ~3 KB as xz
    path = tmp_path / "bomb.pt.xz"
    path.write_bytes(lzma.compress(buf.getvalue()))
    with pytest.raises(CheckpointError, match=r"bomb\.pt\.xz: decompresses to more than \d+ bytes"):
        load_checkpoint(path)


def test_xz_checkpoint_within_limits_loads(tmp_path: Path, tiny_ckpt: Path) -> None:
    path = tmp_path / "ok.pt.xz"
    path.write_bytes(lzma.compress(tiny_ckpt.read_bytes()))
    assert load_checkpoint(path).nc == NC


def test_zero_stride_tensor_refused(tmp_path: Path, tiny_model) -> None:
    sd = dict(tiny_model.state_dict())
    sd["model.0.conv.weight"] = torch.zeros(1).expand(10**6)  # one float in the file, 10**6 once copied
    path = tmp_path / "expand.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="overlaps itself"):
        load_checkpoint(path)


def test_deep_nesting_refused(tmp_path: Path, tiny_model) -> None:
    deep: list = []
    for _ in range(ckpt.MAX_NESTING_DEPTH + 10):
        deep = [deep]
    path = tmp_path / "deep.pt"
    torch.save({"state_dict": tiny_model.state_dict(), "deep": deep}, path)
    with pytest.raises(CheckpointError, match="nested more than"):
        load_checkpoint(path)


def test_config_size_bounded_before_building() -> None:
    assert check_model_size(_tiny_cfg(), NC) > 0
    with pytest.raises(CheckpointError, match=r"builds \d+M parameters"):
        check_model_size(_tiny_cfg(width_multiple=4.0), NC)  # ~480M parameters, counted on the meta device
    with pytest.raises(CheckpointError, match="repeats its module 900 times"):
        check_model_size(_tiny_cfg(depth_multiple=300), NC)


def test_load_model_refuses_oversized_config(tmp_path: Path, tiny_ckpt: Path) -> None:
    obj = _raw(tiny_ckpt)
    obj.pop("checksum")
    obj["yaml"]["depth_multiple"] = 40  # 120 bottlenecks per C3; x300 in the report
    torch.save(obj, tmp_path / "deep_cfg.pt")
    with pytest.raises(CheckpointError, match="repeats its module 120 times"):
        load_model(tmp_path / "deep_cfg.pt")


# ---------------------------------------------------------------------------------------------------------------
# 2-3. Labels with class ids >= nc; JPEGs are never rewritten
# ---------------------------------------------------------------------------------------------------------------


def _val_set(root: Path, labels: dict[str, str], n_images: int = 2) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n_images):
        im = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"im{k}.jpg"), im)
        (root / "labels" / f"im{k}.txt").write_text(labels.get(f"im{k}", "0 0.5 0.5 0.4 0.4\n"))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "val": "images", "names": [f"c{i}" for i in range(NC)]}))
    return data


def test_class_id_beyond_nc_reported_at_scan(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _val_set(tmp_path, {"im1": "0 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.2 0.2\n"})
    with caplog.at_level(logging.WARNING):
        ds = ValDataset(tmp_path / "images", img_size=64, batch_size=2, nc=NC)
    assert ds.n_corrupt == 1 and [Path(f).name for f in ds.im_files] == ["im0.jpg"]
    assert f"{tmp_path / 'labels' / 'im1.txt'}:3: class id 7 is not an integer in [0, 3)" in caplog.text


def test_val_skips_out_of_range_class_instead_of_crashing(tmp_path: Path, tiny_model) -> None:
    from sparseyolo import val

    data = _val_set(tmp_path, {"im1": "5 0.5 0.5 0.2 0.2\n"})
    res = val.run(weights="tiny", data=data, imgsz=64, batch_size=2, workers=0, cocoeval=False,
                  model=copy.deepcopy(tiny_model))  # IndexError in the metrics before the fix
    assert res.images == 1 and res.instances == 1


def test_jpeg_with_trailing_bytes_left_untouched(tmp_path: Path) -> None:
    _val_set(tmp_path, {}, n_images=1)
    im = tmp_path / "images" / "im0.jpg"
    im.write_bytes(im.read_bytes() + b"\x00\x00")
    before = im.read_bytes()
    ds = ValDataset(tmp_path / "images", img_size=64, batch_size=1, nc=NC)
    img, _, _ = ds.load_image(0)
    assert im.read_bytes() == before
    # The pixels are YOLOv5's: its in-place quality-100 re-encoding, done in memory.
    assert str(im) in ds.repair_jpeg
    np.testing.assert_array_equal(repaired_jpeg(str(im)), img)


# ---------------------------------------------------------------------------------------------------------------
# 4. Paths are used as given
# ---------------------------------------------------------------------------------------------------------------


def test_path_with_apostrophe_loads_that_file(tmp_path: Path, tiny_model) -> None:
    other = DetectionModel(_tiny_cfg(), nc=NC + 1)
    save_checkpoint(tiny_model, tmp_path / "model's 24.pt")
    save_checkpoint(other, tmp_path / "models 24.pt")
    assert attempt_download(tmp_path / "model's 24.pt") == tmp_path / "model's 24.pt"
    assert load_model(str(tmp_path / "model's 24.pt")).nc == NC


# ---------------------------------------------------------------------------------------------------------------
# 5. Sparse ops: input channels against the packed weight, metadata validity
# ---------------------------------------------------------------------------------------------------------------


def _24_weight(cout: int, cin: int) -> torch.Tensor:
    w = torch.randn(cout, cin, 3, 3)
    keep = torch.zeros(cout, cin // 4, 4, 3, 3, dtype=torch.bool)
    keep[:, :, :2] = True  # positions 0 and 1 of every group of 4
    return w * keep.reshape(cout, cin, 3, 3)


def test_sparse_conv2d_refuses_more_channels_than_the_weight() -> None:
    from sparseyolo.sparse import SparseConv2d, pack_conv_weight
    from sparseyolo.sparse.backends import ConvGeometry, get_backend

    w = torch.randn(8, 8, 3, 3)
    p = pack_conv_weight(w)
    x = torch.randn(1, 16, 10, 10)
    with pytest.raises(RuntimeError, match="sparseyolo::sparse_conv2d: input has 16 channels but the packed weight "
                                           "expects in_channels = 8"):
        ops.sparse_conv2d(x, p.values, p.columns, p.row_ptr, 3, padding=1, in_channels=8)
    geometry = ConvGeometry(8, 8, (3, 3), (1, 1), (1, 1))
    for name in ("cpu_csr", "cpu_block"):  # the sparsified model's layers, as F.conv2d would refuse
        layer = SparseConv2d.from_weight(w, None, geometry, "identity", None, get_backend(name), torch.float32)
        with pytest.raises(RuntimeError, match="input has 16 channels"):
            layer(x)
    with pytest.raises(RuntimeError, match="input has 16 channels"):  # the fake kernel (torch.compile/export)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            ops.sparse_conv2d(mode.from_tensor(x), mode.from_tensor(p.values), mode.from_tensor(p.columns),
                              mode.from_tensor(p.row_ptr), 3, padding=1, in_channels=8)
    y = ops.sparse_conv2d(x[:, :8], p.values, p.columns, p.row_ptr, 3, padding=1, in_channels=8)
    assert y.shape == (1, 8, 10, 10)


def test_sparse_conv2d_24_refuses_more_channels_and_bad_metadata() -> None:
    from sparseyolo.sparse.mma_sp import pack_mma_sp_weight

    w = _24_weight(16, 8)
    p = pack_mma_sp_weight(w)
    x = torch.randn(1, 16, 6, 6, dtype=torch.float16)  # 8 and 16 channels pack to the same shapes
    with pytest.raises(RuntimeError, match="sparseyolo::sparse_conv2d_24: input has 16 channels but the packed "
                                           "weight expects in_channels = 8"):
        ops.sparse_conv2d_24(x, p.values, p.meta, 16, 3, padding=1, in_channels=8)
    x8 = x[:, :8].contiguous()
    ref = torch.nn.functional.conv2d(x8.float(), w.half().float(), padding=1)
    y = ops.sparse_conv2d_24(x8, p.values, p.meta, 16, 3, padding=1, in_channels=8)
    torch.testing.assert_close(y.float(), ref, atol=2e-2, rtol=2e-2)
    garbage = torch.zeros_like(p.meta)  # every code 0: positions (0, 0), undefined for mma.sp
    with pytest.raises(RuntimeError, match="sparseyolo::sparse_conv2d_24: meta should hold ascending 2-bit"):
        ops.sparse_conv2d_24(x8, p.values, garbage, 16, 3, padding=1)


# ---------------------------------------------------------------------------------------------------------------
# 6. Concurrent saves and run folders
# ---------------------------------------------------------------------------------------------------------------


def test_interleaved_saves_to_one_path(tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second save to the same file finishes while the first is writing (two runs with --exist-ok)."""
    real_save, nested = torch.save, []

    def save_with_a_second_writer(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if not nested:  # the other run saves completely between this one's write and its rename
            nested.append(True)
            save_checkpoint(tiny_model, tmp_path / "last.pt", epoch=2)

    monkeypatch.setattr(torch, "save", save_with_a_second_writer)
    save_checkpoint(tiny_model, tmp_path / "last.pt", epoch=1)  # FileNotFoundError before the fix
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt").meta["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_run_folders_claimed_atomically(tmp_path: Path) -> None:
    from sparseyolo.utils.run_dirs import increment_dir as _increment_dir

    a = _increment_dir(tmp_path / "runs" / "exp", exist_ok=False)
    b = _increment_dir(tmp_path / "runs" / "exp", exist_ok=False)
    assert a != b and a.is_dir() and b.is_dir()  # the second call used to get the same, not yet created, name
    assert _increment_dir(tmp_path / "runs" / "exp", exist_ok=True) == a


# ---------------------------------------------------------------------------------------------------------------
# 7. Exact resume; a kill while finishing leaves a resumable run
# ---------------------------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _train_setup(tmp_path: Path, tiny_model) -> dict:
    from tests._train_helpers import make_dataset

    weights = save_checkpoint(tiny_model, tmp_path / "start.pt")
    data = make_dataset(tmp_path / "data", n=4, nc=NC)
    return dict(weights=str(weights), data=str(data), imgsz=64, batch_size=2, nbs=2, warmup_epochs=0, workers=0,
                noval=True)


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path, tiny_model) -> None:
    from sparseyolo.train import TrainConfig, train
    from tests._train_helpers import state_hash

    base = _train_setup(tmp_path, tiny_model)
    whole = train(TrainConfig(project=str(tmp_path / "a"), epochs=2, **base))

    def stop_in_epoch_1(model, ema, step):
        if step == 3:  # 2 steps per epoch: the first step of epoch 1
            raise _Stop

    with pytest.raises(_Stop):
        train(TrainConfig(project=str(tmp_path / "b"), epochs=2, **base), step_callback=stop_in_epoch_1)
    resumed = train(TrainConfig(resume=str(tmp_path / "b" / "exp" / "weights" / "last.pt"), workers=0))
    assert state_hash(resumed.model) == state_hash(whole.model)
    assert state_hash(resumed.ema) == state_hash(whole.ema)


@pytest.mark.slow
def test_kill_while_stripping_leaves_a_resumable_run(tmp_path: Path, tiny_model,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sparseyolo.train.engine as engine
    from sparseyolo.train import TrainConfig, train

    real_strip, calls = engine._strip_training_state, []

    def killed_after_first(path):
        calls.append(path.name)
        if len(calls) == 2:
            raise _Stop
        real_strip(path)

    monkeypatch.setattr(engine, "_strip_training_state", killed_after_first)
    with pytest.raises(_Stop):
        train(TrainConfig(project=str(tmp_path / "r"), epochs=1, **_train_setup(tmp_path, tiny_model)))
    monkeypatch.undo()
    last = tmp_path / "r" / "exp" / "weights" / "last.pt"
    result = train(TrainConfig(resume=str(last), workers=0))  # finishes instead of refusing
    assert result.epochs_run == 0 and result.final is not None
    assert load_checkpoint(last).meta["finished"] is True
    with pytest.raises(ValueError, match="nothing to resume"):
        train(TrainConfig(resume=str(last), workers=0))


# ---------------------------------------------------------------------------------------------------------------
# 8. Disk full / unwritable output
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4416 vs 4352"),
     OSError(errno.ENOSPC, "No space left on device")],
)
def test_checkpoint_write_failure(tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch,
                                  error: Exception) -> None:
    save_checkpoint(tiny_model, tmp_path / "last.pt", epoch=1)

    def full_disk(obj, f, *a, **k):
        (f.write if hasattr(f, "write") else Path(f).write_bytes)(b"PK\x03\x04partial")
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*last\.pt: .*no partial file"):
        save_checkpoint(tiny_model, tmp_path / "last.pt", epoch=2)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no .tmp left
    assert load_checkpoint(tmp_path / "last.pt").meta["epoch"] == 1  # the previous file is intact


def test_val_reports_metrics_before_a_failing_json_write(tmp_path: Path, tiny_model,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from sparseyolo import val

    data = _val_set(tmp_path / "d", {})
    real_open = open
    monkeypatch.setattr(val, "open", lambda f, *a, **k: real_open("/dev/full", "w"), raising=False)  # ENOSPC
    with caplog.at_level(logging.INFO), pytest.raises(OSError, match=r"could not write .*_predictions\.json"):
        val.run(weights="tiny.pt", data=data, imgsz=64, batch_size=2, workers=0, save_json=True,
                project=tmp_path / "runs", model=copy.deepcopy(tiny_model))
    assert "Evaluating pycocotools mAP" in caplog.text  # COCO stats came first
    assert [p.name for p in (tmp_path / "runs" / "exp").iterdir()] == []  # no partial json


def test_val_unwritable_project_is_one_clear_error(tmp_path: Path, tiny_model) -> None:
    from sparseyolo import val

    data = _val_set(tmp_path / "d", {})
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=r"could not create .*file/runs/exp"):
        val.run(weights="tiny.pt", data=data, imgsz=64, batch_size=2, workers=0, save_json=True, cocoeval=False,
                project=tmp_path / "file" / "runs", model=copy.deepcopy(tiny_model))


# ---------------------------------------------------------------------------------------------------------------
# 9. COCO ground truth matched by file name
# ---------------------------------------------------------------------------------------------------------------


def test_coco_images_matched_by_file_name() -> None:
    gt = {"images": [{"id": 1, "file_name": "000000000002.jpg"}, {"id": 2, "file_name": "000000000001.jpg"}]}
    assert match_coco_images(gt, ["/d/000000000001.jpg", "/d/000000000002.jpg"]) == [2, 1]
    with pytest.raises(ValueError, match=r"1 of 1 images cannot be matched by file name to x\.json, e\.g\. cat\.jpg"):
        match_coco_images(gt, ["cat.jpg"], "x.json")
    no_names = {"images": [{"id": 1}, {"id": 2}]}
    assert match_coco_images(no_names, ["2.jpg"]) == [2]
    with pytest.raises(ValueError, match="by numeric file stem"):
        match_coco_images(no_names, ["cat.jpg"])


def test_val_refuses_images_missing_from_the_coco_json(tmp_path: Path, tiny_model) -> None:
    from sparseyolo import val

    data = _val_set(tmp_path / "d", {})
    gt = {"images": [{"id": 1, "file_name": "other.jpg", "width": 64, "height": 48}], "annotations": [],
          "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(NC)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(ValueError, match=r"2 of 2 images cannot be matched by file name to .*gt\.json"):
        val.run(weights="tiny.pt", data=data, imgsz=64, batch_size=2, workers=0, coco_json=tmp_path / "gt.json",
                model=copy.deepcopy(tiny_model))


# ---------------------------------------------------------------------------------------------------------------
# 10. Checksums, tampered files, corrupt zip directories
# ---------------------------------------------------------------------------------------------------------------


def test_flipped_tensor_byte_detected(tmp_path: Path, tiny_ckpt: Path) -> None:
    data = bytearray(tiny_ckpt.read_bytes())
    with zipfile.ZipFile(tiny_ckpt) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.file_size // 2] ^= 0x10  # inside the largest tensor's stored data
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped\.pt: tensor data does not match the checksum"):
        load_checkpoint(tmp_path / "flipped.pt")


@pytest.mark.parametrize(
    "tamper",
    [lambda o: o.pop("state_dict"), lambda o: o.update(nc="80"), lambda o: o.update(state_dict=[1, 2]),
     lambda o: o.update(sparse_weights={"w": {"shape": "x"}})],
    ids=["no_state_dict", "nc_text", "state_dict_list", "sparse_entry"],
)
def test_tampered_fields_raise_checkpoint_error(tmp_path: Path, tiny_ckpt: Path, tamper) -> None:
    obj = _raw(tiny_ckpt)
    obj.pop("checksum")
    tamper(obj)
    torch.save(obj, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match=r"t\.pt: "):
        load_checkpoint(tmp_path / "t.pt")


def test_corrupt_zip_directory_names_the_file(tmp_path: Path, tiny_ckpt: Path) -> None:
    data = bytearray(tiny_ckpt.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # last central-directory entry
    data[cd + 8] |= 0x08  # general-purpose flag bit 11 (0x800): names are UTF-8
    name_len = int.from_bytes(data[cd + 28:cd + 30], "little")
    data[cd + 46 + name_len - 1] = 0xFF  # ... and this one is not
    (tmp_path / "cd.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"cd\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cd.pt")


def test_own_files_record_a_checksum_and_old_files_still_load(tmp_path: Path, tiny_ckpt: Path) -> None:
    obj = _raw(tiny_ckpt)
    assert obj["checksum"]["algorithm"] == ckpt.CHECKSUM_ALGORITHM and len(obj["checksum"]["digest"]) == 64
    obj.pop("checksum")  # as written before checksums existed
    torch.save(obj, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").nc == NC
