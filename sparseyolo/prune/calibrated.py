"""One-shot calibrated pruning: layer-wise masks (ADMM or SparseGPT) and weight updates from calibration images.

This module drives a model layer by layer; one layer's statistics and solve are in :mod:`~sparseyolo.prune.layerwise`,
the calibration images and BatchNorm re-estimation in :mod:`~sparseyolo.prune.calibration_data` (both re-exported).

Quick reference::

    from sparseyolo.prune.calibrated import calibrated_prune, calibration_batches
    batches = calibration_batches("coco128.yaml", n_images=128, img_size=640, batch_size=8, stride=32)
    report = calibrated_prune(model, batches, n=2, m=4)        # or amount=0.5 for unstructured
    print(report)                                              # per-layer relative output errors, time, memory

The model is processed layer by layer in execution order. For each selected ``Conv2d``/``Linear`` the im2col
rows of its input on the calibration images give ``H = sum x x^T``; the mask that minimises the layer's output
error is chosen by ADMM over the whole mask at once (:func:`sparseyolo.prune.admm.admm_prune`, the default) or
column by column by SparseGPT (:func:`sparseyolo.prune.obs.sparsegpt_prune`, ``solver="sparsegpt"``), and the
next layers see the outputs of the already-pruned ones (as SparseGPT does), so errors are compensated
downstream instead of compounding. By default each layer is fitted to the UNPRUNED model's output of that layer
(``target="dense"``), so it also absorbs the error that earlier pruned layers left in its input. Once a layer's
mask is chosen, its kept weights are re-solved exactly for that mask, with a per-channel bias that absorbs the
mean output shift and is folded into the following BatchNorm (``refit=True``,
:func:`sparseyolo.prune.obs.masked_least_squares`).
Optionally BatchNorm running statistics are then re-estimated on the calibration images
(``bn_recalibration="reset"``).

Why the unfused model (BatchNorm kept): the masks must survive fine-tuning with BN (``sparseyolo finetune``),
and BN re-calibration needs the BN layers. Nothing is lost by not fusing: in eval mode a BN is a per-channel
affine map ``y = s_r * conv_r + b_r``, so for N:M (which never compares output channels) the pre-BN and post-BN
problems have the same optimum, and for unstructured masks, which compare saliencies across output channels,
each row's saliency is weighted by ``s_r^2 = (gamma_r / sigma_r)^2`` so that errors are compared in the post-BN
units the next layer sees, exactly as on a fused model.
"""

from __future__ import annotations

import copy
import logging
import resource
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from sparseyolo.prune.calibration_data import as_float_images, calibration_batches, recalibrate_batchnorm
from sparseyolo.prune.layerwise import (
    SOLVERS,
    HessianAccumulator,
    _row_weight,
    _schedule,  # noqa: F401  (re-exported for the tests of the schedule)
    dense_target_weight,
    following_batchnorms,
    layer_input_columns,
    prune_layer,
    prune_layer_at,
)
from sparseyolo.prune.levels import Level, canonical_level, level_fits, level_label, level_order
from sparseyolo.prune.methods import PruneReport, select_layers
from sparseyolo.prune.obs import DEFAULT_BLOCKSIZE, DEFAULT_DAMP
from sparseyolo.prune.stages import ActivationStream
from sparseyolo.prune.tiles import TILE_IN, tile_height

__all__ = [  # the solver and data helpers live in layerwise.py and calibration_data.py; re-exported here
    "CalibratedPruneReport",
    "HessianAccumulator",
    "calibrated_prune",
    "calibration_batches",
    "dense_target_weight",
    "layer_input_columns",
    "prune_layer",
    "recalibrate_batchnorm",
]

LOGGER = logging.getLogger(__name__)

BN_RECALIBRATION = ("reset", "none")
TARGETS = ("dense", "layer")


@dataclass
class CalibratedPruneReport(PruneReport):
    """A :class:`~sparseyolo.prune.methods.PruneReport` plus what calibration measured.

    Attributes:
        calib_images: images used; calib_rows: ``{weight name: im2col rows seen}``.
        rel_error: ``{weight name: ||W X - W' X||^2 / ||W X||^2}`` on the calibration inputs of that layer
            (inputs produced by the already-pruned earlier layers).
        seconds: wall time of the calibration (excluding loading the images); peak_rss_mb: the process's peak
            resident memory afterwards (``ru_maxrss``; includes everything loaded before).
        bn_recalibrated: number of BatchNorm layers whose running statistics were re-estimated.
        block: output channels sharing each N:M choice (``"nm"``).
        levels: ``{layer name: level}`` of a per-layer profile (``amounts``), else None.
    """

    calib_images: int = 0
    calib_rows: dict[str, int] = field(default_factory=dict)
    rel_error: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    bn_recalibrated: int = 0
    block: int = 1
    levels: dict[str, Level] | None = None

    def __str__(self) -> str:
        if self.method == "nm":
            what = f"{self.n}:{self.m}" + (f" shared by {self.block} output channels" if self.block > 1 else "")
        elif self.levels is not None:
            counts: dict[str, int] = {}
            for level in sorted(self.levels.values(), key=level_order):
                tiles = self.method == "tile" or isinstance(level, str)
                label = level_label(level) if tiles else f"{100 * level:g}% unstructured"
                counts[label] = counts.get(label, 0) + 1
            what = "per-layer levels (" + ", ".join(f"{k} x{v}" for k, v in counts.items()) + ")"
        else:
            unit = f"of the {tile_height(self.block)}x{TILE_IN} tiles" if self.method == "tile" else "unstructured"
            what = f"{100 * (self.amount or 0):g}% {unit}"
        errs = list(self.rel_error.values())
        worst = sorted(self.rel_error.items(), key=lambda kv: -kv[1])[:3]
        mean_err = sum(errs) / len(errs) if errs else 0.0
        lines = [
            f"calibrated pruning of {len(self.pruned)} layer(s), {what}: {self.zeros}/{self.numel} "
            f"weights masked ({100 * self.sparsity:.2f}%) on {self.calib_images} calibration images in "
            f"{self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB",
            f"  mean relative layer output error {mean_err:.4f} (max {max(errs, default=0.0):.4f}); "
            f"BatchNorm statistics re-calibrated in {self.bn_recalibrated} layer(s)",
            "  largest: " + ", ".join(f"{name} {err:.4f}" for name, err in worst),
        ]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


class _StopForward(Exception):
    """Raised by a hook once every layer of the current group has seen its input: the rest is not needed."""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


# --------------------------------------------------------------------------------------------------------------
# Layer-by-layer driver
# --------------------------------------------------------------------------------------------------------------


def _plan_groups(stage: nn.Module, x, targets: list[nn.Module]) -> tuple[list[list[nn.Module]], list[nn.Module]]:
    """Order ``targets`` by first execution on input ``x`` and group each with the later targets that receive the
    very same input tensor (e.g. the two 1x1 branches of a C3): a group can be calibrated in one pass.

    Returns:
        ``(groups, unreached)``.
    """
    seen: dict[nn.Module, torch.Tensor] = {}
    order: list[nn.Module] = []

    def hook(mod, args):
        if mod not in seen:
            seen[mod] = args[0]
            order.append(mod)

    handles = [t.register_forward_pre_hook(hook) for t in targets]
    try:
        stage(x)
    finally:
        for hd in handles:
            hd.remove()
    groups, left = [], list(order)
    while left:
        first = left[0]
        group = [t for t in left if seen[t] is seen[first]]
        groups.append(group)
        left = [t for t in left if t not in group]
    return groups, [t for t in targets if t not in seen]


def _slice_input(x, k: int):
    return [t[:k] for t in x] if isinstance(x, list) else x[:k]


@torch.no_grad()
def _capture_inputs(stage: nn.Module, x, mods: list[nn.Module]) -> dict[nn.Module, torch.Tensor]:
    """Run ``stage`` on ``x`` only as far as needed to see the (first) input of every module in ``mods``."""
    got: dict[nn.Module, torch.Tensor] = {}

    def hook(mod, args):
        if mod not in got:
            got[mod] = args[0]
            if len(got) == len(mods):
                raise _StopForward

    handles = [t.register_forward_pre_hook(hook) for t in mods]
    try:
        stage(x)
    except _StopForward:
        pass
    finally:
        for hd in handles:
            hd.remove()
    return got


@torch.no_grad()
def _calibrate_stage(
    stage: nn.Module,
    inputs: Callable[[int], object],
    nbatch: int,
    group: list[nn.Module],
    dense: tuple[nn.Module, Callable[[int], object], dict[nn.Module, nn.Module]] | None = None,
) -> dict[nn.Module, HessianAccumulator]:
    acc = {t: HessianAccumulator(t, cross=dense is not None) for t in group}
    for b in range(nbatch):
        xd = None
        if dense is not None:
            dstage, dinputs, twin = dense
            got = _capture_inputs(dstage, dinputs(b), [twin[t] for t in group])
            xd = {t: got[twin[t]] for t in group}
        got = _capture_inputs(stage, inputs(b), group)
        for t in group:
            acc[t].add(got[t], None if xd is None else xd[t])
    return acc


def _check_pattern(amount: float | None, n: int | None, m: int | None) -> tuple[float | None, int | None, int | None]:
    if (amount is None) == (n is None and m is None):
        raise ValueError("calibrated pruning needs either amount (unstructured, e.g. 0.5) or n and m (N:M, e.g. 2:4)")
    if amount is not None:
        if not 0.0 <= float(amount) < 1.0:
            raise ValueError(f"amount must be in [0, 1), got {amount}")
        return float(amount), None, None
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m <= 16):
        raise ValueError(f"N:M pruning needs 1 <= n < m <= 16 (keep n of every m), got {n}:{m}")
    return None, n, m


@torch.no_grad()
def calibrated_prune(
    model: nn.Module,
    batches: Iterable,
    amount: float | None = None,
    n: int | None = None,
    m: int | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    damp: float = DEFAULT_DAMP,
    bn_recalibration: str = "none",
    target: str = "dense",
    refit: bool = True,
    steps: int = 1,
    progress: bool = True,
    method: str | None = None,
    block: int = 1,
    amounts: Mapping[str, Level] | None = None,
    solver: str = "admm",
) -> CalibratedPruneReport:
    """Prune ``model`` in place, one layer at a time, with OBS-calibrated masks and weights from calibration data.

    Layer selection and skip reasons are those of :func:`sparseyolo.prune.prune` (``"nm"`` rules with ``n, m``,
    ``"l1"`` rules with ``amount``); masks are the same persistent ``weight_mask`` buffers, so the result saves,
    loads and fine-tunes like any pruned model.

    Args:
        model: a detector (YOLOv5 ``DetectionModel``: processed top-level layer by top-level layer with cached
            activations) or any module taking one image tensor (then every pass runs the model from its input).
        batches: calibration batches, each an image Tensor[B, 3, H, W] (uint8 0-255, or float already scaled as
            the model expects) or a tuple/list whose first item is one (what the val dataloader yields). They
            are kept in memory (uint8 stays uint8) and iterated once.
        amount: unstructured sparsity per layer, a fraction in ``[0, 1)``; or
        n, m: N:M along input channels (``1 <= n < m <= 16``).
        include, exclude, filter_fn: layer selection, as in :func:`sparseyolo.prune.prune`.
        blocksize: columns per lazy-update block of the solver.
        damp: Hessian dampening as a fraction of its mean diagonal.
        bn_recalibration: ``"reset"`` re-estimates every BatchNorm's running mean/var as the plain average over the
            calibration batches (train-mode forward passes without gradients, ``momentum=None``); ``"none"`` (the
            default) keeps the trained statistics. Measured on yolov5n 2:4 with 32 calibration images, scored on
            64 other coco128 images (docs/results.md "Accuracy recovery"): with ``target="layer"`` the reset is
            essential (mAP50-95 0.037 -> 0.128), with ``target="dense"`` it costs a little (0.198 -> 0.175), because the
            dense target already keeps each layer's output distribution and a few hundred letterboxed images
            estimate the statistics less well than training did.
        target: what each layer's pruned output should reproduce. ``"dense"``: the unpruned model's output of
            that layer (its weight is first re-fitted from the pruned model's inputs, :func:`dense_target_weight`),
            so later layers correct the error of earlier ones; this runs an unpruned copy of the model alongside
            (twice the cached activations and forward passes). ``"layer"``: the layer's own unpruned output on
            the pruned model's inputs (SparseGPT's objective).
        refit: once the solver has chosen a layer's mask, re-solve its kept weights exactly (per-row least squares)
            together with a per-channel bias that goes into the following BatchNorm's running mean (or the
            layer's bias); the mask is then chosen on the centred input statistics (see :func:`prune_layer`).
            Measured on yolov5n 2:4 (docs/results.md "Accuracy recovery"): 64 calibration images, held-out mAP50-95
            0.212 without, 0.255 with.
        steps: prune each layer in this many increments, each followed by the refit (see :func:`prune_layer`).
            Measured on yolov5n (64 calibration images, held-out mAP50-95): 75% unstructured 0.066 with 1 step,
            0.104 with 3; 2:4 0.255 with 1, 0.248 with 2 (its only other schedule, 3:4 then 2:4).
        progress: show a progress bar over the layers (on stderr; a layer takes seconds to a minute).
        method: ``"nm"`` (with ``n, m``), ``"l1"`` (unstructured ``amount``) or ``"tile"``: ``amount`` of the
            ``16 x 32`` channel tiles of each tap of every conv (what the AMX CPU kernel skips), the tiles of least
            OBS cost at each of the ``steps`` (:func:`sparseyolo.prune.obs.group_obs_mask`). Default: ``"nm"``
            with ``n, m``, else ``"l1"``.
        block: ``"nm"``: every ``block`` consecutive output channels share one N:M choice, made on their summed
            OBS saliency (the pattern of ``prune(..., block=B)`` that the block-sparse CPU kernel wants).
            ``"tile"``: the tiles' output channels, 16 (or 1, the same) or 32 (``32 x 32`` tiles, which the kernel
            without AMX runs two blocks at a time).
        amounts: ``"l1"``/``"tile"`` only, instead of ``amount``: ``{layer name: level}``, one sparsity level per
            layer (a profile of :mod:`sparseyolo.sparse.speedup_profile`): a float is that layer's amount (of tiles
            for ``"tile"``), a string such as ``"2:4b32"`` an N:M pattern shared by a block of output channels
            (:mod:`sparseyolo.prune.levels`; the layer's input channels must be a multiple of M). Only these layers
            are pruned (within ``include``/``exclude``). An amount of 0 prunes nothing but still registers the mask
            and refits the layer to the dense model's output, which absorbs part of the error of the pruned layers
            before it.
        solver: how each layer's mask is chosen (:func:`prune_layer`): ``"admm"`` (the whole mask at once,
            :mod:`sparseyolo.prune.admm`) or ``"sparsegpt"`` (column by column). Measured on yolov5n calibrated on
            coco128, held-out coco_val124 mAP50-95 sparsegpt -> admm (docs/results.md "Choosing the mask by
            ADMM"): 2:4 0.206 -> 0.227, 2:4 with channel permutation 0.236 -> 0.248, 50% unstructured 0.249 ->
            0.266, tiles 50% 0.014 -> 0.022.

    Returns:
        A :class:`CalibratedPruneReport`.

    Raises:
        ValueError: no calibration images, a bad pattern or amount, or no prunable layer.

    Caveats:
        The model is run in eval mode during calibration (BatchNorm uses its running statistics), with the
        layers before a layer already pruned and updated. Activations of the top-level layers still needed are
        cached for all calibration images (float32 on the model's device; two streams with ``target="dense"``):
        the process peaked at 1.7 GB for yolov5n with 64 images at 640 (docs/results.md "Accuracy recovery"); memory and
        time scale linearly with the number of images.
        A layer that is not reached by the forward pass is left dense and reported as skipped.
    """
    if amounts is not None:
        if amount is not None or n is not None or m is not None or block != 1 or method not in ("l1", "tile"):
            raise ValueError("calibrated pruning: amounts (one per layer) goes with method 'l1' or 'tile' and "
                             "without amount, n, m or block (each level names its own pattern)")
        try:
            amounts = {name: canonical_level(v) for name, v in amounts.items()}
        except ValueError as e:
            raise ValueError(f"calibrated pruning: amounts: {e}") from None
        # validated as a pattern below; each layer uses its own
        amount = max((v for v in amounts.values() if isinstance(v, float)), default=0.0)
    amount, n, m = _check_pattern(amount, n, m)
    method = method or ("nm" if n is not None else "l1")
    if method not in ("nm", "l1", "tile") or (method == "nm") != (n is not None):
        raise ValueError(f"calibrated pruning: method {method!r} does not fit the pattern given (nm takes n and m; "
                         "l1 and tile take amount)")
    if not (isinstance(block, int) and block >= 1) or (block > 1 and method == "l1"):
        raise ValueError(f"block must be a positive int and is for methods nm and tile, got {block!r} with {method}")
    if method == "tile":
        tile_height(block)  # raises for a height the kernel has no tile of
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got '{target}'")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got '{solver}'")
    if bn_recalibration not in BN_RECALIBRATION:
        raise ValueError(f"bn_recalibration must be one of {', '.join(BN_RECALIBRATION)}, got '{bn_recalibration}'")
    layer_filter = filter_fn
    if amounts is not None:
        unknown = sorted(set(amounts) - {name for name, _ in model.named_modules()})
        if unknown:
            raise ValueError(f"calibrated pruning: amounts names layers the model does not have: {unknown[:5]}")

        def layer_filter(name: str, mod: nn.Module) -> bool:  # the profile's layers only
            return name in amounts and (filter_fn is None or filter_fn(name, mod))

    selected, skipped = select_layers(model, method, m or 4, include, exclude, layer_filter)
    if amounts is not None:
        skipped = [(name, why) for name, why in skipped if name in amounts]  # the rest were never asked for
        misfit = [f"{name} ({mod.weight.shape[1]} input channels, {amounts[name]})" for name, mod in selected
                  if not level_fits(amounts[name], mod.weight.shape[1])]
        if misfit:
            raise ValueError("calibrated pruning: an N:M level needs input channels that are a multiple of M: "
                             + ", ".join(misfit[:5]))
    if not selected:
        why = "; ".join(f"{name}: {reason}" for name, reason in skipped[:5]) or "the model has no Conv2d/Linear layer"
        raise ValueError(f"no prunable layer for calibrated pruning ({why})")
    images = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not images or sum(int(x.shape[0]) for x in images) == 0:
        raise ValueError("calibrated pruning needs calibration images; the calibration data is empty")
    t0 = time.perf_counter()
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()

    names = {mod: name for name, mod in selected}
    report = CalibratedPruneReport(method=method, amount=None if amounts is not None else amount, n=n, m=m,
                                   skipped=list(skipped), calib_images=sum(int(x.shape[0]) for x in images),
                                   block=block, levels=None if amounts is None else dict(amounts))
    bns = following_batchnorms(model)
    nb = len(images)
    pruned = ActivationStream(model, images)
    stages = pruned.stages
    dense = None
    if target == "dense":
        dense_model = copy.deepcopy(model)
        dense = ActivationStream(dense_model, images)
        twins = dict(zip(model.modules(), dense_model.modules()))

    bar = tqdm(total=len(names), desc="calibrate", unit="layer", disable=not progress,
               bar_format="{l_bar}{bar:20}{r_bar}")
    for i, stage in enumerate(stages):
        targets = [mod for mod in stage.modules() if mod in names]
        if targets:
            groups, unreached = _plan_groups(stage, _slice_input(pruned.input(i, 0), 1), targets)
            for mod in unreached:
                report.skipped.append((names[mod], "not reached by the forward pass"))
                names.pop(mod)
                bar.total -= 1
            for group in groups:
                accs = _calibrate_stage(stage, lambda b, i=i: pruned.input(i, b), nb, group,
                                        None if dense is None else (dense.stages[i], lambda b, i=i: dense.input(i, b),
                                                                    twins))
                for mod in group:
                    key = f"{names[mod]}.weight"
                    if amounts is None:
                        rel = prune_layer(mod, accs[mod], amount, n, m, blocksize, damp,
                                          row_weight=_row_weight(bns.get(mod)) if amount is not None else None,
                                          refit=refit, bn=bns.get(mod), steps=steps, block=block,
                                          tiles=method == "tile", solver=solver)
                    else:
                        rel = prune_layer_at(mod, accs[mod], amounts[names[mod]], bns.get(mod), steps, damp,
                                             solver, refit, tiles=method == "tile", blocksize=blocksize)
                    report.rel_error[key] = rel
                    report.calib_rows[key] = accs[mod].rows
                    LOGGER.debug("%s: relative output error %.4f over %d rows", key, rel, accs[mod].rows)
                    bar.set_postfix_str(names[mod], refresh=False)
                    bar.update()
                del accs
        if i < len(stages) - 1:
            pruned.advance(i)
            if dense is not None:
                dense.advance(i)
    bar.close()
    del pruned, dense

    for name, mod in selected:
        if mod not in names:
            continue
        zeros = int((~mod.weight_mask).sum())
        report.pruned[f"{name}.weight"] = zeros / mod.weight.numel()
        report.zeros += zeros
        report.numel += mod.weight.numel()
    if bn_recalibration == "reset":
        report.bn_recalibrated = recalibrate_batchnorm(model, (as_float_images(x, device, dtype) for x in images))
    model.train(was_training)
    report.seconds = time.perf_counter() - t0
    report.peak_rss_mb = _peak_rss_mb()
    LOGGER.info("%s", report)
    return report
