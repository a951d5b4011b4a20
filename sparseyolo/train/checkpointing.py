"""Checkpoint state of a fine-tuning run: building the model a file holds, random states, the finished-run strip.

:func:`~sparseyolo.train.engine.train` writes ``last.pt``/``best.pt`` with :func:`sparseyolo.checkpoint.save_checkpoint`
and resumes from ``last.pt``; the helpers here hold what that needs beyond the checkpoint module: the training model
rebuilt exactly from a stored state (masks included), every random state the next epoch draws from, and the
removal of the training state from a finished run's files (as Ultralytics' ``strip_optimizer`` does).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseyolo.checkpoint import CheckpointError, check_model_size, load_model, rewrite_checkpoint_meta
from sparseyolo.models import DetectionModel

__all__ = ["load_training_model"]

LOGGER = logging.getLogger(__name__)


def _model_from_state(
    yaml_cfg: dict, nc: int, sd: dict[str, torch.Tensor], fused: bool, patterns: dict[str, str], source: Any
) -> DetectionModel:
    """A detector holding ``sd`` exactly, masks (and their N:M / unstructured patterns) included."""
    from sparseyolo.prune.masks import register_masks_for_state_dict

    check_model_size(yaml_cfg, nc, source)  # a file's config must not allocate GBs before any shape check
    model = DetectionModel(yaml_cfg, nc=nc)
    if fused:
        model.fuse()
    register_masks_for_state_dict(model, sd, patterns)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: its tensors do not fit the model: {e}") from e
    return model


def load_training_model(weights: str | Path, device: str | torch.device = "cpu") -> DetectionModel:
    """Build a trainable (unfused, float32, gradients on, train mode) detector from a checkpoint, with its masks.

    Args:
        weights: any checkpoint :func:`~sparseyolo.checkpoint.load_model` reads, or an official asset name.
        device: where to put it.

    Returns:
        A ``DetectionModel``; layers pruned in the file carry their ``weight_mask`` buffers.

    Caveats:
        A BN-fused checkpoint cannot be un-fused: it is trained as it is (convolutions with biases, no
        BatchNorm), with a warning.
    """
    model = load_model(weights, device=device, fuse=False)
    if model.is_fused():
        LOGGER.warning("%s holds BN-fused weights: training without BatchNorm layers (no way to un-fuse them)", weights)
    return model.requires_grad_(True).train()


def _latest_last(project: str | Path) -> Path:
    runs = sorted(Path(project).glob("**/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"--resume: no weights/last.pt under {project}; pass the checkpoint path")
    return runs[-1]



def _rng_state(sampler: Any) -> dict[str, Any]:
    """Every random state the next epoch draws from, as plain data for the checkpoint."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampler": None,
    }
    if isinstance(getattr(sampler, "generator", None), torch.Generator):
        state["sampler"] = sampler.generator.get_state()
    return state


def _set_rng_state(state: dict[str, Any], sampler: Any) -> None:
    """Inverse of :func:`_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state["sampler"] is not None and isinstance(getattr(sampler, "generator", None), torch.Generator):
        sampler.generator.set_state(state["sampler"])



#: meta entries only a run in progress needs; a finished checkpoint drops them.
_TRAINING_STATE_KEYS = (
    "optimizer",
    "model_state",
    "mask_patterns",
    "ema_updates",
    "pruner",
    "last_opt_step",
    "scaler",
    "rng",
)


def _strip_training_state(path: Path) -> None:
    """Drop optimizer, training-model state, counters and random states from a finished run's checkpoint."""
    rewrite_checkpoint_meta(path, drop=_TRAINING_STATE_KEYS, finished=True)
    LOGGER.info("Optimizer stripped from %s, %.1fMB", path, path.stat().st_size / 1e6)
