"""sparseyolo's cuSPARSELt ops (``sparseyolo::cusparselt_compress`` / ``cusparselt_linear``) and the
``"cuda_cusparselt"`` experimental GPU backend of SparseConv2d built on them.

CPU-runnable: the ops' errors on CPU tensors, the build's cuSPARSELt version, the backend's status. CUDA-marked
(skipped without a GPU): the op vs an fp64 reference (error at most 2x PyTorch's own fp16/bf16 matmul error),
awkward shapes (rows not a multiple of 8: the padded tail), bias or none, plan reuse across calls and bias
tensors, clear errors for a weight that is not 2:4, shapes cuSPARSELt cannot take, a compressed weight of another
shape, an alg_id out of range; opcheck; the 1x1-conv backend vs cuDNN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparseyolo import ops
from sparseyolo.sparse import SparseConv2d
from sparseyolo.sparse.experimental import cusparselt

DTYPES = [torch.float16, torch.bfloat16]


def _weight_24(out: int, inp: int, dtype: torch.dtype, seed: int = 0, device: str = "cuda") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) / inp**0.5
    return (w * ops.nm_mask(w, 2, 4)).to(device, dtype)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _need_cusparselt() -> None:
    if ops.cusparselt_version() == 0:
        pytest.skip("sparseyolo was built without cuSPARSELt")
    why = cusparselt.cusparselt_status()
    if why:
        pytest.fail(f"cuSPARSELt is built in but its check failed on this GPU: {why}")


class TestCPU:
    def test_version_is_an_int(self):
        v = ops.cusparselt_version()
        assert isinstance(v, int) and v >= 0
        if v:
            assert v >= 600  # 0.6 or newer: the descriptor-based compress this backend uses

    def test_cpu_tensors_are_refused_clearly(self):
        w = torch.zeros(16, 16, dtype=torch.float16)
        with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
            ops.cusparselt_compress(w)
        with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
            ops.cusparselt_linear(torch.zeros(64, dtype=torch.uint8), torch.zeros(4, 16, dtype=torch.float16), 16)

    def test_status_says_why_not(self, monkeypatch):
        monkeypatch.delenv("SPARSEYOLO_CUSPARSELT", raising=False)
        monkeypatch.setattr(cusparselt, "_STATUS", {})
        status = cusparselt.cusparselt_status()
        if ops.cusparselt_version() == 0:
            assert "built without cuSPARSELt" in status
        elif not torch.cuda.is_available():
            assert status.startswith("cuSPARSELt check failed")  # the subprocess has no GPU
        assert cusparselt.cusparselt_status() is status  # checked once per process

    def test_backend_class_refuses_without_cusparselt(self, monkeypatch):
        monkeypatch.setattr(ops, "cusparselt_version", lambda: 0)  # as a build without cuSPARSELt reports
        with pytest.raises(RuntimeError, match="built without cuSPARSELt"):
            cusparselt.CusparseLtConv1x1(torch.zeros(16, 16, 1, 1, dtype=torch.float16), None)


@pytest.mark.cuda
class TestCUDA:
    @pytest.mark.parametrize("dtype", DTYPES)
    # P = 37: 32 rows in one matmul and 5 through the padded tail; P = 1: the tail alone.
    @pytest.mark.parametrize("out,inp,p,with_bias", [(64, 64, 128, True), (80, 160, 37, True), (96, 112, 1, False),
                                                     (320, 640, 4096, True), (16, 32, 1003, False)])
    def test_matches_reference(self, dtype, out, inp, p, with_bias):
        _need_cusparselt()
        w = _weight_24(out, inp, dtype, seed=out + inp)
        x = torch.randn(p, inp, device="cuda", dtype=dtype)
        bias = torch.randn(out, device="cuda", dtype=dtype) if with_bias else None
        y = ops.cusparselt_linear(ops.cusparselt_compress(w), x, out, bias)
        assert y.shape == (p, out) and y.dtype == dtype and y.is_contiguous()
        ref = x.double() @ w.double().t() + (0 if bias is None else bias.double())
        torch_err = _rel(F.linear(x, w, bias), ref)  # PyTorch's own error in this dtype
        assert bool(torch.isfinite(y).all())
        assert _rel(y, ref) <= 2 * torch_err + 1e-6

    def test_plan_reuse_and_bias_tensors(self):
        _need_cusparselt()
        w = _weight_24(128, 64, torch.float16, seed=3)
        c = ops.cusparselt_compress(w)
        x = torch.randn(300, 64, device="cuda", dtype=torch.float16)
        b1 = torch.randn(128, device="cuda", dtype=torch.float16)
        b2 = torch.randn(128, device="cuda", dtype=torch.float16)
        y1, y1_again = ops.cusparselt_linear(c, x, 128, b1), ops.cusparselt_linear(c, x, 128, b1)
        y2 = ops.cusparselt_linear(c, x, 128, b2)  # same shape, another bias tensor: another plan
        y0 = ops.cusparselt_linear(c, x, 128)
        assert torch.equal(y1, y1_again)
        torch.testing.assert_close((y1 - y0).float(), b1.float().expand(300, -1), atol=2e-2, rtol=0)
        torch.testing.assert_close((y2 - y0).float(), b2.float().expand(300, -1), atol=2e-2, rtol=0)

    def test_non_contiguous_and_offset_inputs(self):
        _need_cusparselt()
        w = _weight_24(64, 64, torch.float16, seed=4)
        c = ops.cusparselt_compress(w)
        big = torch.randn(201, 72, device="cuda", dtype=torch.float16)
        x = big[1:, 3:67]  # a view: not contiguous, not 16-byte aligned
        y = ops.cusparselt_linear(c, x, 64)
        assert _rel(y, x.double() @ w.double().t()) < 2e-3

    def test_errors(self):
        _need_cusparselt()
        dense = torch.randn(64, 64, device="cuda", dtype=torch.float16)
        with pytest.raises(RuntimeError, match="not 2:4 sparse"):
            ops.cusparselt_compress(dense)
        with pytest.raises(RuntimeError, match="multiples of 16"):
            ops.cusparselt_compress(_weight_24(72, 64, torch.float16))
        with pytest.raises(RuntimeError, match="float16 or bfloat16"):
            ops.cusparselt_compress(_weight_24(64, 64, torch.float32))
        c = ops.cusparselt_compress(_weight_24(64, 64, torch.float16))
        x = torch.randn(10, 64, device="cuda", dtype=torch.float16)
        with pytest.raises(RuntimeError, match="was it compressed from a weight of that shape"):
            ops.cusparselt_linear(c, x, 128)
        with pytest.raises(RuntimeError, match="alg_id"):
            ops.cusparselt_linear(c, x, 64, alg_id=10**6)
        with pytest.raises(RuntimeError, match="bias must be"):
            ops.cusparselt_linear(c, x, 64, torch.zeros(64, device="cuda"))  # float32 bias

    def test_opcheck(self):
        _need_cusparselt()
        c = ops.cusparselt_compress(_weight_24(64, 64, torch.float16))
        x = torch.randn(10, 64, device="cuda", dtype=torch.float16)
        torch.library.opcheck(torch.ops.sparseyolo.cusparselt_linear.default, (c, x, 64, None, 0))

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_module_backend_matches_cudnn(self, dtype):
        _need_cusparselt()
        conv = torch.nn.Conv2d(64, 96, 1, bias=True)
        with torch.no_grad():
            conv.weight.mul_(ops.nm_mask(conv.weight, 2, 4))
        mod = SparseConv2d.from_dense(conv, activation="silu", pattern="2:4", backend=cusparselt.CUSPARSELT,
                                      dtype=dtype).cuda()
        x = torch.randn(2, 64, 17, 23, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        y = mod(x)
        assert mod.backend.name == "cuda_cusparselt" and mod.compressed.dtype == torch.uint8
        ref = F.silu(F.conv2d(x.double(), conv.weight.detach().cuda().double(), conv.bias.detach().cuda().double()))
        assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
        assert _rel(y, ref) < (5e-3 if dtype == torch.float16 else 2e-2)
