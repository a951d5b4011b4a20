"""Detectors from checkpoint files: the size check of a stored config, state_dict fitting, :func:`load_model`."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from sparseyolo.checkpoint.common import (
    MAX_CONFIG_REPEATS,
    MAX_MODEL_PARAMETERS,
    _MALFORMED,
    CheckpointError,
    _checked_nc,
)
from sparseyolo.checkpoint.download import attempt_download
from sparseyolo.checkpoint.load import load_checkpoint
from sparseyolo.checkpoint.ultralytics import infer_config
from sparseyolo.models import DetectionModel

LOGGER = logging.getLogger(__name__)



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
