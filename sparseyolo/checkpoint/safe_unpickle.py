"""Restricted unpickling of Ultralytics files: allow-listed globals only, YOLOv5 classes as inert stand-ins.

Nothing in the pickle runs: tensor-rebuilding globals come from torch's weights-only allow-list, YOLOv5 and
``torch.nn`` classes become :class:`_StandIn` records, and the two plain-data globals that could allocate without
bound (``bytearray``, ``range``) are size-checked against the limits in :mod:`sparseyolo.checkpoint.common`.
"""

from __future__ import annotations

import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from sparseyolo.checkpoint.common import (
    MAX_PICKLE_BUFFER_BYTES,
    MAX_PICKLE_ITEMS,
    CheckpointError,
    UnsafeCheckpointError,
)



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

