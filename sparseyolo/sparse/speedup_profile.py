"""Sparsity where it pays: a per-layer sparsity profile that reaches a target speedup at the least error.

SPDY's idea (Frantar & Alistarh, 2022) on this project's CPU kernel. The levels a conv may take
(:mod:`sparseyolo.prune.levels`) are tile sparsities (:data:`DEFAULT_LEVELS`) and, on request, N:M shared by a block
of output channels (``"2:4b32"``, which the kernel without AMX runs as twin blocks). Measurements, then a choice:

1. :func:`layer_latencies`: each conv's time on THIS machine, on its input shape: dense as a frozen
   ``torch.compile``'d model runs it (oneDNN with a prepacked weight and the activation fused,
   ``mkldnn._convolution_pointwise``), and on the kernel that skips pruned tiles at tile sparsity 0 and at each
   level (its mask made by magnitude, :func:`profile_mask`; a level that prunes nothing is level 0 and is not
   timed apart), channels-last. The kernel and its precision come from :func:`profile_kernel`: with AMX, bf16
   tiles (backend ``"cpu_block_tiles"``); without, fp32 on ``"cpu_block"`` (a pruned 16 x 32 tile is 32 input rows
   skipped by a block of 16 output channels), because there oneDNN's bf16 convs ran ~1.6x slower than its fp32 ones
   and a bf16 pruned model keeps its dense layers in the slow precision. Variants of one layer are timed
   interleaved.
2. :func:`measure_anchors`: three whole models compiled and timed back to back: dense; every conv the kernel runs
   faster than oneDNN at some level, on the kernel with nothing pruned; the same convs at the top tile level
   (:func:`anchor_level`; the in-model factor fitted there scales every level's savings); and, as
   the bar the target is measured against, the dense model in fp32 as well: on a CPU whose bf16 convolutions run
   on AVX-512 BF16 alone (no AMX) oneDNN's fp32 model was ~1.6x faster than its bf16 one. Layers
   timed alone miss what a model adds (colder caches, the glue Inductor generates around a custom op): on yolov5n
   the convs' in-model time is 1.1-1.4x their time alone, and the glue changes too. The anchors scale the
   per-layer savings so that the prediction is exact at those three models.
3. :func:`sparseyolo.prune.sensitivity.layer_variants`: each conv pruned alone at each level (calibrated): its
   relative output error and its pruned weights.
4. :func:`choose_profile`: per conv one option (dense; the kernel with nothing pruned; the kernel at a level), by
   a dynamic program over the convs minimising the weighted sum of errors subject to the predicted model time
   being at most ``dense_ms / target``. The kernel with nothing pruned costs no accuracy, so every conv it runs
   faster than oneDNN takes at least that.
5. :func:`search_profile`: errors of different convs are not worth the same, so the weights are searched, each
   candidate profile scored by the output distortion of the model stitched from the per-conv variants.

Between the anchors the prediction is linear in the per-layer savings (on yolov5n within 3% at 1.3x, 7%
optimistic at 1.4x), and the variants are of layers pruned alone: both are approximations, which is why
``sparseyolo prune --target-speedup`` measures the pruned model end to end and reports it next to the prediction,
and why accuracy is measured with ``sparseyolo val``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sparseyolo.prune.levels import (Level, NMBlock, canonical_level, level_fits, level_label, level_order,
                                     level_pattern, parse_level)
from sparseyolo.prune.masks import set_mask
from sparseyolo.prune.methods import nm_magnitude_mask
from sparseyolo.prune.tiles import expand_tiles, tile_norms
from sparseyolo.sparse.autotune import disagreement
from sparseyolo.sparse.backends import ConvGeometry, get_backend
from sparseyolo.sparse.convert import layer_input_shapes
from sparseyolo.sparse.folding import Plan, conv_plan, find_plans
from sparseyolo.sparse.modules import SparseConv2d
from sparseyolo.utils import timing

LOGGER = logging.getLogger(__name__)

__all__ = ["DEFAULT_LEVELS", "LayerLatency", "ModelAnchors", "ProfileRow", "SpeedupProfile", "anchor_level",
           "choose_profile", "compiled_model_ms", "kernel_layers", "layer_latencies", "measure_anchors",
           "profile_kernel", "profile_mask", "profile_tile_mask", "search_profile"]

#: Tile sparsities a profile chooses from by default (besides dense and the kernel with no tile pruned). Offering
#: 2:4 shared by 32 output channels besides (``"2:4b32"``: on a CPU without AMX 1.53x of oneDNN over yolov5s's convs
#: against 1.29x for tiles 50%, at a calibrated per-conv error below tiles 50%'s on 50 of yolov5n's 52 convs) lowered
#: the searched profiles' output distortion by 10-30% but not their held-out mAP (yolov5n at 1.1-1.3x, the same
#: measurements for both: benchmarks/results/profile_levels_ab_yolov5n.md), so it is not a default.
DEFAULT_LEVELS = (0.25, 0.5, 0.75)
#: The backend whose work falls with tile sparsity on a CPU with AMX (bf16).
TILE_BACKEND = "cpu_block_tiles"
#: The same on other CPUs: fp32, whole input rows skipped by a block of 16 output channels.
ROWS_BACKEND = "cpu_block"
DENSE = "dense"
DENSE_BF16, DENSE_FP32 = "dense bf16", "dense fp32"  # compiled_model_ms's two dense models


@dataclass
class LayerLatency:
    """One conv's measured times (ms): ``dense_ms`` (oneDNN as the compiled model runs it) and ``kernel_ms``
    (``{level: ms}`` on the kernel, 0.0 included; a level the conv cannot take is absent)."""

    name: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    dense_ms: float
    kernel_ms: dict[Level, float]


def _prepacked_dense(weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry, activation: str,
                     x: torch.Tensor):
    """The conv as a frozen compiled bf16 model runs it: oneDNN, weight reordered once, activation fused."""
    w = weight.to(x.dtype)
    b = None if bias is None else bias.to(x.dtype)
    pad, stride = list(g.padding), list(g.stride)
    if not torch.backends.mkldnn.is_available():  # a torch without oneDNN: plain conv + activation
        act = nn.SiLU() if activation == "silu" else nn.Identity()
        return lambda: act(torch.nn.functional.conv2d(x, w, b, stride, pad))
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, pad, stride, [1, 1], 1, list(x.shape))
    attr = {"silu": "swish", "identity": "none"}[activation]
    return lambda: torch.ops.mkldnn._convolution_pointwise(x, packed, b, pad, stride, [1, 1], 1, attr, [None], "")


def profile_kernel() -> tuple[str, torch.dtype]:
    """The backend and precision a profile times and a ``--target-speedup`` model runs on this CPU: bf16 tiles on
    AMX (:data:`TILE_BACKEND`), else fp32 (:data:`ROWS_BACKEND`; see the module docstring)."""
    from sparseyolo import ops

    dtype = torch.bfloat16 if ops.cpu_isa() == "amx" else torch.float32
    return _backend_for(dtype), dtype


def anchor_level(levels: Sequence[Level]) -> Level:
    """The level :func:`measure_anchors` times the whole model at: the top tile sparsity, else the first level."""
    tiles = [float(v) for v in map(parse_level, levels) if not isinstance(v, NMBlock)]
    return max(tiles) if tiles else canonical_level(levels[0])


def profile_mask(weight: torch.Tensor, level: Level) -> torch.Tensor | None:
    """A mask of the kind calibrated pruning makes at ``level``, for timing (the time depends on the pattern, not
    on which weights): :func:`profile_tile_mask` for a tile sparsity, the magnitude N:M-block mask for an N:M
    level; None where the conv cannot take the level (input channels not a multiple of M)."""
    if not level_fits(level, weight.shape[1]):
        return None
    p = parse_level(level)
    return nm_magnitude_mask(weight, p.n, p.m, p.block) if isinstance(p, NMBlock) else profile_tile_mask(weight, p)


def profile_tile_mask(weight: torch.Tensor, level: float) -> torch.Tensor:
    """A tile mask of the kind calibrated tile pruning makes at ``level``, for timing: the ``round(level * tiles)``
    smallest tiles pruned, except that every block of 16 output channels keeps at least one tile (as
    :func:`sparseyolo.prune.obs.group_obs_mask` does), so a layer of one tile per tap is never emptied and its
    time is never that of a conv that does nothing."""
    scores = tile_norms(weight)
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.sort(scores.flatten(), stable=True).indices[:round(float(level) * scores.numel())]] = False
    per_block, block_scores = keep.view(scores.shape[0], -1), scores.reshape(scores.shape[0], -1)
    emptied = ~per_block.any(dim=1)
    per_block[emptied, block_scores[emptied].argmax(dim=1)] = True
    return expand_tiles(keep.view(scores.shape), weight.shape)


@torch.no_grad()
def layer_latencies(
    model: nn.Module,
    levels: Sequence[float] = DEFAULT_LEVELS,
    example_input: torch.Tensor | None = None,
    reps: int = 25,
    dtype: torch.dtype | None = None,
    names: set[str] | None = None,
) -> dict[str, LayerLatency]:
    """Time every conv the kernel can run, dense and at each level (see the module docstring).

    Args:
        model: the model (unfused or fused; pruned or not: the time depends on the pattern and the share pruned,
            so each level is timed on the layer's weight with :func:`profile_mask`'s mask). Not changed.
        levels: tile sparsities in ``(0, 1)`` and N:M-block levels (:mod:`sparseyolo.prune.levels`); 0 (nothing
            pruned) is always timed.
        example_input: the model input whose layer shapes are timed (default ``1x3x640x640``).
        reps: timed calls per variant and round (median; best of two interleaved rounds).
        dtype: the precision of both sides: bfloat16 (the AMX tile kernel) or float32 (the row kernel); default
            :func:`profile_kernel`'s.
        names: only these convs (default: every conv the kernel takes).

    Returns:
        ``{conv name: LayerLatency}`` in model order; convs the kernel cannot run are left out (logged).
    """
    levels = sorted({0.0, *(canonical_level(v) for v in levels)}, key=level_order)
    work = copy.deepcopy(model).float().eval()
    x = torch.zeros(1, 3, 640, 640) if example_input is None else example_input.float()
    dtype = profile_kernel()[1] if dtype is None else dtype
    backend = get_backend(_backend_for(dtype))
    plans = [p for p in _all_convs(work) if names is None or p.name in names]
    shapes = layer_input_shapes(work, x, {id(p.conv) for p in plans})
    gen = torch.Generator().manual_seed(0)
    out: dict[str, LayerLatency] = {}
    for plan in plans:
        name, weight, bias, geometry, act = plan.name, plan.weight, plan.bias, plan.geometry, plan.fused_act
        shape = shapes.get(id(plan.conv))
        if shape is None or geometry is None:
            LOGGER.info("layer_latencies: %s left out: %s", name, "not reached by the example input" if shape is None
                        else "a conv no backend takes (groups, dilation or padding mode)")
            continue
        xi = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        fns = {DENSE: _prepacked_dense(weight, bias, geometry, act, xi)}
        why = backend.why_not(weight, geometry, act, "cpu", dtype)
        for level in levels if why is None else ():
            mask = profile_mask(weight, level) if level != 0.0 else None
            if level != 0.0 and (mask is None or bool(mask.all())):
                # a level this conv cannot take, or one that prunes nothing (a narrow conv keeps a tile per block):
                # the latter is level 0 again, and timing it apart would only offer the noise between two timings
                continue
            w = weight if mask is None else weight * mask
            mod = SparseConv2d.from_weight(w, bias, geometry, act, backend=backend, dtype=dtype)
            fns[level] = (lambda m=mod: m(xi))
        if why is None:
            wrong = disagreement(fns[0.0](), fns[DENSE]().float())  # bf16 output: bf16 rounding allowed
            if wrong:  # the kernel is tested; a mismatch here is a bug to report, never a layer to speed up
                why = f"the tile kernel's output {wrong}"
                fns = {DENSE: fns[DENSE]}
        if why is not None:
            LOGGER.info("layer_latencies: %s stays dense: %s", name, why)
        ms = timing.interleaved_median_ms(fns, "cpu", reps)
        out[name] = LayerLatency(name, tuple(weight.shape), tuple(shape), ms.pop(DENSE), ms)
    return out


def _backend_for(dtype: torch.dtype) -> str:
    if dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"a speedup profile runs in bfloat16 or float32, got {dtype}")
    return TILE_BACKEND if dtype == torch.bfloat16 else ROWS_BACKEND


def _all_convs(model: nn.Module) -> list[Plan]:
    """The :class:`~sparseyolo.sparse.folding.Plan` of every ``nn.Conv2d`` of ``model``: conv blocks with their
    BatchNorm folded (:func:`~sparseyolo.sparse.folding.find_plans`) and the bare convs (a detection head's), in
    module order."""
    plans = {id(p.conv): p for p in find_plans(model)}
    return [plans.get(id(mod)) or conv_plan(model, name, mod, None, None)
            for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]


@dataclass
class ProfileRow:
    """One conv's choice: ``level`` None (dense oneDNN) or a level on the kernel (0.0: nothing pruned);
    ``ms`` its time alone, ``dense_ms`` oneDNN's alone, ``saved_ms`` the in-model saving predicted for it,
    ``error`` the calibrated relative output error."""

    name: str
    weight_shape: tuple[int, ...]
    level: Level | None
    ms: float
    dense_ms: float
    saved_ms: float
    error: float

    @property
    def choice(self) -> str:
        return "dense" if self.level is None else level_label(self.level)


@dataclass
class SpeedupProfile:
    """What :func:`choose_profile` chose, and the end-to-end time it predicts.

    Attributes:
        target_speedup: the asked speedup over ``dense_model_ms``.
        dense_model_ms: the dense model's measured time: the faster of the compiled bf16 and fp32 models
            (:attr:`ModelAnchors.target_base_ms`).
        predicted_ms: the dense model's time in the kernel's precision minus the time the chosen options are
            predicted to save.
        feasible: False when even the fastest option everywhere misses the target (then that is the profile).
        rows: per conv, in model order.
        measured_speedup: the pruned model's measured speedup over the dense one, compiled and timed back to back
            (:func:`compiled_model_ms`), once measured (``sparseyolo prune`` fills it in).
        distortion: what :func:`search_profile` scored the profile by (the model's output distortion on
            calibration images), when it searched.
    """

    target_speedup: float
    dense_model_ms: float
    predicted_ms: float
    feasible: bool
    rows: list[ProfileRow] = field(default_factory=list)
    measured_speedup: float | None = None
    distortion: float | None = None

    @property
    def predicted_speedup(self) -> float:
        return self.dense_model_ms / self.predicted_ms

    def amounts(self) -> dict[str, Level]:
        """``{conv name: level}`` of the convs that go to the kernel (for ``calibrated_prune(amounts=)``)."""
        return {r.name: r.level for r in self.rows if r.level is not None}

    def table(self) -> str:
        head = (f"{'layer':<24} {'weight':<14} {'choice':<10} {'dense ms':>9} {'ms':>7} {'saved ms':>9} "
                f"{'rel. error':>10}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r.weight_shape))
            lines.append(f"{r.name:<24} {shape:<14} {r.choice:<10} {r.dense_ms:>9.3f} {r.ms:>7.3f} {r.saved_ms:>9.3f} "
                         f"{r.error:>10.4f}")
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.choice] = counts.get(r.choice, 0) + 1
        lines.append(", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
                     + " (ms: each conv timed alone, in the kernel's precision; saved ms: scaled to the whole-model "
                       "anchors)")
        lines.append(f"target {self.target_speedup:g}x of the fastest dense model ({self.dense_model_ms:.2f} ms): "
                     f"predicted {self.predicted_ms:.2f} ms ({self.predicted_speedup:.2f}x)"
                     + ("" if self.feasible else "; the target is out of reach: this is the fastest profile")
                     + ("" if self.distortion is None else f"; output distortion {self.distortion:.4f}")
                     + ("" if self.measured_speedup is None else f"; measured {self.measured_speedup:.2f}x"))
        return "\n".join(lines)


@dataclass
class ModelAnchors:
    """Whole-model times (ms, compiled, interleaved) that :func:`choose_profile` scales per-layer savings by.

    Attributes:
        dense_ms: the dense model in the kernel's precision (the all-dense end of the pruned model's range).
        kernel_ms: ``kernel_layers`` on the tile kernel with nothing pruned, the rest dense.
        sparse_ms: ``kernel_layers`` on the tile kernel at ``level`` (those that cannot take it at level 0).
        level: the level of ``sparse_ms`` (:func:`anchor_level`).
        kernel_layers: the convs the kernel runs faster than oneDNN alone at some level.
        bar_ms: what a target speedup is measured against: the faster of the dense model compiled in bf16 and in
            fp32 (None: ``dense_ms``).
    """

    dense_ms: float
    kernel_ms: float
    sparse_ms: float
    level: Level
    kernel_layers: tuple[str, ...]
    bar_ms: float | None = None

    @property
    def target_base_ms(self) -> float:
        """The time a target speedup divides: ``bar_ms``, or ``dense_ms`` when no bar was measured."""
        return self.dense_ms if self.bar_ms is None else self.bar_ms


def kernel_layers(latencies: Mapping[str, LayerLatency]) -> tuple[str, ...]:
    """The convs the kernel runs faster than oneDNN at some level: the ones a profile may move (a
    stride-2 3x3 conv may be slower with nothing pruned and twice as fast at 75%)."""
    return tuple(n for n, lat in latencies.items() if min(lat.kernel_ms.values(), default=math.inf) < lat.dense_ms)


@torch.no_grad()
def measure_anchors(
    model: nn.Module,
    latencies: Mapping[str, LayerLatency],
    level: Level,
    example_input: torch.Tensor | None = None,
    reps: int = 15,
    dtype: torch.dtype | None = None,
) -> ModelAnchors:
    """Compile and time (interleaved) the dense model (bf16 and fp32: the faster is the bar) and the
    :func:`kernel_layers` on the kernel of ``dtype`` (default :func:`profile_kernel`'s) at level 0 and at ``level``
    (:func:`profile_mask`: the time depends on the pattern and the share pruned, not on which weights; a conv that
    cannot take ``level`` stays at 0). ``model`` is not changed. Compiling takes a minute or two on 2 cores."""
    dtype = profile_kernel()[1] if dtype is None else dtype
    level = canonical_level(level)
    moved = kernel_layers(latencies)
    models = {"dense": model}
    for key, lv in (("kernel", 0.0), ("sparse", level)):
        m = copy.deepcopy(model)
        for name in moved:
            conv = m.get_submodule(name)
            w = conv.weight.detach()
            mask = profile_mask(w, lv)
            set_mask(conv, torch.ones_like(w, dtype=torch.bool) if mask is None else mask, level_pattern(lv))
        models[key] = m
    ms = compiled_model_ms(models, example_input, reps, dtype)
    start = ms[DENSE_BF16 if dtype == torch.bfloat16 else DENSE_FP32]
    return ModelAnchors(start, ms["kernel"], ms["sparse"], level, moved, bar_ms=ms[DENSE])


@torch.no_grad()
def compiled_model_ms(models: Mapping[str, nn.Module], example_input: torch.Tensor | None = None, reps: int = 15,
                      dtype: torch.dtype | None = None) -> dict[str, float]:
    """Compile each model as deployed on this CPU and time them interleaved, back to back (ms, best of two
    rounds' medians): ``"dense"`` BN folded and channels-last in bf16 and in fp32, any other key in ``dtype``
    (default :func:`profile_kernel`'s) with its masked convs on that precision's kernel and the rest dense. Input:
    ``example_input`` (default a seeded random ``1x3x640x640`` image). The models are not changed.

    Returns:
        ``{key: ms}`` for the other keys, and for ``"dense"``: ``"dense bf16"``, ``"dense fp32"`` and ``"dense"``,
        the faster of the two (the bar: bf16 on a CPU with AMX, fp32 where bf16 convs run on AVX-512 BF16 alone).
    """
    from sparseyolo.sparse.compile import compile_inference
    from sparseyolo.sparse.convert import sparsify

    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0)) if example_input is None \
        else example_input.float()
    dtype = profile_kernel()[1] if dtype is None else dtype
    backend = _backend_for(dtype)
    x32 = x.contiguous(memory_format=torch.channels_last)
    x16 = x32.to(torch.bfloat16)
    runs = {}
    for key, m in models.items():  # sparsify converts a copy: the models are not changed
        if key == DENSE:
            dense = sparsify(m, backend="dense").to(memory_format=torch.channels_last)
            runs[DENSE_FP32] = (compile_inference(dense), x32)
            runs[DENSE_BF16] = (compile_inference(copy.deepcopy(dense).to(torch.bfloat16)), x16)
        else:
            runs[key] = (compile_inference(sparsify(m, backend=backend, dtype=dtype)),
                         x16 if dtype == torch.bfloat16 else x32)
    for run, xin in runs.values():
        run(xin)  # compiles
    ms = timing.interleaved_median_ms({k: (lambda r=r, xin=xin: r(xin)) for k, (r, xin) in runs.items()}, "cpu",
                                      reps)
    if DENSE in models:
        ms[DENSE] = min(ms[DENSE_BF16], ms[DENSE_FP32])
    return ms


def choose_profile(
    latencies: Mapping[str, LayerLatency],
    errors: Mapping[str, Mapping[Level, float]],
    anchors: ModelAnchors,
    target_speedup: float,
    resolution: int = 2000,
    coefficients: Mapping[str, float] | None = None,
) -> SpeedupProfile:
    """Per conv the option (dense, kernel at level 0 or at a level of ``errors``) that reaches
    ``target_speedup`` over ``anchors.target_base_ms`` (the faster dense model, fp32 or bf16) with the least summed
    error (see the module docstring).

    A conv of ``anchors.kernel_layers`` saves ``a * (dense - kernel_0) + b * (kernel_0 - kernel_level)`` (its
    times alone) from the dense model's ``anchors.dense_ms`` (in the kernel's precision), with ``a`` and ``b`` the
    factors that make the prediction exact at the three anchors; the other convs stay dense. Where the convs alone
    and the whole models disagree on the kernel with nothing pruned (no positive ``a``), a conv saves
    ``c * (dense - kernel_level)``, ``c`` fitted to the all-dense and the top-level models.

    Args:
        latencies: :func:`layer_latencies`.
        errors: :attr:`sparseyolo.prune.sensitivity.LayerVariants.errors` (``{name: {level: error}}``); a level a
            conv has no error for is not offered to it.
        anchors: :func:`measure_anchors`.
        target_speedup: > 0; e.g. 1.5.
        resolution: the time to save is cut into this many steps; a conv's saving is rounded DOWN to a step, so
            the chosen profile's predicted time never exceeds the target time.
        coefficients: ``{conv name: c}``: the program minimises ``sum(c * error)`` (default 1 for every conv;
            :func:`search_profile` tunes them); the rows report the errors themselves.

    Returns:
        A :class:`SpeedupProfile`; a target out of reach gives the fastest profile with ``feasible=False``.
    """
    dense_model_ms, start_ms = anchors.target_base_ms, anchors.dense_ms
    if not (target_speedup > 0 and dense_model_ms > 0 and start_ms > 0):
        raise ValueError(f"target_speedup and the dense times must be positive, got {target_speedup}, "
                         f"{dense_model_ms}, {start_ms}")
    moved = set(anchors.kernel_layers)
    layers = list(latencies.values())
    top = anchors.level
    alone_0 = sum(lat.dense_ms - lat.kernel_ms[0.0] for lat in layers if lat.name in moved)
    alone_top = sum(lat.kernel_ms[0.0] - lat.kernel_ms.get(top, lat.kernel_ms[0.0]) for lat in layers
                    if lat.name in moved)
    a = (anchors.dense_ms - anchors.kernel_ms) / alone_0 if alone_0 != 0 else 0.0
    if a > 0:  # the layers alone and the whole models agree on what the kernel with nothing pruned does
        b = max(0.0, (anchors.kernel_ms - anchors.sparse_ms) / alone_top) if alone_top > 0 else 0.0
        LOGGER.debug("speedup profile: in-model savings are %.2fx (kernel) and %.2fx (tiles) the per-layer ones", a, b)

        def saving_of(lat: LayerLatency, ms: float) -> float:
            return a * (lat.dense_ms - lat.kernel_ms[0.0]) + b * (lat.kernel_ms[0.0] - ms)
    else:
        # They disagree (seen without AMX: every conv alone slower on the fp32 kernel with nothing pruned, the
        # whole model on it slightly faster), so the kernel-at-0 anchor cannot be fitted without rewarding a conv for
        # being slower. One factor instead, fitted to the all-dense and the top-level anchors: a conv saves
        # c * (its dense time - its time at the level) alone, so an option slower alone than dense is never taken.
        alone = sum(lat.dense_ms - lat.kernel_ms.get(top, lat.dense_ms) for lat in layers if lat.name in moved)
        c = max(0.0, (anchors.dense_ms - anchors.sparse_ms) / alone) if alone > 0 else 0.0
        LOGGER.debug("speedup profile: the kernel-at-0 anchor disagrees with the layers alone; in-model savings are "
                     "%.2fx the per-layer ones (fitted to the top level)", c)

        def saving_of(lat: LayerLatency, ms: float) -> float:
            return c * (lat.dense_ms - ms)
    need = start_ms - dense_model_ms / target_speedup  # to save from the dense model's time in the kernel's precision
    step = need / resolution if need > 0 else 1.0
    budget = resolution if need > 0 else 0
    # options per conv: (level, ms alone, error, predicted saving); dense saves 0; an option saving less is dropped
    options: list[list[tuple[Level | None, float, float, float]]] = []
    for lat in layers:
        opts: list[tuple[Level | None, float, float, float]] = [(None, lat.dense_ms, 0.0, 0.0)]
        timed = sorted(lat.kernel_ms.items(), key=lambda kv: level_order(kv[0])) if lat.name in moved else ()
        for level, ms in timed:
            err = 0.0 if level == 0.0 else errors.get(lat.name, {}).get(level)
            saving = saving_of(lat, ms)
            if err is not None and math.isfinite(err) and saving > 0:
                opts.append((level, ms, float(err), saving))
        options.append(opts)
    inf = float("inf")
    best = [0.0] + [inf] * budget  # best[j]: least error with at least j steps of saving (j capped at budget)
    back: list[list[tuple[int, int]]] = []
    for lat, opts in zip(layers, options):
        weight = 1.0 if coefficients is None else float(coefficients.get(lat.name, 1.0))
        new, arg = [inf] * (budget + 1), [(-1, -1)] * (budget + 1)
        for j, err0 in enumerate(best):
            if err0 == inf:
                continue
            for k, (_, _, err, saving) in enumerate(opts):
                err *= weight
                jj = min(budget, j + int(saving // step))
                if err0 + err < new[jj]:
                    new[jj], arg[jj] = err0 + err, (k, j)
        best = new
        back.append(arg)
    feasible = best[budget] < inf
    if feasible:
        picks, j = [], budget
        for arg in reversed(back):
            k, j = arg[j]
            picks.append(k)
        picks.reverse()
    else:  # the fastest option everywhere
        picks = [max(range(len(opts)), key=lambda k, o=opts: o[k][3]) for opts in options]
    rows, saved = [], 0.0
    for lat, opts, k in zip(layers, options, picks):
        # the DP is indifferent between options of equal error; take the one that saves most (e.g. the kernel at
        # sparsity 0 over dense), which keeps the budget met and the error the same
        err_k = opts[k][2]
        k = max((i for i, o in enumerate(opts) if o[2] <= err_k), key=lambda i: opts[i][3])
        level, ms, err, saving = opts[k]
        saved += saving
        rows.append(ProfileRow(lat.name, lat.weight_shape, level, ms, lat.dense_ms, saving, err))
    if not feasible:
        LOGGER.warning("speedup profile: %.2fx is out of reach (at most %.2fx predicted); using the fastest profile",
                       target_speedup, dense_model_ms / (start_ms - saved))
    return SpeedupProfile(target_speedup, dense_model_ms, start_ms - saved, feasible, rows)


def search_profile(
    latencies: Mapping[str, LayerLatency],
    errors: Mapping[str, Mapping[Level, float]],
    anchors: ModelAnchors,
    target_speedup: float,
    evaluate: Callable[[dict[str, Level]], float],
    iters: int = 100,
    seed: int = 0,
    resolution: int = 2000,
) -> SpeedupProfile:
    """SPDY's search: the summed per-layer error is a weak guide across layers (an error in one conv may cost the
    model far more than the same error in another), so the program's per-conv coefficients are searched, each
    candidate profile scored by ``evaluate`` (the stitched model's output distortion on calibration images,
    :meth:`sparseyolo.prune.sensitivity.LayerVariants.stitch` and
    :func:`sparseyolo.prune.sensitivity.output_distortion`), lower is better.

    Starting from all coefficients 1 (:func:`choose_profile`), each step multiplies a random fifth of them by
    ``exp(N(0, s))`` with ``s`` shrinking from 1 to 0.1, and keeps the candidate when its profile scores no worse
    (so the coefficients can walk across the many candidates that change no choice).
    Every profile meets the target (predicted); profiles already scored are not scored again.

    Args:
        latencies, errors, anchors, target_speedup, resolution: as for :func:`choose_profile`.
        evaluate: ``{conv name: level} -> score`` of a profile's :meth:`SpeedupProfile.amounts`.
        iters: candidate coefficient vectors tried (0: the plain :func:`choose_profile`, scored).
        seed: of the search's random steps.

    Returns:
        The best profile, ``distortion`` set to its score.
    """
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    rng = random.Random(seed)
    names = [n for n in latencies if n in errors]
    scores: dict[tuple, float] = {}

    def score(coef: dict[str, float]) -> tuple[float, SpeedupProfile]:
        prof = choose_profile(latencies, errors, anchors, target_speedup, resolution, coef)
        key = tuple(sorted(prof.amounts().items()))
        if key not in scores:
            scores[key] = float(evaluate(prof.amounts()))
        prof.distortion = scores[key]
        return scores[key], prof

    coef = {n: 1.0 for n in names}
    best, best_prof = score(coef)
    if not best_prof.feasible or not names:
        return best_prof
    for it in range(iters):
        spread = 1.0 - 0.9 * it / max(iters - 1, 1)
        cand = dict(coef)
        for n in rng.sample(names, k=max(1, len(names) // 5)):
            cand[n] = coef[n] * math.exp(rng.gauss(0.0, spread))
        d, prof = score(cand)
        if d <= best:  # equal scores too: the coefficients walk across a plateau of unchanged profiles
            if d < best:
                LOGGER.info("profile search: step %d, output distortion %.5f", it, d)
            best, coef, best_prof = d, cand, prof
    LOGGER.info("profile search: %d profiles scored; best output distortion %.5f", len(scores), best)
    return best_prof
