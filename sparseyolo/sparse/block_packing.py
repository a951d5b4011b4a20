"""Packing of a conv weight for :func:`sparseyolo.ops.block_sparse_conv2d` (channels-last, fp32 or bf16).

The kernel (``csrc/kernels/cpu/block_sparse_conv2d.h``) keeps 16 output channels in the lanes of one vector and
reduces over *units* shared by those 16 channels: a unit is one input value per pixel (fp32) or a pair of them
(bf16, the two products ``vdpbf16ps`` sums per lane). A unit is kept for a block when any of the block's 16 weights
on it is nonzero, so the work is the number of kept units, and it equals the dense work over the kept rows when the
pruning pattern is shared by the 16 channels (``prune(..., block=16)``; row-block sparsity). Two neighbouring blocks
with the same units (``block=32``, or nothing pruned) run together on AVX-512 (twin blocks: two weight vectors per
broadcast); the kernel finds them, the packing is the same.

Units, for a weight ``[Cout, Cin, KH, KW]`` with taps ``t = kh*KW + kw``:

* fp32, gather ``"plain"``: one input channel ``c`` at tap ``t``; ``taps = t*Cin + c``.
* bf16, gather ``"plain"``: the aligned channel pair ``(2p, 2p+1)``; ``taps = t*(Cin/2) + p``.
* bf16, gather ``"pairs24"``: any two channels ``a < b`` of a group of 4 ``(4g .. 4g+3)``, read from a copy of the
  input holding the 6 pairs of every group; ``taps = t*(Cin/4*6) + 6g + pair``, pairs in the order
  ``(0,1) (0,2) (0,3) (1,2) (1,3) (2,3)``. Possible when every block keeps at most 2 channels of each group at each
  tap (N:M 2:4 and sparser, shared by the block); a 2:4 block then needs half the units of plain gather.
* bf16, gather ``"tiles32"`` (experimental, for AMX): 32 consecutive channels ``32q .. 32q+31`` at one tap, the K
  extent of one AMX tile, ``Cin`` zero-padded to a multiple of 32; ``taps = t*ceil(Cin/32) + q``; ``weight`` is
  ``[U, 16, 16, 2]`` (16 channel pairs x 16 output channels x 2: AMX's B tile). Pays when whole 16 x 32 tiles of a
  tap are pruned (tile sparsity); otherwise it is the dense work.

``weight[u]`` holds the block's 16 weights of unit ``u`` (``[U, 16]`` fp32, or ``[U, 16, 2]`` bf16 with the pair's
first channel first); the units of output block ``b`` (channels ``16b .. 16b+15``, the last block zero-padded) are
``block_ptr[b] .. block_ptr[b+1]``, sorted by tap then channel so consecutive units read neighbouring memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 16  # output channels per block: one zmm of fp32 accumulators
GATHERS = ("plain", "pairs24", "tiles32")
PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


@dataclass(frozen=True)
class BlockSparseWeight:
    """A conv weight packed for :func:`sparseyolo.ops.block_sparse_conv2d` (see the module docstring)."""

    weight: torch.Tensor  # [U, 16] float32, or [U, 16, 2] bfloat16
    taps: torch.Tensor  # [U] int32
    block_ptr: torch.Tensor  # [ceil(Cout / 16) + 1] int64
    shape: tuple[int, int, int, int]  # (Cout, Cin, KH, KW)
    gather: str

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def units(self) -> int:
        return int(self.taps.numel())

    def dense_units(self) -> int:
        """Units a dense weight of this shape would need (the same format, nothing skipped)."""
        cout, cin, kh, kw = self.shape
        if self.gather == "tiles32":
            per_pixel = (cin + 31) // 32
        else:
            per_pixel = cin if self.dtype == torch.float32 else cin // 2
        return (cout + BLOCK - 1) // BLOCK * kh * kw * per_pixel

    def to_dense(self) -> torch.Tensor:
        """The dense float32 weight ``[Cout, Cin, KH, KW]`` the packing holds (bf16 values widened)."""
        cout, cin, kh, kw = self.shape
        nb = (cout + BLOCK - 1) // BLOCK
        taps = self.taps.long()
        blocks = torch.repeat_interleave(torch.arange(nb), (self.block_ptr[1:] - self.block_ptr[:-1]).cpu())
        dense = torch.zeros(nb, kh * kw, cin, BLOCK, dtype=torch.float32)
        w = self.weight.float().cpu()
        if self.gather == "tiles32":
            nq = (cin + 31) // 32
            padded = torch.zeros(nb, kh * kw, nq, 16, 2, BLOCK, dtype=torch.float32)
            padded[blocks, taps // nq, taps % nq] = w.permute(0, 1, 3, 2)  # [U, 16 pairs, 2, 16 channels]
            dense = padded.reshape(nb, kh * kw, nq * 32, BLOCK)[:, :, :cin]
        elif self.dtype == torch.float32:
            dense[blocks, taps // cin, taps % cin] = w
        elif self.gather == "plain":
            t, p = taps // (cin // 2), taps % (cin // 2)
            dense[blocks, t, 2 * p] = w[..., 0]
            dense[blocks, t, 2 * p + 1] = w[..., 1]
        else:
            per_pixel = cin // 4 * 6
            t, r = taps // per_pixel, taps % per_pixel
            group, pair = r // 6, r % 6
            first = torch.tensor([a for a, _ in PAIRS])[pair]
            second = torch.tensor([b for _, b in PAIRS])[pair]
            # a unit may carry a zero partner that another unit of the same group sets: add, do not overwrite
            dense.index_put_((blocks, t, 4 * group + first), w[..., 0], accumulate=True)
            dense.index_put_((blocks, t, 4 * group + second), w[..., 1], accumulate=True)
        dense = dense.permute(0, 3, 2, 1).reshape(nb * BLOCK, cin, kh, kw)[:cout]
        return dense.contiguous()


def _blocked(weight: torch.Tensor) -> torch.Tensor:
    """``[Cout, Cin, KH, KW]`` -> ``[nb, 16, KH*KW, Cin]`` float32, output channels zero-padded to 16."""
    cout, cin, kh, kw = weight.shape
    nb = (cout + BLOCK - 1) // BLOCK
    w = torch.zeros(nb * BLOCK, cin, kh, kw, dtype=torch.float32)
    w[:cout] = weight.detach().float().cpu()
    return w.reshape(nb, BLOCK, cin, kh * kw).permute(0, 1, 3, 2).contiguous()


def _block_ptr(blocks: torch.Tensor, nb: int) -> torch.Tensor:
    counts = torch.bincount(blocks, minlength=nb)
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])


def _pack_plain(wb: torch.Tensor, shape: tuple[int, int, int, int], bf16: bool) -> BlockSparseWeight:
    nb, _, taps_n, cin = wb.shape
    if bf16:
        wp = wb.reshape(nb, BLOCK, taps_n, cin // 2, 2)
        kept = (wp != 0).any(dim=4).any(dim=1)  # [nb, T, Cin/2]
        b, t, p = kept.nonzero(as_tuple=True)
        weight = wp.permute(0, 2, 3, 1, 4)[b, t, p].to(torch.bfloat16)  # [U, 16, 2]
        taps = t * (cin // 2) + p
    else:
        kept = (wb != 0).any(dim=1)  # [nb, T, Cin]
        b, t, c = kept.nonzero(as_tuple=True)
        weight = wb.permute(0, 2, 3, 1)[b, t, c].contiguous()  # [U, 16]
        taps = t * cin + c
    return BlockSparseWeight(weight.contiguous(), taps.to(torch.int32), _block_ptr(b, nb), shape, "plain")


def _pairs24_rows(wb: torch.Tensor) -> torch.Tensor:
    """Which channels of each group of 4 a block keeps at each tap: ``[nb, T, Cin/4, 4]`` bool."""
    nb, _, taps_n, cin = wb.shape
    return (wb.reshape(nb, BLOCK, taps_n, cin // 4, 4) != 0).any(dim=1)


def _pack_pairs24(wb: torch.Tensor, shape: tuple[int, int, int, int]) -> BlockSparseWeight:
    nb, _, taps_n, cin = wb.shape
    rows = _pairs24_rows(wb)
    in_pair = torch.zeros(len(PAIRS), 4, dtype=torch.bool)
    for i, (a, b) in enumerate(PAIRS):
        in_pair[i, a] = in_pair[i, b] = True
    # the first pair that holds every kept channel of the group (one exists: at most 2 are kept)
    covers = ~(rows.unsqueeze(-2) & ~in_pair).any(dim=-1)  # [nb, T, G, 6]
    pair_of = covers.int().argmax(dim=-1)
    b, t, g = rows.any(dim=-1).nonzero(as_tuple=True)
    pair = pair_of[b, t, g]
    first = torch.tensor([a for a, _ in PAIRS])[pair]
    second = torch.tensor([c for _, c in PAIRS])[pair]
    wg = wb.reshape(nb, BLOCK, taps_n, cin // 4, 4).permute(0, 2, 3, 1, 4)  # [nb, T, G, 16, 4]
    sel = wg[b, t, g]  # [U, 16, 4]
    weight = torch.stack([sel[torch.arange(len(b)), :, first], sel[torch.arange(len(b)), :, second]], dim=-1)
    taps = t * (cin // 4 * 6) + 6 * g + pair
    return BlockSparseWeight(weight.to(torch.bfloat16).contiguous(), taps.to(torch.int32), _block_ptr(b, nb), shape,
                             "pairs24")


def _pack_tiles32(wb: torch.Tensor, shape: tuple[int, int, int, int]) -> BlockSparseWeight:
    nb, _, taps_n, cin = wb.shape
    nq = (cin + 31) // 32
    padded = torch.zeros(nb, BLOCK, taps_n, nq * 32, dtype=torch.float32)
    padded[..., :cin] = wb
    tiles = padded.reshape(nb, BLOCK, taps_n, nq, 16, 2)
    b, t, q = (tiles != 0).any(dim=5).any(dim=4).any(dim=1).nonzero(as_tuple=True)
    weight = tiles.permute(0, 2, 3, 4, 1, 5)[b, t, q]  # [U, 16 pairs, 16 channels, 2]
    return BlockSparseWeight(weight.to(torch.bfloat16).contiguous(), (t * nq + q).to(torch.int32), _block_ptr(b, nb),
                             shape, "tiles32")


def pairs24_possible(weight: torch.Tensor) -> bool:
    """True when every block of 16 output channels keeps at most 2 channels of each group of 4 at each tap."""
    cin = weight.shape[1]
    return cin % 4 == 0 and bool((_pairs24_rows(_blocked(weight)).sum(dim=-1) <= 2).all())


def pack_block_sparse(weight: torch.Tensor, dtype: torch.dtype = torch.float32,
                      gather: str | None = None) -> BlockSparseWeight:
    """Pack a conv weight (exact zeros where pruned) for :func:`sparseyolo.ops.block_sparse_conv2d`.

    Args:
        weight (Tensor[Cout, Cin, KH, KW]): the conv weight, BatchNorm folded; any float dtype.
        dtype: ``torch.float32`` or ``torch.bfloat16``: the precision the layer will run in.
        gather: bf16 only: ``"plain"`` (aligned channel pairs), ``"pairs24"`` (any pair of a group of 4) or
            ``"tiles32"`` (32-channel tiles, for AMX); ``None`` picks pairs24 when the pattern allows it and it
            needs at least 10% fewer units, else plain (tiles32 only when asked for).

    Returns:
        BlockSparseWeight.

    Raises:
        ValueError: an unsupported dtype or gather, a bf16 weight with an odd ``Cin`` (or ``Cin % 4 != 0`` for
            pairs24), or a pattern that pairs24 cannot hold.
    """
    if weight.dim() != 4:
        raise ValueError(f"pack_block_sparse: weight should be [Cout, Cin, KH, KW], got shape {tuple(weight.shape)}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"pack_block_sparse: dtype should be torch.float32 or torch.bfloat16, got {dtype}")
    if gather is not None and gather not in GATHERS:
        raise ValueError(f"pack_block_sparse: gather should be one of {GATHERS} or None, got {gather!r}")
    shape = tuple(int(s) for s in weight.shape)
    cin = shape[1]
    wb = _blocked(weight)
    if dtype == torch.float32:
        if gather in ("pairs24", "tiles32"):
            raise ValueError(f"pack_block_sparse: gather '{gather}' is for bfloat16 (fp32 units are single values)")
        return _pack_plain(wb, shape, bf16=False)
    if gather == "tiles32":
        return _pack_tiles32(wb, shape)
    if cin % 2:
        raise ValueError(f"pack_block_sparse: bfloat16 needs an even number of input channels, got Cin = {cin}")
    if gather == "plain":
        return _pack_plain(wb, shape, bf16=True)
    fits = cin % 4 == 0 and bool((_pairs24_rows(wb).sum(dim=-1) <= 2).all())
    if gather == "pairs24":
        if not fits:
            raise ValueError("pack_block_sparse: gather 'pairs24' needs Cin % 4 == 0 and at most 2 nonzero input "
                             f"channels per group of 4 in every block of {BLOCK} output channels at every tap "
                             "(a 2:4 mask shared by the block: prune(..., block=16))")
        return _pack_pairs24(wb, shape)
    plain = _pack_plain(wb, shape, bf16=True)
    if not fits:
        return plain
    pairs = _pack_pairs24(wb, shape)
    return pairs if pairs.units <= 0.9 * plain.units else plain
