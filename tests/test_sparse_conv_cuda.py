"""2:4 sparse convolution on the sparse tensor cores (``sparseyolo::sparse_conv2d_24``).

CPU-runnable: the mma.sp weight format (packing vs a bit-level reader written from the PTX ISA, vs the
``pack_nm_indices`` row metadata of the pruning work), the CPU reference op vs ``F.conv2d`` of the masked
weight, opcheck, error messages. CUDA-marked (skipped without a GPU): the kernel vs an fp64 reference, error
at most 2x PyTorch's own fp16/bf16 error, awkward channel counts and spatial sizes, poisoned outputs,
``SparseConv2d`` on the GPU (each registered CUDA backend, ``sparsify(device="cuda")``'s auto). The autotuner's
choice logic with fake backends runs on the CPU in tests/test_sparse_backends.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparseyolo import ops
from sparseyolo.prune.storage import pack_nm_indices
from sparseyolo.sparse import SparseConv2d, SparsifyConfig, pack_mma_sp_weight, sparsify, unpack_mma_sp_weight
from sparseyolo.sparse.autotune import MAX_REL_DIFF, disagreement
from sparseyolo.sparse.backends import available_backends
from sparseyolo.sparse.experimental import cusparselt_status, experimental_backends
from sparseyolo.sparse.experimental.mma_sp_kernels import not_built_reason
from sparseyolo.sparse.mma_sp import is_24_sparse

DTYPES = [torch.float16, torch.bfloat16]
WGMMA = pytest.param("wgmma", marks=pytest.mark.wgmma)
WGMMA_OVERLAP = pytest.param("wgmma_overlap", marks=pytest.mark.wgmma)
WGMMA64 = pytest.param("wgmma64", marks=pytest.mark.wgmma)
# The registered CUDA backends, and the experimental ones whether registered or not.
CUDA_BACKENDS = list({b.name: b for b in [*available_backends("cuda", torch.float16),
                                          *experimental_backends()]}.values())


def _weight_24(cout: int, cin: int, k: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, k, k, generator=g) * (1.0 / (cin * k * k) ** 0.5)
    w = w * ops.nm_mask(w, 2, 4)
    return w.to(dtype).to(torch.float32)  # exactly representable in dtype


def _reference(x, w, bias, stride, padding, activation):
    y = F.conv2d(x.double(), w.double(), None if bias is None else bias.double(), stride, padding)
    return F.silu(y) if activation == "silu" else y


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm().clamp_min(1e-30))


class TestMmaSpPacking:
    @pytest.mark.parametrize("cout,cin,k", [(80, 104, 3), (16, 32, 1), (255, 160, 1), (72, 8, 3), (64, 96, 3)])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_roundtrip_bit_level(self, cout, cin, k, dtype):
        w = _weight_24(cout, cin, k, seed=cout + cin, dtype=dtype)
        packed = pack_mma_sp_weight(w, dtype=dtype)
        assert packed.values.dtype == dtype and packed.meta.dtype == torch.int32
        assert packed.values.shape == ((cout + 63) // 64 * 4, k * k * ((cin + 31) // 32), 32, 8)
        assert torch.equal(unpack_mma_sp_weight(packed), w)

    def test_sparse_groups_and_all_zero_groups(self):
        w = _weight_24(16, 32, 1, seed=1)
        w[0, 0:4] = 0  # no nonzero
        w[1, 0:4] = 0
        w[1, 3] = 0.5  # one nonzero at the last position
        packed = pack_mma_sp_weight(w)
        assert torch.equal(unpack_mma_sp_weight(packed), w.half().float())

    def test_metadata_codes_valid_and_ordered(self):
        packed = pack_mma_sp_weight(_weight_24(80, 104, 3, seed=2))
        words = packed.meta.to(torch.int64) & 0xFFFFFFFF
        nibbles = torch.stack([(words >> (4 * j)) & 0xF for j in range(8)])
        lo, hi = nibbles & 3, nibbles >> 2
        assert bool((lo < hi).all())  # never the undefined equal-index codes 0b0000/0101/1010/1111

    def test_row_metadata_matches_pack_nm_indices(self):
        # storage.pack_nm_indices claims the per-row mma.sp metadata before the lane interleaving: the low
        # half-word of lane pair word (g, h) must be row g's packed positions for dense columns 16h..16h+15.
        cout, cin = 16, 64
        w = _weight_24(cout, cin, 1, seed=3)
        _, idx = ops.nm_compress(w.permute(0, 2, 3, 1).contiguous(), 2, 4)  # [16, 1, 1, 32]
        rows = pack_nm_indices(idx.reshape(cout, cin // 2), 4).view(torch.int16).to(torch.int64) & 0xFFFF  # [16, 4]
        packed = pack_mma_sp_weight(w)
        words = packed.meta.to(torch.int64) & 0xFFFFFFFF  # [1, 2 k-blocks, 16]
        for kb in range(2):
            for g in range(8):
                for h in range(2):
                    word = int(words[0, kb, 2 * g + h])
                    assert word & 0xFFFF == int(rows[g, 2 * kb + h])
                    assert word >> 16 == int(rows[g + 8, 2 * kb + h])

    def test_rejects_dense(self):
        with pytest.raises(ValueError, match="not 2:4"):
            pack_mma_sp_weight(torch.randn(16, 32, 1, 1))
        assert not is_24_sparse(torch.randn(16, 32, 1, 1))


CASES = [  # (cin, cout, k, stride, padding, h, w)
    (80, 80, 1, 1, 0, 13, 11),
    (160, 104, 3, 1, 1, 13, 13),
    (104, 160, 3, 2, 1, 33, 17),
    (64, 255, 1, 1, 0, 9, 7),
    (8, 72, 3, 2, 1, 13, 12),
]


class TestSparseConv2d24CPU:
    @pytest.mark.parametrize("cin,cout,k,stride,padding,h,w", CASES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("activation", ["identity", "silu"])
    def test_matches_masked_dense(self, cin, cout, k, stride, padding, h, w, dtype, activation):
        wt = _weight_24(cout, cin, k, seed=cin * cout, dtype=dtype)
        x = torch.randn(2, cin, h, w).to(dtype)
        bias = torch.randn(cout)
        packed = pack_mma_sp_weight(wt, dtype=dtype)
        y = ops.sparse_conv2d_24(x, packed.values, packed.meta, cout, k, bias, stride, padding, activation)
        ref = _reference(x, wt, bias, stride, padding, activation)
        torch_own = F.conv2d(x.float(), wt, bias, stride, padding)
        torch_own = (F.silu(torch_own) if activation == "silu" else torch_own).to(dtype)
        assert y.dtype == dtype and y.shape == ref.shape
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert _rel(y, ref) <= 2 * _rel(torch_own, ref) + 1e-7

    def test_opcheck(self):
        wt = _weight_24(72, 40, 3, seed=5)
        packed = pack_mma_sp_weight(wt)
        x = torch.randn(1, 40, 9, 7).half().contiguous(memory_format=torch.channels_last)
        for kernel in ("default", "tile128", "tile128x256", "tile256x128", "wgmma", "wgmma_overlap", "wgmma64"):
            torch.library.opcheck(torch.ops.sparseyolo.sparse_conv2d_24.default,
                                  (x, packed.values, packed.meta, 72, [3, 3], torch.randn(72), [2, 2], [1, 1], "silu",
                                   kernel))

    def test_errors(self):
        packed = pack_mma_sp_weight(_weight_24(16, 32, 1, seed=6))
        x = torch.randn(1, 32, 5, 5).half()
        with pytest.raises(RuntimeError, match="sparseyolo::sparse_conv2d_24: values should be"):
            ops.sparse_conv2d_24(x, packed.values, packed.meta, 16, 3)
        with pytest.raises(RuntimeError, match="float16 or bfloat16"):
            ops.sparse_conv2d_24(x.float(), packed.values, packed.meta, 16, 1)
        with pytest.raises(RuntimeError, match="multiple of 8"):
            ops.sparse_conv2d_24(torch.randn(1, 12, 5, 5).half(), packed.values, packed.meta, 16, 1)
        with pytest.raises(RuntimeError, match="kernel should be one of 'default', .*, got 'tile256'"):
            ops.sparse_conv2d_24(x, packed.values, packed.meta, 16, 1, kernel="tile256")
        with pytest.raises(RuntimeError, match="kernel should be"):  # the fake kernel says the same
            torch.ops.sparseyolo.sparse_conv2d_24.default(x.to("meta"), packed.values.to("meta"),
                                                          packed.meta.to("meta"), 16, [1, 1], None, [1, 1], [0, 0],
                                                          "identity", "tile256")


# ------------------------------------------------------------------------------------------------ CUDA


def _need_built(kernel: str) -> None:
    """Skip for an experimental kernel this extension was built without (SPARSEYOLO_EXPERIMENTAL_GPU=1 builds them)."""
    if kernel in ("default", "tile64"):
        return
    if kernel.startswith("wgmma") and torch.cuda.get_device_capability() != (9, 0):
        return  # the op says "needs an sm_90 GPU" first; the tests check that or skip
    why = not_built_reason(kernel)
    if why:
        pytest.skip(why)


def _poison_allocator(numel: int, dtype: torch.dtype) -> None:
    """Leave NaN bytes in the caching allocator's next blocks, so an unwritten output element shows up."""
    blocks = [torch.full((numel,), float("nan"), dtype=dtype, device="cuda") for _ in range(4)]
    del blocks


@pytest.mark.cuda
class TestSparseConv2d24CUDA:
    @pytest.mark.parametrize("cin,cout,k,stride,padding,h,w", CASES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("activation", ["identity", "silu"])
    @pytest.mark.parametrize("kernel", ["tile64", "tile128", "tile128x256", "tile256x128", WGMMA, WGMMA_OVERLAP,
                                        WGMMA64])
    def test_kernel_vs_fp64(self, cin, cout, k, stride, padding, h, w, dtype, activation, kernel):
        if torch.cuda.get_device_capability() < (8, 0):
            pytest.skip("needs sm_80+")
        if kernel.startswith("wgmma") and torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("the wgmma kernels need sm_90")
        _need_built(kernel)
        torch.manual_seed(cin + cout + h)
        wt = _weight_24(cout, cin, k, seed=cin * cout + 1, dtype=dtype)
        x = torch.randn(3, cin, h, w).to(dtype)
        bias = torch.randn(cout)
        ref = _reference(x, wt, bias, stride, padding, activation)
        packed = pack_mma_sp_weight(wt, dtype=dtype).to("cuda")
        xc = x.cuda().contiguous(memory_format=torch.channels_last)
        _poison_allocator(ref.numel(), dtype)
        y = ops.sparse_conv2d_24(xc, packed.values, packed.meta, cout, k, bias.cuda(), stride, padding, activation,
                                 kernel=kernel)
        torch.cuda.synchronize()
        assert bool(torch.isfinite(y).all()), "unwritten (poisoned) or non-finite output elements"
        torch_own = F.conv2d(xc, wt.to("cuda", dtype), bias.to("cuda", dtype), stride, padding)
        torch_own = F.silu(torch_own) if activation == "silu" else torch_own
        err, err_torch = _rel(y.cpu(), ref), _rel(torch_own.cpu(), ref)
        assert err <= 2 * err_torch + 1e-6, f"kernel {err:.2e} vs PyTorch {err_torch:.2e}"
        y_cpu = ops.sparse_conv2d_24(x, packed.values.cpu(), packed.meta.cpu(), cout, k, bias, stride, padding,
                                     activation)
        assert _rel(y.cpu(), y_cpu.double()) < (1e-2 if dtype == torch.bfloat16 else 2e-3)

    @pytest.mark.parametrize("kernel", ["default", "tile128", "tile128x256", "tile256x128"])
    def test_nchw_input_and_batch_1(self, kernel):
        _need_built(kernel)
        wt = _weight_24(96, 64, 3, seed=9, dtype=torch.float16)
        packed = pack_mma_sp_weight(wt).to("cuda")
        x = torch.randn(1, 64, 20, 20, device="cuda", dtype=torch.float16)  # NCHW: copied to channels_last
        y = ops.sparse_conv2d_24(x, packed.values, packed.meta, 96, 3, None, 1, 1, kernel=kernel)
        ref = _reference(x.cpu(), wt, None, 1, 1, "identity")
        assert _rel(y.cpu(), ref) < 2e-3

    @pytest.mark.parametrize("kernel", ["tile64", "tile128", "tile128x256", "tile256x128", WGMMA, WGMMA_OVERLAP,
                                        WGMMA64])
    def test_large_layer_many_blocks(self, kernel):
        if kernel.startswith("wgmma") and torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("the wgmma kernels need sm_90")
        _need_built(kernel)
        # A yolov5x-like layer (Cin = Cout = 320, 3x3) over enough pixels for thousands of blocks of either tile.
        wt = _weight_24(320, 320, 3, seed=12, dtype=torch.float16)
        packed = pack_mma_sp_weight(wt).to("cuda")
        x = torch.randn(4, 320, 40, 40, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        bias = torch.randn(320, device="cuda")
        y = ops.sparse_conv2d_24(x, packed.values, packed.meta, 320, 3, bias, 1, 1, "silu", kernel=kernel)
        ref = F.silu(F.conv2d(x.float(), wt.cuda(), bias, 1, 1))
        assert bool(torch.isfinite(y).all())
        assert _rel(y.float(), ref.double()) < 2e-3

    @pytest.mark.parametrize("backend", [pytest.param(b, id=b.name, marks=pytest.mark.wgmma) if "wgmma" in b.name
                                         else pytest.param(b, id=b.name) for b in CUDA_BACKENDS])
    def test_module_backends(self, backend):
        if backend.name == "cuda_cusparselt" and cusparselt_status():
            pytest.skip(f"cuSPARSELt: {cusparselt_status()}")
        if backend.name.startswith("cuda_wgmma") and torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("the wgmma kernels need sm_90")
        if backend.name != "cuda_cusparselt":
            _need_built(backend.kernel)
        wt = _weight_24(128, 64, 1, seed=11, dtype=torch.float16)
        conv = torch.nn.Conv2d(64, 128, 1, bias=True)
        with torch.no_grad():
            conv.weight.copy_(wt)
        mod = SparseConv2d.from_dense(conv, activation="silu", pattern="2:4", backend=backend,
                                      dtype=torch.float16).cuda()
        x = torch.randn(2, 64, 24, 24, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        y = mod(x)
        ref = _reference(x.cpu(), wt, conv.bias.detach(), 1, 0, "silu")
        assert _rel(y.float().cpu(), ref) < 5e-3

    def test_cpu_packed_module_refuses_cuda_input(self):
        conv = torch.nn.Conv2d(64, 64, 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(_weight_24(64, 64, 1, seed=15))
        mod = SparseConv2d.from_dense(conv, pattern="2:4").cuda()  # cpu_csr buffers, moved to the GPU
        with pytest.raises(RuntimeError, match="re-sparsify for that device"):
            mod(torch.randn(1, 64, 8, 8, device="cuda"))

    def test_wgmma_refused_off_hopper_and_not_in_auto(self):
        wt = _weight_24(64, 64, 1, seed=14, dtype=torch.float16)
        packed = pack_mma_sp_weight(wt).to("cuda")
        x = torch.randn(1, 64, 8, 8, device="cuda", dtype=torch.float16)
        if torch.cuda.get_device_capability() != (9, 0):
            with pytest.raises(RuntimeError, match="needs an sm_90 GPU"):
                ops.sparse_conv2d_24(x, packed.values, packed.meta, 64, 1, kernel="wgmma")
        fast = sparsify(_pruned_model(wt), SparsifyConfig(device="cuda", dtype=torch.float16, example_input=x))
        d = fast.sparsify_report.layers[0]
        assert d.times and not any("wgmma" in b for b in d.times)  # auto never runs them

    def test_sparsify_cuda_picks_a_correct_backend(self):
        wt = _weight_24(128, 64, 3, seed=16, dtype=torch.float16)
        model = _pruned_model(wt)
        x = torch.randn(2, 64, 20, 20, dtype=torch.float16)
        fast = sparsify(model, device="cuda", dtype=torch.float16, example_input=x)
        d = fast.sparsify_report.layers[0]
        assert {"dense", "cuda_mma_sp"} <= set(d.times)
        assert d.backend_name == min(d.times, key=d.times.get)
        with torch.no_grad():
            y = fast(x.cuda())
        assert _rel(y.float().cpu(), _reference(x.float(), wt, None, 1, 1, "identity")) < 5e-3
        # the CPU-sparsified model repacked for the GPU by sparsify(device="cuda")
        cpu = sparsify(model, backend="sparse")
        gpu = sparsify(cpu, backend="sparse", device="cuda", dtype=torch.float16)
        assert gpu.sparsify_report.layers[0].backend_name == "cuda_mma_sp"
        with torch.no_grad():
            assert _rel(gpu(x.cuda()).float().cpu(), _reference(x.float(), wt, None, 1, 1, "identity")) < 5e-3

    def test_odd_cin_stays_dense_with_a_reason(self):
        conv = torch.nn.Conv2d(12, 16, 3, padding=1)
        with torch.no_grad():
            conv.weight.mul_(ops.nm_mask(conv.weight, 2, 4))
        conv.register_buffer("weight_mask", (conv.weight != 0).float())
        fast = sparsify(torch.nn.Sequential(conv), backend="sparse", device="cuda", dtype=torch.float16)
        d = fast.sparsify_report.layers[0]
        assert d.backend == "dense" and "multiple of 8" in d.reason
        x = torch.randn(1, 12, 9, 9, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            assert torch.equal(fast(x), fast(x))


def _pruned_model(weight: torch.Tensor) -> torch.nn.Module:
    """A one-conv model whose conv carries prune()'s weight_mask (so sparsify converts it)."""
    cout, cin, k, _ = weight.shape
    conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    conv.register_buffer("weight_mask", (weight != 0).float())
    return torch.nn.Sequential(conv)


class TestCusparseLtGate:
    def test_disabled_by_env(self, monkeypatch):
        from sparseyolo.sparse.experimental import cusparselt

        monkeypatch.setenv("SPARSEYOLO_CUSPARSELT", "0")
        assert "disabled" in cusparselt.cusparselt_status()

    # What the check reports when cuSPARSELt is missing or fails: tests/test_cusparselt.py.


class TestAutoRejectsWrongOutputs:
    """``auto`` compares every candidate's output with the dense conv's (cuDNN on CUDA) before timing it."""

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_disagreement(self, dtype):
        ref = torch.randn(2, 16, 5, 5)
        assert disagreement(ref.to(dtype), ref) == ""  # rounding to the dtype is fine
        assert "differs from the dense conv's" in disagreement((ref * (1 + 3 * MAX_REL_DIFF[dtype])).to(dtype), ref)
        assert "differs" in disagreement(torch.zeros_like(ref).to(dtype), ref)
        bad = ref.clone()
        bad[0, 0, 0, 0] = float("nan")
        assert "non-finite" in disagreement(bad.to(dtype), ref)
        assert disagreement(bad.to(dtype), bad) == ""  # cuDNN's has the same overflow: not the backend's fault

    @pytest.mark.cuda
    def test_auto_never_picks_a_wrong_backend(self, monkeypatch, caplog):
        from sparseyolo.sparse import autotune
        from sparseyolo.sparse.backends.cuda_mma_sp import CudaMmaSpBackend

        real = CudaMmaSpBackend.forward

        def broken(self, module, x):  # every mma.sp backend returns garbage, fast
            return torch.zeros_like(real(self, module, x))

        monkeypatch.setattr(CudaMmaSpBackend, "forward", broken)
        monkeypatch.setattr(autotune, "_CACHE", {})
        wt = _weight_24(128, 64, 1, seed=13, dtype=torch.float16)
        x = torch.randn(2, 64, 24, 24, dtype=torch.float16)
        with caplog.at_level("WARNING"):
            fast = sparsify(_pruned_model(wt), device="cuda", dtype=torch.float16, example_input=x)
        d = fast.sparsify_report.layers[0]
        assert d.backend == "dense" and d.times["cuda_mma_sp"] == float("inf")
        assert any("never chosen" in r.message for r in caplog.records)
