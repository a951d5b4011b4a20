"""The ``sparseyolo`` command line (also ``python -m sparseyolo``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

LOGGER = logging.getLogger("sparseyolo")


class _UserError(Exception):
    """A mistake in the command's arguments or inputs: printed as one line, no traceback."""


# sparseyolo.prune.METHODS, sparseyolo.prune.config.SOLVERS, the profile's default levels and
# sparseyolo.train.config.OPTIMIZERS, spelled here so that building the parser (and --help) does not import torch;
# tests/test_prune_tiles.py, tests/test_admm.py, tests/test_speedup_profile.py and tests/test_train_engine.py check
# that they agree.
_PRUNE_METHODS = ["l1", "global", "nm", "tile"]
_CALIB_SOLVERS = ["sparsegpt", "admm"]
_PROFILE_LEVELS = ["0.25", "0.5", "0.75"]
_OPTIMIZERS = ["SGD", "Adam", "AdamW"]


def _setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("sparseyolo")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _add_val_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "val",
        help="evaluate a checkpoint on a labelled dataset (YOLOv5 val.py metrics + pycocotools)",
        description="Evaluate a YOLOv5 checkpoint: P, R, mAP50, mAP50-95 as YOLOv5's val.py, then COCOeval.",
    )
    p.add_argument("--weights", required=True, help="checkpoint: Ultralytics *.pt, sparseyolo *.pt or a state_dict")
    p.add_argument("--data", required=True, help="data yaml (path/train/val/names), as Ultralytics")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=32, help="batch size")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", choices=["train", "val", "test", "speed"], help="split, or speed")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the model runs in bfloat16 on the CPU (dense layers on oneDNN, pruned convs on the "
                   "backend --sparsify names)")
    p.add_argument("--sparsify", default=None, metavar="BACKEND",
                   help="run the model through sparsify() first: auto, sparse, or a backend name (cpu_csr, cpu_block, "
                   "cpu_block_tiles ...); default: as loaded, pruned convs dense")
    p.add_argument("--verbose", action="store_true", help="per-class table")
    p.add_argument("--save-json", action="store_true", help="save predictions json (COCO results format)")
    p.add_argument("--coco-json", default=None, help="COCO instances json of the split (default: found under the dataset root)")
    p.add_argument("--no-cocoeval", dest="cocoeval", action="store_false", help="skip pycocotools COCOeval")
    p.add_argument("--nms", choices=["fused", "reference"], default="fused",
                   help="fused: the compiled sparseyolo::yolo_nms op; reference: torch + torchvision (same boxes)")
    p.add_argument("--prune", default="0", metavar="AMOUNT|N:M",
                   help="prune the fused model first: a fraction (e.g. 0.3) or an N:M pattern (e.g. 2:4)")
    p.add_argument("--prune-method", choices=_PRUNE_METHODS, default=None,
                   help="l1 per layer (default for an amount, YOLOv5's --prune), global magnitude, or nm (default for N:M)")
    p.add_argument("--project", default="runs/val", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.set_defaults(func=_cmd_val)


def _cmd_val(args: argparse.Namespace) -> int:
    from sparseyolo import val

    kwargs = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    LOGGER.info("val: " + ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    val.run(**kwargs)
    return 0


def _add_prune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a checkpoint (l1 / global magnitude / N:M masks) and save it compressed",
        description="Prune the Conv2d weights of a checkpoint, print the sparsity report and write a compressed "
        "sparseyolo checkpoint with the masks. Prunes the unfused model (BatchNorms kept) unless --fused.",
    )
    p.add_argument("--weights", required=True, help="checkpoint: Ultralytics *.pt, sparseyolo *.pt or a state_dict")
    p.add_argument("--method", choices=_PRUNE_METHODS, default=None,
                   help="l1 per layer, global magnitude, nm (N:M along input channels) or tile (16x32 channel tiles "
                   "of each tap, what the AMX CPU kernel skips); default: nm with --nm or --block, else l1")
    p.add_argument("--amount", type=float, default=None,
                   help="fraction of weights to prune, in [0, 1) (l1, global, tile)")
    p.add_argument("--nm", default=None, metavar="N:M", help="N:M pattern for --method nm, e.g. 2:4 (default 2:4)")
    p.add_argument("--block", "--nm-block", dest="block", type=int, default=1, metavar="B",
                   help="output channels sharing a pattern: nm, one N:M choice shared by B consecutive output "
                   "channels (the block-sparse CPU kernel skips work only for patterns shared by its 16-channel "
                   "blocks, and runs fastest, two blocks at once, when 32 channels share them; costs accuracy); "
                   "tile, the tiles' height, 16 or 32 (32 x 32 tiles: two blocks at once); default 1 (nm: per "
                   "row; tile: 16)")
    p.add_argument("--permute", action="store_true",
                   help="nm: first reorder input channels (folded into the weights; outputs unchanged) so that the "
                   "N:M groups keep more saliency: |w|, or with --calibrate w^2 times the input's mean square")
    p.add_argument("--include", nargs="+", default=None, metavar="PATTERN",
                   help="only prune layers whose name matches one of these fnmatch patterns (e.g. 'model.2*')")
    p.add_argument("--exclude", nargs="+", default=None, metavar="PATTERN", help="never prune layers matching these")
    p.add_argument("--fused", action="store_true",
                   help="fuse BatchNorms first and prune the fused weights (YOLOv5 val --prune's choice); the output "
                   "then cannot be fine-tuned with BN")
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default float16, as YOLOv5 releases)")
    p.add_argument("--out", required=True, help="output checkpoint path")
    c = p.add_argument_group("one-shot calibrated pruning (SparseGPT masks + weight updates, layer by layer)")
    c.add_argument("--calibrate", default=None, metavar="DATA",
                   help="data yaml whose train split (else val) gives the calibration images; with --method l1 "
                   "(per-layer unstructured --amount), nm or tile (both also with --block)")
    c.add_argument("--calib-images", type=int, default=128, help="number of calibration images (first in file order)")
    c.add_argument("--calib-img", type=int, default=640, help="calibration image size (pixels, rect letterbox)")
    c.add_argument("--calib-batch", type=int, default=8, help="calibration images per batch")
    c.add_argument("--blocksize", type=int, default=128, help="columns per lazy-update block of the solver")
    c.add_argument("--damp", type=float, default=0.01, help="Hessian dampening, fraction of its mean diagonal")
    c.add_argument("--bn-recalib", choices=["reset", "none"], default="none",
                   help="afterwards re-estimate BatchNorm running statistics on the calibration images (reset) or keep "
                   "the trained ones (none, default: better with the dense-output target, see README)")
    c.add_argument("--calib-target", choices=["dense", "layer"], default="dense",
                   help="fit each layer to the unpruned model's output (dense, default) or to its own unpruned output "
                   "on the pruned inputs (layer, plain SparseGPT)")
    c.add_argument("--calib-steps", type=int, default=None, metavar="K",
                   help="prune each layer in K increments, each followed by the refit (default: 1 for N:M, 3 for "
                   "unstructured and tiles; see README)")
    c.add_argument("--calib-solver", choices=_CALIB_SOLVERS, default="admm",
                   help="how each layer's mask is chosen: the whole mask at once by ADMM (admm, default: less "
                   "output error and more held-out mAP, docs/results.md) or column by column as SparseGPT (sparsegpt)")
    c.add_argument("--reconstruct", type=int, default=0, metavar="K",
                   help="afterwards train each stage's kept weights K Adam steps to reproduce the dense model's "
                   "stage output on the calibration images (stage reconstruction; 300 is a good start, minutes on "
                   "a CPU); default 0: none")
    c.add_argument("--reconstruct-lr", type=float, default=1e-3, metavar="LR",
                   help="initial learning rate of --reconstruct (cosine decay to 0)")
    c.add_argument("--no-refit", dest="refit", action="store_false",
                   help="keep SparseGPT's weights as they are; by default the kept weights (and a per-channel bias, "
                   "folded into the BatchNorm) are re-solved exactly once each layer's mask is chosen")
    s = p.add_argument_group("sparsity where it pays (with --calibrate; CPU: bf16 tile kernel with AMX, else fp32)")
    s.add_argument("--target-speedup", type=float, default=None, metavar="S",
                   help="instead of --amount: time every conv on this machine (dense and on the kernel at each of "
                   "--levels), calibrate each one's error at each level, and choose per conv the level that reaches "
                   "S x the faster compiled dense model (bf16 or fp32) at the least error; then measure the result")
    s.add_argument("--levels", nargs="+", default=_PROFILE_LEVELS, metavar="LEVEL",
                   help="what --target-speedup chooses from besides dense and 0: tile sparsities (0.5) and N:M "
                   "shared by B output channels (2:4b32, which the kernel without AMX runs fast; on yolov5n it "
                   "was no more accurate than tiles alone); default 0.25 0.5 0.75")
    s.add_argument("--search-iters", type=int, default=100, metavar="K",
                   help="profiles tried by the search over per-layer error coefficients, each scored by the model's "
                   "output distortion on a batch of calibration images (SPDY); 0: the plain summed-error choice")
    s.add_argument("--no-measure", dest="measure", action="store_false",
                   help="--target-speedup: skip timing the pruned model against the dense runtimes at the end")
    p.set_defaults(func=_cmd_prune)


def _cmd_prune(args: argparse.Namespace) -> int:
    import copy

    import torch

    from sparseyolo.checkpoint import load_model, save_checkpoint
    from sparseyolo.prune import PruneConfig, prune, sparsity_report

    cfg = PruneConfig.from_cli_args(args)
    model = load_model(args.weights, fuse=args.fused)
    batches = _calibration_batches(model, cfg) if cfg.calibrate else None
    permutation = _permute(model, cfg, batches) if cfg.permute else None
    profile = None
    # the unpruned model (permuted as the pruned one): what reconstruction reproduces and the profile is timed against
    dense_copy = copy.deepcopy(model) if cfg.reconstruct or (cfg.target_speedup is not None and args.measure) else None
    if cfg.target_speedup is not None:
        profile = _speedup_profile(model, cfg, batches)
        cfg.layer_amounts = profile.amounts()
    if cfg.calibrate:
        report = _calibrated_prune(model, cfg, batches)
        cfg.calib_images = report.calib_images  # the images there were, recorded
        if cfg.reconstruct:
            from sparseyolo.prune.reconstruct import reconstruct_stages

            print(reconstruct_stages(model, dense_copy, batches, iters=cfg.reconstruct, lr=cfg.reconstruct_lr).table())
    else:
        report = prune(model, cfg.method, **cfg.prune_kwargs())
    dtype = torch.float32 if args.fp32 else torch.float16
    print(sparsity_report(model, dtype=dtype, skipped=report.skipped).table())
    extra = {"channel_permutation": permutation} if permutation else {}
    path = save_checkpoint(model.to(dtype), args.out, pruning=cfg.to_dict(), **extra)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if profile is not None and args.measure:
        _measure_profile(dense_copy, path, profile)
    return 0


def _speedup_profile(model, cfg, batches):
    import torch

    from sparseyolo import ops
    from sparseyolo.prune import select_layers
    from sparseyolo.prune.levels import level_label
    from sparseyolo.prune.sensitivity import layer_variants, model_outputs, output_distortion
    from sparseyolo.sparse.speedup_profile import (anchor_level, kernel_layers, layer_latencies, measure_anchors,
                                                   profile_kernel, search_profile)

    names = {name for name, _ in select_layers(model, "tile", 4, cfg.include, cfg.exclude)[0]}
    backend, dtype = profile_kernel()
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    top = anchor_level(cfg.levels)
    print(f"speedup profile: timing {len(names)} convs alone, dense and on the {backend} kernel in {precision} (CPU "
          f"path {ops.cpu_isa()}) at levels {', '.join(map(level_label, cfg.levels))} ...")
    latencies = layer_latencies(model, cfg.levels, names=names)
    if not kernel_layers(latencies):
        raise _UserError(f"no conv runs faster on the {backend} kernel than on oneDNN on this CPU (kernel path: "
                         f"{ops.cpu_isa()}), at any level offered. Prune with --nm 2:4 or --method tile "
                         "--amount instead, and time it with sparseyolo bench")
    print(f"speedup profile: compiling and timing three whole models (dense; kernel at 0 and {level_label(top)}) "
          "...")
    anchors = measure_anchors(model, latencies, top)
    print(f"  dense {precision} {anchors.dense_ms:.2f} ms (fastest dense, fp32 or bf16: {anchors.target_base_ms:.2f} "
          f"ms), kernel {anchors.kernel_ms:.2f} ms, {level_label(top)} {anchors.sparse_ms:.2f} ms "
          f"({len(anchors.kernel_layers)} convs the kernel runs faster)")
    variants = layer_variants(model, batches, cfg.levels, cfg.include, cfg.exclude, steps=cfg.steps, damp=cfg.damp,
                              solver=cfg.calib_solver)
    images = [b[0] if isinstance(b, (tuple, list)) else b for b in batches][:1]  # one batch scores a profile
    reference = model_outputs(model, images)

    def distortion(amounts):
        return output_distortion(variants.stitch(model, amounts), images, reference)

    if cfg.search_iters:
        print(f"speedup profile: searching {cfg.search_iters} profiles, each scored on {int(images[0].shape[0])} "
              "calibration images ...")
    profile = search_profile(latencies, variants.errors, anchors, cfg.target_speedup, distortion,
                             iters=cfg.search_iters)
    print(profile.table())
    return profile


def _measure_profile(model, path, profile) -> None:
    from sparseyolo.bench import run_bench
    from sparseyolo.checkpoint import load_model
    from sparseyolo.sparse.speedup_profile import compiled_model_ms, profile_kernel

    backend, dtype = profile_kernel()
    print("measuring the pruned model and the dense one (fp32 and bf16), compiled, back to back (as the "
          "prediction) ...")
    ms = compiled_model_ms({"dense": model, "pruned": load_model(str(path), fuse=False)})
    profile.measured_speedup = ms["dense"] / ms["pruned"]
    print(f"  dense {ms['dense']:.2f} ms (bf16 {ms['dense bf16']:.2f}, fp32 {ms['dense fp32']:.2f}), pruned "
          f"{ms['pruned']:.2f} ms: {ms['dense'] / ms['pruned']:.2f}x (target {profile.target_speedup:g}x, predicted "
          f"{profile.predicted_speedup:.2f}x)")
    print("measuring the pruned model against every dense runtime, interleaved with them ...")
    result = run_bench(str(path), dtype=dtype, plots=False, progress=False, reps=15, sparse_backend=backend,
                       compiled_variant="sparse")
    print(result.table())
    row = next(r for r in result.rows if r.name == "sparsify (sparse) compiled")
    print(f"target {profile.target_speedup:g}x, predicted {profile.predicted_speedup:.2f}x; measured "
          f"{ms['dense'] / ms['pruned']:.2f}x back to back, {result.dense_ms / row.ms:.2f}x of the fastest dense "
          f"runtime ({result.fastest_dense.name}, {result.dense_ms:.2f} ms) interleaved with every runtime")


def _calibration_batches(model, cfg):
    from sparseyolo.prune.calibration_data import calibration_batches

    stride = int(max(model.stride)) if hasattr(model, "stride") else 32
    return calibration_batches(cfg.calibrate, cfg.calib_images, cfg.calib_img, cfg.calib_batch, stride)


def _permute(model, cfg, batches) -> dict[str, list[int]]:
    """Permute ``model``'s channels for cfg's N:M pattern; returns the permutations (kept in the checkpoint's meta
    as ``channel_permutation``, so that fine-tuning can put a dense teacher's features in the same order)."""
    from sparseyolo.prune import select_layers
    from sparseyolo.prune.permute import activation_energy, permute_channels

    chosen = {mod for _, mod in select_layers(model, "nm", cfg.m, cfg.include, cfg.exclude)[0]}
    energy = activation_energy(model.eval(), batches) if batches is not None else None
    report = permute_channels(model, cfg.n, cfg.m, block=cfg.block, energy=energy, layers=chosen.__contains__)
    return report.perms


def _calibrated_prune(model, cfg, batches):
    from sparseyolo.prune.calibrated import calibrated_prune

    kwargs = cfg.prune_kwargs()
    if cfg.layer_amounts is not None:  # a speedup profile: one level per conv
        kwargs = {"amounts": cfg.layer_amounts}
    report = calibrated_prune(model, batches, blocksize=cfg.blocksize, damp=cfg.damp,
                              bn_recalibration=cfg.bn_recalib, target=cfg.calib_target, refit=cfg.refit,
                              steps=cfg.steps, method=cfg.method, solver=cfg.calib_solver, **kwargs)
    return report  # its summary is logged by calibrated_prune


def _add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a (pruned) checkpoint with its masks enforced; also under torchrun (DDP)",
        description="YOLOv5 training (hyp.scratch-low recipe) that keeps pruning masks: pruned weights stay exactly "
        "zero after every step. A pruned sparseyolo checkpoint keeps its masks; otherwise the model is pruned "
        "first (--prune-method), or gradually along a cubic schedule (--gradual). Multi-process: "
        "torchrun --nproc_per_node K -m sparseyolo finetune ...",
    )
    p.add_argument("--weights", default=None, help="checkpoint: Ultralytics *.pt, sparseyolo *.pt (masks kept) or a state_dict")
    p.add_argument("--data", default=None, help="data yaml with train and val splits, as Ultralytics")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640, help="train and val size (pixels)")
    p.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=16, help="total batch size, all processes")
    p.add_argument("--nbs", type=int, default=64, help="nominal batch size: gradients are accumulated to it")
    p.add_argument("--lr0", type=float, default=0.01, help="initial learning rate")
    p.add_argument("--lrf", type=float, default=0.01, help="final learning rate as a fraction of lr0")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR decay (default linear)")
    p.add_argument("--warmup-epochs", type=float, default=3.0, help="warm-up epochs (at least 100 batches; 0 disables)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--no-mosaic", dest="mosaic", action="store_false", help="disable 4-image mosaic augmentation")
    p.add_argument("--prune-method", choices=_PRUNE_METHODS, default=None,
                   help="prune before (or, with --gradual, during) training: l1 per layer, global magnitude, nm, or "
                   "tile (16 x 32 channel tiles of each tap)")
    p.add_argument("--amount", type=float, default=None, help="final sparsity in (0, 1) for l1/global/tile")
    p.add_argument("--nm", default=None, metavar="N:M", help="N:M pattern for --prune-method nm (default 2:4)")
    p.add_argument("--block", "--nm-block", dest="block", type=int, default=1, metavar="B",
                   help="output channels sharing a pattern, as sparseyolo prune's --block: nm, one N:M choice shared "
                   "by B consecutive output channels (with --gradual the pattern reaches whole blocks at a time); "
                   "tile, the tiles' height, 16 or 32; needs an unpruned start (default 1)")
    p.add_argument("--include", nargs="+", default=None, metavar="PATTERN", help="only prune layers matching these")
    p.add_argument("--exclude", nargs="+", default=None, metavar="PATTERN", help="never prune layers matching these")
    p.add_argument("--gradual", action="store_true", help="gradual magnitude pruning (Zhu & Gupta cubic schedule)")
    p.add_argument("--prune-start", type=int, default=0, help="--gradual: first epoch of the pruning window")
    p.add_argument("--prune-end", type=int, default=None, help="--gradual: the final sparsity is reached by the end "
                   "of epoch prune-end - 1 (default: half of --epochs, at least 1)")
    p.add_argument("--initial-sparsity", type=float, default=0.0, help="--gradual: sparsity at --prune-start")
    p.add_argument("--prune-freq", type=int, default=0, help="--gradual: batches between mask updates (0: 4 per epoch)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="LAST_PT",
                   help="resume a run from its weights/last.pt (default: the newest under --project)")
    p.add_argument("--teacher", default="auto", metavar="WEIGHTS",
                   help="dense checkpoint to distil from (head outputs, objectness-weighted); 'auto' (default): the "
                   "weights themselves when pruned in this run, else the dense source a pruned checkpoint records "
                   "when that file is here; 'none': labels only")
    p.add_argument("--distill", type=float, default=1.0, metavar="W",
                   help="weight of the distillation term relative to the detection loss (default 1.0)")
    p.add_argument("--feature-distill", type=float, default=0.0, metavar="W",
                   help="with a teacher, also imitate its intermediate features (every Conv/C3/SPPF block's output, "
                   "relative squared error) with this weight (default 0: off)")
    p.add_argument("--optimizer", choices=_OPTIMIZERS, default="SGD",
                   help="SGD (nesterov, default) or Adam/AdamW with betas (momentum, 0.999), as YOLOv5's")
    p.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm layers keep and normalise with their running statistics (their scale and shift "
                   "still train)")
    p.add_argument("--noval", action="store_true", help="validate only after the final epoch")
    p.add_argument("--single-cls", action="store_true", help="train as a single class")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu (under torchrun: each rank its LOCAL_RANK)")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers per process")
    p.add_argument("--project", default="runs/finetune", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing it")
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    import os

    from sparseyolo.prune import PruneConfig
    from sparseyolo.train import TrainConfig, train
    from sparseyolo.train.loss import LossGains

    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 reports
        logging.getLogger("sparseyolo").setLevel(logging.WARNING)
    if args.resume:
        cfg = TrainConfig(resume=args.resume, device=args.device, workers=args.workers, project=args.project)
        LOGGER.info("finetune: resume=%s", args.resume)
        train(cfg)
        return 0
    if not args.weights or not args.data:
        raise _UserError("--weights and --data are required (unless --resume)")
    recipe = PruneConfig.from_cli_args(args, epochs=args.epochs)
    cfg = TrainConfig(
        weights=args.weights,
        data=args.data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch_size=args.batch_size,
        nbs=args.nbs,
        lr0=args.lr0,
        lrf=args.lrf,
        cos_lr=args.cos_lr,
        warmup_epochs=args.warmup_epochs,
        loss=LossGains(label_smoothing=args.label_smoothing),
        mosaic=args.mosaic,
        prune=recipe,
        device=args.device,
        workers=args.workers,
        project=args.project,
        name=args.name,
        exist_ok=args.exist_ok,
        seed=args.seed,
        noval=args.noval,
        single_cls=args.single_cls,
        teacher=args.teacher,
        distill=args.distill,
        feature_distill=args.feature_distill,
        freeze_bn=args.freeze_bn,
        optimizer=args.optimizer,
    )
    LOGGER.info("finetune: " + ", ".join(f"{k}={v}" for k, v in vars(args).items() if k not in ("func", "command")))
    train(cfg)
    return 0


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline end-to-end demo: dense vs l1 30%% vs 2:4 (one-shot, calibrated, recovered, shared by 32 "
        "channels) vs global 75%%; "
        "one table + plots",
        description="Prune a detector several ways, calibrate and fine-tune the 2:4 one with its masks, and print one "
        "table: "
        "mAP50-95 (pycocotools), checkpoint size, CPU latency dense vs sparsify(auto), speedup. By default it uses "
        "the small checkpoint shipped with the package and a generated synthetic shapes dataset, so it runs "
        "offline in a few minutes on 2 CPU cores; --weights/--data run the same steps on a real model.",
    )
    p.add_argument("--weights", default=None, help="checkpoint (default: the packaged synthetic-shapes model)")
    p.add_argument("--data", default=None, help="data yaml with val (and train, for the fine-tune) splits "
                   "(default: a synthetic shapes dataset generated under --out)")
    p.add_argument("--out", default="runs/demo", help="output folder: data, checkpoints, table.txt, plots")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=None,
                   help="inference size (default: 128 for the synthetic data, else 640)")
    p.add_argument("--bench-img", dest="bench_imgsz", type=int, default=None,
                   help="size latency is timed at (default: 320 for the synthetic data, where the model evaluates at "
                   "128, too small for any sparse kernel to pay; else --img)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write the PNG figures")
    p.add_argument("--calib-images", type=int, default=64,
                   help="train images for the one-shot calibrated 2:4 row (0 skips it)")
    p.add_argument("--finetune-epochs", type=int, default=3, help="masked fine-tune epochs of '2:4 recovered' (0 skips)")
    p.add_argument("--finetune-batches", type=int, default=None, help="batches per fine-tune epoch (default: all)")
    p.add_argument("--global-amount", type=float, default=0.75, help="sparsity of the global-magnitude row (0 skips)")
    p.add_argument("--n-val", type=int, default=100, help="synthetic val images to generate")
    p.add_argument("--n-train", type=int, default=128, help="synthetic train images for calibration and the fine-tune")
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                   help="with --plots, also evaluate more one-shot sparsities for the mAP-vs-sparsity curves")
    p.add_argument("--reps", type=int, default=15, help="timed forwards per latency (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=16, help="val and fine-tune batch")
    p.add_argument("--workers", type=int, default=1, help="dataloader workers")
    p.add_argument("--verbose", action="store_true", help="also show the val reports and training progress")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from sparseyolo.demo import DemoConfig, run_demo

    if args.bench_imgsz is not None and args.bench_imgsz < 32:
        raise _UserError(f"--bench-img must be >= 32, got {args.bench_imgsz}")
    if args.finetune_epochs < 0 or args.n_val < 1 or args.n_train < 0 or args.calib_images < 0:
        raise _UserError("--finetune-epochs, --calib-images and --n-train must be >= 0 and --n-val >= 1")
    if not 0.0 <= args.global_amount < 1.0:
        raise _UserError(f"--global-amount must be in [0, 1), got {args.global_amount}")
    if args.weights and not args.data:
        raise _UserError("--weights needs --data (a dataset with the checkpoint's classes)")
    cfg = DemoConfig(
        weights=args.weights, data=args.data, out=args.out, imgsz=args.imgsz, bench_imgsz=args.bench_imgsz,
        n_val=args.n_val, n_train=args.n_train,
        calib_images=args.calib_images, finetune_epochs=args.finetune_epochs, finetune_batches=args.finetune_batches,
        global_amount=args.global_amount, plots=args.plots, sweep=args.sweep, reps=args.reps, threads=args.threads,
        batch_size=args.batch_size, workers=args.workers,
    )
    result = run_demo(cfg, verbose=args.verbose)
    print()
    print(result.table())
    print(f"\n{result.out}: table.txt" + "".join(f", {p.name}" for p in result.plots)
          + f"; {result.seconds:.0f} s in all")
    return 0


def _add_sparsify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sparsify",
        help="show what sparsify() does with a pruned checkpoint on this machine: per-layer kernel choice and timings",
        description="Fold BatchNorms and put the checkpoint's pruned convs on the sparse kernel (sparseyolo.sparsify), "
        "then print the per-layer report: sparsity, pattern, dense vs sparse ms per layer, the kernel chosen and why. "
        "With --backend auto the choice is timed on this machine (and the whole model is checked against dense).",
    )
    p.add_argument("--weights", required=True, help="a pruned checkpoint (sparseyolo prune --out ...)")
    p.add_argument("--backend", default="auto",
                   help="auto (time every applicable backend per layer), sparse (the default sparse backend), dense, "
                   "or a backend name: cpu_csr, cpu_block, cpu_block_tiles, cuda_mma_sp ...")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="the model's precision on the CPU (bf16: the block-sparse kernel, AMX tiles where the CPU has it)")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640, help="input size the layers are timed at")
    p.add_argument("--batch", type=int, default=1, help="input batch the layers are timed at")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per layer and side (auto)")
    p.set_defaults(func=_cmd_sparsify)


def _cmd_sparsify(args: argparse.Namespace) -> int:
    import torch

    from sparseyolo.checkpoint import load_model
    from sparseyolo.sparse import sparsify

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.weights, fuse=False).float()
    dtype = _dtypes()[args.dtype]
    x = torch.rand(args.batch, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0)).to(dtype)
    fast = sparsify(model, backend=args.backend, example_input=x, reps=args.reps, dtype=dtype)
    report = fast.sparsify_report
    if not report.layers:
        raise _UserError(f"{args.weights} has no pruned convs (no weight_mask buffers): prune it first with "
                         "'sparseyolo prune'")
    print(report.table())
    return 0


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="latency of a checkpoint: every dense runtime (PyTorch fp32/bf16, onnxruntime, OpenVINO) vs sparsify",
        description="Time a checkpoint's forward pass dense and sparsified on this machine (medians, interleaved "
        "rounds) and print one table with speedups over the fastest dense runtime; --plots (default on) "
        "writes bench_latency.png and, for a pruned checkpoint, bench_layer_speedup.png.",
    )
    p.add_argument("--weights", required=True, help="checkpoint (dense or pruned)")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640, help="input size (pixels)")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--device", default="cpu", help="cpu, or a CUDA device (cuda, 0): fp16, GPU sparse backends")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--reps", type=int, default=20, help="timed forwards per variant (median)")
    p.add_argument("--burst", type=int, default=2,
                   help="forwards of a variant back to back per round, the first untimed, so none is timed right "
                   "after another variant's (default 2; 1: one timed forward per round)")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="include the exported model's runtimes: onnxruntime and OpenVINO (CPU; pip install .[bench])")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="the sparse variants' precision: CPU fp32 (default) or bf16; GPU fp16")
    p.add_argument("--compile", dest="compiled", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: also time the dense model (fp32 and bf16) and the sparsify(auto) model through "
                        "torch.compile (Inductor, freezing; the fastest dense runtime on the CPUs measured); "
                        "compiling takes seconds to a minute per model")
    p.add_argument("--backend", default="sparse", metavar="NAME",
                   help="backend of the 'sparsify (sparse)' row (default: the device's sparse backend); another one, "
                   "e.g. cpu_block_tiles for a --target-speedup checkpoint made on a CPU with AMX (cpu_block, "
                   "--dtype fp32, without), is also the model the compiled row "
                   "compiles (instead of auto's)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write the PNG figures")
    p.add_argument("--out", default="runs/bench", help="folder for the plots")
    p.set_defaults(func=_cmd_bench)


def _dtypes() -> dict:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cmd_bench(args: argparse.Namespace) -> int:
    from sparseyolo.bench import run_bench

    if args.batch < 1 or args.imgsz < 32 or args.reps < 1:
        raise _UserError("--batch and --reps must be >= 1 and --img >= 32")
    result = run_bench(args.weights, imgsz=args.imgsz, batch=args.batch, device=args.device, threads=args.threads,
                       reps=args.reps, onnx=args.onnx, plots=args.plots, out=args.out,
                       dtype=_dtypes()[args.dtype] if args.dtype else None, compiled=args.compiled,
                       sparse_backend=args.backend, compiled_variant="auto" if args.backend == "sparse" else "sparse",
                       burst=args.burst)
    print(result.table())
    if result.plots:
        print("plots: " + ", ".join(str(p) for p in result.plots))
    return 0


#: Library parameter names that no option's dest spells, per command (see :func:`_flag_names`).
_FLAG_ALIASES: dict[str, dict[str, str]] = {
    "prune": {"n:m": "--nm N:M"},
    "finetune": {"n:m": "--nm N:M", "method": "--prune-method", "start": "--prune-start", "end": "--prune-end",
                 "initial": "--initial-sparsity", "freq": "--prune-freq"},
}


def _flag_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """``{library parameter: flag}`` of one command: each option's dest (``conf_thres`` -> ``--conf-thres``,
    ``batch_size`` -> ``--batch``), plus :data:`_FLAG_ALIASES`. Library errors
    (:class:`~sparseyolo.utils.errors.ParameterError`) name parameters; the CLI reports them with these."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    names = {}
    for action in sub._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in names:
            names[action.dest] = longs[0]
    names.update(_FLAG_ALIASES.get(command, {}))
    return names


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a dense or pruned checkpoint to ONNX (and OpenVINO IR), checked against PyTorch",
        description="Fold BatchNorms and write ONNX with the Detect head's decoded output [N, anchors, 5+nc] (as "
        "Ultralytics' export), pruned zeros kept exactly; then check the zeros and that onnxruntime's output "
        "equals PyTorch's. --format openvino also writes OpenVINO IR (fp32) beside it.",
    )
    p.add_argument("--weights", required=True, help="checkpoint: Ultralytics *.pt, sparseyolo *.pt or a state_dict")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640, help="square input size (pixels)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the graph (the example batch with --dynamic)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch axis")
    p.add_argument("--format", dest="fmt", choices=["onnx", "openvino"], default="onnx",
                   help="onnx, or openvino (ONNX, then <name>_openvino_model/ beside it; needs openvino)")
    p.add_argument("--out", default=None, help="ONNX file to write (default: <weights name>.onnx here)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the file with onnxruntime/OpenVINO (the zero check still runs)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from sparseyolo.export import ExportError, run_export

    try:
        result = run_export(args.weights, imgsz=args.imgsz, batch=args.batch, dynamic=args.dynamic, fmt=args.fmt,
                            out=args.out, check=args.check, progress=args.progress)
    except ExportError as e:
        raise _UserError(str(e)) from None
    print(result.summary())
    return 0


def _add_detect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="detect objects in images or a folder: boxes drawn, labels/*.txt and detections.json written",
        description="Run a dense or pruned checkpoint on images as Ultralytics' detect.py does (letterbox, NMS) and "
        "write the annotated images, one txt per image (class xc yc w h conf, normalised) and detections.json to "
        "--out. Files OpenCV cannot read are reported and skipped. CPU.",
    )
    p.add_argument("--weights", required=True, help="checkpoint: Ultralytics *.pt, sparseyolo *.pt or a state_dict")
    p.add_argument("--source", required=True, help="an image, a folder of images, or a .txt list of images")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--sparsify", nargs="?", const="auto", default=None, choices=["auto", "sparse"],
                   help="run sparseyolo.sparsify on the model first: auto (default when given: per layer the faster "
                   "kernel, timed here) or sparse (every pruned conv on the sparse kernel)")
    p.add_argument("--out", default="runs/detect/exp", help="output folder")
    p.add_argument("--nosave", action="store_true", help="do not write the annotated images")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    p.set_defaults(func=_cmd_detect)


def _cmd_detect(args: argparse.Namespace) -> int:
    from sparseyolo.detect import run_detect

    result = run_detect(args.weights, args.source, imgsz=args.imgsz, conf_thres=args.conf_thres,
                        iou_thres=args.iou_thres, max_det=args.max_det, sparsify=args.sparsify, out=args.out,
                        save_images=not args.nosave, progress=args.progress)
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseyolo", description="Prune YOLOv5 detectors; make sparsity fast.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_val_parser(sub)
    _add_prune_parser(sub)
    _add_finetune_parser(sub)
    _add_sparsify_parser(sub)
    _add_bench_parser(sub)
    _add_demo_parser(sub)
    _add_export_parser(sub)
    _add_detect_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging()
    from sparseyolo.utils.memory import configure_from_env

    configure_from_env()  # freed activations stay in the heap: no page faults per forward (SPARSEYOLO_MALLOC)
    from sparseyolo.checkpoint import CheckpointError
    from sparseyolo.utils.errors import ParameterError

    try:
        return args.func(args)
    except ParameterError as e:  # named in API terms: say it with this command's flags
        print(f"sparseyolo {args.command}: error: {e.rename(_flag_names(parser, args.command))}", file=sys.stderr)
        return 2
    except (_UserError, CheckpointError, OSError, ValueError) as e:  # OSError: unwritable output, disk full
        print(f"sparseyolo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
