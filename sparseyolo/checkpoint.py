"""Reading and writing detector checkpoints.

Three kinds of files are understood:

* **Ultralytics YOLOv5** ``*.pt``: a torch zip archive pickling ``{'model': models.yolo.Model, 'ema': ...,
  'epoch': ..., ...}``. It is read *without* Ultralytics and without running pickled code: a restricted
  unpickler allows only tensor-rebuilding globals and a fixed list of YOLOv5 / ``torch.nn`` class names,
  and turns those classes into inert :class:`_StandIn` records whose state is then walked to rebuild a
  flat ``state_dict``. Anything else in the pickle (``os.system``, ``builtins.eval``, an unknown class)
  raises :class:`UnsafeCheckpointError`.
* **sparseyolo** files written by :func:`save_checkpoint`, read with ``torch.load(weights_only=True)``.
* **plain state_dicts** (a dict of tensors, or one under ``'state_dict'`` or ``'model'``); the config is
  inferred by matching tensor shapes against the built-in configs.

Any of them may be compressed whole with xz or gzip (``model.pt.xz``, as the packaged demo model is); such a
file is decompressed in memory before it is read.
"""

from __future__ import annotations

import copy
import gzip
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
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparseyolo.models import CONFIG_DIR, MODEL_NAMES, DetectionModel

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "load_model",
    "attempt_download",
    "infer_config",
    "RELEASE_ASSETS",
    "RELEASE_URL",
]

LOGGER = logging.getLogger(__name__)

FORMAT_NAME = "sparseyolo"
FORMAT_VERSION = 2  # 2: pruned weights may be stored compressed under "sparse_weights"

#: Official YOLOv5 release assets that :func:`attempt_download` may fetch.
RELEASE_ASSETS: frozenset[str] = frozenset(f"{n}{s}.pt" for n in MODEL_NAMES for s in ("", "6"))
RELEASE_URL = "https://github.com/ultralytics/yolov5/releases/download/v7.0/{name}"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (missing, corrupt, not a checkpoint, or not fitting the model)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for a global outside the allow-list; the file is refused and nothing of it ran."""


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
# Plain-data globals that are safe to return as themselves (no code execution through them).
_PLAIN_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.bytearray": bytearray,
    "builtins.range": range,
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
        if qualname in _RestrictedUnpickler._tensor_allowed:
            return _RestrictedUnpickler._tensor_allowed[qualname]
        if qualname in _PLAIN_GLOBALS:
            return _PLAIN_GLOBALS[qualname]
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
        nc=int(nc),
        names=_names_list(st.get("names"), int(nc)),
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


def _decompressed(path: Path) -> Path | io.BytesIO:
    """The file itself, or its content in memory when it is xz- or gzip-compressed (e.g. ``model.pt.xz``)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    try:
        if head.startswith(_XZ_MAGIC):
            return io.BytesIO(lzma.decompress(path.read_bytes()))
        if head.startswith(_GZIP_MAGIC):
            return io.BytesIO(gzip.decompress(path.read_bytes()))
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated compressed checkpoint ({e})") from e
    return path


def _sniff(path: Path, source: Path | io.BytesIO | None = None) -> None:
    """Raise CheckpointError unless the file (or its decompressed ``source``) starts like a torch zip or a pickle."""
    source = path if source is None else source
    if isinstance(source, io.BytesIO):
        head = source.getvalue()[:8]
    else:
        with open(source, "rb") as fh:
            head = fh.read(8)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(source) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: not a readable checkpoint: corrupt or truncated zip archive ({e})") from e
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(
                f"{path}: a zip archive without a pickled object (data.pkl); not a PyTorch checkpoint"
            )
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise CheckpointError(
                f"{path}: a TorchScript archive, not a checkpoint; load it with torch.jit.load if you trust it"
            )
        return
    if head[:1] == b"\x80":  # pickle protocol >= 2: torch's legacy (pre-1.6) format
        return
    what = next((d for m, d in _MAGIC_HINTS if head.startswith(m)), None)
    if what is None:
        what = (
            "a text file"
            if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head)
            else f"unknown data starting {head!r}"
        )
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (it looks like {what})")


def _torch_load(path: Path, source: Path | io.BytesIO | None = None) -> Any:
    """Load with weights_only=True, or else with the restricted unpickler (Ultralytics model objects)."""
    source = path if source is None else source
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
    except CheckpointError:
        raise
    except Exception as e:  # truncated streams, bad records, bad pickles
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e


def load_checkpoint(path: str | Path, cfg: str | Path | dict | None = None) -> Checkpoint:
    """Read a checkpoint file without running any code stored in it.

    Args:
        path: an Ultralytics YOLOv5 ``*.pt``, a file from :func:`save_checkpoint`, or a saved state_dict.
        cfg: config for plain state_dicts (a built-in name, yaml path or dict); inferred when None.

    Returns:
        A :class:`Checkpoint`.

    Raises:
        CheckpointError: missing, corrupt or non-checkpoint file, or an unrecognised layout.
        UnsafeCheckpointError: the pickle asks for a global outside the allow-list (the message names it).

    Caveats:
        Ultralytics files keep the EMA weights under ``'ema'`` during training; like YOLOv5 these are
        preferred over ``'model'`` when present.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    source = _decompressed(path)
    _sniff(path, source)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    obj = _torch_load(path, source)

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
        yaml_cfg, yaml_file, nc = infer_config(sd)
    else:
        from sparseyolo.models.yolo import load_config

        yaml_cfg, yaml_file = load_config(cfg)
        nc = int(yaml_cfg["nc"])
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
    stride = obj.get("stride")
    state_dict, patterns = dict(obj["state_dict"]), {}
    if obj.get("sparse_weights"):
        from sparseyolo.prune.storage import decompress_state_dict

        try:
            state_dict, patterns = decompress_state_dict(state_dict, obj["sparse_weights"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupt compressed weights ({e})") from e
    return Checkpoint(
        state_dict=state_dict,
        yaml=obj.get("yaml") or {},
        nc=int(obj["nc"]),
        names=_names_list(obj.get("names"), int(obj["nc"])),
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
    'fused', 'state_dict', 'meta'}``. The state_dict is saved as the model holds it (dtype and all extra
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
    """
    _check_plain(meta, "meta")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    LOGGER.info("saved %s (%d tensors)", path, len(obj["state_dict"]))
    return path


# --------------------------------------------------------------------------------------------------------
# Models from files
# --------------------------------------------------------------------------------------------------------


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
    path = Path(str(weights).strip().replace("'", ""))
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
