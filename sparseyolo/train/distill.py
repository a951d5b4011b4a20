"""Distillation from the dense model during masked fine-tuning: the pruned student learns the dense teacher's
detection-head outputs on every training batch, besides the labels.

Why: a few hundred labelled images are enough to overfit (masked fine-tuning of calibrated 2:4 yolov5n on coco128
rose from 0.261 to 0.303 mAP50-95 on coco128 itself but only from 0.201 to 0.207 on held-out val2017 images). The
teacher's outputs carry far more signal per image than the labels (a soft score for every anchor of every cell and
class), and they exist for unlabelled images too.

The loss, per output level, on the raw head outputs ``[B, anchors, ny, nx, 5 + nc]`` of student ``s`` and teacher
``t`` (objectness-weighted distillation, as in Mehta & Ozturk, "Object detection at 200 frames per second", 2018):

* objectness: ``KL(sigmoid(t_obj) || sigmoid(s_obj))`` of every cell and anchor (binary KL: the BCE against the
  teacher's probability minus that probability's entropy, so it is 0 when the student matches), weighted by the
  level's objectness balance (P3 4.0, P4 1.0, P5 0.4);
* class and box: the binary KL of the class scores and the squared difference of the four box outputs after their
  sigmoid (what YOLOv5 decodes boxes from), averaged over cells weighted by the teacher's objectness, so that only
  where the teacher sees an object do its classes and boxes count;

scaled by the detection loss's gains for objectness and class (:func:`~sparseyolo.train.loss.scaled_loss_gains`), the
batch size (YOLOv5's convention) and ``weight``, and added to the detection loss.

Optionally (``feature_weight > 0``) the student also imitates the teacher's intermediate features (FitNets-style
feature imitation, as used for few-sample recovery of compressed networks): the output of every top-level block of
the model that has weights (each Conv, C3, SPPF of ``model.model`` before ``Detect``), compared by its squared error
relative to the teacher's mean square, ``mean((s - t)^2) / mean(t^2)``, averaged over the blocks, times the batch
size and ``feature_weight``. Where the head's outputs give one signal per anchor, this gives one per activation of
every block, which is what a model that lost most of its function to a coarse sparsity pattern has to relearn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.train.loss import _LEVEL_BALANCE, _LEVEL_BALANCE_DEFAULT, LossGains

__all__ = ["DetectionDistiller", "distillation_loss", "feature_blocks", "feature_loss", "resolve_teacher"]


def _binary_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s)))``: >= 0, and 0 where ``s == t``."""
    p = torch.sigmoid(teacher_logits)
    return (F.binary_cross_entropy_with_logits(student_logits, p, reduction="none")
            - F.binary_cross_entropy_with_logits(teacher_logits, p, reduction="none"))


def distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], gains: LossGains) -> torch.Tensor:
    """The distillation loss of one batch (see the module docstring), before the batch-size and ``weight`` factors.

    Args:
        student, teacher: the raw head outputs of each level, Tensor[B, anchors, ny, nx, 5 + nc] (what a YOLOv5
            ``Detect`` returns in train mode, and second in eval mode).
        gains: the detection loss's scaled gains (objectness and class gains are used).

    Returns:
        A scalar Tensor (float32) with the student's graph.
    """
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} output levels, teacher {len(teacher)}")
    balance = _LEVEL_BALANCE.get(len(student), _LEVEL_BALANCE_DEFAULT)
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t, bal in zip(student, teacher, balance, strict=False):
        if s.shape != t.shape:
            raise ValueError(f"student and teacher outputs differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
        s, t = s.float(), t.detach().float()
        w = torch.sigmoid(t[..., 4])
        norm = w.sum().clamp_min(1e-6)
        obj = _binary_kl(s[..., 4], t[..., 4]).mean()
        box = (w * (torch.sigmoid(s[..., :4]) - torch.sigmoid(t[..., :4])).pow(2).mean(-1)).sum() / norm
        total = total + bal * gains.obj * obj + box
        if s.shape[-1] > 6:  # a single-class model has no class term
            total = total + gains.cls * (w * _binary_kl(s[..., 5:], t[..., 5:]).mean(-1)).sum() / norm
    return total


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of ``mean((s - t)^2) / mean(t^2)``: 0 when the student's features equal the teacher's, 1 when
    they are all zero. Args: the features of each block, pairwise of equal shape. Returns a float32 scalar."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"need the same non-zero number of student and teacher features, got {len(student)} and "
                         f"{len(teacher)}")
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"student and teacher features differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
        t = t.detach().float()
        total = total + (s.float() - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)
    return total / len(student)


def feature_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks whose outputs feature imitation compares: the top-level modules of a YOLOv5 ``model.model``
    before its last (``Detect``) that hold weights (Conv, C3, SPPF; not Concat or Upsample)."""
    seq = getattr(model, "model", None)
    if not isinstance(seq, nn.Sequential) or len(seq) < 2:
        raise ValueError(f"feature distillation needs a YOLOv5 detection model (model.model a Sequential ending in "
                         f"Detect), got {type(model).__name__}")
    return [m for m in list(seq)[:-1] if any(True for _ in m.parameters())]


class _FeatureTap:
    """Keeps the outputs of ``blocks`` from the latest forward (of a module in training mode when ``training_only``,
    so that an eval-mode copy of the student, such as the EMA, never fills it)."""

    def __init__(self, blocks: list[nn.Module], training_only: bool) -> None:
        self.out: list[torch.Tensor | None] = [None] * len(blocks)
        self.training_only = training_only
        self.handles = [b.register_forward_hook(self._hook(k)) for k, b in enumerate(blocks)]

    def _hook(self, k: int):
        def keep(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training or not self.training_only:
                self.out[k] = output
        return keep

    def take(self) -> list[torch.Tensor]:
        """The kept outputs, forgetting them; raise if a block did not run since the last take."""
        out, self.out = self.out, [None] * len(self.out)
        if any(o is None for o in out):
            raise RuntimeError("feature distillation: a block's output was not recorded (was the student run in "
                               "training mode on this batch?)")
        return out  # type: ignore[return-value]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.out = [None] * len(self.out)


class DetectionDistiller:
    """The dense teacher and the distillation term of the training loss.

    Args:
        teacher: the dense detector (put in eval mode, gradients off; its BatchNorm statistics stay fixed).
        gains: the detection loss's scaled gains.
        weight: factor of the head distillation term relative to the detection loss.
        student: the model being trained; needed for feature imitation (its blocks get forward hooks until
            :meth:`close`).
        feature_weight: factor of the feature-imitation term (0: off).
    """

    def __init__(self, teacher: nn.Module, gains: LossGains, weight: float = 1.0, *, student: nn.Module | None = None,
                 feature_weight: float = 0.0) -> None:
        if weight <= 0:
            raise ValueError(f"distillation weight must be > 0, got {weight}")
        if feature_weight < 0:
            raise ValueError(f"feature distillation weight must be >= 0, got {feature_weight}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.gains, self.weight, self.feature_weight = gains, float(weight), float(feature_weight)
        self._taps: tuple[_FeatureTap, _FeatureTap] | None = None
        if self.feature_weight > 0:
            if student is None:
                raise ValueError("feature distillation needs the student model")
            sb, tb = feature_blocks(student), feature_blocks(self.teacher)
            if len(sb) != len(tb):
                raise ValueError(f"student and teacher differ in their blocks ({len(sb)} vs {len(tb)}); feature "
                                 "distillation needs the same architecture")
            self._taps = (_FeatureTap(sb, training_only=True), _FeatureTap(tb, training_only=False))

    @torch.no_grad()
    def teacher_outputs(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        out = self.teacher(imgs)
        return list(out[1] if isinstance(out, tuple) else out)

    def __call__(self, imgs: torch.Tensor, student_preds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, detached loss)`` of a batch: ``batch size * (weight * distillation_loss + feature_weight *
        feature_loss)``; call it right after the student's training forward on ``imgs``."""
        loss = self.weight * distillation_loss(list(student_preds), self.teacher_outputs(imgs), self.gains)
        if self._taps is not None:
            student_feats, teacher_feats = (tap.take() for tap in self._taps)
            loss = loss + self.feature_weight * feature_loss(student_feats, teacher_feats)
        loss = imgs.shape[0] * loss
        return loss, loss.detach()

    def close(self) -> None:
        """Remove the forward hooks of feature imitation (the student is left as it was given)."""
        if self._taps is not None:
            for tap in self._taps:
                tap.remove()
            self._taps = None


def resolve_teacher(teacher: str | None, weights: str | Path, pruned_in_run: bool,
                    meta: dict[str, Any] | None = None) -> str | None:
    """The checkpoint to distil from, or None.

    ``teacher`` is a checkpoint path, ``None``/``"none"`` (no distillation) or ``"auto"``: the weights themselves
    when they are dense and pruned in this run, else the dense checkpoint a sparseyolo-pruned (or fine-tuned) file
    records as its source (``meta["pruning"]["source"]``) when that file exists here, else None. ``meta``: the
    weights' checkpoint meta when the caller has read it already.
    """
    if teacher is None or str(teacher).lower() == "none":
        return None
    if str(teacher) != "auto":
        if not Path(teacher).is_file():
            raise FileNotFoundError(f"teacher checkpoint not found: {teacher}")
        return str(teacher)
    if pruned_in_run:
        return str(weights)
    from sparseyolo.checkpoint import CheckpointError, load_checkpoint

    if meta is None:
        try:
            meta = load_checkpoint(weights).meta or {}
        except (CheckpointError, OSError, ValueError):
            return None
    source = (meta.get("pruning") or {}).get("source")
    return str(source) if source and Path(source).is_file() else None
