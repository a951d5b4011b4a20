"""What every part of :mod:`sparseyolo.checkpoint` shares: its errors, the :class:`Checkpoint` record, the format
name and version of sparseyolo's own files, and the limits on what a file may ask for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT_NAME = "sparseyolo"
FORMAT_VERSION = 2  # 2: pruned weights may be stored compressed under "sparse_weights"

# --------------------------------------------------------------------------------------------------------
# Limits on what a file may ask for. A checkpoint is small data that can describe huge allocations (a class
# count, a pickled bytearray(n), a compressed stream, a config's multipliers); beyond these a file is refused
# with a CheckpointError that says which limit it hit, before anything that large is allocated.
# --------------------------------------------------------------------------------------------------------

#: Classes of a detector. COCO has 80, Objects365 365, LVIS 1203; an nc of 10**10 would build 10**10 names.
MAX_CLASSES = 100_000
#: Bytes one pickled ``bytearray(n)`` may allocate. Tensor data lives in the archive's storage records, not in
#: the pickle, so a real checkpoint holds at most small byte strings (e.g. a git hash).
MAX_PICKLE_BUFFER_BYTES = 16 * 2**20
#: Length of one pickled ``range`` (and so of a set, frozenset or bytearray built from it).
MAX_PICKLE_ITEMS = 1_000_000
#: Nesting of containers and modules in a checkpoint. A YOLOv5 pickle nests about 15 deep (module tree and
#: optimizer state); deeper structures only serve to exhaust the recursion of the code that walks them.
MAX_NESTING_DEPTH = 200
#: Decompressed size of an xz/gzip checkpoint: float weights barely compress (the packaged demo model's xz is
#: 0.86 of its size) and a dense file of a 90%-pruned model compresses about 10x, so 64x the compressed size
#: (never less than MIN_DECOMPRESSED_LIMIT, never more than MAX_DECOMPRESSED_BYTES) is ample for checkpoints
#: and refuses compression bombs (a 234 KB xz that inflates to 1.5 GB).
MAX_COMPRESSION_RATIO = 64
MIN_DECOMPRESSED_LIMIT = 256 * 2**20
MAX_DECOMPRESSED_BYTES = 8 * 2**30
#: Parameters of a model built from a checkpoint's config. YOLOv5x6, the largest released, has 140.7M; a
#: config with width x4 / depth x300 would allocate several GB before any shape check could refuse it.
MAX_MODEL_PARAMETERS = 250_000_000
#: Repeats of one config row after depth scaling (YOLOv5x6 has at most 12).
MAX_CONFIG_REPEATS = 100


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (missing, corrupt, not a checkpoint, or not fitting the model)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for a global outside the allow-list; the file is refused and nothing of it ran."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, folder not writable...); no partial file is left."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` found in a file.

    Attributes:
        state_dict: flat ``{key: tensor}`` as stored (Ultralytics files hold fp16 tensors).
        yaml: the model config dict (empty when unknown).
        nc: number of classes.
        names: class names, ``len(names) == nc``.
        stride: ``Tensor[nl]`` strides of the output levels, or None when not recorded.
        anchors: ``Tensor[nl, na, 2]`` anchors in grid units (the Detect buffer), or None.
        epoch: training epoch recorded in the file (``-1`` for a finished Ultralytics run), or None.
        format: ``'ultralytics'``, ``'sparseyolo'`` or ``'state_dict'``.
        meta: everything else worth keeping (Ultralytics ``date``, ``git``, ``opt``...; sparseyolo ``meta``).
        fused: True when the state_dict comes from a BN-fused model (convs with biases, no ``bn`` keys).
        yaml_file: config file name recorded with the model ("" when unknown).
        path: the file read.
        mask_patterns: ``{weight name: "N:M" | "unstructured"}`` of pruned weights stored compressed.
    """

    state_dict: dict[str, torch.Tensor]
    yaml: dict
    nc: int
    names: list[str]
    stride: torch.Tensor | None = None
    anchors: torch.Tensor | None = None
    epoch: int | None = None
    format: str = "state_dict"
    meta: dict = field(default_factory=dict)
    fused: bool = False
    yaml_file: str = ""
    path: Path | None = None
    mask_patterns: dict[str, str] = field(default_factory=dict)


def _names_list(names: Any, nc: int) -> list[str]:
    if isinstance(names, dict):  # later Ultralytics versions store {index: name}
        names = [names[k] for k in sorted(names)]
    if not names:
        return [str(i) for i in range(nc)]
    return [str(n) for n in names]


def _checked_nc(nc: Any, path: Path) -> int:
    """``nc`` as an int in ``[1, MAX_CLASSES]``, else CheckpointError."""
    if isinstance(nc, bool) or not isinstance(nc, (int, float)) or int(nc) != nc or not 1 <= nc <= MAX_CLASSES:
        raise CheckpointError(f"{path}: number of classes nc={nc!r} is not an int in [1, {MAX_CLASSES}]")
    return int(nc)


#: Exceptions that code reading a well-formed checkpoint never raises: on a tampered file they are turned
#: into a CheckpointError naming the file.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError, OverflowError)

