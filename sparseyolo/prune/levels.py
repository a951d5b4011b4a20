"""Per-conv sparsity levels: the options a latency-aware profile chooses between for one conv.

A level is plain data, so a profile's choice goes into a checkpoint's recipe as it is:

- a float in ``[0, 1)``: that share of the conv's ``16 x 32`` tiles pruned (:mod:`sparseyolo.prune.tiles`; 0.0
  prunes nothing but moves the conv to the kernel);
- a string ``"N:MbB"``, e.g. ``"2:4b32"``: N:M along input channels, one choice shared by every ``B`` consecutive
  output channels. Shared by 32 channels, the block kernel without AMX runs two 16-channel blocks together (twin
  blocks), and on yolov5n its calibrated per-conv error was at or below tiles 50%'s on 50 of 52 convs
  (``benchmarks/results/layer_errors_yolov5n_tiles_vs_nm_blocks.md``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sparseyolo.prune.tiles import TILE_PATTERN

__all__ = ["Level", "NMBlock", "canonical_level", "level_fits", "level_label", "level_order", "level_pattern",
           "parse_level", "parse_nm"]

#: A tile sparsity (float) or an N:M-block level (``"2:4b32"``).
Level = float | str

_NM_BLOCK = re.compile(r"^(\d+):(\d+)b(\d+)$")


def parse_nm(spec: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``; raises ValueError naming the expected form."""
    parts = str(spec).split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"an N:M pattern looks like 2:4, got '{spec}'") from None
    if not 1 <= n < m <= 16:
        raise ValueError(f"N:M pruning needs 1 <= n < m <= 16 (keep n of every m), got {n}:{m}")
    return n, m


class NMBlock(NamedTuple):
    """An N:M-block level parsed: keep ``n`` of every ``m`` input channels, one choice per ``block`` output
    channels."""

    n: int
    m: int
    block: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}b{self.block}"


def parse_level(level: Level | NMBlock) -> float | NMBlock:
    """A level checked: a tile sparsity as a float in ``[0, 1)``, or an :class:`NMBlock`.

    Raises:
        ValueError: anything else, naming both forms.
    """
    if isinstance(level, NMBlock):
        return level
    if isinstance(level, str):
        match = _NM_BLOCK.match(level.strip())
        if match is None:
            try:
                level = float(level)
            except ValueError:
                raise ValueError(f"a sparsity level is a tile sparsity in [0, 1) such as 0.5, or N:M shared by B "
                                 f"output channels written N:MbB such as 2:4b32, got '{level}'") from None
        else:
            try:
                n, m = parse_nm(f"{match[1]}:{match[2]}")
            except ValueError as e:
                raise ValueError(f"sparsity level '{level}': {e}") from None
            block = int(match[3])
            if block < 1:
                raise ValueError(f"the block of an N:M level must be at least 1 output channel, got '{level}'")
            return NMBlock(n, m, block)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= float(level) < 1.0:
        raise ValueError(f"a tile sparsity level must be a fraction in [0, 1), got {level!r}")
    return float(level)


def canonical_level(level: Level | NMBlock) -> Level:
    """The form a level is stored and keyed in: a float tile sparsity, or the string ``"N:MbB"``."""
    p = parse_level(level)
    return str(p) if isinstance(p, NMBlock) else p


def level_fits(level: Level, in_channels: int) -> bool:
    """Whether a layer with ``in_channels`` input channels can take ``level``: any tile sparsity; an N:M level where
    the channels are a multiple of M."""
    p = parse_level(level)
    return not isinstance(p, NMBlock) or in_channels % p.m == 0


def level_pattern(level: Level) -> str:
    """The ``weight_mask_pattern`` a mask at ``level`` is registered with: tiles or ``"N:M"``."""
    p = parse_level(level)
    return f"{p.n}:{p.m}" if isinstance(p, NMBlock) else TILE_PATTERN


def level_label(level: Level) -> str:
    """How tables name a level: ``"tiles 50%"``, ``"2:4 b32"``."""
    p = parse_level(level)
    return f"{p.n}:{p.m} b{p.block}" if isinstance(p, NMBlock) else f"tiles {100 * p:g}%"


def level_order(level: Level) -> tuple:
    """A sort key: tile sparsities ascending, then N:M levels (denser first, then larger blocks)."""
    p = parse_level(level)
    return (1, -p.n / p.m, p.block) if isinstance(p, NMBlock) else (0, p)
