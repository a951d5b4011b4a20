"""Tile pruning: whole ``16 x 32`` tiles (output x input channels) of a conv tap, the unit AMX multiplies.

A conv weight ``[Cout, Cin, KH, KW]`` is cut, at each tap ``(kh, kw)``, into tiles of 16 consecutive output and 32
consecutive input channels (edge tiles are smaller). Pruning a tile removes one AMX tile product per 16 output
pixels from :func:`sparseyolo.ops.block_sparse_conv2d` (gather ``"tiles32"``, backend ``"cpu_block_tiles"``), so
the work falls with the share of tiles pruned; finer patterns (2:4, unstructured) do not make an AMX kernel faster.
The shape is the kernel's: 16 output channels per accumulator tile, 32 bf16 input channels per K step. Without AMX
(fp32, backend ``"cpu_block"``) a pruned tile is 32 input rows skipped by a block of 16 output channels.

``rows=32`` makes the tiles ``32 x 32``: two neighbouring 16-channel blocks pruned alike, which the kernel without
AMX runs as twin blocks (two weight vectors per input broadcast; on a CPU with AVX-512 but no AMX, yolov5s's convs
at 75%: 2.7x of oneDNN fp32 against 2.3x for 16 x 32 tiles); coarser, so it costs more accuracy.
"""

from __future__ import annotations

import torch

TILE_OUT = 16  # output channels of a tile: one AMX accumulator tile's columns
TILE_IN = 32  # input channels of a tile: one AMX bf16 K step
TILE_ROWS = (TILE_OUT, 2 * TILE_OUT)  # output channels of a tile: one block, or two run as twins
TILE_PATTERN = "tile16x32"  # the weight_mask_pattern of a tile-pruned layer (saved as unstructured)


def tile_pattern(rows: int = TILE_OUT) -> str:
    """The ``weight_mask_pattern`` of tiles of ``rows`` output channels: ``"tile16x32"`` or ``"tile32x32"``."""
    if rows not in TILE_ROWS:
        raise ValueError(f"tiles are {' or '.join(map(str, TILE_ROWS))} output channels high, got {rows}")
    return f"tile{rows}x{TILE_IN}"


def tile_height(block: int) -> int:
    """The tiles' output channels that a ``block`` argument asks for: 16 for 1 (the default) or 16, 32 for 32;
    raises ValueError for any other."""
    rows = TILE_OUT if block == 1 else block
    tile_pattern(rows)  # raises for a height the kernel has no tile of
    return rows


def pattern_tile_rows(pattern: str) -> int | None:
    """The tile height of a ``weight_mask_pattern`` made by :func:`tile_pattern`, None for any other pattern."""
    for rows in TILE_ROWS:
        if pattern == tile_pattern(rows):
            return rows
    return None


def tile_norms(weight: torch.Tensor, rows: int = TILE_OUT) -> torch.Tensor:
    """L2 norm of each tile of ``rows`` output x 32 input channels: ``[ceil(Cout/rows), ceil(Cin/32), KH, KW]``
    (edge tiles zero-padded)."""
    cout, cin, kh, kw = weight.shape
    nb, nq = -(-cout // rows), -(-cin // TILE_IN)
    padded = weight.new_zeros(nb * rows, nq * TILE_IN, kh, kw, dtype=torch.float32)
    padded[:cout, :cin] = weight.detach().float()
    return padded.reshape(nb, rows, nq, TILE_IN, kh, kw).pow(2).sum(dim=(1, 3)).sqrt()


def expand_tiles(keep: torch.Tensor, shape: torch.Size | tuple[int, ...], rows: int = TILE_OUT) -> torch.Tensor:
    """A per-tile bool ``[nb, nq, KH, KW]`` (tiles of ``rows`` output channels) as a weight mask of ``shape``
    ``[Cout, Cin, KH, KW]``."""
    cout, cin, kh, kw = shape
    nb, nq = keep.shape[:2]
    full = keep[:, None, :, None].expand(nb, rows, nq, TILE_IN, kh, kw)
    return full.reshape(nb * rows, nq * TILE_IN, kh, kw)[:cout, :cin].contiguous()


def tile_mask(weight: torch.Tensor, amount: float, scores: torch.Tensor | None = None,
              rows: int = TILE_OUT) -> torch.Tensor:
    """Mask pruning the ``round(amount * tiles)`` tiles (``rows`` x 32) of lowest score (default: L2 norm) of one
    conv weight.

    Ties prune the lower flat tile index first (stable sort). Returns a bool mask of ``weight``'s shape.
    """
    scores = tile_norms(weight, rows) if scores is None else scores
    k = round(float(amount) * scores.numel())
    order = torch.sort(scores.flatten(), stable=True).indices
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[order[:k]] = False
    return expand_tiles(keep.view(scores.shape), weight.shape, rows).to(weight.device)


def is_tile_mask(mask: torch.Tensor, rows: int = TILE_OUT) -> bool:
    """True when every tile (``rows`` x 32) of ``mask`` is all kept or all pruned."""
    kept = tile_norms(mask.float(), rows) > 0
    return bool(torch.equal(expand_tiles(kept, mask.shape, rows), mask.bool()))


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
