"""sparseyolo::sparse_conv2d against F.conv2d of the masked dense weight (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparseyolo import ops
from sparseyolo.sparse import SparseConv2d, pack_conv_weight, pack_nm_weight

RTOL = 1e-4  # max |err| / max |ref|, fp32


def _reference(x, w, b, stride, padding, activation):
    """The oracle: dense conv of the masked weight, then the activation."""
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding)
    return (F.silu(y) if activation == "silu" else y).float()


def _masked_weight(cout, cin, k, sparsity, gen):
    w = torch.randn(cout, cin, k, k, generator=gen)
    if sparsity == "2:4":
        mask = ops.nm_mask(w[:, : cin // 4 * 4], 2, 4) if cin % 4 == 0 else None
        if mask is None:
            pytest.skip("2:4 needs Cin % 4 == 0")
        return w * mask
    keep = torch.rand(w.shape, generator=gen) >= sparsity
    return w * keep


def _run(x, w, b, stride, padding, activation):
    p = pack_conv_weight(w)
    return ops.sparse_conv2d(x, p.values, p.columns, p.row_ptr, w.shape[2:], b, stride, padding, activation)


def _rel_err(y, ref):
    return ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(params=["avx2", "portable"])
def isa(request, monkeypatch):
    """Both code paths: the run-time AVX2/FMA one (when the CPU has it) and the portable one."""
    if request.param == "portable":
        monkeypatch.setenv("SPARSEYOLO_CPU_ISA", "portable")
    return request.param


# channels (cin, cout), image (h, w), kernel/stride/padding, batch, sparsity: awkward sizes, tiles not full
SHAPES = [(13, 33), (33, 13), (80, 104), (96, 80)]
GEOMS = [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (3, 1, 0), (3, 2, 0), (1, 1, 1)]
SPARSITY = [0.0, "2:4", 0.5, 0.75, 0.9, 1.0]


class TestSparseConv2d:
    @pytest.mark.parametrize("cin,cout", SHAPES)
    @pytest.mark.parametrize("k,stride,padding", GEOMS)
    def test_matches_dense(self, isa, cin, cout, k, stride, padding):
        gen = torch.Generator().manual_seed(cin * 100 + cout + k * 7 + stride * 3 + padding)
        for batch, (h, w), sparsity, act in [(1, (13, 9), 0.75, "silu"), (3, (7, 11), "2:4", "identity"),
                                             (1, (21, 17), 0.9, "silu"), (2, (5, 5), 0.5, "identity")]:
            if sparsity == "2:4" and cin % 4:
                sparsity = 0.5
            wt = _masked_weight(cout, cin, k, sparsity, gen)
            x = torch.randn(batch, cin, h, w, generator=gen)
            b = torch.randn(cout, generator=gen)
            y = _run(x, wt, b, stride, padding, act)
            ref = _reference(x, wt, b, stride, padding, act)
            assert y.shape == ref.shape
            assert _rel_err(y, ref) <= RTOL, (batch, h, w, sparsity, act)

    @pytest.mark.parametrize("sparsity", SPARSITY)
    @pytest.mark.parametrize("activation", ["identity", "silu"])
    def test_sparsity_levels(self, isa, sparsity, activation):
        gen = torch.Generator().manual_seed(7)
        wt = _masked_weight(48, 64, 3, sparsity, gen)
        wt[5] = 0  # an all-zero output channel: bias + activation only
        x = torch.randn(2, 64, 19, 23, generator=gen)
        b = torch.randn(48, generator=gen)
        y = _run(x, wt, b, 1, 1, activation)
        ref = _reference(x, wt, b, 1, 1, activation)
        assert _rel_err(y, ref) <= RTOL
        torch.testing.assert_close(y[:, 5], ref[:, 5])

    @pytest.mark.parametrize("hw", [(32, 32), (40, 40), (1, 1), (3, 40)])
    def test_sizes_and_aliasing(self, isa, hw):
        # 32x32 is a 4 KiB channel stride (copied to an unaliased buffer); 1x1 images; wide short rows
        gen = torch.Generator().manual_seed(3)
        for k, s, p in [(1, 1, 0), (3, 1, 1), (3, 2, 1)]:
            wt = _masked_weight(24, 40, k, 0.6, gen)
            x = torch.randn(1, 40, *hw, generator=gen)
            y = _run(x, wt, None, s, p, "silu")
            assert _rel_err(y, _reference(x, wt, None, s, p, "silu")) <= RTOL

    def test_many_channel_blocks(self, isa):
        # Cin large enough for several reduction blocks and rows longer than one channel block of nonzeros
        gen = torch.Generator().manual_seed(5)
        wt = _masked_weight(72, 520, 3, 0.5, gen)
        x = torch.randn(1, 520, 9, 10, generator=gen)
        assert _rel_err(_run(x, wt, None, 1, 1, "identity"), _reference(x, wt, None, 1, 1, "identity")) <= RTOL

    @pytest.mark.parametrize("cout,k,stride,padding,cin", [(64, 3, 1, 1, 520), (30, 1, 1, 0, 96), (22, 3, 2, 1, 40)])
    def test_output_channel_blocks(self, isa, cout, k, stride, padding, cin):
        # 2:4 masks shared by 4 output channels run 4 rows per input load on the AVX2 path; Cout not a multiple
        # of 4 leaves a tail of single rows, and Cin 520 gives several reduction blocks per row.
        from sparseyolo.prune import prune

        gen = torch.Generator().manual_seed(cout + cin)
        conv = torch.nn.Conv2d(cin, cout, k, stride, padding, bias=True)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        prune(conv, "nm", n=2, m=4, block=4)
        wt, b = conv.weight.detach().clone(), conv.bias.detach().clone()
        x = torch.randn(2, cin, 11, 13, generator=gen)
        ref = _reference(x, wt, b, stride, padding, "silu")
        assert _rel_err(_run(x, wt, b, stride, padding, "silu"), ref) <= RTOL

    def test_rectangular_kernel_stride_padding(self, isa):
        gen = torch.Generator().manual_seed(11)
        wt = torch.randn(16, 12, 3, 5, generator=gen) * (torch.rand(16, 12, 3, 5, generator=gen) > 0.5)
        x = torch.randn(2, 12, 14, 17, generator=gen)
        p = pack_conv_weight(wt)
        y = ops.sparse_conv2d(x, p.values, p.columns, p.row_ptr, (3, 5), None, (2, 1), (1, 2), "identity")
        torch.testing.assert_close(y, _reference(x, wt, None, (2, 1), (1, 2), "identity"), rtol=1e-4, atol=1e-4)

    def test_threads_and_channels_last_input(self):
        gen = torch.Generator().manual_seed(2)
        wt = _masked_weight(33, 32, 3, 0.75, gen)
        x = torch.randn(3, 32, 15, 15, generator=gen)
        ref = _run(x, wt, None, 1, 1, "silu")
        old = torch.get_num_threads()
        try:
            for threads in (1, 3, 5):  # uneven splits of the pixel tiles: each one computed once
                torch.set_num_threads(threads)
                torch.testing.assert_close(_run(x, wt, None, 1, 1, "silu"), ref, rtol=0, atol=0)
        finally:
            torch.set_num_threads(old)
        torch.testing.assert_close(_run(x.contiguous(memory_format=torch.channels_last), wt, None, 1, 1, "silu"), ref)

    def test_empty_batch(self):
        wt = _masked_weight(8, 8, 3, 0.5, torch.Generator().manual_seed(0))
        y = _run(torch.randn(0, 8, 5, 5), wt, None, 1, 1, "identity")
        assert y.shape == (0, 8, 5, 5)

    def test_silu_over_the_fp32_range(self, isa):
        # pre-activations across and beyond the epilogue's clamps (its exp sees -v in [-86, 80]), compared
        # element by element: a relative error where SiLU is representable, the clamp's 1.8e-35 |v| where it is not
        w = torch.zeros(4, 8, 1, 1)
        w[:, 0] = torch.tensor([1.0, 100.0, -100.0, 1e-3]).reshape(4, 1, 1)
        x = torch.linspace(-1.25, 1.25, 8 * 40).reshape(1, 8, 8, 5)
        y = _run(x, w, None, 1, 0, "silu")
        ref = F.silu(F.conv2d(x, w).double())  # v rounded to fp32 as the kernel rounds it: SiLU's error alone
        assert ((y.double() - ref).abs() <= 1e-6 * ref.abs() + 1e-30).all()

    def test_nm_packing_roundtrip(self):
        gen = torch.Generator().manual_seed(4)
        w = torch.randn(16, 32, 3, 3, generator=gen)
        w = w * ops.nm_mask(w, 2, 4)
        values, idx = ops.nm_compress(w.permute(0, 2, 3, 1), 2, 4)
        p = pack_nm_weight(values, idx, 2, 4)
        assert p.shape == (16, 32, 3, 3) and p.nnz == w.numel() // 2
        torch.testing.assert_close(p.to_dense(), w, rtol=0, atol=0)
        assert (p.row_ptr.diff() == 32 * 9 // 2).all()

    def test_opcheck(self):
        gen = torch.Generator().manual_seed(1)
        wt = _masked_weight(13, 16, 3, 0.5, gen)
        p = pack_conv_weight(wt)
        x = torch.randn(2, 16, 9, 7, generator=gen)
        b = torch.randn(13, generator=gen)
        for args in [(x, p.values, p.columns, p.row_ptr, [3, 3], b, [1, 1], [1, 1], "silu"),
                     (x, p.values, p.columns, p.row_ptr, [3, 3], None, [2, 2], [0, 0], "identity")]:
            torch.library.opcheck(torch.ops.sparseyolo.sparse_conv2d.default, args)

    def test_bad_inputs(self):
        wt = _masked_weight(8, 8, 3, 0.5, torch.Generator().manual_seed(0))
        p = pack_conv_weight(wt)
        x = torch.randn(1, 8, 6, 6)
        op = torch.ops.sparseyolo.sparse_conv2d.default
        ok = (x, p.values, p.columns, p.row_ptr, [3, 3], None, [1, 1], [1, 1], "identity")

        def call(**kw):
            args = list(ok)
            names = ["input", "values", "columns", "row_ptr", "kernel_size", "bias", "stride", "padding", "activation"]
            for k, v in kw.items():
                args[names.index(k)] = v
            return op(*args)

        with pytest.raises(RuntimeError, match="input should be a 4D tensor"):
            call(input=x[0])
        with pytest.raises(RuntimeError, match="input should be float32"):
            call(input=x.double())
        with pytest.raises(RuntimeError, match="columns should be a 1D int32"):
            call(columns=p.columns.long())
        with pytest.raises(RuntimeError, match="activation should be 'identity' or 'silu'"):
            call(activation="relu")
        with pytest.raises(RuntimeError, match="bias should be a float32 tensor of Cout = 8"):
            call(bias=torch.zeros(7))
        with pytest.raises(RuntimeError, match=r"columns should increase within each row and lie in \[0, Cin\*KH\*KW\)"):
            call(input=torch.randn(1, 4, 6, 6))  # packed for Cin = 8
        with pytest.raises(RuntimeError, match="row_ptr should start at 0"):
            call(row_ptr=p.row_ptr + 1)
        with pytest.raises(RuntimeError, match="smaller than the kernel"):
            call(input=torch.randn(1, 8, 1, 1), padding=[0, 0])
        with pytest.raises(RuntimeError, match="stride should be two positive ints"):
            call(stride=[0, 1])
        bad = p.columns.clone()
        bad[[0, 1]] = bad[[1, 0]]
        with pytest.raises(RuntimeError, match="columns should increase"):
            call(columns=bad)


class TestSparseConv2dModule:
    @pytest.mark.parametrize("activation", ["identity", "silu"])
    def test_from_dense(self, activation):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(16, 24, 3, 2, 1, bias=True)
        with torch.no_grad():
            conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
        mod = SparseConv2d.from_dense(conv, activation=activation)
        x = torch.randn(2, 16, 17, 13)
        ref = conv(x)
        ref = F.silu(ref) if activation == "silu" else ref
        assert _rel_err(mod(x), ref) <= RTOL
        # fallback for a dtype without a sparse kernel: same math through F.conv2d
        torch.testing.assert_close(mod(x.double()).float(), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mod.dense_weight(), conv.weight.detach(), rtol=0, atol=0)
        state = mod.state_dict()
        assert set(state) == {"values", "columns", "row_ptr", "bias"}

    def test_rejects_groups(self):
        with pytest.raises(ValueError, match="groups=1"):
            SparseConv2d.from_dense(torch.nn.Conv2d(8, 8, 3, groups=2))

    def test_rejects_activation(self):
        conv = torch.nn.Conv2d(4, 4, 1)
        with pytest.raises(ValueError, match="activation should be one of"):
            SparseConv2d.from_dense(conv, activation="relu")
