"""Calibration images and BatchNorm re-estimation for calibrated pruning (:mod:`sparseyolo.prune.calibrated`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from sparseyolo.utils.errors import ParameterError

LOGGER = logging.getLogger(__name__)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (float image tensors).

    Running statistics are reset and accumulated as a plain cumulative average (``momentum=None``) over
    train-mode forward passes without gradients; every other module stays in eval mode, and each BN's
    momentum and the model's train/eval state are restored afterwards.

    Returns:
        The number of BatchNorm layers re-estimated (0 for a BN-fused model).

    Caveats:
        The averaged per-batch variances are unbiased per batch (what ``nn.BatchNorm`` stores), so a handful of
        tiny batches gives slightly noisier variances than one large pass.
    """
    bns = [mod for mod in model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
           and mod.track_running_stats]
    if not bns:
        return 0
    modes = {mod: mod.training for mod in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for x in batches:
            model(x)
    finally:
        for bn, mom in momenta.items():
            bn.momentum = mom
        for mod, mode in modes.items():
            mod.training = mode
    return len(bns)


# --------------------------------------------------------------------------------------------------------------
# Calibration images
# --------------------------------------------------------------------------------------------------------------


def as_float_images(batch: torch.Tensor, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A calibration batch as the model takes it: uint8 0-255 scaled to [0, 1]; float batches only moved/cast."""
    x = batch.to(device)
    return x.to(dtype) / 255.0 if not x.is_floating_point() else x.to(dtype)


def calibration_batches(
    data: str | Path | dict,
    n_images: int = 128,
    img_size: int = 640,
    batch_size: int = 8,
    stride: int = 32,
    split: str = "train",
    workers: int = 2,
) -> list[torch.Tensor]:
    """Load calibration images from a data yaml, letterboxed as for validation (rect batches, pad 0.5).

    Args:
        data: Ultralytics data yaml (or its dict); images come from ``split`` (``train`` falls back to ``val``).
        n_images: how many images, the first in sorted file order (all of them when there are fewer).
        img_size, batch_size, stride: letterbox size, images per batch, model stride.

    Returns:
        A list of uint8 Tensor[B, 3, H, W] batches.

    Raises:
        ParameterError: ``n_images < 1``; FileNotFoundError: the split has no images.
    """
    from sparseyolo.data.dataset import ValDataset, list_image_files, load_data_config

    if n_images < 1:
        raise ParameterError(f"n_images must be at least 1, got {n_images}", "n_images")
    cfg = load_data_config(data)
    source = cfg.get(split) or cfg.get("val")
    files = list_image_files(source)
    if len(files) < n_images:
        LOGGER.warning("calibration: %d images asked for, %s has only %d; using all of them", n_images, source,
                       len(files))
    files = files[:n_images]
    dataset = ValDataset(files, img_size, batch_size, stride, pad=0.5, rect=True, prefix="calibration: ")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=min(workers, batch_size), collate_fn=ValDataset.collate_fn)
    return [im for im, *_ in loader]
