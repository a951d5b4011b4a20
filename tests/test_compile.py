"""``torch.compile`` of dense and sparsified models (:mod:`sparseyolo.sparse.compile`): one graph, same outputs.

A sparsified model must trace without a graph break (``fullgraph=True`` raises on one): a break splits the model
into eager islands and the compiled rows of every benchmark would time something else than they say.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparseyolo.dense_runtimes import PYTORCH_BF16_COMPILED, PYTORCH_FP32_COMPILED, dense_runtimes
from sparseyolo.models import DetectionModel
from sparseyolo.prune import prune
from sparseyolo.sparse import SparseConv2d, sparsify
from sparseyolo.sparse.backends import ConvGeometry
from sparseyolo.sparse.compile import compile_inference


def _toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(32, 48, 3, 2, 1, bias=False), nn.BatchNorm2d(48), nn.SiLU(),
        nn.Conv2d(48, 40, 1, bias=False), nn.BatchNorm2d(40), nn.SiLU(),
        nn.Conv2d(40, 32, 3, 1, 1),
    ).eval()


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize("backend,dtype,pattern", [
    ("cpu_block", torch.float32, dict(method="nm", n=2, m=4, block=16)),
    ("cpu_block", torch.bfloat16, dict(method="nm", n=2, m=4, block=16)),
    ("cpu_block_tiles", torch.bfloat16, dict(method="tile", amount=0.5)),
    ("cpu_csr", torch.float32, dict(method="global", amount=0.7)),
])
def test_sparsified_model_compiles_as_one_graph_with_eager_outputs(backend, dtype, pattern):
    model = _toy()
    prune(model, **pattern)
    sp = sparsify(model, backend=backend, dtype=dtype)
    assert {m.backend.name for m in sp.modules() if isinstance(m, SparseConv2d)} == {backend}
    x = torch.randn(2, 32, 19, 23).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = sp(x)
    run = compile_inference(sp, fullgraph=True)
    out = run(x)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    # the sparse convs are the same kernel; only the ops Inductor generates may round differently
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    x2 = torch.randn(1, 32, 16, 16).to(dtype).contiguous(memory_format=torch.channels_last)  # a new shape recompiles
    with torch.no_grad():
        torch.testing.assert_close(run(x2).float(), sp(x2).float(), **tol)


def test_sparsified_yolov5_compiles_as_one_graph():
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml").eval()
    prune(model, "tile", amount=0.5, exclude=["model.0.*", "model.24.*"])
    x = torch.rand(1, 3, 64, 96).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    sp = sparsify(model, backend="cpu_block_tiles", dtype=torch.bfloat16)
    with torch.no_grad():
        ref = _first(sp(x))
    out = _first(compile_inference(sp, fullgraph=True)(x))
    assert out.dtype == torch.float32 and out.shape == ref.shape == (1, 3 * (8 * 12 + 4 * 6 + 2 * 3), 85)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=0.5)  # boxes in pixels, decoded in fp32


def test_static_values_follow_a_load_from_another_layout():
    """``forward`` reads the gather from ``module.static``, which a load of another packing must refresh."""
    g = ConvGeometry(64, 32, (1, 1), (1, 1), (0, 0))
    mask24 = torch.zeros(32, 64, 1, 1)  # 2:4 shared by every row: packed as pairs24; a dense weight: plain
    mask24[:, 0::4] = mask24[:, 2::4] = 1  # channels 0 and 2 of each 4: not an aligned pair
    a = SparseConv2d.from_weight(torch.randn(32, 64, 1, 1), None, g, backend="cpu_block", dtype=torch.bfloat16)
    b = SparseConv2d.from_weight(torch.randn(32, 64, 1, 1) * mask24, None, g, backend="cpu_block",
                                 dtype=torch.bfloat16)
    assert a.static["gather"] != b.static["gather"], (a.static, b.static)
    a.load_state_dict(b.state_dict())
    assert a.static == b.static
    x = torch.randn(1, 64, 5, 7).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_compile_refuses_a_training_model():
    with pytest.raises(ValueError, match="model.eval"):
        compile_inference(_toy().train())


def _compiled_dense_and_eager(name: str):
    """The dense runtime ``name`` on a random-init yolov5n at 64x64: its output and the eager fp32 model's."""
    torch.manual_seed(0)
    model = sparsify(DetectionModel("yolov5n.yaml").eval(), backend="dense")
    x = torch.rand(1, 3, 64, 64)
    rt = dense_runtimes(copy.deepcopy(model), x, 1, (name,))[name]
    assert rt.run is not None, rt.note
    out = _first(rt.run())
    with torch.no_grad():
        ref = _first(model(x))
    assert out.dtype == torch.float32 and out.shape == ref.shape
    return rt, out, ref


def test_dense_runtime_compiled_fp32_runs_and_matches_eager():
    rt, out, ref = _compiled_dense_and_eager(PYTORCH_FP32_COMPILED)
    assert "fp32" in rt.note, rt.note
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_dense_runtime_compiled_bf16_runs_and_matches_eager():
    rt, out, ref = _compiled_dense_and_eager(PYTORCH_BF16_COMPILED)
    assert "bf16" in rt.note, rt.note
    # bf16 weights and activations against the fp32 model: objectness within bf16's error, boxes within a pixel
    torch.testing.assert_close(out[..., 4], ref[..., 4], rtol=0.1, atol=0.02)
    torch.testing.assert_close(out[..., :4], ref[..., :4], rtol=0.02, atol=1.0)
