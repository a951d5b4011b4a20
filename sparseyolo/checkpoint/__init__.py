"""Reading and writing detector checkpoints.

Three kinds of files are understood:

* **Ultralytics YOLOv5** ``*.pt``: a torch zip archive pickling ``{'model': models.yolo.Model, 'ema': ...,
  'epoch': ..., ...}``. It is read *without* Ultralytics and without running pickled code: a restricted
  unpickler allows only tensor-rebuilding globals and a fixed list of YOLOv5 / ``torch.nn`` class names,
  and turns those classes into inert :class:`_StandIn` records whose state is then walked to rebuild a
  flat ``state_dict``. Anything else in the pickle (``os.system``, ``builtins.eval``, an unknown class)
  raises :class:`UnsafeCheckpointError`.
* **sparseyolo** files written by :func:`save_checkpoint`, read with ``torch.load(weights_only=True)``; they
  record a checksum of their tensors, verified on reading.
* **plain state_dicts** (a dict of tensors, or one under ``'state_dict'`` or ``'model'``); the config is
  inferred by matching tensor shapes against the built-in configs.

Any of them may be compressed whole with xz or gzip (``model.pt.xz``, as the packaged demo model is); such a
file is decompressed in memory before it is read.

A small file can ask for huge allocations (a class count, a pickled ``bytearray(n)``, a compression bomb, a
config's multipliers): the limits in :mod:`~sparseyolo.checkpoint.common` bound each of them, and a file beyond
one is refused with a :class:`CheckpointError` that names the limit. docs/reliability.md lists what is refused
and why.

The package is split by job: :mod:`~sparseyolo.checkpoint.common` (errors, the :class:`Checkpoint` record, the
limits), :mod:`~sparseyolo.checkpoint.safe_unpickle` (the restricted unpickler),
:mod:`~sparseyolo.checkpoint.ultralytics` (Ultralytics files, config inference), :mod:`~sparseyolo.checkpoint.load`
(reading any file), :mod:`~sparseyolo.checkpoint.format` (sparseyolo's own files: saving, checksum),
:mod:`~sparseyolo.checkpoint.model` (detectors from files) and :mod:`~sparseyolo.checkpoint.download`.
"""

from __future__ import annotations

# The limits and format constants stay importable from here, as they were before the package was split.
from sparseyolo.checkpoint.common import (  # noqa: F401
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_CLASSES,
    MAX_COMPRESSION_RATIO,
    MAX_CONFIG_REPEATS,
    MAX_DECOMPRESSED_BYTES,
    MAX_MODEL_PARAMETERS,
    MAX_NESTING_DEPTH,
    MAX_PICKLE_BUFFER_BYTES,
    MAX_PICKLE_ITEMS,
    MIN_DECOMPRESSED_LIMIT,
    Checkpoint,
    CheckpointError,
    CheckpointWriteError,
    UnsafeCheckpointError,
)
from sparseyolo.checkpoint.download import RELEASE_ASSETS, RELEASE_URL, attempt_download
from sparseyolo.checkpoint.format import CHECKSUM_ALGORITHM, rewrite_checkpoint_meta, save_checkpoint  # noqa: F401
from sparseyolo.checkpoint.load import load_checkpoint
from sparseyolo.checkpoint.model import check_model_size, load_model
from sparseyolo.checkpoint.ultralytics import infer_config

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointWriteError",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "load_model",
    "attempt_download",
    "infer_config",
    "check_model_size",
    "RELEASE_ASSETS",
    "RELEASE_URL",
]
