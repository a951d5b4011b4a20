"""sparseyolo::nm_mask, nm_compress, nm_decompress and apply_masks_ against pure-torch references."""

from __future__ import annotations

import itertools

import pytest
import torch

from sparseyolo import ops
from sparseyolo.prune.storage import pack_bits, pack_nm_indices, unpack_bits, unpack_nm_indices
from tests.conftest import cpu_and_cuda

NM = [(2, 4), (1, 4), (3, 4), (4, 8), (1, 2), (5, 16)]
SHAPES = [(3, 16, 1, 1), (13, 16, 3, 3), (5, 32, 3, 1), (2, 48, 1, 1), (7, 16)]
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _reference_nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Oracle: per group, the first (itertools.combinations order) pattern maximising |w| @ pattern^T."""
    wl = w.detach().cpu().double().abs().movedim(1, -1)  # [..., Cin], groups along the last axis
    groups = wl.reshape(-1, m)
    patterns = torch.zeros(len(list(itertools.combinations(range(m), n))), m, dtype=torch.float64)
    for i, combo in enumerate(itertools.combinations(range(m), n)):
        patterns[i, list(combo)] = 1
    best = (groups @ patterns.T).argmax(1)  # argmax returns the first maximum: the lower positions win ties
    return patterns[best].bool().reshape(wl.shape).movedim(-1, 1)


def _weights(shape, dtype, device, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # small integers: many exact ties, sums exact in every dtype
        w = torch.randint(-3, 4, shape, generator=g).float()
    else:
        w = torch.randn(shape, generator=g)
    return w.to(device=device, dtype=dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


class TestNmMask:
    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("n,m", NM)
    @pytest.mark.parametrize("ties", [False, True])
    def test_matches_oracle(self, device, dtype, n, m, ties):
        for i, shape in enumerate(SHAPES):
            w = _weights(shape, dtype, device, seed=i, ties=ties)
            mask = ops.nm_mask(w, n, m)
            assert mask.dtype == torch.bool and mask.shape == w.shape and mask.device.type == device
            assert torch.equal(mask.cpu(), _reference_nm_mask(w, n, m)), (shape, dtype, n, m)

    def test_tie_rule_lower_index_wins(self):
        w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]).view(1, 8, 1, 1)
        assert ops.nm_mask(w, 2, 4).flatten().tolist() == [True, True, False, False, True, True, False, False]

    def test_nan_is_kept(self):
        w = torch.tensor([0.1, float("nan"), 3.0, -2.0]).view(1, 4)
        assert ops.nm_mask(w, 1, 4).flatten().tolist() == [False, True, False, False]

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_non_contiguous_and_empty(self, device):
        w = _weights((8, 6, 3, 3), torch.float32, device).transpose(0, 1)  # [6, 8, 3, 3], not contiguous
        assert torch.equal(ops.nm_mask(w, 2, 4).cpu(), _reference_nm_mask(w, 2, 4))
        assert ops.nm_mask(torch.zeros(0, 8, 3, 3, device=device), 2, 4).shape == (0, 8, 3, 3)

    @pytest.mark.parametrize(
        "w,n,m,match",
        [
            (torch.zeros(4, 8), 4, 4, r"need 1 <= n < m <= 16"),
            (torch.zeros(4, 8), 0, 4, r"need 1 <= n < m <= 16"),
            (torch.zeros(4, 34), 2, 17, r"need 1 <= n < m <= 16"),
            (torch.zeros(4, 6), 2, 4, r"weight.size\(1\) \(input channels\) = 6 is not a multiple of m = 4"),
            (torch.zeros(8), 2, 4, r"at least 2 dims"),
            (torch.zeros(4, 8, dtype=torch.int32), 2, 4, r"float32, float64, float16 or bfloat16"),
        ],
    )
    def test_bad_input_errors(self, w, n, m, match):
        with pytest.raises(RuntimeError, match=match):
            ops.nm_mask(w, n, m)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_opcheck(self, device):
        torch.library.opcheck(torch.ops.sparseyolo.nm_mask.default, (_weights((5, 8, 3, 3), torch.float32, device), 2, 4))


class TestNmCompress:
    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("n,m", NM)
    def test_round_trip_of_masked_weights(self, device, dtype, n, m):
        w = _weights((13, 3, 3, 32), dtype, device)  # [Cout, kh, kw, Cin]: groups along the last axis
        mask = ops.nm_mask(w.movedim(-1, 1), n, m).movedim(1, -1)
        masked = torch.where(mask, w, torch.zeros_like(w))
        values, idx = ops.nm_compress(masked, n, m)
        assert values.shape == (13, 3, 3, 32 * n // m) and idx.dtype == torch.uint8 and values.dtype == dtype
        # Values are the kept weights in position order; positions increase within a group.
        assert torch.equal(values.cpu().flatten(), masked.cpu()[mask.cpu()])
        g = idx.cpu().view(-1, n).long()
        assert (g < m).all() and (g[:, 1:] > g[:, :-1]).all()
        back = ops.nm_decompress(values, idx, n, m)
        assert torch.equal(_bits(back.cpu()), _bits(masked.cpu()))  # bit-exact, signed zeros included
        assert torch.equal(ops.nm_decompress(torch.ones_like(values, dtype=torch.bool), idx, n, m).cpu(), mask.cpu())

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_selection_matches_nm_mask(self, device):
        w = _weights((7, 16), torch.float16, device, ties=True)
        _, idx = ops.nm_compress(w, 2, 4)
        kept = ops.nm_decompress(torch.ones(idx.shape, dtype=torch.bool, device=device), idx, 2, 4)
        assert torch.equal(kept, ops.nm_mask(w, 2, 4))

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_mask_priority_keeps_kept_zeros_and_signed_zero_bits(self, device):
        w = torch.tensor([[0.0, -0.0, 5.0, 0.0]], device=device)
        mask = torch.tensor([[False, True, False, True]], device=device)  # keeps two zeros, not the 5
        values, idx = ops.nm_compress(w, 2, 4, mask=mask)
        assert idx.cpu().tolist() == [[1, 3]]
        assert torch.signbit(values[0, 0]) and not torch.signbit(values[0, 1])

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_decompress_any_dtype(self, device):
        for dtype in (torch.bool, torch.uint8, torch.int16, torch.float32, torch.int64):
            values = torch.arange(1, 9, device=device).to(dtype).view(2, 4)
            idx = torch.tensor([[0, 3, 1, 2], [0, 1, 2, 3]], dtype=torch.uint8, device=device)
            out = ops.nm_decompress(values, idx, 2, 4)
            want = torch.zeros(2, 8, dtype=dtype)
            want[0, [0, 3, 5, 6]] = values[0].cpu()
            want[1, [0, 1, 6, 7]] = values[1].cpu()
            assert torch.equal(out.cpu(), want)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_decompress_rejects_bad_indices(self, device):
        v = torch.ones(1, 2, device=device)
        with pytest.raises(RuntimeError, match=r"positions in \[0, m\)"):
            ops.nm_decompress(v, torch.tensor([[0, 4]], dtype=torch.uint8, device=device), 2, 4)
        with pytest.raises(RuntimeError, match="increase within each group"):
            ops.nm_decompress(v, torch.tensor([[2, 1]], dtype=torch.uint8, device=device), 2, 4)
        with pytest.raises(RuntimeError, match="indices should be uint8"):
            ops.nm_decompress(v, torch.tensor([[0, 1]], device=device), 2, 4)

    def test_compress_errors(self):
        with pytest.raises(RuntimeError, match=r"weight.size\(-1\) = 6 is not a multiple of m = 4"):
            ops.nm_compress(torch.zeros(2, 6), 2, 4)
        with pytest.raises(RuntimeError, match="mask should be a bool tensor"):
            ops.nm_compress(torch.zeros(2, 8), 2, 4, mask=torch.zeros(2, 8))
        with pytest.raises(RuntimeError, match=r"need 1 <= n < m <= 16"):
            ops.nm_compress(torch.zeros(2, 8), 4, 4)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_empty(self, device):
        v, i = ops.nm_compress(torch.zeros(0, 8, device=device), 2, 4)
        assert v.shape == i.shape == (0, 4)
        assert ops.nm_decompress(v, i, 2, 4).shape == (0, 8)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_opcheck(self, device):
        w = _weights((5, 3, 16), torch.float32, device)
        mask = ops.nm_mask(w.movedim(-1, 1), 2, 4).movedim(1, -1).contiguous()
        torch.library.opcheck(torch.ops.sparseyolo.nm_compress.default, (w, 2, 4))
        torch.library.opcheck(torch.ops.sparseyolo.nm_compress.default, (w, 2, 4, mask))
        values, idx = ops.nm_compress(w, 2, 4)
        torch.library.opcheck(torch.ops.sparseyolo.nm_decompress.default, (values, idx, 2, 4))

    def test_packed_2to4_metadata_layout(self):
        # Row of K=16: groups keep positions (0,1), (1,3), (0,2), (2,3) -> nibbles 0b0100, 0b1101, 0b1000, 0b1110.
        idx = torch.tensor([[0, 1, 1, 3, 0, 2, 2, 3]], dtype=torch.uint8)
        packed = pack_nm_indices(idx, 4)
        word = int(packed.view(torch.int16)[0, 0]) & 0xFFFF
        assert word == 0b1110_1000_1101_0100
        assert torch.equal(unpack_nm_indices(packed, 4, 8), idx)

    @pytest.mark.parametrize("bits", [1, 2, 4, 8])
    def test_pack_bits_round_trip(self, bits):
        codes = torch.randint(0, 1 << bits, (3, 13), generator=torch.Generator().manual_seed(bits)).to(torch.uint8)
        assert torch.equal(unpack_bits(pack_bits(codes, bits), bits, 13), codes)


class TestApplyMasks:
    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_matches_where(self, device):
        g = torch.Generator().manual_seed(0)
        shapes = [(16, 8, 3, 3), (1,), (0, 4), (70000,), (255, 64, 1, 1)]
        dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8]
        ts = [torch.randn(s, generator=g).mul(10).to(dt).to(device) for s, dt in zip(shapes, dtypes)]
        ms = [(torch.rand(s, generator=g) > 0.5).to(device) for s in shapes]
        want = [torch.where(mk, t, torch.zeros_like(t)) for t, mk in zip(ts, ms)]
        ops.apply_masks_(ts, ms)
        for t, w in zip(ts, want):
            assert torch.equal(t, w)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_select_not_multiply(self, device):
        t = torch.tensor([float("inf"), float("nan"), -1.0, float("nan")], device=device)
        ops.apply_masks_([t], [torch.tensor([False, False, False, True], device=device)])
        assert t[:3].tolist() == [0.0, 0.0, 0.0] and not torch.signbit(t[2]) and torch.isnan(t[3])

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_non_contiguous(self, device):
        base = torch.randn(8, 6, device=device)
        t = base.t()  # a view; the op writes through it
        mask = torch.rand(6, 8, device=device) > 0.5
        want = torch.where(mask, t, torch.zeros_like(t))
        ops.apply_masks_([t], [mask])
        assert torch.equal(base.t(), want)

    @pytest.mark.cuda
    def test_cuda_many_and_large_tensors(self):
        # More tensors than one kernel-parameter batch holds (36) and more chunks than one launch (320).
        g = torch.Generator().manual_seed(1)
        sizes = [1, 5, 16384, 16385] * 12 + [6_000_000]
        ts = [torch.randn(s, generator=g).cuda() for s in sizes]
        ms = [(torch.rand(s, generator=g) > 0.3).cuda() for s in sizes]
        want = [torch.where(mk, t, torch.zeros_like(t)) for t, mk in zip(ts, ms)]
        ops.apply_masks_(ts, ms)
        assert all(torch.equal(t, w) for t, w in zip(ts, want))

    def test_errors(self):
        with pytest.raises(RuntimeError, match="got 1 tensors but 0 masks"):
            ops.apply_masks_([torch.zeros(2)], [])
        with pytest.raises(RuntimeError, match=r"masks\[0\] should be a bool tensor"):
            ops.apply_masks_([torch.zeros(2)], [torch.zeros(2)])
        with pytest.raises(RuntimeError, match=r"masks\[0\] should have the shape of tensors\[0\]"):
            ops.apply_masks_([torch.zeros(2)], [torch.zeros(3, dtype=torch.bool)])

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_opcheck(self, device):
        ts = [torch.randn(4, 8, device=device), torch.randn(3, device=device, dtype=torch.float16)]
        ms = [torch.rand(4, 8, device=device) > 0.5, torch.rand(3, device=device) > 0.5]
        torch.library.opcheck(torch.ops.sparseyolo.apply_masks_.default, (ts, ms))
