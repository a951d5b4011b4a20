"""sparsify(model): equal to the masked dense model on our YOLOv5, an Ultralytics-style model and ResNet-18."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import sparseyolo
from sparseyolo.prune import prune
from sparseyolo.sparse import SparseConv2d, sparsify, sparsify_report

RTOL = 1e-4


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y - ref).abs().max() / ref.abs().max()).item()


def _image(path: Path) -> torch.Tensor:
    from sparseyolo.data.augment import letterbox

    im = letterbox(cv2.imread(str(path)), 640, stride=32, auto=True)[0]
    return torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255.0


@pytest.fixture(scope="module")
def yolov5n_24(shared):
    model = sparseyolo.load_model(shared / "weights" / "yolov5n.pt", fuse=False).eval()
    prune(model, "nm", n=2, m=4)
    return model


class TestYolov5n:
    def test_random_and_real_image(self, shared, yolov5n_24):
        fast = sparsify(yolov5n_24, backend="sparse")
        report = sparsify_report(fast)
        assert report.folded_bn == 57 and len(report.sparse_layers) >= 50
        assert all(d.pattern == "2:4" for d in report.sparse_layers)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        fused = [m for m in fast.modules() if isinstance(m, SparseConv2d) and m.activation == "silu"]
        assert len(fused) >= 50
        gen = torch.Generator().manual_seed(0)
        for x in (torch.rand(2, 3, 256, 320, generator=gen), _image(shared / "data" / "images" / "bus.jpg")):
            with torch.no_grad():
                ref, y = yolov5n_24(x)[0], fast(x)[0]
            assert _rel_err(y, ref) <= RTOL

    def test_fused_model_and_dense_backend(self, shared, yolov5n_24):
        fused = sparseyolo.load_model(shared / "weights" / "yolov5n.pt", fuse=True)
        prune(fused, "global", amount=0.75)
        x = torch.rand(1, 3, 160, 192)
        with torch.no_grad():
            ref = fused(x)[0]
            for backend in ("sparse", "dense"):
                assert _rel_err(sparsify(fused, backend=backend)(x)[0], ref) <= RTOL
        dense = sparsify(fused, backend="dense")
        assert not any(isinstance(m, SparseConv2d) for m in dense.modules())

    def test_auto_never_picks_the_slower_path(self, yolov5n_24):
        x = torch.rand(1, 3, 128, 128)
        fast = sparsify(yolov5n_24, backend="auto", example_input=x, reps=3)
        report = sparsify_report(fast)
        timed = [d for d in report.layers if d.dense_ms == d.dense_ms]
        assert len(timed) >= 50
        # the whole model was timed as chosen per layer, all dense, and all dense channels-last; fastest returned
        assert {"sparse", "dense"} <= set(report.model_ms) and report.chosen in report.model_ms
        assert report.model_ms[report.chosen] == min(report.model_ms.values())
        if report.chosen == "sparse":
            for d in timed:
                assert (d.backend == "sparse") == (d.sparse_ms < d.dense_ms), d
        else:
            assert not report.sparse_layers and all("whole model" in d.reason for d in timed if d.sparse_ms < d.dense_ms)
            assert not any(isinstance(m, SparseConv2d) for m in fast.modules())
        chosen = {d.name for d in report.sparse_layers}
        modules = dict(fast.named_modules())
        assert all(isinstance(modules[n], SparseConv2d) for n in chosen)
        assert "backend=auto" in str(report) and "whole model on example_input" in str(report)
        with torch.no_grad():
            assert _rel_err(fast(x)[0], yolov5n_24(x)[0]) <= RTOL

    def test_top_level_export(self):
        assert sparseyolo.sparsify is sparsify


def test_report_names_the_input_layout_the_model_reads():
    """bf16 block kernels read channels-last, CSR reads NCHW: the report says which, and auto times each candidate
    in its own layout (an NCHW input into a channels-last model had made auto return dense and bench time layout
    changes instead of kernels)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 64, 3, 1, 1), nn.SiLU(), nn.Conv2d(64, 32, 1)).eval()
    prune(model, "tile", amount=0.5)
    block = sparsify(model, backend="cpu_block", dtype=torch.bfloat16)
    assert block.sparsify_report.layout == "channels_last"
    assert block.sparsify_report.memory_format == torch.channels_last
    assert "feed it channels-last" in str(block.sparsify_report)
    csr = sparsify(model, backend="cpu_csr")
    assert csr.sparsify_report.layout == "contiguous" and csr.sparsify_report.memory_format == torch.contiguous_format
    dense = sparsify(model, backend="dense")
    assert dense.sparsify_report.layout == "contiguous"
    auto = sparsify(model, backend="auto", dtype=torch.bfloat16, example_input=torch.rand(1, 32, 24, 24), reps=2)
    rep = auto.sparsify_report
    expected = {"sparse": None, "dense": "contiguous", "dense_channels_last": "channels_last"}[rep.chosen]
    assert rep.layout == (expected or ("channels_last" if rep.sparse_layers else "contiguous"))


# An Ultralytics-style model: blocks named and built like ultralytics.nn.modules (Conv with .conv/.bn/.act).
class UConv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class UBottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1 = UConv(c, c, 1)
        self.cv2 = UConv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class UModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(UConv(3, 16, 3, 2), UConv(16, 32, 3, 2), UBottleneck(32),
                                   UConv(32, 64, 3, 2, act=nn.LeakyReLU(0.1)), UConv(64, 64, 1, act=False))
        self.head = nn.Conv2d(64, 24, 1)

    def forward(self, x):
        return self.head(self.model(x))


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def test_ultralytics_style_model():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = UModel().eval()
    _randomise_bn(model, gen)
    prune(model, "l1", amount=0.6)
    x = torch.randn(2, 3, 45, 37, generator=gen)
    with torch.no_grad():
        ref = model(x)
        fast = sparsify(model, backend="sparse")
        assert _rel_err(fast(x), ref) <= RTOL
    assert isinstance(fast.model[0].conv, SparseConv2d) and fast.model[0].conv.activation == "silu"
    assert isinstance(fast.model[3].act, nn.LeakyReLU) and fast.model[3].conv.activation == "identity"
    assert isinstance(fast.head, SparseConv2d) and fast.head.bias is not None
    assert sparsify_report(fast).folded_bn == 6
    assert not isinstance(model.model[0].conv, SparseConv2d)  # inplace=False left the original alone


def test_resnet18():
    torchvision = pytest.importorskip("torchvision")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    _randomise_bn(model, gen)
    prune(model, "global", amount=0.8)
    x = torch.randn(2, 3, 64, 72, generator=gen)
    with torch.no_grad():
        ref = model(x)
        fast = sparsify(model, backend="sparse")
        assert _rel_err(fast(x), ref) <= RTOL
    report = sparsify_report(fast)
    assert report.folded_bn == 20  # conv1/bn1, 16 block convs, 3 downsample pairs
    assert isinstance(fast.layer2[0].downsample[0], SparseConv2d)
    assert isinstance(fast.layer2[0].downsample[1], nn.Identity)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend should be one of"):
        sparsify(nn.Conv2d(3, 3, 1), backend="fast")


@pytest.mark.slow
def test_coco128_map_equal(shared, tmp_path, yolov5n_24):
    """mAP of the 2:4 yolov5n on coco128: masked dense == sparsified, to 3 decimals."""
    import yaml

    from sparseyolo import val
    from sparseyolo.checkpoint import load_checkpoint

    names = load_checkpoint(shared / "weights" / "yolov5n.pt").names
    cfg = {"path": str(shared / "data" / "coco128"), "train": "images/train2017", "val": "images/train2017",
           "names": dict(enumerate(names))}
    data = tmp_path / "coco128.yaml"
    data.write_text(yaml.safe_dump(cfg))
    results = []
    for model in (yolov5n_24, sparsify(yolov5n_24, backend="sparse")):
        r = val.run(shared / "weights" / "yolov5n.pt", str(data), batch_size=16, imgsz=640, conf_thres=0.001,
                    iou_thres=0.65, device="cpu", workers=2, model=model, cocoeval=False)
        results.append(r)
    print("coco128 2:4 masked dense vs sparse:", results)
    a, b = (np.round([r.precision, r.recall, r.map50, r.map], 3) for r in results)
    np.testing.assert_array_equal(a, b)
