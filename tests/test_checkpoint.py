"""Checkpoint reading/writing: official YOLOv5 files, refusal of unsafe pickles, own format, state_dicts."""

from __future__ import annotations

import io
import os
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch

from sparseyolo.checkpoint import download as download_mod
from sparseyolo.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    attempt_download,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from sparseyolo.models import build_model


@pytest.fixture(scope="module")
def official(shared) -> Path:
    return shared / "weights" / "yolov5n.pt"


# ---------------------------------------------------------------------------------------------- official file


def test_official_checkpoint_fields(official: Path) -> None:
    ck = load_checkpoint(official)
    assert ck.format == "ultralytics"
    assert ck.nc == 80 and len(ck.names) == 80
    assert ck.names[:3] == ["person", "bicycle", "car"] and ck.names[-1] == "toothbrush"
    assert ck.stride.tolist() == [8.0, 16.0, 32.0]
    assert ck.anchors.shape == (3, 3, 2)
    assert ck.yaml["width_multiple"] == 0.25 and ck.yaml_file == "yolov5n.yaml"
    assert not ck.fused
    assert isinstance(ck.epoch, int)
    assert ck.state_dict["model.0.conv.weight"].dtype == torch.float16  # as stored
    assert ck.state_dict["model.0.bn.num_batches_tracked"].dtype == torch.int64
    for key in ("model.24.anchors", "model.24.m.0.bias", "model.0.bn.running_var"):
        assert key in ck.state_dict


def test_official_model_loads_fused(official: Path) -> None:
    model = load_model(official)
    assert not model.training and model.is_fused()
    assert sum(p.numel() for p in model.parameters()) == 1_867_405
    assert model.names[0] == "person" and len(model.names) == 80
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert next(model.parameters()).dtype == torch.float32
    line = model.info()
    assert line.startswith("YOLOv5n summary: ") and "1,867,405 parameters" in line and line.endswith(", 4.5 GFLOPs")
    # anchors in pixels agree with the config (the checkpoint stores grid units)
    det = model.model[-1]
    torch.testing.assert_close((det.anchors * det.stride.view(-1, 1, 1)).view(3, -1), torch.tensor(ANCHORS_PX))


ANCHORS_PX = [[10.0, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def test_unfused_matches_fused(official: Path) -> None:
    a = load_model(official, fuse=False)
    b = load_model(official, fuse=True)
    assert not a.is_fused()
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0], rtol=1e-4, atol=2e-3)


# ---------------------------------------------------------------------------------------------- unsafe pickles


class _RunsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class _UnknownClass:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
@pytest.mark.parametrize(
    ("payload", "global_name"),
    [
        (lambda m: _RunsSystem(m), f"{os.system.__module__}.system"),
        (lambda m: _RunsEval(m), "builtins.eval"),
        (lambda m: _UnknownClass(), f"{__name__}._UnknownClass"),
    ],
    ids=["os.system", "builtins.eval", "unknown-class"],
)
def test_malicious_pickles_refused(tmp_path: Path, payload, global_name: str, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    obj = {"model": payload(marker), "epoch": 3, "w": torch.zeros(2)}
    path = tmp_path / "evil.pt"
    if legacy:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
    else:
        torch.save(obj, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert global_name in msg and "refus" in msg and str(path) in msg
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)
    assert not marker.exists(), "the pickled payload ran"
    with pytest.raises(UnsafeCheckpointError):
        load_model(path)
    assert not marker.exists()


def test_malicious_payload_among_weights(tmp_path: Path) -> None:
    """A real state_dict with a payload hidden next to it is refused as a whole."""
    marker = tmp_path / "pwned"
    sd = build_model("yolov5n").state_dict()
    obj = {"model": {"state": sd, "hook": _RunsSystem(marker)}, "epoch": 1}
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|nt\.system"):
        load_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- bad files


def test_truncated_file(tmp_path: Path, official: Path) -> None:
    data = official.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_corrupt_record(tmp_path: Path, official: Path) -> None:
    data = bytearray(official.read_bytes())
    # keep the zip directory intact but scramble the middle of the archive (tensor records)
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(4096)
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(data))
    try:
        ck = load_checkpoint(path)
    except CheckpointError as e:
        assert str(path) in str(e)
    else:  # zeroed bytes inside an uncompressed tensor record are still a valid archive
        assert ck.format == "ultralytics"


@pytest.mark.parametrize(
    ("content", "what"),
    [(None, "JPEG"), (b"hello, this is not a checkpoint\n" * 4, "text"), (b"\x00\x01\x02\x03" * 8, "unknown data")],
)
def test_non_checkpoint_files(tmp_path: Path, shared, content: bytes | None, what: str) -> None:
    path = tmp_path / "not_a_model.pt"
    path.write_bytes((shared / "data" / "images" / "bus.jpg").read_bytes() if content is None else content)
    with pytest.raises(CheckpointError, match=what) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------------------- own format


def test_own_format_round_trip_bit_exact(tmp_path: Path, official: Path) -> None:
    model = load_model(official, fuse=False)
    path = save_checkpoint(model, tmp_path / "sub" / "n.pt", epoch=7, recipe={"sparsity": 0.5, "pattern": "2:4"})
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format"] == "sparseyolo" and raw["version"] == 1
    ck = load_checkpoint(path)
    assert ck.format == "sparseyolo" and ck.epoch == 7 and ck.meta["recipe"]["pattern"] == "2:4"
    assert ck.names == model.names and ck.nc == 80 and ck.stride.tolist() == [8.0, 16.0, 32.0]
    ref = model.state_dict()
    assert list(ck.state_dict) == list(ref)
    assert all(torch.equal(ck.state_dict[k], ref[k]) and ck.state_dict[k].dtype == ref[k].dtype for k in ref)
    again = load_model(path, fuse=False)
    assert all(torch.equal(v, ref[k]) for k, v in again.state_dict().items())
    assert again.yaml_file == "yolov5n.yaml" and again.meta["epoch"] == 7


def test_own_format_fused_model(tmp_path: Path) -> None:
    model = build_model("yolov5n", nc=4).eval().fuse()
    path = save_checkpoint(model, tmp_path / "fused.pt")
    ck = load_checkpoint(path)
    assert ck.fused
    loaded = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])


def test_own_format_extra_mask_buffers(tmp_path: Path) -> None:
    model = build_model("yolov5n", nc=2).eval()
    conv = model.model[1].conv
    conv.register_buffer("weight_mask", torch.rand_like(conv.weight) > 0.5)
    path = save_checkpoint(model, tmp_path / "masked.pt")
    assert "model.1.conv.weight_mask" in load_checkpoint(path).state_dict
    # Pruning masks are part of the model (sparseyolo.prune): registered on load, weights as stored (these
    # are not zero under the mask, so the file keeps them dense).
    loaded = load_model(path, fuse=False)
    assert torch.equal(loaded.model[1].conv.weight, conv.weight)
    assert torch.equal(loaded.model[1].conv.weight_mask, conv.weight_mask)


def test_save_rejects_non_plain_meta(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="plain"):
        save_checkpoint(build_model("yolov5n"), tmp_path / "x.pt", bad=object())


# ---------------------------------------------------------------------------------------------- plain state_dicts


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model"])
@pytest.mark.parametrize(("name", "nc"), [("yolov5n", 3), ("yolov5s", 80)])
def test_plain_state_dict_round_trip(tmp_path: Path, wrap: str, name: str, nc: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, nc=nc).eval()
    sd = model.state_dict()
    path = tmp_path / "sd.pt"
    torch.save(sd if wrap == "bare" else {wrap: sd, "epoch": 2}, path)
    ck = load_checkpoint(path)
    assert ck.format == "state_dict" and ck.nc == nc and ck.yaml_file == f"{name}.yaml"
    assert ck.yaml["width_multiple"] == model.yaml["width_multiple"]
    loaded = load_model(path, fuse=False)
    assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())


def test_plain_state_dict_explicit_cfg_and_mismatch(tmp_path: Path) -> None:
    sd = build_model("yolov5n", nc=3).state_dict()
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    assert load_checkpoint(path, cfg="yolov5n").nc == 80  # the cfg's nc; shapes decide at load time
    with pytest.raises(CheckpointError, match="different shapes: model.24.m.0.weight"):
        load_model(path, cfg="yolov5n")
    with pytest.raises(CheckpointError, match="nc=3"):
        load_model(path, nc=80)
    with pytest.raises(CheckpointError, match="different shapes"):
        load_model(path, cfg="yolov5s")


def test_infer_config_rejects_unknown_width(tmp_path: Path) -> None:
    sd = build_model("yolov5n").state_dict()
    sd["model.0.conv.weight"] = torch.zeros(24, 3, 6, 6)
    path = tmp_path / "odd.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="cfg="):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------- downloads


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def test_attempt_download_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="offline") as info:
        attempt_download("yolov5s.pt")
    assert "local path" in str(info.value)
    assert calls == ["https://github.com/ultralytics/yolov5/releases/download/v7.0/yolov5s.pt"]
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    with pytest.raises(CheckpointError, match="offline"):
        load_model("yolov5m6.pt")


def test_attempt_download_success_and_non_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(3_000_000)
    monkeypatch.setattr(download_mod.urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(payload))
    path = attempt_download("yolov5n.pt", dir=tmp_path)
    assert path == tmp_path / "yolov5n.pt" and path.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolov5n.pt"]

    def must_not_run(url, timeout=None):
        raise AssertionError("network used for a non-asset name")

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", must_not_run)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        attempt_download(tmp_path / "my_model.pt")
    assert attempt_download(path) == path  # existing files are returned as they are


# ---------------------------------------------------------------------------------------------- ema preference


def _fake_ultralytics_module(monkeypatch: pytest.MonkeyPatch) -> type:
    """Register a throw-away ``models.yolo.Model`` class so torch.save pickles it under YOLOv5's name."""
    import sys
    import types

    pkg, sub = types.ModuleType("models"), types.ModuleType("models.yolo")

    class Model(torch.nn.Module):
        def __init__(self, fill: float) -> None:
            super().__init__()
            self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
            torch.nn.init.constant_(self.model[0].weight, fill)
            self.register_buffer("scratch", torch.zeros(1), persistent=False)
            self.yaml = {"nc": 2}
            self.names = {0: "cat", 1: "dog"}
            self.nc = 2

    Model.__module__ = "models.yolo"
    Model.__qualname__ = "Model"
    sub.Model = Model
    pkg.yolo = sub
    monkeypatch.setitem(sys.modules, "models", pkg)
    monkeypatch.setitem(sys.modules, "models.yolo", sub)
    return Model


@pytest.mark.parametrize("with_ema", [True, False])
def test_ultralytics_layout_prefers_ema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_ema: bool) -> None:
    Model = _fake_ultralytics_module(monkeypatch)
    path = tmp_path / "last.pt"
    torch.save(
        {"model": Model(1.0).half(), "ema": Model(2.0).half() if with_ema else None, "epoch": 5, "optimizer": None},
        path,
    )
    monkeypatch.delitem(__import__("sys").modules, "models.yolo")  # the reader must not need the class
    ck = load_checkpoint(path)
    assert ck.format == "ultralytics" and ck.epoch == 5 and ck.names == ["cat", "dog"] and ck.nc == 2
    assert sorted(ck.state_dict) == sorted(
        [
            "model.0.weight",
            "model.0.bias",
            "model.1.weight",
            "model.1.bias",
            "model.1.running_mean",
            "model.1.running_var",
            "model.1.num_batches_tracked",
        ]
    )  # the non-persistent buffer is left out, like state_dict() does
    assert ck.state_dict["model.0.weight"].unique().item() == (2.0 if with_ema else 1.0)
