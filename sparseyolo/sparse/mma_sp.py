"""Packing of 2:4 conv weights for the sparse tensor cores (``mma.sp`` m16n8k32, fp16/bf16).

The format is the one ``sparseyolo::sparse_conv2d_24`` consumes (spelled out in
``csrc/kernels/cuda/sparse_conv2d_24.h``): the weight viewed as ``A[Cout, K]`` with ``K = KH*KW*Cin_pad`` (Cin
fastest, padded to 32), cut into 16-row x 32-column blocks; each block stored as the 32 lanes' A fragments
(``values``, 8 kept elements per lane) and their metadata words (``meta``, 16 int32 per block).

:func:`unpack_mma_sp_weight` is the bit-level reference of the same format written from the PTX ISA's
description of the instruction (which lane holds which element and which metadata bits): the dense matrix
the tensor cores multiply by. Tests check ``unpack(pack(w)) == w``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_COUT = 64  # output channels per thread block: packed rows are padded to a multiple of it
K_BLOCK = 32  # dense k per mma.sp m16n8k32
PAD_CODE = 0b0100  # metadata of a padded group: positions 0 and 1 (never the invalid equal-index codes)


@dataclass
class MmaSpWeight:
    """A conv weight packed for :func:`sparseyolo.ops.sparse_conv2d_24`.

    Attributes:
        values (Tensor[MT, KB, 32, 8]): kept weights in fragment order (fp16 or bf16).
        meta (Tensor[MT, KB, 16], int32): metadata words.
        shape: the dense weight's ``(Cout, Cin, KH, KW)``.
    """

    values: torch.Tensor
    meta: torch.Tensor
    shape: tuple[int, int, int, int]

    def to(self, *args, **kwargs) -> MmaSpWeight:
        values = self.values.to(*args, **kwargs)
        return MmaSpWeight(values, self.meta.to(device=values.device), self.shape)


def is_24_sparse(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive input channels (at fixed cout, kh, kw) has at most 2 nonzeros."""
    if weight.dim() != 4:
        return False
    cout, cin, kh, kw = weight.shape
    if cin % 4:
        return False
    nz = (weight != 0).permute(0, 2, 3, 1).reshape(cout, kh, kw, cin // 4, 4).sum(-1)
    return bool((nz <= 2).all())


def pack_mma_sp_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> MmaSpWeight:
    """Pack a 2:4-sparse conv weight ``[Cout, Cin, KH, KW]`` (groups along Cin) into mma.sp fragment order.

    Args:
        weight: dense weight with exact zeros; at most 2 nonzeros in each group of 4 consecutive Cin.
        dtype: fp16 or bf16 of the values (default: the weight's dtype if 16-bit, else fp16).

    Raises:
        ValueError: when the weight is not 4D or not 2:4 sparse along Cin (Cin % 4 != 0 included).

    Caveats:
        A group with fewer than 2 nonzeros keeps its lowest zero positions, so every group has two distinct,
        ascending positions (``mma.sp`` leaves equal-index metadata undefined).
    """
    if weight.dim() != 4:
        raise ValueError(f"pack_mma_sp_weight: weight should be [Cout, Cin, KH, KW], got {weight.dim()}D")
    if dtype is None:
        dtype = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16) else torch.float16
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"pack_mma_sp_weight: dtype should be float16 or bfloat16, got {dtype}")
    if not is_24_sparse(weight):
        raise ValueError("pack_mma_sp_weight: weight is not 2:4 sparse along Cin (prune it with pattern '2:4' "
                         "and keep Cin a multiple of 4)")
    cout, cin, kh, kw = weight.shape
    cin_pad = -(-cin // K_BLOCK) * K_BLOCK
    cout_pad = -(-cout // BLOCK_COUT) * BLOCK_COUT
    w = torch.zeros(cout_pad, kh, kw, cin_pad, dtype=torch.float32, device=weight.device)
    w[:cout, :, :, :cin] = weight.detach().permute(0, 2, 3, 1).to(torch.float32)
    groups = w.reshape(cout_pad, kh * kw * cin_pad // 4, 4)
    # Two positions per group: nonzeros first, then the lowest zero positions; ascending.
    pos = torch.arange(4, device=w.device)
    key = (groups == 0).to(torch.int64) * 4 + pos
    keep = key.argsort(dim=-1)[..., :2].sort(dim=-1).values  # [Cout_pad, G, 2]
    kept = groups.gather(-1, keep)  # [Cout_pad, G, 2]
    kb_count = kh * kw * cin_pad // K_BLOCK
    mt_count = cout_pad // 16
    # compressed A: [MT, 16 rows, KB, 16 compressed cols]
    comp = kept.reshape(mt_count, 16, kb_count, 16)
    codes = (keep[..., 0] | (keep[..., 1] << 2)).reshape(mt_count, 16, kb_count, 8)  # 4-bit code per group

    lane = torch.arange(32, device=w.device)
    g, t = lane // 4, lane % 4
    e = torch.arange(8, device=w.device)
    row = g[:, None] + 8 * ((e[None, :] // 2) & 1)  # [32, 8]
    col = 2 * t[:, None] + (e[None, :] & 1) + 8 * (e[None, :] // 4)
    values = comp[:, row, :, col]  # advanced indexing -> [32, 8, MT, KB]
    values = values.permute(2, 3, 0, 1).contiguous().to(dtype)

    # meta word 2*g + h: row g groups 4h..4h+3 in bits 0..15, row g+8 in bits 16..31.
    shifts = 4 * torch.arange(4, device=w.device)
    c4 = codes.reshape(mt_count, 16, kb_count, 2, 4)
    halfword = (c4 << shifts).sum(-1)  # [MT, 16 rows, KB, 2 halves], < 2**16
    word = halfword[:, :8] | (halfword[:, 8:] << 16)  # [MT, 8 g, KB, 2 h]
    meta = word.permute(0, 2, 1, 3).reshape(mt_count, kb_count, 16)
    meta = meta.to(torch.int64).where(meta < 2**31, meta - 2**32).to(torch.int32).contiguous()
    return MmaSpWeight(values, meta, (cout, cin, kh, kw))


def unpack_mma_sp_weight(packed: MmaSpWeight) -> torch.Tensor:
    """Dense ``[Cout, Cin, KH, KW]`` float32 weight that ``mma.sp`` multiplies by, read bit by bit.

    Written from the PTX ISA, independently of :func:`pack_mma_sp_weight`: lane ``l = 4g + t`` register
    ``r`` half ``h`` holds compressed element (row ``g + 8*(r & 1)``, column ``2t + h + 8*(r >> 1)``); the
    metadata of row ``R``, dense columns ``16c .. 16c+15`` is in bits ``16*(R >= 8) ..`` of the word of lane
    ``4*(R % 8) + c`` (sparsity selector 0); compressed column ``j`` is the ``(j & 1)``-th index of group ``j // 2``.
    """
    values = packed.values.detach().cpu().to(torch.float32)
    meta = packed.meta.detach().cpu().to(torch.int64) & 0xFFFFFFFF
    cout, cin, kh, kw = packed.shape
    mt_count, kb_count = values.shape[:2]
    dense = torch.zeros(mt_count * 16, kb_count * K_BLOCK, dtype=torch.float32)
    for mt in range(mt_count):
        for kb in range(kb_count):
            words = [int(v) for v in meta[mt, kb]]
            for lane in range(32):
                g, t = divmod(lane, 4)
                for e in range(8):
                    r, h = divmod(e, 2)
                    row = g + 8 * (r & 1)
                    ccol = 2 * t + h + 8 * (r >> 1)
                    group = ccol // 2  # dense group 0..7 of the 32 columns
                    word = words[2 * (row % 8) + group // 4]  # lane 4*(row%8) + group//4 supplies it
                    bit = 16 * (row >= 8) + 4 * (group % 4) + 2 * (ccol & 1)
                    idx = (word >> bit) & 3
                    dense[mt * 16 + row, kb * K_BLOCK + 4 * group + idx] = values[mt, kb, lane, e]
    cin_pad = kb_count * K_BLOCK // (kh * kw)
    w = dense[:cout].reshape(cout, kh, kw, cin_pad)[..., :cin]
    return w.permute(0, 3, 1, 2).contiguous()
