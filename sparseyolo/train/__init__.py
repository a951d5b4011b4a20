"""Masked fine-tuning of pruned YOLOv5 detectors (``sparseyolo finetune``).

Modules: :mod:`~sparseyolo.train.loss` (YOLOv5 loss), :mod:`~sparseyolo.train.augmented_dataset` and
:mod:`~sparseyolo.train.augment` (training data), :mod:`~sparseyolo.train.ema` (weight EMA),
:mod:`~sparseyolo.train.gradual` (cubic gradual pruning), :mod:`~sparseyolo.train.distributed` (torchrun/DDP),
:mod:`~sparseyolo.train.config` (run settings), :mod:`~sparseyolo.train.checkpointing` (resume state,
finished-run strip) and :mod:`~sparseyolo.train.engine` (the loop).
"""

from sparseyolo.train.engine import TrainConfig, TrainResult, load_training_model, train
from sparseyolo.prune.config import PruneConfig
from sparseyolo.train.gradual import PruneRecipe, cubic_sparsity
from sparseyolo.train.loss import LossGains, YoloLoss

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "load_training_model",
    "PruneConfig",
    "PruneRecipe",
    "cubic_sparsity",
    "LossGains",
    "YoloLoss",
]
