"""Compressed storage of pruned weights in checkpoints.

A masked weight ``<name>.weight`` (with its mask ``<name>.weight_mask``) is stored as one entry of
``sparse_weights`` instead of two dense tensors:

* N:M layers (``{'format': 'nm', 'shape', 'n', 'm', 'values', 'indices'}``): the weight with input channels
  moved last, ``[Cout, kh, kw, Cin]``, compressed by :func:`sparseyolo.ops.nm_compress` (``values``
  ``[Cout, kh, kw, Cin*n/m]`` in the weight's dtype) and its positions packed by :func:`pack_nm_indices`
  (``indices``, uint8). The mask is exactly the set of stored positions.
* Everything else (``{'format': 'bitmask', 'shape', 'bitmask', 'values'}``): the mask packed 8 per byte
  (:func:`pack_bits`, C order) and the kept values in C order.

Loading gives back the exact bits of weight and mask. A weight that is not exactly +0.0 wherever its mask
is False (someone changed it without :func:`~sparseyolo.prune.apply_masks`) stays dense, with a warning.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from sparseyolo import ops
from sparseyolo.prune.masks import MASK_NAME

LOGGER = logging.getLogger(__name__)

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def index_bits(m: int) -> int:
    """Bits per stored position for groups of ``m``: 1 (m <= 2), 2 (m <= 4) or 4 (m <= 16); powers of two so
    no position straddles a byte."""
    if not 2 <= m <= 16:
        raise ValueError(f"m must be in [2, 16], got {m}")
    return 1 if m <= 2 else 2 if m <= 4 else 4


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack small unsigned codes along the last axis, ``8 // bits`` per byte, the first in the low bits.

    Args:
        codes (Tensor[..., L]): integers (or bools) in ``[0, 2**bits)``.
        bits: 1, 2, 4 or 8.

    Returns:
        Tensor[..., ceil(L * bits / 8)] uint8 (the last byte of a row zero-padded).
    """
    per = 8 // bits
    L = codes.shape[-1]
    c = F.pad(codes.to(torch.int32), (0, (-L) % per))
    c = c.reshape(*c.shape[:-1], -1, per)
    shifts = torch.arange(per, device=c.device, dtype=torch.int32) * bits
    return (c << shifts).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: Tensor[..., B] uint8 -> Tensor[..., length] uint8."""
    per = 8 // bits
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    c = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return c.reshape(*packed.shape[:-1], -1)[..., :length].to(torch.uint8)


def pack_nm_indices(indices: torch.Tensor, m: int) -> torch.Tensor:
    """Pack N:M positions (:func:`sparseyolo.ops.nm_compress`) with :func:`index_bits` bits each.

    For 2:4 each group's two 2-bit positions take 4 bits, group ``g`` of a row at bits ``4g .. 4g+3`` of
    the row's little-endian int16 words (first position in the low 2 bits): the metadata layout of the
    sparse tensor-core ``mma.sp`` instructions for 16-bit operands, per row of ``K``, before the thread
    interleaving a particular kernel applies when it loads it. ``.view(torch.int16)`` gives the words when
    ``K % 16 == 0``.
    """
    return pack_bits(indices, index_bits(m))


def unpack_nm_indices(packed: torch.Tensor, m: int, length: int) -> torch.Tensor:
    return unpack_bits(packed, index_bits(m), length)


def _is_masked_exactly(w: torch.Tensor, mask: torch.Tensor) -> bool:
    """True when w is bitwise +0.0 (all-zero bits) wherever mask is False."""
    bits = w.contiguous().view(_INT_VIEW[w.element_size()])
    return not bool(bits[~mask].any())


def _nm_pattern(pattern: str | None) -> tuple[int, int] | None:
    if not pattern or ":" not in pattern:
        return None
    n, m = (int(v) for v in pattern.split(":"))
    return n, m


def compress_weight(w: torch.Tensor, mask: torch.Tensor, pattern: str | None = None) -> dict | None:
    """The ``sparse_weights`` entry of one masked weight, or None when it must stay dense."""
    if not _is_masked_exactly(w, mask):
        return None
    nm = _nm_pattern(pattern)
    if nm is not None and w.dim() >= 2 and w.is_floating_point():
        from sparseyolo.prune.methods import is_nm_mask

        n, m = nm
        if is_nm_mask(mask, n, m):
            wl = w.movedim(1, -1).contiguous()
            values, idx = ops.nm_compress(wl, n, m, mask=mask.movedim(1, -1).contiguous())
            return {"format": "nm", "shape": list(w.shape), "n": n, "m": m, "values": values,
                    "indices": pack_nm_indices(idx, m)}
    return {"format": "bitmask", "shape": list(w.shape), "bitmask": pack_bits(mask.flatten(), 1),
            "values": w[mask].contiguous()}


def decompress_weight(entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, mask)`` from a ``sparse_weights`` entry, bit-exact."""
    shape = [int(s) for s in entry["shape"]]
    numel = 1
    for s in shape:
        numel *= s
    if entry["format"] == "nm":
        n, m = int(entry["n"]), int(entry["m"])
        values = entry["values"]
        idx = unpack_nm_indices(entry["indices"], m, values.shape[-1])
        wl = ops.nm_decompress(values, idx, n, m)
        ml = ops.nm_decompress(torch.ones_like(values, dtype=torch.bool), idx, n, m)
        if list(wl.shape) != [shape[0], *shape[2:], shape[1]]:
            raise ValueError(f"N:M entry of shape {shape} decompresses to {list(wl.shape)}")
        return wl.movedim(-1, 1).contiguous(), ml.movedim(-1, 1).contiguous()
    if entry["format"] == "bitmask":
        mask = unpack_bits(entry["bitmask"], 1, numel).bool().view(shape)
        values = entry["values"]
        if values.numel() != int(mask.sum()):
            raise ValueError(f"bitmask entry has {values.numel()} values for {int(mask.sum())} kept positions")
        w = torch.zeros(shape, dtype=values.dtype, device=values.device)
        w[mask] = values
        return w, mask
    raise ValueError(f"unknown sparse weight format '{entry['format']}'")


def compress_state_dict(
    state_dict: dict[str, torch.Tensor], patterns: dict[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Split a state_dict into dense tensors and compressed masked weights.

    Args:
        state_dict: flat tensors, masks under ``<module>.weight_mask``.
        patterns: ``{weight name: "N:M" | "unstructured"}`` (:func:`~sparseyolo.prune.masks.mask_patterns`).

    Returns:
        ``(dense, sparse)``: ``dense`` without the compressed weights and their masks, ``sparse`` the entries
        by weight name.
    """
    dense = dict(state_dict)
    sparse: dict[str, dict] = {}
    for key in [k for k in state_dict if k.endswith("." + MASK_NAME)]:
        wkey = key[: -len(MASK_NAME)] + "weight"
        if wkey not in state_dict:
            continue
        entry = compress_weight(state_dict[wkey], state_dict[key], (patterns or {}).get(wkey))
        if entry is None:
            LOGGER.warning("%s is not zero everywhere its mask is off (apply_masks was not called?); stored dense",
                           wkey)
            continue
        sparse[wkey] = entry
        del dense[wkey], dense[key]
    return dense, sparse


def decompress_state_dict(
    dense: dict[str, torch.Tensor], sparse: dict[str, dict]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Inverse of :func:`compress_state_dict`: the full state_dict and the pattern of each masked weight."""
    out = dict(dense)
    patterns: dict[str, str] = {}
    for wkey, entry in sparse.items():
        w, mask = decompress_weight(entry)
        out[wkey] = w
        out[wkey[: -len("weight")] + MASK_NAME] = mask
        patterns[wkey] = f"{entry['n']}:{entry['m']}" if entry["format"] == "nm" else "unstructured"
    return out, patterns


def tensor_bytes(obj) -> int:
    """Bytes of tensor data in a (nested) dict/list of tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0
