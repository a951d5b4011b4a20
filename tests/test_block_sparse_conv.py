"""sparseyolo::block_sparse_conv2d against F.conv2d of the dense weight it packs, on every CPU SIMD path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparseyolo import ops
from sparseyolo.sparse.block_packing import BLOCK, pack_block_sparse, pairs24_possible

RTOL_FP32 = 1e-4  # max |err| / max |ref|
ISAS = ("portable", "avx2", "avx512", "avx512_bf16", "amx")


def _supported(isa: str) -> bool:
    return ISAS.index(isa) <= ISAS.index(ops.cpu_isa())


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Each SIMD path the CPU has, selected by capping SPARSEYOLO_CPU_ISA (the others skip)."""
    monkeypatch.delenv("SPARSEYOLO_CPU_ISA", raising=False)
    if not _supported(request.param):
        pytest.skip(f"this CPU has no {request.param} (best: {ops.cpu_isa()})")
    monkeypatch.setenv("SPARSEYOLO_CPU_ISA", request.param)
    assert ops.cpu_isa() == request.param
    return request.param


def _pattern_weight(cout: int, cin: int, kh: int, kw: int, pattern: str, gen: torch.Generator) -> torch.Tensor:
    """A weight pruned the way the kernel is fed: 2:4 shared by 16 output channels, row blocks, or others."""
    w = torch.randn(cout, cin, kh, kw, generator=gen)
    nb = (cout + BLOCK - 1) // BLOCK
    if pattern == "dense":
        return w
    if pattern in ("2:4 block16", "2:4 block32"):
        score = torch.rand(nb, cin // 4, 4, kh, kw, generator=gen)
        if pattern == "2:4 block32":  # neighbouring blocks share their units: they run as twins on AVX-512
            score = score[torch.arange(nb) // 2 * 2]
        mask = torch.zeros_like(score).scatter_(2, score.topk(2, dim=2).indices, 1.0).reshape(nb, 1, cin, kh, kw)
    elif pattern == "rows 75% block16":
        mask = (torch.rand(nb, 1, cin, kh, kw, generator=gen) >= 0.75).float()
    elif pattern == "rows 75% some twins":  # blocks (0, 1), (3, 4), ... share their rows, blocks 2, 5, ... do not
        mask = (torch.rand(nb, 1, cin, kh, kw, generator=gen) >= 0.75).float()
        for b in range(1, nb, 3):
            mask[b] = mask[b - 1]
    elif pattern == "unstructured 50%":  # each block keeps a row when any of its channels does: still exact
        return w * (torch.rand(w.shape, generator=gen) >= 0.5)
    elif pattern == "tiles 50%":  # whole 16 x 32 tiles of a tap (AMX's tile), as tile pruning makes them
        nq = (cin + 31) // 32
        keep = (torch.rand(nb, 1, nq, 1, kh, kw, generator=gen) >= 0.5).float()
        mask = keep.expand(nb, 1, nq, 32, kh, kw).reshape(nb, 1, nq * 32, kh, kw)[:, :, :cin]
    else:
        raise ValueError(pattern)
    return w * mask.expand(nb, BLOCK, cin, kh, kw).reshape(nb * BLOCK, cin, kh, kw)[:cout]


def _reference(x, w, b, stride, padding, activation):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding)
    return (F.silu(y) if activation == "silu" else y).float()


def _run(x, packed, b, stride, padding, activation):
    cout, cin, kh, kw = packed.shape
    return ops.block_sparse_conv2d(x, packed.weight, packed.taps, packed.block_ptr, cin, cout, (kh, kw), b, stride,
                                   padding, activation, packed.gather)


def _rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


# (cin, cout): channels not multiples of the block, of 4, both; (kh, kw, stride, padding); batch, image
CHANNELS = [(16, 32), (12, 33), (64, 40), (8, 17)]
GEOMS = [(1, 1, 1, 0), (1, 1, 2, 0), (3, 3, 1, 1), (3, 3, 2, 1), (3, 3, 1, 0), (5, 5, 1, 2), (1, 3, 1, 0)]
PATTERNS = ["2:4 block16", "2:4 block32", "rows 75% block16", "rows 75% some twins", "dense", "unstructured 50%",
            "tiles 50%"]


class TestBlockSparseConv2dFp32:
    @pytest.mark.parametrize("cin,cout", CHANNELS)
    @pytest.mark.parametrize("kh,kw,stride,padding", GEOMS)
    def test_matches_dense(self, isa, cin, cout, kh, kw, stride, padding):
        gen = torch.Generator().manual_seed(cin * 1000 + cout * 10 + kh + stride)
        for batch, (h, w_), pattern, act in [(1, (13, 9), "2:4 block16", "silu"), (3, (7, 11), "rows 75% block16",
                                                                                  "identity"),
                                             (2, (6, 5), "unstructured 50%", "silu"), (1, (9, 9), "dense", "silu"),
                                             (1, (10, 7), "2:4 block32", "silu"),
                                             (2, (5, 8), "rows 75% some twins", "identity")]:
            w = _pattern_weight(cout, cin, kh, kw, pattern, gen)
            b = torch.randn(cout, generator=gen)
            x = torch.randn(batch, cin, h, w_, generator=gen)
            packed = pack_block_sparse(w, torch.float32)
            y = _run(x.contiguous(memory_format=torch.channels_last), packed, b, stride, padding, act)
            ref = _reference(x, w, b, stride, padding, act)
            assert y.shape == ref.shape and y.dtype == torch.float32
            assert y.is_contiguous(memory_format=torch.channels_last)
            err = ((y - ref).abs().max() / ref.abs().max()).item()
            assert err < RTOL_FP32, (isa, pattern, err)

    def test_nchw_input_same_result(self):
        gen = torch.Generator().manual_seed(0)
        w = _pattern_weight(32, 16, 3, 3, "2:4 block16", gen)
        x = torch.randn(2, 16, 10, 12, generator=gen)
        packed = pack_block_sparse(w, torch.float32)
        a = _run(x, packed, None, 1, 1, "identity")
        b = _run(x.contiguous(memory_format=torch.channels_last), packed, None, 1, 1, "identity")
        assert torch.equal(a, b)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("batch, hw, k", [(1, 20, 1), (1, 20, 3), (2, 9, 3), (3, 5, 1)])
    def test_every_tile_once_for_any_thread_count(self, dtype, batch, hw, k):
        # pixel tiles are split into chunks per thread (a 20x20 1x1 layer: 17 tiles of 24 pixels); each output is
        # computed by one tile call, so any split gives the same bits, and a tile left out or run twice would not
        gen = torch.Generator().manual_seed(3)
        w = _pattern_weight(40, 16, k, k, "2:4 block16", gen)
        x = torch.randn(batch, 16, hw, hw, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        packed = pack_block_sparse(w, dtype)
        b = torch.randn(40, generator=gen)
        old = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            ref = _run(x, packed, b, 1, k // 2, "silu")
            for threads in (2, 3, 5, 8):
                torch.set_num_threads(threads)
                assert torch.equal(_run(x, packed, b, 1, k // 2, "silu"), ref), threads
        finally:
            torch.set_num_threads(old)
        dense = _reference(x.float(), packed.to_dense(), b, 1, k // 2, "silu")
        assert _rel(ref, dense) < (RTOL_FP32 if dtype == torch.float32 else 1e-2)

    @pytest.mark.parametrize("dtype, gather", [(torch.float32, None), (torch.bfloat16, "plain"),
                                               (torch.bfloat16, "pairs24"), (torch.bfloat16, "tiles32")])
    @pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (3, 1, 0), (3, 2, 0)])
    def test_layout_rows_follow_the_input(self, dtype, gather, k, stride, padding):
        # each work item lays out only the rows its tiles read, into its thread's buffer, kept from call to call:
        # a row the bounds missed would hold the previous call's input. So every call here follows one on another
        # input (of another size too), under thread counts that cut the tiles differently.
        gen = torch.Generator().manual_seed(k * 10 + stride)
        w = _pattern_weight(40, 16, k, k, "2:4 block16", gen)
        packed = pack_block_sparse(w, dtype, gather)
        b = torch.randn(40, generator=gen)
        old = torch.get_num_threads()
        try:
            for threads in (1, 2, 3, 5):
                torch.set_num_threads(threads)
                for hw in [(23, 17), (23, 17), (9, 30), (31, 31)]:
                    x = torch.randn(2, 16, *hw, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
                    y = _run(x, packed, b, stride, padding, "silu")
                    ref = _reference(x.float(), packed.to_dense(), b, stride, padding, "silu")
                    assert _rel(y, ref) < (RTOL_FP32 if dtype == torch.float32 else 1e-2), (threads, hw)
        finally:
            torch.set_num_threads(old)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0)])
    def test_work_items_of_a_large_image(self, dtype, k, stride, padding):
        # each work item (4 per thread) lays out the rows of its own tiles, halo rows included, into its thread's
        # buffer: a wide image of 256 channels gives items of a few rows each, laid out over one another
        gen = torch.Generator().manual_seed(k + stride)
        w = _pattern_weight(24, 256, k, k, "2:4 block16", gen)
        packed = pack_block_sparse(w, dtype)
        b = torch.randn(24, generator=gen)
        x = torch.randn(1, 256, 37, 130, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        ref = _reference(x.float(), packed.to_dense(), b, stride, padding, "silu")
        old = torch.get_num_threads()
        try:
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                y = _run(x, packed, b, stride, padding, "silu")
                assert _rel(y, ref) < (RTOL_FP32 if dtype == torch.float32 else 1e-2), threads
        finally:
            torch.set_num_threads(old)

    @pytest.mark.parametrize("pattern", ["2:4 block32", "rows 75% some twins", "dense"])
    @pytest.mark.parametrize("cout", [32, 33, 80, 112])
    def test_twin_blocks_same_bits_as_single_blocks(self, monkeypatch, pattern, cout):
        # AVX-512 runs neighbouring blocks with the same units as twins (two weight vectors per broadcast); AVX2 has
        # no twins. Both sum each output's products in unit order with FMAs, so without SiLU (whose approximations
        # differ per ISA) the bits agree; a twin that read the other block's weights or units, or stored to the
        # wrong channels, would not. cout 33: a partial last block; 80: an odd number of blocks.
        if not _supported("avx512"):
            pytest.skip(f"this CPU has no avx512 (best: {ops.cpu_isa()})")
        gen = torch.Generator().manual_seed(cout)
        w = _pattern_weight(cout, 32, 3, 3, pattern, gen)
        x = torch.randn(2, 32, 11, 13, generator=gen).contiguous(memory_format=torch.channels_last)
        b = torch.randn(cout, generator=gen)
        packed = pack_block_sparse(w, torch.float32)
        outs = {}
        for isa in ("avx2", "avx512"):
            monkeypatch.setenv("SPARSEYOLO_CPU_ISA", isa)
            outs[isa] = _run(x, packed, b, 1, 1, "identity")
        assert torch.equal(outs["avx512"], outs["avx2"])
        assert _rel(outs["avx512"], _reference(x, w, b, 1, 1, "identity")) < RTOL_FP32

    def test_empty_batch(self):
        w = torch.randn(16, 8, 3, 3)
        packed = pack_block_sparse(w)
        y = _run(torch.randn(0, 8, 5, 5), packed, None, 1, 1, "silu")
        assert y.shape == (0, 16, 5, 5)

    def test_silu_over_the_fp32_range(self, isa):
        # pre-activations across and beyond the epilogue's clamps (its exp sees -v in [-86, 80]), compared
        # element by element: a relative error where SiLU is representable, the clamp's 1.8e-35 |v| where it is not
        w = torch.zeros(32, 4, 1, 1)
        w[:, 0] = 1.0
        x = torch.zeros(1, 4, 8, 16)
        x[0, 0] = torch.linspace(-125.0, 125.0, 128).reshape(8, 16)
        x[0, 0, 0, :8] = torch.tensor([-86.5, -86.0, -80.5, -80.0, 80.0, 86.0, 87.5, 88.5])
        b = torch.linspace(-3.0, 3.0, 32)
        y = _run(x.contiguous(memory_format=torch.channels_last), pack_block_sparse(w), b, 1, 0, "silu")
        ref = F.silu(F.conv2d(x, w, b).double())  # v rounded to fp32 as the kernel rounds it: SiLU's error alone
        assert ((y.double() - ref).abs() <= 1e-6 * ref.abs() + 1e-30).all()

    def test_all_zero_weight(self, isa):
        packed = pack_block_sparse(torch.zeros(20, 8, 3, 3))
        assert packed.units == 0
        b = torch.randn(20)
        y = _run(torch.randn(1, 8, 6, 6), packed, b, 1, 1, "identity")
        assert torch.allclose(y, b.reshape(1, -1, 1, 1).expand_as(y))

    def test_opcheck(self):
        gen = torch.Generator().manual_seed(1)
        w = _pattern_weight(24, 8, 3, 3, "2:4 block16", gen)
        packed = pack_block_sparse(w)
        x = torch.randn(1, 8, 7, 6, generator=gen).contiguous(memory_format=torch.channels_last)
        args = (x, packed.weight, packed.taps, packed.block_ptr, 8, 24, [3, 3], torch.randn(24), [2, 2], [1, 1], "silu",
                "plain")
        torch.library.opcheck(torch.ops.sparseyolo.block_sparse_conv2d.default, args)


class TestBlockSparseConv2dBf16:
    @pytest.mark.parametrize("cin,cout", [(16, 32), (12, 33), (64, 40), (96, 16)])
    @pytest.mark.parametrize("kh,kw,stride,padding", [(1, 1, 1, 0), (3, 3, 1, 1), (3, 3, 2, 1), (1, 3, 1, 0)])
    @pytest.mark.parametrize("pattern", PATTERNS)
    def test_within_2x_pytorch_bf16_error(self, isa, cin, cout, kh, kw, stride, padding, pattern):
        gen = torch.Generator().manual_seed(cin * 7 + cout + kh * 3 + stride + PATTERNS.index(pattern))
        w = _pattern_weight(cout, cin, kh, kw, pattern, gen)
        b = torch.randn(cout, generator=gen)
        x = torch.randn(2, cin, 11, 9, generator=gen)
        ref = _reference(x, w, b, stride, padding, "silu")
        torch_bf16 = F.silu(F.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), stride, padding))
        gathers = ["plain", "tiles32"] + (["pairs24"] if pairs24_possible(w) else [])
        for gather in gathers:
            packed = pack_block_sparse(w, torch.bfloat16, gather)
            y = _run(x.bfloat16().contiguous(memory_format=torch.channels_last), packed, b, stride, padding, "silu")
            assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
            assert _rel(y, ref) <= 2 * _rel(torch_bf16, ref), (isa, gather, _rel(y, ref), _rel(torch_bf16, ref))

    def test_pairs24_is_chosen_for_2_4_blocks(self):
        gen = torch.Generator().manual_seed(3)
        w = _pattern_weight(32, 64, 3, 3, "2:4 block16", gen)
        packed = pack_block_sparse(w, torch.bfloat16)
        assert packed.gather == "pairs24"
        assert packed.units == 2 * 9 * 64 // 4  # K/4 pairs per block
        assert torch.equal(packed.to_dense(), w.bfloat16().float())
        assert pack_block_sparse(_pattern_weight(32, 64, 3, 3, "dense", gen), torch.bfloat16).gather == "plain"

    @pytest.mark.parametrize("gather", ["pairs24", "tiles32"])
    def test_same_result_on_every_isa(self, monkeypatch, gather):
        """All paths accumulate in fp32 and round once: the ISA changes the summation order only."""
        gen = torch.Generator().manual_seed(4)
        w = _pattern_weight(48, 64, 3, 3, "2:4 block16", gen)
        x = torch.randn(1, 64, 9, 9, generator=gen).bfloat16()
        packed = pack_block_sparse(w, torch.bfloat16, gather)
        outs = []
        for isa in ISAS:
            if _supported(isa):
                monkeypatch.setenv("SPARSEYOLO_CPU_ISA", isa)
                outs.append(_run(x, packed, None, 1, 1, "identity").float())
        for y in outs[1:]:
            assert torch.allclose(y, outs[0], rtol=1e-2, atol=1e-2)

    def test_tiles32_skips_pruned_tiles(self):
        gen = torch.Generator().manual_seed(8)
        w = _pattern_weight(32, 64, 3, 3, "tiles 50%", gen)
        packed = pack_block_sparse(w, torch.bfloat16, "tiles32")
        assert packed.units == int((w.reshape(2, 16, 2, 32, 9) != 0).any(dim=3).any(dim=1).sum())
        assert packed.units < packed.dense_units()
        assert packed.weight.shape == (packed.units, 16, 16, 2)


class TestPacking:
    @pytest.mark.parametrize("dtype,gather", [(torch.float32, None), (torch.bfloat16, "plain"),
                                              (torch.bfloat16, "pairs24"), (torch.bfloat16, "tiles32")])
    def test_round_trip(self, dtype, gather):
        gen = torch.Generator().manual_seed(5)
        w = _pattern_weight(33, 12, 3, 3, "2:4 block16", gen)
        packed = pack_block_sparse(w, dtype, gather)
        assert torch.equal(packed.to_dense(), w.to(dtype).float())
        assert packed.block_ptr[-1] == packed.units and packed.taps.dtype == torch.int32

    def test_units_count_the_kept_rows(self):
        gen = torch.Generator().manual_seed(6)
        w = _pattern_weight(32, 16, 3, 3, "2:4 block16", gen)
        assert pack_block_sparse(w).units == pack_block_sparse(torch.ones_like(w)).units // 2

    def test_errors(self):
        with pytest.raises(ValueError, match="even number of input channels"):
            pack_block_sparse(torch.randn(16, 3, 3, 3), torch.bfloat16)
        with pytest.raises(ValueError, match="at most 2 nonzero"):
            pack_block_sparse(torch.randn(16, 8, 1, 1), torch.bfloat16, "pairs24")
        with pytest.raises(ValueError, match="for bfloat16"):
            pack_block_sparse(torch.randn(16, 8, 1, 1), torch.float32, "pairs24")
        with pytest.raises(ValueError, match="for bfloat16"):
            pack_block_sparse(torch.randn(16, 8, 1, 1), torch.float32, "tiles32")
        with pytest.raises(ValueError, match="dtype"):
            pack_block_sparse(torch.randn(16, 8, 1, 1), torch.float16)
        with pytest.raises(ValueError, match="Cout, Cin, KH, KW"):
            pack_block_sparse(torch.randn(16, 8))


class TestBadInput:
    def _packed(self):
        return pack_block_sparse(torch.randn(16, 8, 3, 3))

    def test_channels_must_match_the_packed_weight(self):
        p = self._packed()
        with pytest.raises(RuntimeError, match="input has 12 channels, the packed weight expects 8"):
            _run(torch.randn(1, 12, 6, 6), p, None, 1, 1, "identity")

    def test_dtype(self):
        p = self._packed()
        with pytest.raises(RuntimeError, match="float32 or bfloat16"):
            _run(torch.randn(1, 8, 6, 6).half(), p, None, 1, 1, "identity")
        with pytest.raises(RuntimeError, match="weight should be BFloat16"):
            _run(torch.randn(1, 8, 6, 6).bfloat16(), p, None, 1, 1, "identity")

    def test_pairs24_needs_bf16(self):
        p = self._packed()
        with pytest.raises(RuntimeError, match="'pairs24' is for bfloat16"):
            ops.block_sparse_conv2d(torch.randn(1, 8, 6, 6), p.weight, p.taps, p.block_ptr, 8, 16, 3, None, 1, 1,
                                    "identity", "pairs24")

    def test_taps_out_of_range(self):
        p = self._packed()
        taps = p.taps.clone()
        taps[-1] = 9 * 8
        with pytest.raises(RuntimeError, match="taps should lie in"):
            ops.block_sparse_conv2d(torch.randn(1, 8, 6, 6), p.weight, taps, p.block_ptr, 8, 16, 3)

    def test_block_ptr(self):
        p = self._packed()
        with pytest.raises(RuntimeError, match="block_ptr should be a 1D int64 tensor"):
            ops.block_sparse_conv2d(torch.randn(1, 8, 6, 6), p.weight, p.taps, p.block_ptr[:1], 8, 16, 3)
        bad = p.block_ptr.clone()
        bad[-1] -= 1
        with pytest.raises(RuntimeError, match="end at the number of units"):
            ops.block_sparse_conv2d(torch.randn(1, 8, 6, 6), p.weight, p.taps, bad, 8, 16, 3)

    def test_bad_isa_variable(self, monkeypatch):
        monkeypatch.setenv("SPARSEYOLO_CPU_ISA", "sse9")
        p = self._packed()
        with pytest.raises(RuntimeError, match="SPARSEYOLO_CPU_ISA should be one of"):
            _run(torch.randn(1, 8, 6, 6), p, None, 1, 1, "identity")
