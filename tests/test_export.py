"""``sparseyolo export``: ONNX of the decoded Detect output, pruned zeros kept, onnxruntime equal to PyTorch.

The model tests use the demo checkpoint shipped in sparseyolo/assets (always present) and, when ../shared is
beside the checkout, the official yolov5n on bus.jpg and zidane.jpg.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from sparseyolo.checkpoint import load_model, save_checkpoint
from sparseyolo.cli import main
from sparseyolo.data.augment import letterbox
from sparseyolo.demo import PACKAGED_WEIGHTS, packaged_weights
from sparseyolo.ops import yolo_nms
from sparseyolo.prune import prune

onnx = pytest.importorskip("onnx", reason="export needs onnx: pip install onnx onnxruntime (or .[bench])")
ort = pytest.importorskip("onnxruntime", reason="the export check needs onnxruntime: pip install onnxruntime")

from onnx import numpy_helper  # noqa: E402

from sparseyolo.export import ExportError, check_zeros, default_output, run_export  # noqa: E402


@pytest.fixture(scope="module")
def demo_weights():
    try:
        return packaged_weights()
    except FileNotFoundError:
        pytest.skip(f"sparseyolo/assets/{PACKAGED_WEIGHTS} not built (python benchmarks/train_demo_model.py)")


@pytest.fixture(scope="module")
def pruned_demo(demo_weights, tmp_path_factory):
    """The demo model with 2:4 masks, saved as a sparseyolo checkpoint (fp16, compressed)."""
    model = load_model(demo_weights, fuse=False)
    prune(model, "nm", n=2, m=4)
    return save_checkpoint(model.half(), tmp_path_factory.mktemp("pruned") / "demo_24.pt")


def _conv_weights(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.name.endswith(".weight") and len(i.dims) == 4}


def test_pruned_zeros_are_kept_per_conv(pruned_demo, tmp_path):
    res = run_export(pruned_demo, imgsz=128, dynamic=True, out=tmp_path / "m.onnx", progress=False)
    masked = load_model(pruned_demo, fuse=True)  # what was exported: BN folded, masks kept
    expected = {f"{n}.weight": m.weight for n, m in masked.model.named_modules(prefix="model")
                if isinstance(m, torch.nn.Conv2d)}
    got = _conv_weights(res.onnx)
    assert sorted(got) == sorted(expected)
    for name, w in expected.items():
        assert int((got[name] == 0).sum()) == int((w == 0).sum()), name
        mask = masked.get_submodule(name.removesuffix(".weight"))._buffers.get("weight_mask")
        if mask is not None:
            assert not got[name][~mask.numpy()].any(), name
    n_pruned = sum(1 for n in expected if masked.get_submodule(n.removesuffix(".weight"))._buffers.get("weight_mask")
                   is not None)
    assert res.pruned_convs == n_pruned > 50 and res.convs == len(expected)
    # a 2:4 model is half zeros in its pruned convs
    assert res.zeros >= sum(int(w.numel()) // 2 for n, w in expected.items()
                            if masked.get_submodule(n.removesuffix(".weight"))._buffers.get("weight_mask") is not None)
    assert res.ort_max_abs_diff is not None and res.ort_max_abs_diff < 1e-2


def test_output_is_the_decoded_head_and_batch_is_dynamic(pruned_demo, tmp_path):
    res = run_export(pruned_demo, imgsz=128, dynamic=True, out=tmp_path / "m.onnx", progress=False)
    model = load_model(pruned_demo, fuse=True)
    sess = ort.InferenceSession(str(res.onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["output0"]
    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    (y,) = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x)[0].numpy()
    anchors = 3 * sum((128 // s) ** 2 for s in (8, 16, 32))
    assert y.shape == ref.shape == (3, anchors, 5 + model.nc)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_fixed_batch_rejects_another_batch(demo_weights, tmp_path):
    res = run_export(demo_weights, imgsz=128, batch=2, out=tmp_path / "m.onnx", progress=False)
    assert res.input_shape == (2, 3, 128, 128) and not res.dynamic
    sess = ort.InferenceSession(str(res.onnx), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [2, 3, 128, 128]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, {"images": np.zeros((1, 3, 128, 128), np.float32)})


def _detections_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert len(a) == len(b)
    assert torch.equal(a[:, 5], b[:, 5])
    assert (a[:, :4] - b[:, :4]).abs().max().item() <= 0.05  # pixels at 640
    assert (a[:, 4] - b[:, 4]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_onnxruntime_reproduces_pytorch_detections(shared, name, tmp_path_factory):
    """yolov5n exported at 640: onnxruntime's detections after NMS are PyTorch's (letterbox to the fixed 640x640)."""
    out = tmp_path_factory.getbasetemp() / "yolov5n.onnx"
    if not out.is_file():
        run_export(shared / "weights" / "yolov5n.pt", imgsz=640, out=out, progress=False)
    import cv2

    im0 = cv2.imread(str(shared / "data" / "images" / name))
    im = letterbox(im0, 640, stride=32, auto=False)[0]
    x = torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
    model = load_model(shared / "weights" / "yolov5n.pt", fuse=True)
    with torch.no_grad():
        ref = yolo_nms(model(x)[0], 0.25, 0.45)[0]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = yolo_nms(torch.from_numpy(sess.run(None, {"images": x.numpy()})[0]), 0.25, 0.45)[0]
    assert len(ref) >= 3  # bus.jpg: 4 people and a bus; zidane.jpg: 2 people and a tie
    _detections_equal(got, ref)


def test_openvino_ir_matches_pytorch(pruned_demo, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO export needs openvino: pip install openvino")
    res = run_export(pruned_demo, imgsz=128, fmt="openvino", out=tmp_path / "m.onnx", progress=False)
    assert res.openvino == tmp_path / "m_openvino_model" / "m.xml"
    assert res.openvino.is_file() and res.openvino.with_suffix(".bin").is_file()
    assert res.openvino_max_abs_diff is not None and res.openvino_max_abs_diff < 1e-2


def test_a_file_whose_zeros_differ_is_refused(pruned_demo, tmp_path):
    res = run_export(pruned_demo, imgsz=128, out=tmp_path / "m.onnx", progress=False)
    model = onnx.load(str(res.onnx))
    init = next(i for i in model.graph.initializer if i.name == "model.2.cv1.conv.weight")
    w = numpy_helper.to_array(init).copy()
    w[w == 0] = 1e-3  # a pruned weight that came back
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(res.onnx))
    with pytest.raises(ExportError, match="model.2.cv1.conv.weight"):
        check_zeros(load_model(pruned_demo, fuse=True), res.onnx)


def test_missing_onnx_says_what_to_install(demo_weights, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(ExportError, match="pip install onnx onnxruntime"):
        run_export(demo_weights, imgsz=128, out=tmp_path / "m.onnx", progress=False)
    assert not (tmp_path / "m.onnx").exists()


def test_default_output_name():
    assert str(default_output("a/b/yolov5n.pt")) == "yolov5n.onnx"
    assert str(default_output("shapes_yolov5n.pt.xz")) == "shapes_yolov5n.onnx"


def test_cli(demo_weights, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", "--weights", str(demo_weights), "--img", "128", "--dynamic", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "onnxruntime == PyTorch: max abs diff" in text and "['batch', 3, 128, 128]" in text
    assert main(["export", "--weights", str(demo_weights), "--img", "100", "--out", str(out)]) == 2
    assert "multiple of the model's stride 32" in capsys.readouterr().err
    assert main(["export", "--weights", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
