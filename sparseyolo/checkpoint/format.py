"""sparseyolo's own checkpoint format: writing (atomic), reading back, and the checksum over its tensors."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from sparseyolo.checkpoint.common import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_MODEL_PARAMETERS,
    Checkpoint,
    CheckpointError,
    CheckpointWriteError,
    _checked_nc,
    _names_list,
)
from sparseyolo.models import DetectionModel

LOGGER = logging.getLogger(__name__)

def _from_sparseyolo(obj: dict, path: Path) -> Checkpoint:
    version = obj.get("version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: sparseyolo checkpoint version {version} is newer than this sparseyolo ({FORMAT_VERSION}); upgrade"
        )
    _verify_checksum(obj, path)
    nc = _checked_nc(obj["nc"], path)
    stride = obj.get("stride")
    state_dict, patterns = dict(obj["state_dict"]), {}
    if obj.get("sparse_weights"):
        from sparseyolo.prune.storage import decompress_state_dict

        for wkey, entry in obj["sparse_weights"].items():
            numel = 1
            for d in entry["shape"]:
                numel *= max(int(d), 0)
            if numel > MAX_MODEL_PARAMETERS:
                raise CheckpointError(
                    f"{path}: compressed weight {wkey} claims shape {list(entry['shape'])}, more than "
                    f"{MAX_MODEL_PARAMETERS} elements"
                )

        try:
            state_dict, patterns = decompress_state_dict(state_dict, obj["sparse_weights"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupt compressed weights ({e})") from e
    return Checkpoint(
        state_dict=state_dict,
        yaml=obj.get("yaml") or {},
        nc=nc,
        names=_names_list(obj.get("names"), nc),
        stride=torch.tensor(stride, dtype=torch.float32) if stride is not None else None,
        anchors=next((v for k, v in obj["state_dict"].items() if k.endswith(".anchors")), None),
        epoch=obj.get("epoch"),
        format=FORMAT_NAME,
        meta=dict(obj.get("meta") or {}),
        fused=bool(obj.get("fused", False)),
        yaml_file=str(obj.get("yaml_file") or ""),
        path=path,
        mask_patterns=patterns,
    )


# --------------------------------------------------------------------------------------------------------
# Checksum of sparseyolo files
# --------------------------------------------------------------------------------------------------------

#: Algorithm of the ``'checksum'`` entry :func:`save_checkpoint` records over every tensor of the file.
CHECKSUM_ALGORITHM = "sha256"


def _tensor_checksum(obj: Any) -> str:
    """Hex digest over every tensor in ``obj`` (dicts, lists, tuples), with its key path, dtype and shape.

    A flipped byte in the tensor data of a zip archive loads without any error from torch; this digest is how
    :func:`load_checkpoint` notices it in sparseyolo's own files.
    """
    h = hashlib.new(CHECKSUM_ALGORITHM)

    def walk(o: Any, where: str) -> None:
        if isinstance(o, torch.Tensor):
            h.update(f"{where}|{o.dtype}|{tuple(o.shape)}|".encode())
            h.update(o.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{where}/{k}")
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{where}/{i}")

    walk({k: v for k, v in obj.items() if k != "checksum"}, "")
    return h.hexdigest()


def _verify_checksum(obj: dict, path: Path) -> None:
    """Raise CheckpointError when a sparseyolo file's recorded checksum disagrees with its tensors.

    Files written before checksums were recorded (no ``'checksum'`` entry) are read without the check.
    """
    recorded = obj.get("checksum")
    if recorded is None:
        return
    if not isinstance(recorded, dict) or recorded.get("algorithm") != CHECKSUM_ALGORITHM:
        raise CheckpointError(f"{path}: unknown checksum record {recorded!r}")
    if _tensor_checksum(obj) != recorded.get("digest"):
        raise CheckpointError(
            f"{path}: tensor data does not match the checksum recorded when it was saved; the file is corrupted "
            "(copy it again, or use another checkpoint)"
        )


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a unique temporary file beside ``path``, then rename it over ``path``.

    Concurrent writers (two runs with ``--exist-ok`` into one folder) never share a temporary file, a kill
    leaves either the old or the new ``path``, and on any failure the temporary file is removed.

    Raises:
        CheckpointWriteError: the file could not be written (disk full, unwritable folder...); names the path.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # KeyboardInterrupt included: never leave a partial temporary file
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch reports a short write as RuntimeError "unexpected pos"
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
            raise CheckpointWriteError(
                f"could not write checkpoint {path}: {reason} (is the disk full or the folder not writable?); "
                "no partial file was left"
            ) from e
        raise


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------

_PLAIN_TYPES = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    """Ensure ``obj`` loads under ``torch.load(weights_only=True)`` (plain containers, scalars, tensors)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN_TYPES):
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoint metadata must be plain Python data or tensors")


def save_checkpoint(model: DetectionModel, path: str | Path, **meta: Any) -> Path:
    """Write ``model`` in sparseyolo's own format (a plain dict, loadable with ``weights_only=True``).

    The file holds ``{'format': 'sparseyolo', 'version': 1, 'yaml', 'yaml_file', 'names', 'nc', 'stride',
    'fused', 'state_dict', 'meta', 'checksum'}``; ``checksum`` is a digest of every tensor in the file, which
    :func:`load_checkpoint` verifies. The state_dict is saved as the model holds it (dtype and all extra
    buffers), moved to CPU. A pruned model (``weight_mask`` buffers from :mod:`sparseyolo.prune`) is written
    as version 2: each masked weight and its mask leave ``state_dict`` for ``'sparse_weights'``, compressed
    as described in :mod:`sparseyolo.prune.storage` (N:M values + packed positions, or a bitmask + kept
    values); :func:`load_checkpoint` restores both bit-exact.

    Args:
        model: the detector (fused or not).
        path: output file; parent folders are created.
        **meta: plain data to keep with the weights (epoch, metrics, pruning recipe...).

    Returns:
        The path written.

    Raises:
        CheckpointWriteError: the file could not be written; ``path`` is then unchanged and no temporary file is
            left (the file is written to a unique temporary name and renamed into place).
    """
    _check_plain(meta, "meta")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointWriteError(f"could not create the folder of checkpoint {path}: {e.strerror or e}") from e
    obj = {
        "format": FORMAT_NAME,
        "version": 1,
        "yaml": copy.deepcopy(model.yaml),
        "yaml_file": getattr(model, "yaml_file", ""),
        "names": list(model.names),
        "nc": int(model.nc),
        "stride": [float(s) for s in model.stride],
        "fused": bool(model.is_fused()),
        "epoch": meta.get("epoch"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    if any(k.endswith(".weight_mask") for k in obj["state_dict"]):
        # Pruned weights (sparseyolo.prune masks) go compressed: N:M values + packed positions, or a
        # bitmask + kept values; the file is smaller and reloads bit-exact.
        from sparseyolo.prune import mask_patterns
        from sparseyolo.prune.storage import compress_state_dict

        obj["state_dict"], obj["sparse_weights"] = compress_state_dict(obj["state_dict"], mask_patterns(model))
        if obj["sparse_weights"]:
            obj["version"] = FORMAT_VERSION
    _check_plain(obj["yaml"], "model.yaml")
    obj["checksum"] = {"algorithm": CHECKSUM_ALGORITHM, "digest": _tensor_checksum(obj)}
    _atomic_torch_save(obj, path)
    LOGGER.info("saved %s (%d tensors)", path, len(obj["state_dict"]))
    return path


def rewrite_checkpoint_meta(path: str | Path, drop: tuple[str, ...] = (), **updates: Any) -> Path:
    """Remove ``drop`` keys from a sparseyolo file's ``meta``, set ``updates``, and rewrite it atomically.

    The checksum is verified before and recomputed after; the file is replaced by rename, so a kill leaves
    either the old or the new file (as :func:`save_checkpoint` does).

    Raises:
        CheckpointError: not a sparseyolo file, or its checksum does not match.
        CheckpointWriteError: the new file could not be written (the old one is unchanged).
    """
    path = Path(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME or not isinstance(obj.get("meta"), dict):
        raise CheckpointError(f"{path}: not a sparseyolo checkpoint")
    _verify_checksum(obj, path)
    for k in drop:
        obj["meta"].pop(k, None)
    _check_plain(updates, "meta")
    obj["meta"].update(updates)
    obj["checksum"] = {"algorithm": CHECKSUM_ALGORITHM, "digest": _tensor_checksum(obj)}
    _atomic_torch_save(obj, path)
    return path
