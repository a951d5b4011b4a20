"""Masked fine-tuning of YOLOv5 detectors: the training loop behind ``sparseyolo finetune``.

The recipe is YOLOv5's ``train.py`` with ``hyp.scratch-low.yaml`` (SGD, nesterov, momentum 0.937, three
parameter groups with no weight decay on biases and BatchNorm weights, warm-up, linear or cosine LR decay to
``lr0 * lrf``, gradient accumulation to a nominal batch of 64, EMA of the weights, AMP on CUDA, gradient
clipping at norm 10, per-epoch validation and ``best.pt`` chosen by ``0.1 mAP50 + 0.9 mAP50-95``), plus masks:

* a model loaded from a pruned sparseyolo checkpoint keeps its ``weight_mask`` buffers; otherwise it is pruned
  before training as the :class:`~sparseyolo.prune.PruneConfig` says, or gradually during training;
* ``sparseyolo.prune.enforce_masks`` hooks the optimizer so gradients are masked before every step and weights
  after it, and :class:`~sparseyolo.train.ema.ModelEMA` re-applies the masks to the EMA after every update, so
  pruned weights are exactly zero after every step in both.

Runs under ``torchrun`` with DistributedDataParallel (see :mod:`sparseyolo.train.distributed`).

Checkpoints go to ``project/name/weights/{last,best}.pt`` (``name`` incremented: exp, exp2, ...), written with
:func:`sparseyolo.checkpoint.save_checkpoint` (the resume and strip helpers are in
:mod:`sparseyolo.train.checkpointing`): the EMA model is the stored model (what ``sparseyolo val`` evaluates,
as Ultralytics prefers its ``ema``), and ``meta`` holds ``epoch``, ``best_fitness``, the training model's state
(``model_state``), the ``optimizer`` state, ``ema_updates``, ``train_args``, the pruning recipe and the gradual
pruner's state, plus every random state the next epoch draws from (Python's ``random``,
NumPy's and torch's global generators, CUDA's, the shuffling sampler's generator), the AMP scaler and the
position in the gradient-accumulation cycle.

What ``--resume`` guarantees: a single-process run with ``workers=0`` that is resumed from ``last.pt`` ends
with bit-identical weights and EMA to the same run left uninterrupted, on the same machine
and device (tested on CPU). With loader workers (``workers > 0``), the workers are new processes after a
resume: their augmentation draws restart from fresh seeds, so the resumed epochs see different (equally
distributed) augmentations; under DDP the random states are not restored (each rank reseeds). A run
interrupted inside an epoch resumes from the end of the last completed epoch.

At the end both files are stripped of the training state, as Ultralytics' ``strip_optimizer`` does (a
finished run has nothing to resume): ``best.pt`` first, then ``last.pt``, each rewritten atomically, so a kill
during this step leaves a ``last.pt`` that either still resumes (and then only finishes the run) or is
already final.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import datetime
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sparseyolo.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from sparseyolo.prune.config import PruneConfig
from sparseyolo.prune.permute import apply_permutations
from sparseyolo.prune.report import masked_sparsity
from sparseyolo.train.augmented_dataset import create_train_dataloader
from sparseyolo.train.checkpointing import (
    _latest_last,
    _model_from_state,
    _rng_state,
    _set_rng_state,
    _strip_training_state,
    load_training_model,
)
from sparseyolo.train.config import OPTIMIZERS, TrainConfig, TrainResult
from sparseyolo.train.distributed import DistContext, barrier, broadcast_masks, cleanup, init_distributed, wrap_ddp
from sparseyolo.train.ema import ModelEMA, unwrap
from sparseyolo.train.gradual import GradualPruner, mask_buffers
from sparseyolo.train.distill import DetectionDistiller, resolve_teacher
from sparseyolo.train.loss import YoloLoss, scaled_loss_gains
from sparseyolo.utils.errors import ParameterError
from sparseyolo.utils.run_dirs import increment_dir
from sparseyolo.utils.torch_utils import environment_line, select_device

__all__ = ["TrainConfig", "TrainResult", "train", "load_training_model", "fitness", "lr_lambda"]

LOGGER = logging.getLogger(__name__)

TQDM_BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"
#: Progress-bar columns (YOLOv5's, plus the masked fraction of the pruned layers).
HEADER = ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size", "Sparsity")
#: Gradient-norm clip (YOLOv5 train.py); keeps the first steps after pruning from blowing up.
MAX_GRAD_NORM = 10.0




# --------------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------------


def lr_lambda(epochs: int, lrf: float, cos: bool) -> Callable[[float], float]:
    """LR factor of epoch ``x``: linear ``(1 - x/E)(1 - lrf) + lrf`` or cosine ``1 + (lrf - 1)(1 - cos(pi x/E))/2``."""
    if cos:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def fitness(map50: float, map5095: float) -> float:
    """YOLOv5's model-selection score, ``0.1 mAP50 + 0.9 mAP50-95``."""
    return 0.1 * map50 + 0.9 * map5095


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                    name: str = "SGD") -> torch.optim.Optimizer:
    """YOLOv5's optimizer with its three groups: 0 biases, 1 other weights (decayed), 2 normalisation weights.

    ``name`` is one of :data:`OPTIMIZERS`: SGD (nesterov, ``momentum``), or Adam / AdamW with ``betas=(momentum,
    0.999)`` as YOLOv5's ``--optimizer``. Group 0 is the bias group because warm-up starts it at a high LR
    (``warmup_bias_lr``).
    """
    biases, weights, norms = [], [], []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == "bias":
                biases.append(p)
            elif pname == "weight" and "Norm" in type(module).__name__:
                norms.append(p)
            else:
                weights.append(p)
    if name == "SGD":
        opt: torch.optim.Optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
        how = f"SGD(lr={lr:g}, momentum={momentum:g}, nesterov)"
    elif name in ("Adam", "AdamW"):
        opt = getattr(torch.optim, name)(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
        how = f"{name}(lr={lr:g}, betas=({momentum:g}, 0.999))"
    else:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    opt.add_param_group({"params": weights, "weight_decay": weight_decay})
    opt.add_param_group({"params": norms, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = lr
    LOGGER.info("optimizer: %s with parameter groups %d weight(decay=0.0), %d weight(decay=%g), %d bias", how,
                len(norms), len(weights), weight_decay, len(biases))
    return opt


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _broadcast_object(obj: Any, ctx: DistContext) -> Any:
    if not ctx.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    step_callback: Callable[[nn.Module, ModelEMA | None, int], None] | None = None,
) -> TrainResult:
    """Fine-tune ``cfg.weights`` on ``cfg.data`` with masks enforced; see the module docstring.

    Args:
        cfg: the run's settings.
        step_callback: called after every optimizer step (and EMA update) as ``f(model, ema, step)`` with the
            unwrapped model; for tests and monitoring.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError, FileNotFoundError, CheckpointError: unusable settings, data or checkpoint (named in the message).
    """
    from sparseyolo import val as val_mod
    from sparseyolo.data.dataset import load_data_config
    from sparseyolo.prune import enforce_masks, mask_patterns, prune, sparsity_report

    # ---- resume: the stored arguments win, except where the hardware may have changed
    ck_resume = None
    if cfg.resume:
        last = _latest_last(cfg.project) if cfg.resume is True else Path(str(cfg.resume))
        ck_resume = load_checkpoint(last)
        if "optimizer" not in ck_resume.meta or "train_args" not in ck_resume.meta:
            raise ValueError(f"--resume {last}: this run finished (its training state was stripped); nothing to resume")
        stored = TrainConfig.from_dict(ck_resume.meta["train_args"])
        stored.device, stored.workers, stored.resume = cfg.device, cfg.workers, str(last)
        cfg = stored
        save_dir = last.parent.parent
    cfg.check()

    ctx = init_distributed(select_device(cfg.device))
    device = ctx.device
    _seed_all(cfg.seed + 1 + max(ctx.rank, 0))
    if ctx.is_main:
        LOGGER.info(environment_line(device) + (f" x{ctx.world_size} ranks ({ctx.backend})" if ctx.enabled else ""))
    if not cfg.resume:
        save_dir = increment_dir(Path(cfg.project) / cfg.name, cfg.exist_ok) if ctx.is_main else None
        save_dir = Path(_broadcast_object(str(save_dir) if save_dir else None, ctx))
    wdir = save_dir / "weights"
    last_pt, best_pt = wdir / "last.pt", wdir / "best.pt"
    if ctx.is_main:
        wdir.mkdir(parents=True, exist_ok=True)

    try:
        data = load_data_config(cfg.data)
        if not data.get("train"):
            raise ValueError(f"{cfg.data}: no 'train:' split to fine-tune on")

        # ---- model and masks
        if ck_resume is not None:
            model = _model_from_state(
                ck_resume.yaml,
                ck_resume.nc,
                ck_resume.meta["model_state"],
                ck_resume.fused,
                ck_resume.meta.get("mask_patterns") or {},
                ck_resume.path,
            )
            model.names = list(ck_resume.names)
            model.float().requires_grad_(True)
        else:
            model = load_training_model(cfg.weights)
        start_meta = ck_resume.meta if ck_resume is not None else _checkpoint_meta(cfg.weights)
        channel_order = _channel_order(start_meta)
        nc = 1 if cfg.single_cls else data["nc"]
        if model.nc != nc:
            raise ValueError(
                f"{cfg.weights} has {model.nc} classes but {cfg.data} has {nc}; fine-tuning keeps the detection head, "
                "so the dataset must use the checkpoint's classes"
            )
        model.names = ["item"] if cfg.single_cls else list(data["names"])
        model.to(device).train()

        recipe = cfg.prune
        had_masks = bool(mask_buffers(model))
        pruned_here = recipe is not None and not had_masks
        pruning_record = (start_meta.get("pruning") if ck_resume is not None
                          else _pruning_record(recipe, start_meta, cfg.weights, pruned_here))
        teacher = resolve_teacher(cfg.teacher, cfg.weights, pruned_here, meta=start_meta)
        if cfg.feature_distill > 0:
            if teacher is None:
                raise ParameterError(f"feature_distill {cfg.feature_distill} needs a dense teacher, and none was found "
                                     f"for {cfg.weights}: pass teacher (the dense checkpoint), or feature_distill 0",
                                     "feature_distill", "teacher")
            _check_channel_order(channel_order, cfg.weights)
        if recipe is not None and recipe.block != 1 and had_masks and ck_resume is None:
            raise ParameterError(f"{cfg.weights} already has pruning masks, and block {recipe.block} patterns (one "
                                 "choice shared by that many output channels) are chosen on an unpruned model: start "
                                 "from the dense checkpoint, or prune it with sparseyolo prune --block and fine-tune "
                                 "that file without pruning options", "block")
        pruner = None
        if recipe is not None and recipe.gradual:
            if had_masks and ck_resume is None:
                LOGGER.info("%s already has masks; gradual pruning grows them", cfg.weights)
        elif recipe is not None and ck_resume is None:
            if had_masks:
                LOGGER.info("%s already has masks; pruning again with %s only grows them", cfg.weights, recipe.method)
            prune(model, method=recipe.method, **recipe.prune_kwargs())
        elif recipe is None and not had_masks:
            LOGGER.warning("%s has no pruning masks and no --prune-method was given: fine-tuning dense", cfg.weights)
        broadcast_masks(model, ctx)

        # ---- data
        world = ctx.world_size
        if cfg.batch_size % world:
            raise ParameterError(f"batch_size {cfg.batch_size} must be a multiple of the number of processes ({world})",
                                 "batch_size")
        gs = max(int(model.stride.max()), 32)
        if cfg.imgsz % gs:
            raise ParameterError(f"imgsz {cfg.imgsz} must be a multiple of the model's max stride {gs}", "imgsz")
        aug = dataclasses.replace(cfg.aug, mosaic=cfg.aug.mosaic if cfg.mosaic else 0.0)
        loader, dataset = create_train_dataloader(
            data["train"],
            cfg.imgsz,
            cfg.batch_size // world,
            gs,
            aug=aug,
            workers=cfg.workers,
            rank=ctx.rank,
            world_size=world,
            seed=cfg.seed,
            single_cls=cfg.single_cls,
            prefix="train: ",
        )
        nb = len(loader) if cfg.max_batches is None else min(len(loader), cfg.max_batches)

        # ---- optimisation (YOLOv5 train.py): accumulate to the nominal batch, scale decay accordingly
        accumulate = max(round(cfg.nbs / cfg.batch_size), 1)
        weight_decay = cfg.weight_decay * cfg.batch_size * accumulate / cfg.nbs
        optimizer = build_optimizer(model, cfg.lr0, cfg.momentum, weight_decay, cfg.optimizer)
        lf = lr_lambda(cfg.epochs, cfg.lrf, cfg.cos_lr)
        nl = model.model[-1].nl
        gains = scaled_loss_gains(cfg.loss, nl, model.nc, cfg.imgsz)
        compute_loss = YoloLoss(model, gains)
        amp = cfg.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)

        start_epoch, best_fitness, history = 0, 0.0, []
        if recipe is not None and recipe.gradual:
            pruner = GradualPruner(model, recipe, nb)
        if ck_resume is not None:
            meta = ck_resume.meta
            optimizer.load_state_dict(meta["optimizer"])
            start_epoch = int(meta["epoch"]) + 1
            best_fitness = float(meta.get("best_fitness", 0.0))
            history = list(meta.get("history", []))
            if pruner is not None and meta.get("pruner"):
                pruner.load_state_dict(meta["pruner"])
            LOGGER.info("resuming %s from epoch %d of %d", ck_resume.path, start_epoch, cfg.epochs)
            if start_epoch >= cfg.epochs:  # killed while finishing: only the final strip and validation remain
                LOGGER.info("all %d epochs are done; finishing the run", cfg.epochs)
        elif pruner is not None and pruner.t0 == 0:
            pruner.maybe_update(0)  # masks exist before DDP and the EMA copy are made
            broadcast_masks(model, ctx)

        ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if ctx.is_main else None
        if ema is not None and ck_resume is not None:
            ema.ema.load_state_dict(ck_resume.state_dict, strict=True)
            ema.updates = int(ck_resume.meta.get("ema_updates", 0))
        if ctx.is_main and mask_buffers(model):
            LOGGER.info("%s", sparsity_report(model))

        distiller = None
        if teacher is not None:  # after the EMA copy, so that the copy carries none of the student's hooks
            teacher_model = load_model(teacher, device=device, fuse=False).float()
            if cfg.feature_distill > 0:
                _align_teacher(teacher_model, channel_order, cfg.weights)
            distiller = DetectionDistiller(teacher_model, gains, cfg.distill, student=model,
                                           feature_weight=cfg.feature_distill)
            if ctx.is_main:
                LOGGER.info("distilling from %s (head weight %g, feature weight %g)", teacher, cfg.distill,
                            cfg.feature_distill)

        enforcer = enforce_masks(model, optimizer)
        ddp_model = wrap_ddp(model, ctx)

        # ---- loop
        nw = max(round(cfg.warmup_epochs * nb), 100) if cfg.warmup_epochs > 0 else -1
        last_opt_step = -1
        step = (ema.updates if ema is not None else 0) if ck_resume is not None else 0
        if ck_resume is not None:
            # Last: nothing above may draw from the restored generators (model building and the loader do).
            last_opt_step = int(ck_resume.meta.get("last_opt_step", -1))
            if ck_resume.meta.get("scaler"):
                scaler.load_state_dict(ck_resume.meta["scaler"])
            if ck_resume.meta.get("rng") and not ctx.enabled:  # rank 0's states; other ranks had their own
                _set_rng_state(ck_resume.meta["rng"], loader.sampler)
        if ctx.is_main:
            LOGGER.info(
                "image sizes %d train, %d val; %d dataloader workers; logging to %s; training for %d epochs...",
                cfg.imgsz,
                cfg.imgsz,
                loader.num_workers,
                save_dir,
                cfg.epochs,
            )
        t_start = time.time()
        epoch = start_epoch
        for epoch in range(start_epoch, cfg.epochs):
            ddp_model.train()
            if cfg.freeze_bn:
                freeze_batchnorm_statistics(model)
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * lf(epoch)
            mloss = torch.zeros(3, device=device)
            mdist = torch.zeros((), device=device)
            pbar: Any = enumerate(loader)
            if ctx.is_main:
                LOGGER.info(("\n" + "%11s" * 8) % HEADER)
                pbar = tqdm(pbar, total=nb, bar_format=TQDM_BAR_FORMAT)
            optimizer.zero_grad()
            for i, (imgs, targets, _, _) in pbar:
                if i >= nb:
                    break
                ni = i + nb * epoch
                imgs = imgs.to(device, non_blocking=True).float() / 255

                if ni <= nw:  # warm-up: ramp LR (bias group from warmup_bias_lr down), momentum and accumulation
                    xi = [0, nw]
                    accumulate = max(1, int(np.interp(ni, xi, [1, cfg.nbs / cfg.batch_size]).round()))
                    for j, g in enumerate(optimizer.param_groups):
                        start_lr = cfg.warmup_bias_lr if j == 0 else 0.0
                        g["lr"] = float(np.interp(ni, xi, [start_lr, g["initial_lr"] * lf(epoch)]))
                        if "momentum" in g:  # SGD; Adam's betas stay as built
                            g["momentum"] = float(np.interp(ni, xi, [cfg.warmup_momentum, cfg.momentum]))

                do_step = ni - last_opt_step >= accumulate
                sync = ddp_model.no_sync() if (ctx.enabled and not do_step) else contextlib.nullcontext()
                with sync:
                    with torch.autocast(device_type=device.type, enabled=amp):
                        preds = ddp_model(imgs)
                        loss, loss_items = compute_loss(preds, targets.to(device))
                        if distiller is not None:
                            dloss, ditem = distiller(imgs, preds)
                            loss = loss + dloss
                            mdist = (mdist * i + ditem) / (i + 1)
                    if ctx.enabled:
                        loss = loss * world  # DDP averages gradients over ranks; YOLOv5's loss is a sum
                    scaler.scale(loss).backward()

                if do_step:
                    if pruner is not None and pruner.maybe_update(ni):
                        broadcast_masks(model, ctx)
                        enforcer.remove()
                        enforcer = enforce_masks(model, optimizer)
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=MAX_GRAD_NORM)
                    scaler.step(optimizer)  # enforce_masks: grads masked before, weights after
                    scaler.update()
                    optimizer.zero_grad()
                    if ema is not None:
                        ema.update(model)
                    last_opt_step = ni
                    step += 1
                    if step_callback is not None:
                        step_callback(model, ema, step)

                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"loss is {float(loss.detach())} at epoch {epoch} batch {i}; lower lr0")
                if ctx.is_main:
                    mloss = (mloss * i + loss_items) / (i + 1)
                    mem = f"{torch.cuda.memory_reserved(device) / 1e9 if device.type == 'cuda' else 0:.3g}G"
                    pbar.set_description(
                        ("%11s" * 2 + "%11.4g" * 6)
                        % (
                            f"{epoch}/{cfg.epochs - 1}",
                            mem,
                            *mloss.tolist(),
                            targets.shape[0],
                            imgs.shape[-1],
                            masked_sparsity(unwrap(model)),
                        )
                    )
            if ctx.is_main:
                pbar.close()

            # ---- end of epoch (rank 0): validate, checkpoint
            lrs = [g["lr"] for g in optimizer.param_groups]
            final_epoch = epoch + 1 == cfg.epochs
            if pruner is not None and final_epoch and not pruner.done:
                pruner.update(recipe.final)  # the window ended on a batch that was not an optimizer step
                broadcast_masks(model, ctx)
                if ema is not None:
                    ema.update(model)
            if ctx.is_main:
                row = {"epoch": epoch}
                row.update(zip(("box_loss", "obj_loss", "cls_loss"), mloss.tolist(), strict=True))
                if distiller is not None:
                    row["distill_loss"] = float(mdist)
                row.update({"P": 0.0, "R": 0.0, "mAP50": 0.0, "mAP50-95": 0.0})
                if not cfg.noval or final_epoch:
                    res = val_mod.run(
                        weights=str(cfg.weights),
                        data=cfg.data,
                        imgsz=cfg.imgsz,
                        batch_size=max(cfg.batch_size // world * 2, 1),
                        device=device,
                        workers=cfg.workers,
                        half=amp,
                        cocoeval=False,
                        model=copy.deepcopy(ema.ema),
                    )
                    row.update(P=float(res.precision), R=float(res.recall), mAP50=float(res.map50))
                    row["mAP50-95"] = float(res.map)
                row.update({f"lr{j}": lr for j, lr in enumerate(lrs)})
                row["sparsity"] = masked_sparsity(unwrap(model))
                history.append(row)
                fi = fitness(row["mAP50"], row["mAP50-95"])
                improved = fi > best_fitness or not best_pt.exists()
                best_fitness = max(fi, best_fitness)
                _write_results_csv(save_dir / "results.csv", history)
                meta = {
                    "epoch": epoch,
                    "best_fitness": best_fitness,
                    "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "mask_patterns": mask_patterns(model),
                    "optimizer": optimizer.state_dict(),
                    "ema_updates": ema.updates,
                    "train_args": cfg.as_dict(),
                    "pruning": pruning_record,
                    "channel_permutation": channel_order[1],
                    "pruner": pruner.state_dict() if pruner is not None else None,
                    "history": history,
                    "last_opt_step": last_opt_step,
                    "scaler": scaler.state_dict(),
                    "rng": _rng_state(loader.sampler),
                    "sparsity": row["sparsity"],
                    "date": datetime.datetime.now().isoformat(timespec="seconds"),
                }
                save_checkpoint(ema.ema, last_pt, **meta)
                if improved:
                    save_checkpoint(ema.ema, best_pt, **meta)
            barrier(ctx)

        epochs_run = cfg.epochs - start_epoch
        result = TrainResult(
            save_dir, last_pt, best_pt, epochs_run, best_fitness, history, model=model, ema=ema.ema if ema else None
        )
        if ctx.is_main:
            LOGGER.info("\n%d epochs completed in %.3f hours.", epochs_run, (time.time() - t_start) / 3600)
            for f in (best_pt, last_pt):  # last.pt last: until it is stripped, --resume can finish the run
                if f.exists():
                    _strip_training_state(f)
            if best_pt.exists():
                LOGGER.info("\nValidating %s...", best_pt)
                result.final = val_mod.run(
                    weights=str(best_pt),
                    data=cfg.data,
                    imgsz=cfg.imgsz,
                    batch_size=max(cfg.batch_size // world * 2, 1),
                    device=device,
                    workers=cfg.workers,
                    half=amp,
                    cocoeval=True,
                    model=load_training_model(best_pt).to(device),
                )
            LOGGER.info("Results saved to %s", save_dir)
        enforcer.remove()
        if distiller is not None:
            distiller.close()
        barrier(ctx)
        return result
    finally:
        cleanup(ctx)


def _checkpoint_meta(weights: str | Path) -> dict[str, Any]:
    try:
        return dict(load_checkpoint(weights).meta or {})
    except (CheckpointError, OSError, ValueError):  # an asset name load_training_model fetched: no sparseyolo meta
        return {}


def _channel_order(meta: dict[str, Any]) -> tuple[bool, dict[str, list[int]] | None]:
    """``(permuted, permutations)`` a checkpoint records: whether ``sparseyolo prune --permute`` reordered its
    channels, and how (``channel_permutation``, carried from file to file by fine-tuning), None when not recorded."""
    perms = meta.get("channel_permutation")
    permuted = bool(perms) or bool((meta.get("pruning") or {}).get("permute"))
    return permuted, perms or None


def _pruning_record(recipe: PruneConfig | None, start_meta: dict[str, Any], weights: str | Path,
                    pruned_here: bool) -> dict[str, Any] | None:
    """How the masks of this run's files were made (their ``meta["pruning"]``): the start file's record when its
    masks are kept as they are, else this run's recipe with the dense checkpoint it started from (``source``, which
    ``--teacher auto`` reads) and whether the channels were permuted before."""
    before = start_meta.get("pruning") or None
    if recipe is None:
        return before
    record = recipe.to_dict()
    if not record.get("source"):
        record["source"] = str(weights) if pruned_here else (before or {}).get("source")
    record["permute"] = bool(record.get("permute")) or bool((before or {}).get("permute"))
    return record


def _check_channel_order(channel_order: tuple[bool, dict[str, list[int]] | None], weights: str | Path) -> None:
    """Refuse feature imitation for a permuted student whose file does not say how its channels were permuted."""
    permuted, perms = channel_order
    if permuted and not perms:
        raise ParameterError(f"{weights} had its channels permuted (prune --permute) but does not record how, so its "
                             "features cannot be compared with the dense teacher's: prune it again with this version "
                             "(it records the permutation), or fine-tune with feature_distill 0", "feature_distill")


def _align_teacher(teacher: nn.Module, channel_order: tuple[bool, dict[str, list[int]] | None],
                   weights: str | Path) -> None:
    """Put the dense teacher's channels in the permuted student's order, so that their features compare."""
    _check_channel_order(channel_order, weights)
    perms = channel_order[1]
    if perms:
        apply_permutations(teacher, perms)
        LOGGER.info("feature distillation: the teacher's channels permuted as %s's (%d spaces)", weights, len(perms))


def freeze_batchnorm_statistics(model: nn.Module) -> int:
    """Put every BatchNorm layer of ``model`` in eval mode, so that training normalises with (and keeps) the running
    statistics the model was trained with instead of each batch's; its scale and shift still train. Returns how many
    layers it froze. Call after ``model.train()``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.eval()
    return len(bns)


def _write_results_csv(path: Path, history: list[dict[str, float]]) -> None:
    """Write ``results.csv`` through a temporary file, so a failed write leaves the previous one intact."""
    keys = list(history[0])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for row in history:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"could not write {path}: {e.strerror or e}") from e
