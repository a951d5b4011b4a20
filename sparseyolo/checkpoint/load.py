"""Reading checkpoint files: whole-file decompression, sniffing, safe loading, and dispatch by layout."""

from __future__ import annotations

import io
import logging
import lzma
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from sparseyolo.checkpoint.common import (
    FORMAT_NAME,
    MAX_COMPRESSION_RATIO,
    MAX_DECOMPRESSED_BYTES,
    MAX_NESTING_DEPTH,
    MIN_DECOMPRESSED_LIMIT,
    _MALFORMED,
    Checkpoint,
    CheckpointError,
    UnsafeCheckpointError,
    _checked_nc,
    _names_list,
)
from sparseyolo.checkpoint.format import _from_sparseyolo
from sparseyolo.checkpoint.safe_unpickle import _restricted_pickle_module, _StandIn
from sparseyolo.checkpoint.ultralytics import _from_ultralytics, _is_fused_state, _is_tensor_dict, infer_config

LOGGER = logging.getLogger(__name__)

_MAGIC_HINTS = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF"),
)


#: Magic numbers of the whole-file compressions :func:`load_checkpoint` undoes in memory.
_XZ_MAGIC, _GZIP_MAGIC = b"\xfd7zXZ\x00", b"\x1f\x8b"


def _decompression_limit(compressed_bytes: int) -> int:
    """Largest decompressed size accepted for a compressed checkpoint of ``compressed_bytes`` (see the limits)."""
    return min(max(MAX_COMPRESSION_RATIO * compressed_bytes, MIN_DECOMPRESSED_LIMIT), MAX_DECOMPRESSED_BYTES)


def _inflate(path: Path, data: bytes, new_decompressor: Any) -> bytes:
    """Decompress all concatenated streams of ``data``, refusing output beyond :func:`_decompression_limit`."""
    limit = _decompression_limit(len(data))
    out = bytearray()
    while data:
        dec = new_decompressor()
        chunk = dec.decompress(data, max_length=limit + 1 - len(out))
        out += chunk
        if len(out) > limit:
            raise CheckpointError(
                f"{path}: decompresses to more than {limit} bytes ({MAX_COMPRESSION_RATIO}x its "
                f"{len(data)} compressed bytes, at least {MIN_DECOMPRESSED_LIMIT}); refusing a likely compression bomb"
            )
        if not dec.eof:
            raise CheckpointError(f"{path}: corrupt or truncated compressed checkpoint (stream ends early)")
        data = dec.unused_data.lstrip(b"\x00")  # xz streams may be followed by zero padding
    return bytes(out)


def _decompressed(path: Path) -> Path | io.BytesIO:
    """The file itself, or its content in memory when it is xz- or gzip-compressed (e.g. ``model.pt.xz``).

    Raises:
        CheckpointError: corrupt stream, or one that inflates beyond :func:`_decompression_limit`.
    """
    with open(path, "rb") as fh:
        head = fh.read(6)
    try:
        if head.startswith(_XZ_MAGIC):
            return io.BytesIO(_inflate(path, path.read_bytes(), lzma.LZMADecompressor))
        if head.startswith(_GZIP_MAGIC):
            return io.BytesIO(_inflate(path, path.read_bytes(), lambda: zlib.decompressobj(wbits=31)))
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated compressed checkpoint ({e})") from e
    return path


#: Globals that torch's own weights_only unpickler allows but whose argument can ask for any size (a 281-byte
#: pickle with ``bytearray(2_500_000_000)``); a pickle naming one is read by the restricted unpickler, whose
#: versions are bounded.
_SIZED_GLOBAL_NAMES = (b"bytearray",)


def _sniff(path: Path, source: Path | io.BytesIO | None = None) -> bool:
    """Raise CheckpointError unless the file (or its decompressed ``source``) starts like a torch zip or a pickle.

    Returns:
        True when the pickle names a global in :data:`_SIZED_GLOBAL_NAMES`, so that only the restricted (bounded)
        unpickler may read it.
    """
    source = path if source is None else source
    if isinstance(source, io.BytesIO):
        head = source.getvalue()[:8]
    else:
        with open(source, "rb") as fh:
            head = fh.read(8)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(source) as zf:
                infos = zf.infolist()
                names = [i.filename for i in infos]
                pkl = next((i for i in infos if i.filename.endswith("data.pkl")), None)
                for info in infos:  # torch writes entries stored; a deflated one must not be a bomb either
                    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _decompression_limit(
                        info.compress_size
                    ):
                        raise CheckpointError(
                            f"{path}: zip entry {info.filename!r} inflates {info.compress_size} bytes to "
                            f"{info.file_size}; refusing a likely compression bomb"
                        )
                data_pkl = zf.read(pkl) if pkl is not None else b""
        except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, ValueError, NotImplementedError) as e:
            if isinstance(e, CheckpointError):
                raise
            # A corrupt central directory can carry undecodable names: the message still names the file.
            raise CheckpointError(
                f"{path}: not a readable checkpoint: corrupt or truncated zip archive ({type(e).__name__}: {e})"
            ) from e
        if pkl is None:
            raise CheckpointError(
                f"{path}: a zip archive without a pickled object (data.pkl); not a PyTorch checkpoint"
            )
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise CheckpointError(
                f"{path}: a TorchScript archive, not a checkpoint; load it with torch.jit.load if you trust it"
            )
        return any(g in data_pkl for g in _SIZED_GLOBAL_NAMES)
    if head[:1] == b"\x80":  # pickle protocol >= 2: torch's legacy (pre-1.6) format
        data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
        return any(g in data for g in _SIZED_GLOBAL_NAMES)
    what = next((d for m, d in _MAGIC_HINTS if head.startswith(m)), None)
    if what is None:
        what = (
            "a text file"
            if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head)
            else f"unknown data starting {head!r}"
        )
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (it looks like {what})")


def _torch_load(path: Path, source: Path | io.BytesIO | None = None, restricted_only: bool = False) -> Any:
    """Load with weights_only=True, or else with the restricted unpickler (Ultralytics model objects).

    ``restricted_only`` skips the weights_only attempt (see :data:`_SIZED_GLOBAL_NAMES`).
    """
    source = path if source is None else source
    if not restricted_only:
        try:
            return torch.load(source, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as first:
            LOGGER.debug("weights_only load of %s failed (%s); trying the restricted unpickler", path, first)
        if isinstance(source, io.BytesIO):
            source.seek(0)
    try:
        return torch.load(source, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # truncated streams, bad records, bad pickles
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e


def _inspect_loaded(obj: Any, path: Path) -> None:
    """Refuse loaded objects that only a crafted file holds, before any code walks or copies them.

    Containers may nest at most :data:`MAX_NESTING_DEPTH` deep (deeper ones exhaust the recursion of the code
    that walks them); tensors must be ordinary CPU tensors no larger than their storage (a zero-stride view
    of 10**10 elements over one float is tiny in the file and huge once copied).
    """
    stack: list[tuple[Any, int]] = [(obj, 0)]
    seen: set[int] = set()
    while stack:
        o, depth = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if depth > MAX_NESTING_DEPTH:
            raise CheckpointError(f"{path}: nested more than {MAX_NESTING_DEPTH} levels deep; not a checkpoint")
        if isinstance(o, torch.Tensor):
            if o.layout != torch.strided or o.device.type != "cpu":
                raise CheckpointError(f"{path}: holds a {o.layout} tensor on {o.device}; checkpoints hold CPU tensors")
            if o.numel() and o.numel() * o.element_size() > o.untyped_storage().nbytes():
                raise CheckpointError(
                    f"{path}: a tensor of shape {tuple(o.shape)} overlaps itself ({o.untyped_storage().nbytes()} "
                    "bytes of data); not a checkpoint"
                )
        elif isinstance(o, dict):
            stack.extend((v, depth + 1) for kv in o.items() for v in kv)
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in o)
        elif isinstance(o, _StandIn):
            stack.append((o.state, depth + 1))
            stack.append((o.args, depth + 1))



def load_checkpoint(path: str | Path, cfg: str | Path | dict | None = None) -> Checkpoint:
    """Read a checkpoint file without running any code stored in it.

    Args:
        path: an Ultralytics YOLOv5 ``*.pt``, a file from :func:`save_checkpoint`, or a saved state_dict.
        cfg: config for plain state_dicts (a built-in name, yaml path or dict); inferred when None.

    Returns:
        A :class:`Checkpoint`.

    Raises:
        CheckpointError: missing, corrupt or non-checkpoint file, an unrecognised or tampered layout, a checksum
            mismatch (sparseyolo files), or a file asking for more than the ``MAX_*`` limits of this module; the
            message starts with the path.
        UnsafeCheckpointError: the pickle asks for a global outside the allow-list (the message names it).

    Caveats:
        Ultralytics files keep the EMA weights under ``'ema'`` during training; like YOLOv5 these are
        preferred over ``'model'`` when present.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    source = _decompressed(path)
    restricted_only = _sniff(path, source)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    obj = _torch_load(path, source, restricted_only)
    _inspect_loaded(obj, path)
    try:
        return _from_loaded(obj, path, cfg)
    except CheckpointError:
        raise
    except _MALFORMED as e:
        raise CheckpointError(f"{path}: malformed checkpoint ({type(e).__name__}: {e})") from e


def _from_loaded(obj: Any, path: Path, cfg: str | Path | dict | None) -> Checkpoint:
    """The :class:`Checkpoint` of a loaded object, by its layout."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        return _from_sparseyolo(obj, path)
    if isinstance(obj, _StandIn) or (
        isinstance(obj, dict) and isinstance(obj.get("ema") or obj.get("model"), _StandIn)
    ):
        return _from_ultralytics(obj, path)

    sd = None
    if _is_tensor_dict(obj):
        sd = obj
    elif isinstance(obj, dict):
        for key in ("state_dict", "model", "ema"):
            if _is_tensor_dict(obj.get(key)):
                sd = obj[key]
                break
    if sd is None:
        raise CheckpointError(
            f"{path}: unrecognised checkpoint layout (a {type(obj).__name__}"
            + (f" with keys {list(obj)[:8]})" if isinstance(obj, dict) else ")")
        )
    sd = {k.removeprefix("module."): v for k, v in sd.items()}  # DataParallel prefixes
    if cfg is None:
        try:
            yaml_cfg, yaml_file, nc = infer_config(sd)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    else:
        from sparseyolo.models.yolo import load_config

        yaml_cfg, yaml_file = load_config(cfg)
        nc = yaml_cfg["nc"]
    nc = _checked_nc(nc, path)
    det = max((int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.anchors$", k))), default=None)
    extra = (
        {k: v for k, v in obj.items() if k not in ("state_dict", "model", "ema")}
        if isinstance(obj, dict) and sd is not obj
        else {}
    )
    return Checkpoint(
        state_dict=dict(sd),
        yaml=yaml_cfg,
        nc=nc,
        names=_names_list(extra.get("names"), nc),
        anchors=sd.get(f"model.{det}.anchors") if det is not None else None,
        epoch=extra.get("epoch") if isinstance(extra.get("epoch"), int) else None,
        format="state_dict",
        meta={k: v for k, v in extra.items() if not isinstance(v, torch.Tensor)},
        fused=_is_fused_state(sd),
        yaml_file=yaml_file,
        path=path,
    )
