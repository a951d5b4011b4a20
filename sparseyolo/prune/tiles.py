"""Tile pruning: whole ``16 x 32`` tiles (output x input channels) of a conv tap, the unit AMX multiplies.

A conv weight ``[Cout, Cin, KH, KW]`` is cut, at each tap ``(kh, kw)``, into tiles of 16 consecutive output and 32
consecutive input channels (edge tiles are smaller). Pruning a tile removes one AMX tile product per 16 output
pixels from :func:`sparseyolo.ops.block_sparse_conv2d` (gather ``"tiles32"``, backend ``"cpu_block_tiles"``), so
the work falls with the share of tiles pruned; finer patterns (2:4, unstructured) do not make an AMX kernel faster.
The shape is the kernel's: 16 output channels per accumulator tile, 32 bf16 input channels per K step.
"""

from __future__ import annotations

import torch

TILE_OUT = 16  # output channels of a tile: one AMX accumulator tile's columns
TILE_IN = 32  # input channels of a tile: one AMX bf16 K step
TILE_PATTERN = "tile16x32"  # the weight_mask_pattern of a tile-pruned layer (saved as unstructured)


def tile_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each tile: ``[ceil(Cout/16), ceil(Cin/32), KH, KW]`` (edge tiles zero-padded)."""
    cout, cin, kh, kw = weight.shape
    nb, nq = -(-cout // TILE_OUT), -(-cin // TILE_IN)
    padded = weight.new_zeros(nb * TILE_OUT, nq * TILE_IN, kh, kw, dtype=torch.float32)
    padded[:cout, :cin] = weight.detach().float()
    return padded.reshape(nb, TILE_OUT, nq, TILE_IN, kh, kw).pow(2).sum(dim=(1, 3)).sqrt()


def expand_tiles(keep: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """A per-tile bool ``[nb, nq, KH, KW]`` as a weight mask of ``shape`` ``[Cout, Cin, KH, KW]``."""
    cout, cin, kh, kw = shape
    nb, nq = keep.shape[:2]
    full = keep[:, None, :, None].expand(nb, TILE_OUT, nq, TILE_IN, kh, kw)
    return full.reshape(nb * TILE_OUT, nq * TILE_IN, kh, kw)[:cout, :cin].contiguous()


def tile_mask(weight: torch.Tensor, amount: float, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Mask pruning the ``round(amount * tiles)`` tiles of lowest score (default: L2 norm) of one conv weight.

    Ties prune the lower flat tile index first (stable sort). Returns a bool mask of ``weight``'s shape.
    """
    scores = tile_norms(weight) if scores is None else scores
    k = round(float(amount) * scores.numel())
    order = torch.sort(scores.flatten(), stable=True).indices
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[order[:k]] = False
    return expand_tiles(keep.view(scores.shape), weight.shape).to(weight.device)


def is_tile_mask(mask: torch.Tensor) -> bool:
    """True when every tile of ``mask`` is all kept or all pruned."""
    kept = tile_norms(mask.float()) > 0
    return bool(torch.equal(expand_tiles(kept, mask.shape), mask.bool()))


def tile_column_groups(shape: torch.Size | tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """The tile of every column of a conv weight flattened to ``[Cout, Cin * KH * KW]`` (column ``c * KH*KW + t``
    for channel ``c`` at tap ``t``): ``t * ceil(Cin / 32) + c // 32``, Tensor[Cin * KH * KW] int64. A tile is
    then ``16`` consecutive rows times the columns of one group (what :func:`sparseyolo.prune.obs.group_obs_mask`
    takes)."""
    _, cin, kh, kw = shape
    taps = kh * kw
    c = torch.arange(cin, device=device).repeat_interleave(taps)
    t = torch.arange(taps, device=device).repeat(cin)
    return t * (-(-cin // TILE_IN)) + c // TILE_IN
