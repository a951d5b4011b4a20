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
config's multipliers): the limits below bound each of them, and a file beyond one is refused with a
:class:`CheckpointError` that names the limit. docs/reliability.md lists what is refused and why.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import lzma
import os
import pickle
import re
import tempfile
import types
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparseyolo.models import CONFIG_DIR, MODEL_NAMES, DetectionModel

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

LOGGER = logging.getLogger(__name__)

FORMAT_NAME = "sparseyolo"
FORMAT_VERSION = 2  # 2: pruned weights may be stored compressed under "sparse_weights"

#: Official YOLOv5 release assets that :func:`attempt_download` may fetch.
RELEASE_ASSETS: frozenset[str] = frozenset(f"{n}{s}.pt" for n in MODEL_NAMES for s in ("", "6"))
RELEASE_URL = "https://github.com/ultralytics/yolov5/releases/download/v7.0/{name}"

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


# --------------------------------------------------------------------------------------------------------
# Restricted unpickling of Ultralytics files
# --------------------------------------------------------------------------------------------------------


class _StandIn:
    """Inert record of a pickled object of an allow-listed class; it runs no code of that class.

    ``__slots__`` keeps it free of an instance ``__dict__`` so that nothing in the pickle can shadow its
    methods. ``state`` is what the pickle's BUILD gave (a module's ``__dict__``), ``args`` what it was
    constructed with.
    """

    __slots__ = ("state", "args")
    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        obj = object.__new__(cls)
        obj.state = {}
        obj.args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # called when a pickle REDUCEs the class
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        self.state = state if isinstance(state, dict) else {"_state": state}

    def __repr__(self) -> str:
        return f"<stand-in {self.qualname}>"


# Class names of YOLOv5 checkpoints (models.yolo / models.common across v5-v7); they become stand-ins.
_YOLO_CLASSES: dict[str, tuple[str, ...]] = {
    "models.yolo": (
        "Model",
        "DetectionModel",
        "SegmentationModel",
        "ClassificationModel",
        "BaseModel",
        "Detect",
        "Segment",
    ),
    "models.common": (
        "Conv",
        "DWConv",
        "DWConvTranspose2d",
        "Bottleneck",
        "BottleneckCSP",
        "C3",
        "C3x",
        "C3TR",
        "C3SPP",
        "C3Ghost",
        "GhostConv",
        "GhostBottleneck",
        "SPP",
        "SPPF",
        "Focus",
        "Concat",
        "Contract",
        "Expand",
        "TransformerLayer",
        "TransformerBlock",
        "CrossConv",
        "Proto",
        "Classify",
        "AutoShape",
    ),
    "models.experimental": ("CrossConv", "Sum", "MixConv2d", "Ensemble"),
}
# torch.nn modules that can appear inside; also stand-ins (their real classes are never instantiated).
_TORCH_NN_MODULES = (
    "torch.nn.modules.container",
    "torch.nn.modules.conv",
    "torch.nn.modules.batchnorm",
    "torch.nn.modules.activation",
    "torch.nn.modules.pooling",
    "torch.nn.modules.upsampling",
    "torch.nn.modules.linear",
    "torch.nn.modules.dropout",
    "torch.nn.modules.flatten",
    "torch.nn.modules.padding",
    "torch.nn.modules.normalization",
    "torch.nn.modules.module",
)


def _bounded_bytearray(*args: Any) -> bytearray:
    """``bytearray`` for pickles, refusing a size beyond :data:`MAX_PICKLE_BUFFER_BYTES` before allocating."""
    source = args[0] if args else b""
    size = source if isinstance(source, int) else len(source) if hasattr(source, "__len__") else None
    if size is None or size > MAX_PICKLE_BUFFER_BYTES:
        raise CheckpointError(
            f"the pickle asks for a bytearray of {size if size is not None else 'unknown size'} bytes "
            f"(limit {MAX_PICKLE_BUFFER_BYTES}); a checkpoint never needs one"
        )
    return bytearray(*args)


def _bounded_range(*args: Any) -> range:
    """``range`` for pickles, refusing more than :data:`MAX_PICKLE_ITEMS` items (sets are built from ranges)."""
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:
        n = MAX_PICKLE_ITEMS + 1
    if n > MAX_PICKLE_ITEMS:
        raise CheckpointError(f"the pickle asks for a range of {r.start}..{r.stop} (limit {MAX_PICKLE_ITEMS} items)")
    return r


# Plain-data globals that are safe to return as themselves (no code execution through them); the two that
# could allocate without bound from a few pickle bytes are size-checked.
_PLAIN_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.bytearray": _bounded_bytearray,
    "builtins.range": _bounded_range,
    "pathlib.Path": Path,
    "pathlib.PosixPath": Path,
    "pathlib.WindowsPath": Path,
    "pathlib.PurePosixPath": Path,
    "pathlib.PureWindowsPath": Path,
}
# Old YOLOv5 files may store e.g. best_fitness as numpy scalars; these constructors only build arrays.
_NUMPY_GLOBALS = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _tensor_globals() -> dict[str, Any]:
    """Globals needed to rebuild tensors: torch's own weights-only allow-list, or the essentials of it."""
    try:
        from torch import _weights_only_unpickler

        allowed = dict(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # private API moved: fall back to the essentials
        allowed = {f"torch._utils.{n}": getattr(torch._utils, n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter")}
        allowed.update(
            {"torch.Size": torch.Size, "torch.device": torch.device, "torch.nn.parameter.Parameter": torch.nn.Parameter}
        )
        for t in (
            torch.float16,
            torch.float32,
            torch.float64,
            torch.bfloat16,
            torch.int64,
            torch.int32,
            torch.uint8,
            torch.bool,
        ):
            allowed[str(t)] = t
    return allowed


_STANDIN_CACHE: dict[str, type[_StandIn]] = {}


def _stand_in_class(qualname: str) -> type[_StandIn]:
    if qualname not in _STANDIN_CACHE:
        _STANDIN_CACHE[qualname] = type(
            qualname.rsplit(".", 1)[-1], (_StandIn,), {"__slots__": (), "qualname": qualname}
        )
    return _STANDIN_CACHE[qualname]


def _is_stand_in_name(module: str, name: str) -> bool:
    if name in _YOLO_CLASSES.get(module, ()):
        return True
    if module in _TORCH_NN_MODULES:
        obj = getattr(getattr(torch.nn.modules, module.rsplit(".", 1)[-1], None), name, None)
        return isinstance(obj, type) and issubclass(obj, torch.nn.Module)
    return False


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only hands out allow-listed, side-effect-free globals."""

    _tensor_allowed: dict[str, Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        module = {"torch.tensor": "torch._tensor"}.get(module, module)
        qualname = f"{module}.{name}"
        if _RestrictedUnpickler._tensor_allowed is None:
            _RestrictedUnpickler._tensor_allowed = _tensor_globals()
        if qualname in _PLAIN_GLOBALS:  # first: its bounded constructors replace torch's unbounded ones
            return _PLAIN_GLOBALS[qualname]
        if qualname in _RestrictedUnpickler._tensor_allowed:
            return _RestrictedUnpickler._tensor_allowed[qualname]
        if _is_stand_in_name(module, name):
            return _stand_in_class(qualname)
        if qualname in _NUMPY_GLOBALS:
            import numpy  # noqa: F401  (only constructors of arrays/scalars)

            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to load this file: its pickle asks for the global '{qualname}', which is not on the "
            "allow-list of tensor and YOLOv5 model classes (a checkpoint never needs it; it may be malicious)"
        )


def _restricted_pickle_module() -> types.ModuleType:
    """A stand-in for the ``pickle`` module to pass to ``torch.load(pickle_module=...)``."""
    mod = types.ModuleType("sparseyolo_restricted_pickle")
    mod.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    mod.__version__ = "1"  # type: ignore[attr-defined]

    def load(file: Any, **kwargs: Any) -> Any:  # used by torch for legacy (non-zip) files
        return _RestrictedUnpickler(file, **kwargs).load()

    mod.load = load  # type: ignore[attr-defined]
    return mod


def _flatten_module(
    obj: _StandIn, prefix: str = "", out: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Rebuild ``state_dict()`` of a stand-in module tree: parameters, persistent buffers, submodules."""
    out = {} if out is None else out
    st = obj.state
    for name, p in (st.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    non_persistent = st.get("_non_persistent_buffers_set") or set()
    for name, b in (st.get("_buffers") or {}).items():
        if b is not None and name not in non_persistent:
            out[prefix + name] = b.detach()
    for name, child in (st.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _StandIn):
            raise CheckpointError(f"unexpected {type(child).__name__} object among the submodules at '{prefix + name}'")
        _flatten_module(child, f"{prefix}{name}.", out)
    return out


def _module_state(obj: _StandIn, dotted: str) -> _StandIn | None:
    """The stand-in at a dotted submodule path (e.g. 'model.24'), or None."""
    for part in dotted.split("."):
        mods = obj.state.get("_modules") or {}
        if part not in mods:
            return None
        obj = mods[part]
    return obj


def _names_list(names: Any, nc: int) -> list[str]:
    if isinstance(names, dict):  # later Ultralytics versions store {index: name}
        names = [names[k] for k in sorted(names)]
    if not names:
        return [str(i) for i in range(nc)]
    return [str(n) for n in names]


def _from_ultralytics(ckpt: dict | _StandIn, path: Path) -> Checkpoint:
    if isinstance(ckpt, _StandIn):  # torch.save(model) instead of a checkpoint dict
        ckpt = {"model": ckpt}
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, _StandIn):
        raise CheckpointError(f"{path}: the 'model' entry is a {type(model).__name__}, not a YOLOv5 model")
    st = model.state
    sd = _flatten_module(model)
    # YOLOv5 < 6.0 kept Detect.anchor_grid as a buffer; it is derived from anchors and stride, drop it.
    for k in [k for k in sd if k.endswith(".anchor_grid")]:
        LOGGER.debug("dropping derived buffer %s", k)
        del sd[k]

    yaml_cfg = st.get("yaml") if isinstance(st.get("yaml"), dict) else {}
    detect = None
    layers = _module_state(model, "model")
    if layers is not None and layers.state.get("_modules"):
        detect = list(layers.state["_modules"].values())[-1]
    nc = st.get("nc") or yaml_cfg.get("nc") or (detect.state.get("nc") if detect is not None else None)
    if nc is None:
        raise CheckpointError(f"{path}: cannot tell the number of classes of this model")
    nc = _checked_nc(nc, path)
    stride = st.get("stride")
    anchors = None
    if detect is not None:
        anchors = (detect.state.get("_buffers") or {}).get("anchors")
        if stride is None:
            stride = detect.state.get("stride")
    epoch = ckpt.get("epoch")
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer") and not isinstance(v, _StandIn)}
    return Checkpoint(
        state_dict=sd,
        yaml=copy.deepcopy(yaml_cfg),
        nc=nc,
        names=_names_list(st.get("names"), nc),
        stride=stride.detach().float().clone() if isinstance(stride, torch.Tensor) else None,
        anchors=anchors.detach().clone() if isinstance(anchors, torch.Tensor) else None,
        epoch=int(epoch) if isinstance(epoch, int) else None,
        format="ultralytics",
        meta=meta,
        fused=_is_fused_state(sd),
        yaml_file=str(st.get("yaml_file") or ""),
        path=path,
    )


# --------------------------------------------------------------------------------------------------------
# Plain state_dicts
# --------------------------------------------------------------------------------------------------------


def _is_fused_state(sd: dict[str, torch.Tensor]) -> bool:
    """True when the convs carry biases and there are no BatchNorm entries (a BN-fused model)."""
    return "model.0.conv.bias" in sd and "model.0.bn.weight" not in sd


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def infer_config(state_dict: dict[str, torch.Tensor]) -> tuple[dict, str, int]:
    """Match a YOLOv5 state_dict against the built-in configs.

    Width comes from ``model.0.conv.weight`` (out-channels = ``make_divisible(64 * width, 8)``), depth from
    the number of Bottlenecks in ``model.2.m``, and ``nc`` from the Detect conv of the last layer
    (``out_channels / na - 5``).

    Args:
        state_dict: flat state_dict of a v6.0+ YOLOv5 detector.

    Returns:
        ``(config dict, config file name, nc)``.

    Raises:
        CheckpointError: the tensors fit none of the built-in configs.
    """
    import yaml

    from sparseyolo.models.yolo import make_divisible

    if "model.0.conv.weight" not in state_dict:
        raise CheckpointError(
            "cannot infer the model config: no 'model.0.conv.weight' (not a v6.0+ YOLOv5 state_dict?)"
        )
    width = state_dict["model.0.conv.weight"].shape[0]
    depth = len({m.group(1) for k in state_dict if (m := re.match(r"model\.2\.m\.(\d+)\.", k))})
    det_idx = max(int(m.group(1)) for k in state_dict if (m := re.match(r"model\.(\d+)\.", k)))
    w_key = f"model.{det_idx}.m.0.weight"
    if w_key not in state_dict:
        raise CheckpointError(f"cannot infer the model config: no Detect conv '{w_key}'")
    anchors = state_dict.get(f"model.{det_idx}.anchors")
    na = anchors.shape[1] if anchors is not None else 3
    nc = state_dict[w_key].shape[0] // na - 5
    for name in MODEL_NAMES:
        with open(CONFIG_DIR / f"{name}.yaml", encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
        gd, gw = cfg["depth_multiple"], cfg["width_multiple"]
        n_c3 = cfg["backbone"][2][1]
        if make_divisible(64 * gw, 8) == width and max(round(n_c3 * gd), 1) == depth:
            cfg["nc"] = nc
            LOGGER.info("state_dict matches %s (nc=%d)", name, nc)
            return cfg, f"{name}.yaml", nc
    raise CheckpointError(
        f"cannot infer the model config: stem width {width} and {depth} bottleneck(s) in layer 2 match none of "
        f"{', '.join(MODEL_NAMES)}; pass cfg= explicitly"
    )


# --------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------

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


def _checked_nc(nc: Any, path: Path) -> int:
    """``nc`` as an int in ``[1, MAX_CLASSES]``, else CheckpointError."""
    if isinstance(nc, bool) or not isinstance(nc, (int, float)) or int(nc) != nc or not 1 <= nc <= MAX_CLASSES:
        raise CheckpointError(f"{path}: number of classes nc={nc!r} is not an int in [1, {MAX_CLASSES}]")
    return int(nc)


#: Exceptions that code reading a well-formed checkpoint never raises: on a tampered file they are turned
#: into a CheckpointError naming the file.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError, OverflowError)


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


# --------------------------------------------------------------------------------------------------------
# Models from files
# --------------------------------------------------------------------------------------------------------


def check_model_size(yaml_cfg: dict, nc: int, where: Any = "config") -> int:
    """Count the parameters ``yaml_cfg`` would build, without allocating them; refuse oversized configs.

    Each row's repeats after depth scaling are checked first (a depth x300 config would take minutes just to
    create its modules), then the layers are built on the ``meta`` device, which allocates no memory.

    Args:
        yaml_cfg: a model config dict (``depth_multiple``, ``width_multiple``, ``backbone``, ``head``...).
        nc: number of classes.
        where: what to name in the error (the checkpoint path).

    Returns:
        The number of parameters.

    Raises:
        CheckpointError: more than :data:`MAX_CONFIG_REPEATS` repeats in a row, more than
            :data:`MAX_MODEL_PARAMETERS` parameters, or a config that cannot be built.
    """
    from sparseyolo.models.yolo import parse_model

    try:
        gd = float(yaml_cfg["depth_multiple"])
        for i, row in enumerate(list(yaml_cfg["backbone"]) + list(yaml_cfg["head"])):
            n = row[1]
            reps = max(round(n * gd), 1) if n > 1 else n
            if not isinstance(reps, int) or not 1 <= reps <= MAX_CONFIG_REPEATS:
                raise CheckpointError(
                    f"{where}: config row {i} repeats its module {reps!r} times (depth_multiple {gd}); "
                    f"at most {MAX_CONFIG_REPEATS} are accepted"
                )
        cfg = copy.deepcopy(yaml_cfg)
        cfg["nc"] = _checked_nc(nc, where)
        with torch.device("meta"):
            layers, _ = parse_model(cfg, [int(cfg.get("ch", 3))])
    except CheckpointError:
        raise
    except (*_MALFORMED, RuntimeError) as e:
        raise CheckpointError(f"{where}: cannot build the model from its config: {type(e).__name__}: {e}") from e
    count = sum(p.numel() for p in layers.parameters())
    if count > MAX_MODEL_PARAMETERS:
        raise CheckpointError(
            f"{where}: its config builds {count / 1e6:.0f}M parameters (width_multiple "
            f"{yaml_cfg.get('width_multiple')}, depth_multiple {gd}); at most {MAX_MODEL_PARAMETERS / 1e6:.0f}M are "
            "accepted (YOLOv5x6 has 141M)"
        )
    return count


def _load_state(model: torch.nn.Module, sd: dict[str, torch.Tensor], strict: bool, source: Path | None) -> None:
    """``load_state_dict`` with an error that lists missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]

    def _fmt(keys: list[str]) -> str:
        return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10})" if len(keys) > 10 else "")

    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} with different shapes: {_fmt(mismatched)}")
    if strict and missing:
        problems.append(f"{len(missing)} missing: {_fmt(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_fmt(unexpected)}")
    if problems:
        raise CheckpointError(f"{source or 'state_dict'} does not fit the model: " + "; ".join(problems))
    if unexpected:
        LOGGER.warning("ignoring %d unexpected key(s): %s", len(unexpected), _fmt(unexpected))
    if missing:
        LOGGER.warning("%d key(s) not in the file keep their initial values: %s", len(missing), _fmt(missing))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def load_model(
    weights: str | Path,
    device: str | torch.device = "cpu",
    fuse: bool = True,
    dtype: torch.dtype = torch.float32,
    cfg: str | Path | dict | None = None,
    nc: int | None = None,
    strict: bool = True,
) -> DetectionModel:
    """Build a detector from a checkpoint, ready for inference.

    Mirrors YOLOv5's loading (fp32 ``float()``, then BN fusion, then ``eval()``), so outputs match its fused
    models.

    Args:
        weights: checkpoint path, or an official asset name such as ``"yolov5s.pt"`` (downloaded if absent).
        device: target device.
        fuse: fold BatchNorms into the convolutions.
        dtype: target floating dtype.
        cfg: config override (built-in name, yaml path or dict); default: the one stored or inferred.
        nc: expected number of classes; must agree with the checkpoint.
        strict: require the state_dict keys to match exactly; False ignores extra keys (e.g. masks) and
            keeps initial values for missing ones.

    Returns:
        The ``DetectionModel`` in eval mode, with ``names``, ``stride``, ``yaml_file``, ``checkpoint_format``
        and ``meta`` set from the file. A pruned checkpoint comes back with its ``weight_mask`` buffers
        registered (and kept through fusion) and its weights bit-exact.

    Raises:
        CheckpointError: the file is unusable or its tensors do not fit the config.
    """
    path = attempt_download(weights)
    ck = load_checkpoint(path, cfg=cfg)
    if nc is not None and nc != ck.nc:
        raise CheckpointError(f"{path}: checkpoint has nc={ck.nc}, but nc={nc} was requested")
    yaml_cfg = ck.yaml if cfg is None else cfg
    if not yaml_cfg:
        yaml_cfg, _, _ = infer_config(ck.state_dict)
    if isinstance(yaml_cfg, dict):  # a built-in name or a user's yaml path is the user's own choice
        check_model_size(yaml_cfg, ck.nc, path)
    try:
        model = DetectionModel(yaml_cfg, nc=ck.nc)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot build the model from its config: {e}") from e
    if ck.fused:
        model.fuse()
    if any(k.endswith(".weight_mask") for k in ck.state_dict):
        from sparseyolo.prune.masks import register_masks_for_state_dict

        try:  # buffers for the pruning masks, so that the state_dict fits
            register_masks_for_state_dict(model, ck.state_dict, ck.mask_patterns)
        except KeyError as e:
            raise CheckpointError(f"{path}: {e.args[0]}") from None
    _load_state(model, ck.state_dict, strict, path)
    model.names = list(ck.names)
    model.yaml_file = ck.yaml_file or model.yaml_file
    if ck.stride is not None and not torch.equal(ck.stride.float(), model.stride.float()):
        raise CheckpointError(
            f"{path}: stored strides {ck.stride.tolist()} differ from the built model's {model.stride.tolist()}"
        )
    model.checkpoint_format = ck.format
    model.meta = ck.meta
    model.float()
    # An inference model: no autograd state (training code re-enables what it trains), so the summary
    # reads "0 gradients" as YOLOv5's does for a released checkpoint.
    model.requires_grad_(False)
    if fuse and not model.is_fused():
        model.fuse()
    model.eval()
    return model.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------------------


def attempt_download(weights: str | Path, dir: str | Path | None = None, timeout: float = 30.0) -> Path:
    """Return a local checkpoint path, downloading official YOLOv5 release assets when missing.

    Args:
        weights: a path; when it does not exist and its name is an official asset (``yolov5{n,s,m,l,x}{,6}.pt``)
            it is fetched from the YOLOv5 v7.0 GitHub release.
        dir: download folder (default: the folder of ``weights``, i.e. the current directory for bare names).
        timeout: network timeout in seconds.

    Returns:
        The path of the existing or downloaded file.

    Raises:
        CheckpointError: the file does not exist and is not an official asset, or the download failed.
    """
    path = Path(weights)  # as given: quotes and spaces are legal in file names
    if path.is_file():
        return path
    if path.name not in RELEASE_ASSETS:
        raise CheckpointError(f"{path}: no such checkpoint file (and not an official YOLOv5 release asset to download)")
    dest = Path(dir) / path.name if dir is not None else path
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = RELEASE_URL.format(name=path.name)
    LOGGER.info("downloading %s to %s", url, dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) if getattr(resp, "headers", None) else 0
            done, next_log = 0, 0.0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total and done / total >= next_log:
                    LOGGER.info("%s: %5.1f%% of %.1f MB", path.name, 100 * done / total, total / 1e6)
                    next_log += 0.25
        if total and done != total:
            raise CheckpointError(f"download of {url} incomplete ({done} of {total} bytes)")
        if done < 1_000_000:  # every official asset is several MB; an HTML error page is not
            raise CheckpointError(f"download of {url} gave only {done} bytes; not a checkpoint")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise CheckpointError(
            f"could not download {url} ({e}); this machine looks offline. Download it elsewhere and pass its local path"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    LOGGER.info("downloaded %s (%.1f MB)", dest, dest.stat().st_size / 1e6)
    return dest
