"""Ultralytics YOLOv5 checkpoints to a :class:`Checkpoint`, and config inference for plain state_dicts."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import torch

from sparseyolo.checkpoint.common import Checkpoint, CheckpointError, _checked_nc, _names_list
from sparseyolo.checkpoint.safe_unpickle import _StandIn
from sparseyolo.models import CONFIG_DIR, MODEL_NAMES

LOGGER = logging.getLogger(__name__)

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
