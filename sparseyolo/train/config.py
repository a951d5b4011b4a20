"""The settings of a fine-tuning run (:class:`TrainConfig`) and what it produced (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from sparseyolo.prune.config import PruneConfig
from sparseyolo.train.augment import AugmentConfig
from sparseyolo.train.loss import LossGains
from sparseyolo.utils.errors import ParameterError

__all__ = ["OPTIMIZERS", "TrainConfig", "TrainResult"]

OPTIMIZERS = ("SGD", "Adam", "AdamW")


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs; defaults are YOLOv5's ``train.py`` + ``hyp.scratch-low.yaml``.

    Attributes:
        weights: checkpoint to start from (Ultralytics, sparseyolo or state_dict; pruned sparseyolo files keep
            their masks).
        data: data yaml with a ``train`` split (``val`` is used for per-epoch validation).
        epochs, imgsz, batch_size: epochs, square training size, total batch over all ranks.
        nbs: nominal batch size; gradients are accumulated over ``round(nbs / batch_size)`` batches and weight
            decay is scaled by ``batch_size * accumulate / nbs``.
        lr0, lrf: initial LR and final LR fraction. cos_lr: cosine instead of linear decay.
        momentum, weight_decay: SGD settings (nesterov); Adam's first beta is ``momentum``.
        optimizer: one of :data:`OPTIMIZERS` (YOLOv5's ``--optimizer``).
        warmup_epochs, warmup_momentum, warmup_bias_lr: warm-up length (at least 100 batches when > 0, as in
            YOLOv5), starting momentum, and the bias group's starting LR (ramped down to its scheduled LR).
        loss: loss gains before scaling to the model (:func:`~sparseyolo.train.loss.scaled_loss_gains`).
        aug: augmentation strengths; ``mosaic=False`` disables mosaic whatever ``aug.mosaic`` says.
        prune: what to prune (None: keep the checkpoint's masks, or train dense when it has none).
        device, workers: ``select_device`` string and max loader workers per rank.
        project, name, exist_ok: run folder ``project/name`` (incremented unless ``exist_ok``).
        seed: RNG seed (rank added, so ranks augment differently).
        noval: validate only after the last epoch.
        amp: mixed precision on CUDA (ignored on CPU).
        ema_decay, ema_tau: EMA settings.
        max_batches: stop each epoch after this many batches (smoke tests; None = full epochs).
        single_cls: train as a single class.
        resume: a ``last.pt`` to continue from, True for the newest under ``project``, False for a new run.
        teacher: dense checkpoint to distil from (:mod:`sparseyolo.train.distill`): a path, ``"auto"`` (the
            weights themselves when pruned in this run, else the dense source a pruned checkpoint records, when
            that file is here) or None (no distillation).
        distill: weight of the distillation term relative to the detection loss (with a teacher).
        feature_distill: weight of feature imitation (the teacher's block outputs, with a teacher; 0: off).
        freeze_bn: BatchNorm layers normalise with their running statistics and keep them (eval mode) while the
            rest trains; a small batch's statistics are a different function from the one validated.
    """

    weights: str = "yolov5n.pt"
    data: str = ""
    epochs: int = 10
    imgsz: int = 640
    batch_size: int = 16
    nbs: int = 64
    lr0: float = 0.01
    lrf: float = 0.01
    cos_lr: bool = False
    momentum: float = 0.937
    weight_decay: float = 0.0005
    optimizer: str = "SGD"
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    loss: LossGains = field(default_factory=LossGains)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    mosaic: bool = True
    prune: PruneConfig | None = None
    device: str = ""
    workers: int = 8
    project: str = "runs/finetune"
    name: str = "exp"
    exist_ok: bool = False
    seed: int = 0
    noval: bool = False
    amp: bool = True
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    max_batches: int | None = None
    single_cls: bool = False
    resume: str | bool = False
    teacher: str | None = "auto"
    distill: float = 1.0
    feature_distill: float = 0.0
    freeze_bn: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form stored in checkpoints (``train_args``)."""
        d = dataclasses.asdict(self)
        d["resume"] = False
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d.setdefault("teacher", None)  # runs stored before distillation existed resume without it
        d["loss"] = LossGains(**d.get("loss", {}))
        d["aug"] = AugmentConfig(**d.get("aug", {}))
        d["prune"] = PruneConfig.from_dict(d["prune"]) if d.get("prune") else None
        return cls(**d)

    def check(self) -> None:
        """Raise :class:`ParameterError` naming the field and the fix for an unusable setting."""
        if self.epochs < 1:
            raise ParameterError(f"epochs must be >= 1, got {self.epochs}", "epochs")
        if self.batch_size < 1 or self.nbs < 1:
            raise ParameterError(f"batch_size and nbs must be >= 1, got {self.batch_size} and {self.nbs}",
                                 "batch_size", "nbs")
        if self.imgsz < 32:
            raise ParameterError(f"imgsz must be >= 32, got {self.imgsz}", "imgsz")
        if not 0.0 < self.lrf <= 1.0 or self.lr0 <= 0:
            raise ParameterError(f"need lr0 > 0 and 0 < lrf <= 1, got lr0={self.lr0}, lrf={self.lrf}", "lr0", "lrf")
        if self.distill <= 0:
            raise ParameterError(f"distill (the distillation weight) must be > 0, got {self.distill}; "
                                 "use teacher none to train without a teacher", "distill", "teacher")
        if self.optimizer not in OPTIMIZERS:
            raise ParameterError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
                                 "optimizer")
        if self.feature_distill < 0:
            raise ParameterError(f"feature_distill must be >= 0 (0: off), got {self.feature_distill}",
                                 "feature_distill")
        if self.prune is not None:
            self.prune.validate(self.epochs)


@dataclass
class TrainResult:
    """What :func:`train` produced (on rank 0; other ranks get the same with ``final=None``).

    Attributes:
        save_dir: the run folder. last, best: checkpoint paths.
        epochs_run: epochs completed in this call. best_fitness: ``0.1 mAP50 + 0.9 mAP50-95`` of ``best.pt``.
        history: per-epoch dicts (losses, metrics, LRs, sparsity), also in ``results.csv``.
        final: the last validation of ``best.pt`` (a ``sparseyolo.val.ValResults``), or None.
        model: the trained (unwrapped) model of this rank; ema: the EMA model (rank 0), or None.
    """

    save_dir: Path
    last: Path
    best: Path
    epochs_run: int = 0
    best_fitness: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    final: Any = None
    model: nn.Module | None = None
    ema: nn.Module | None = None
