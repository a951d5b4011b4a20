"""Model definitions: configs build, parameter counts, checkpoint key layout, fusion, output shapes."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from sparseyolo.models import CONFIG_DIR, MODEL_NAMES, Conv, Detect, DetectionModel, build_model, yolov5n


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics so fusion is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


def _n_outputs(h: int, w: int, na: int = 3) -> int:
    return na * sum((h // s) * (w // s) for s in (8, 16, 32))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_all_configs_build(name: str) -> None:
    model = build_model(name)
    assert model.yaml_file == f"{name}.yaml"
    assert model.nc == 80 and len(model.names) == 80 and model.names[0] == "0"
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert model.save == [4, 6, 10, 14, 17, 20, 23]
    detect = model.model[-1]
    assert isinstance(detect, Detect) and detect.anchors.shape == (3, 3, 2)
    # anchors are stored in grid units: P3 (stride 8) anchor (10, 13) -> (1.25, 1.625)
    assert detect.anchors[0, 0].tolist() == [1.25, 1.625]
    assert all(hasattr(m, a) for m in model.model for a in ("i", "f", "type", "np"))


@pytest.mark.parametrize(("name", "n_params"), [("yolov5n", 1_872_157), ("yolov5s", 7_235_389)])
def test_parameter_counts(name: str, n_params: int) -> None:
    model = build_model(name, nc=80)
    assert sum(p.numel() for p in model.parameters()) == n_params
    line = model.info()
    assert re.fullmatch(
        rf"{name.replace('yolov5', 'YOLOv5')} summary: \d+ layers, {n_params:,} parameters, {n_params:,} gradients, \d+\.\d GFLOPs",
        line,
    ), line


def test_fused_info_line() -> None:
    model = yolov5n().eval().fuse()
    assert model.is_fused()
    # Leaf modules: 57 Conv (conv + SiLU each) + 3 Detect convs + SPPF pool + 2 Upsample + 4 Concat = 124.
    assert model.info() == "YOLOv5n summary: 124 layers, 1,867,405 parameters, 115,005 gradients, 4.5 GFLOPs"


def test_official_checkpoint_info_line(shared) -> None:
    from sparseyolo.checkpoint import load_model

    # As Ultralytics prints it for this file (../shared/weights/SOURCE.txt: 124 layers, 1,867,405 parameters).
    model = load_model(shared / "weights" / "yolov5n.pt")
    assert model.info() == "YOLOv5n summary: 124 layers, 1,867,405 parameters, 0 gradients, 4.5 GFLOPs"


def test_state_dict_keys_match_official(shared) -> None:
    from sparseyolo.checkpoint import load_checkpoint

    official = load_checkpoint(shared / "weights" / "yolov5n.pt").state_dict
    ours = build_model("yolov5n").state_dict()
    assert list(ours) == list(official)
    assert all(ours[k].shape == official[k].shape for k in ours)


@pytest.mark.parametrize("shape", [(640, 640), (320, 256), (96, 160)])
def test_fuse_keeps_outputs(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = yolov5n(nc=7)
    _randomize_bn(model)
    model.eval()
    x = torch.rand(2, 3, *shape)
    with torch.no_grad():
        ref = model(x)[0]
        model.fuse()
        out = model(x)[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.conv.bias is not None for m in model.modules() if isinstance(m, Conv))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("nc", [1, 3, 80, 91])
@pytest.mark.parametrize("hw", [(320, 256), (64, 96)])
def test_forward_shapes(nc: int, hw: tuple[int, int]) -> None:
    model = yolov5n(nc=nc)
    h, w = hw
    x = torch.rand(2, 3, h, w)
    model.eval()
    with torch.no_grad():
        pred, raw = model(x)
    assert pred.shape == (2, _n_outputs(h, w), nc + 5)
    assert [tuple(r.shape) for r in raw] == [(2, 3, h // s, w // s, nc + 5) for s in (8, 16, 32)]
    assert pred[..., 4:].min() >= 0 and pred[..., 4:].max() <= 1  # sigmoid scores
    model.train()
    out = model(x)
    assert isinstance(out, list) and [tuple(r.shape) for r in out] == [tuple(r.shape) for r in raw]


def test_decode_matches_formula() -> None:
    """Eval output is the v6+ decode of the raw maps: xy = (2 sig - 0.5 + cell) * s, wh = (2 sig)^2 * anchor px."""
    torch.manual_seed(1)
    model = yolov5n(nc=2).eval()
    with torch.no_grad():
        pred, raw = model(torch.rand(1, 3, 64, 96))
    det = model.model[-1]
    r = raw[1]  # stride 16: [1, 3, 4, 6, 7]
    s = r.sigmoid()
    a, y, x = 2, 3, 5
    cx = (s[0, a, y, x, 0] * 2 - 0.5 + x) * 16
    cy = (s[0, a, y, x, 1] * 2 - 0.5 + y) * 16
    w = (s[0, a, y, x, 2] * 2) ** 2 * det.anchors[1, a, 0] * 16
    row = pred[0, 3 * 8 * 12 + (a * 4 + y) * 6 + x]
    torch.testing.assert_close(row[:3], torch.stack([cx, cy, w]))
    torch.testing.assert_close(row[4:], s[0, a, y, x, 4:])


def test_build_from_dict_and_path(tmp_path) -> None:
    import yaml

    cfg = yaml.safe_load((CONFIG_DIR / "yolov5n.yaml").read_text())
    a = build_model(cfg, nc=5)
    b = build_model(CONFIG_DIR / "yolov5n.yaml", nc=5)
    assert a.nc == b.nc == 5
    assert a.info().startswith("Model summary")  # no file name for a dict, as YOLOv5 does
    assert [k for k in a.state_dict()] == [k for k in b.state_dict()]
    assert cfg["nc"] == 80  # the caller's dict is not modified


def test_unknown_config_and_module() -> None:
    with pytest.raises(FileNotFoundError, match="yolov9q"):
        build_model("yolov9q")
    import yaml

    cfg = yaml.safe_load((CONFIG_DIR / "yolov5n.yaml").read_text())
    cfg["backbone"][0][2] = "__import__('os').system"
    with pytest.raises(ValueError, match="unknown module"):
        DetectionModel(cfg)


def test_to_moves_stride_and_half_runs() -> None:
    model = yolov5n().eval()
    model.to(torch.float64)
    assert model.stride.dtype == torch.float64 and model.model[-1].stride is model.stride
    with torch.no_grad():
        pred, _ = model(torch.rand(1, 3, 64, 64, dtype=torch.float64))
    assert pred.dtype == torch.float64
