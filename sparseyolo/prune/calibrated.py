"""One-shot calibrated pruning: layer-wise OBS/SparseGPT masks and weight updates from calibration images.

Quick reference::

    from sparseyolo.prune.calibrated import calibrated_prune, calibration_batches
    batches = calibration_batches("coco128.yaml", n_images=128, img_size=640, batch_size=8, stride=32)
    report = calibrated_prune(model, batches, n=2, m=4)        # or amount=0.5 for unstructured
    print(report)                                              # per-layer relative output errors, time, memory

The model is processed layer by layer in execution order. For each selected ``Conv2d``/``Linear`` the im2col
rows of its input on the calibration images give ``H = sum x x^T``; :func:`sparseyolo.prune.obs.sparsegpt_prune`
then chooses the mask and updates the kept weights to minimise the layer's output error, and the next layers
see the outputs of the already-pruned ones (as SparseGPT does), so errors are compensated downstream instead of
compounding. By default each layer is fitted to the UNPRUNED model's output of that layer (``target="dense"``),
so it also absorbs the error that earlier pruned layers left in its input. Once a layer's mask is chosen, its
kept weights are re-solved exactly for that mask, with a per-channel bias that absorbs the mean output shift and
is folded into the following BatchNorm (``refit=True``, :func:`sparseyolo.prune.obs.masked_least_squares`).
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sparseyolo.prune.masks import has_mask
from sparseyolo.prune.methods import PruneReport, _set, select_layers
from sparseyolo.prune.obs import DEFAULT_BLOCKSIZE, DEFAULT_DAMP, _quadratic, masked_least_squares, sparsegpt_prune

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
    """

    calib_images: int = 0
    calib_rows: dict[str, int] = field(default_factory=dict)
    rel_error: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    bn_recalibrated: int = 0

    def __str__(self) -> str:
        what = f"{self.n}:{self.m}" if self.n is not None else f"{100 * (self.amount or 0):g}% unstructured"
        errs = list(self.rel_error.values())
        mean_err = sum(errs) / len(errs) if errs else 0.0
        lines = [
            f"calibrated (SparseGPT) pruning of {len(self.pruned)} layer(s), {what}: {self.zeros}/{self.numel} "
            f"weights masked ({100 * self.sparsity:.2f}%) on {self.calib_images} calibration images in "
            f"{self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB",
            f"  mean relative layer output error {mean_err:.4f} (max {max(errs, default=0.0):.4f}); "
            f"BatchNorm statistics re-calibrated in {self.bn_recalibrated} layer(s)",
        ]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


class _StopForward(Exception):
    """Raised by a hook once every layer of the current group has seen its input: the rest is not needed."""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _as_float_images(batch: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = batch.to(device)
    return x.to(dtype) / 255.0 if not x.is_floating_point() else x.to(dtype)


# --------------------------------------------------------------------------------------------------------------
# Input statistics
# --------------------------------------------------------------------------------------------------------------


def layer_input_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as GEMM columns: Tensor[B, d, L] with ``module(x) == W @ cols`` per image (+ bias).

    For a ``Conv2d`` this is ``F.unfold`` (im2col) with the layer's kernel, stride, padding and dilation:
    ``d = Cin * kh * kw`` in the order of ``weight.flatten(1)`` (``c * kh * kw + i * kw + j``), ``L`` output
    positions. For a ``Linear`` every leading index is a position: Tensor[1, in_features, prod(leading)].
    """
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ValueError(f"padding='{module.padding}' is not supported for calibration; use explicit padding")
        padding = module.padding
        if module.padding_mode != "zeros":
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding = 0
        return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    raise TypeError(f"calibration supports Conv2d and Linear layers, got {type(module).__name__}")


class HessianAccumulator:
    """Accumulates ``H = sum_x x x^T`` (float64) over a layer's im2col input columns.

    Each image's columns are multiplied in the input dtype (one GEMM, ``d x L`` by ``L x d``) and added to the
    float64 total, so the sum over many images does not lose precision while the GEMMs stay fast.
    """

    def __init__(self, module: nn.Module, cross: bool = False) -> None:
        self.module = module
        w = module.weight
        d = w[0].numel()
        self.hessian = torch.zeros(d, d, dtype=torch.float64, device=w.device)
        #: ``sum x_dense x^T`` when dense inputs are given (see :func:`dense_target_weight`).
        self.cross = torch.zeros_like(self.hessian) if cross else None
        #: ``sum x`` and (with dense inputs) ``sum x_dense``: for fitting a bias (:func:`prune_layer`).
        self.sums = torch.zeros(d, dtype=torch.float64, device=w.device)
        self.dense_sums = torch.zeros_like(self.sums) if cross else None
        self.rows = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, x_dense: torch.Tensor | None = None) -> None:
        """Add the columns of input ``x`` (what the layer receives in ``forward``), and with ``x_dense`` (the
        same positions' input in the unpruned model) the cross term."""
        cols = layer_input_columns(self.module, x.detach())
        dcols = None if x_dense is None else layer_input_columns(self.module, x_dense.detach())
        if dcols is not None and self.cross is None:
            self.cross, self.dense_sums = torch.zeros_like(self.hessian), torch.zeros_like(self.sums)
        h32 = torch.zeros(self.hessian.shape, dtype=torch.float32, device=self.hessian.device)
        c32 = torch.zeros_like(h32) if dcols is not None else None
        for k, c in enumerate(cols):  # one image at a time: bounded memory, no copy for the transpose
            c = c.float()
            h32.addmm_(c, c.t())
            self.sums += c.sum(1, dtype=torch.float64)
            if c32 is not None:
                c32.addmm_(dcols[k].float(), c.t())
                self.dense_sums += dcols[k].sum(1, dtype=torch.float64)
            self.rows += c.shape[1]
        self.hessian += h32.to(torch.float64)
        if c32 is not None:
            self.cross += c32.to(torch.float64)


def dense_target_weight(weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, damp: float) -> torch.Tensor:
    """The dense weight re-fitted to reproduce the UNPRUNED model's layer output from the pruned model's input.

    Minimises ``||W X_dense - W* X||^2`` (ridge-regularised like the solver): ``W* = W (C + l I)(H + l I)^-1`` with
    ``H = X X^T``, ``C = X_dense X^T`` and ``l = damp * mean(diag H)``; ``W* = W`` when the inputs agree. Since
    ``||W X_dense - W' X||^2 = ||W* X - W' X||^2 + const``, pruning ``W*`` with ``H`` minimises the error
    against the dense model instead of against this layer's own unpruned output, so each layer also corrects
    the error that earlier pruned layers left in its input (instead of only not adding its own).

    Args:
        weight (Tensor[rows, d]), hessian (Tensor[d, d]), cross (Tensor[d, d]): as above.

    Returns:
        Tensor[rows, d] float64.
    """
    h = hessian.to(torch.float64)
    lam = damp * float(torch.diag(h).mean().clamp_min(1e-12))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    rhs = weight.detach().to(torch.float64) @ (cross.to(torch.float64) + lam * eye)  # [rows, d]
    # W* (H + l I) = rhs  ->  (H + l I) W*^T = rhs^T (H symmetric)
    return torch.linalg.solve(h + lam * eye, rhs.t()).t()


# --------------------------------------------------------------------------------------------------------------
# Weight layout: N:M groups run along input channels at a fixed (kh, kw)
# --------------------------------------------------------------------------------------------------------------


def _channel_last_order(module: nn.Module) -> torch.Tensor | None:
    """Permutation of im2col columns that puts input channels last: new column ``(i*kw + j) * Cin + c`` is old
    column ``c * kh * kw + i * kw + j``, so ``m`` consecutive columns are ``m`` consecutive channels at one tap."""
    if not isinstance(module, nn.Conv2d):
        return None
    cin = module.weight.shape[1]
    taps = module.weight[0, 0].numel()
    if taps == 1:
        return None
    return torch.arange(cin * taps, device=module.weight.device).view(cin, taps).t().reshape(-1)


def _row_weight(bn: nn.BatchNorm2d | None) -> torch.Tensor | None:
    if bn is None or bn.running_var is None:
        return None
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    return gamma.abs() / torch.sqrt(bn.running_var + bn.eps)


def _following_batchnorms(model: nn.Module) -> dict[nn.Module, nn.BatchNorm2d]:
    """``{conv: bn}`` for YOLOv5-style blocks holding ``.conv`` (Conv2d) and ``.bn`` (BatchNorm2d)."""
    out = {}
    for mod in model.modules():
        conv, bn = getattr(mod, "conv", None), getattr(mod, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
            out[conv] = bn
    return out


@torch.no_grad()
def prune_layer(
    module: nn.Module,
    stats: HessianAccumulator | torch.Tensor,
    amount: float | None = None,
    n: int | None = None,
    m: int | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    damp: float = DEFAULT_DAMP,
    row_weight: torch.Tensor | None = None,
    refit: bool = True,
    bn: nn.BatchNorm2d | None = None,
    steps: int = 1,
) -> float:
    """Prune one ``Conv2d``/``Linear`` in place given its input statistics, and register the mask.

    Three steps: (1) with dense inputs in ``stats`` (``stats.cross``), the weight is first re-fitted to the
    UNPRUNED model's output (:func:`dense_target_weight`); (2) SparseGPT chooses the mask and updates the kept
    weights (:func:`sparseyolo.prune.obs.sparsegpt_prune`); (3) with ``refit``, the kept weights are re-solved
    for that mask, together with a per-channel bias that absorbs the mean output shift
    (:func:`sparseyolo.prune.obs.masked_least_squares`: exactly, or for layers too large for per-row Cholesky
    by conjugate gradients started from SparseGPT's weights). The bias goes into the following BatchNorm ``bn``
    (``running_mean -= bias``, so its eval-mode output is that of ``conv + bias``), else into the layer's own
    bias; a layer with neither gets no bias term.

    Args:
        module: the layer; an existing ``weight_mask`` is honoured (its pruned entries stay pruned).
        stats: a :class:`HessianAccumulator` filled on this layer, or just its Hessian Tensor[d, d] (then no
            dense target and no bias).
        amount: unstructured fraction; or ``n``, ``m``: N:M along input channels.
        blocksize, damp, row_weight: see :func:`sparseyolo.prune.obs.sparsegpt_prune`.
        refit: re-solve the kept weights (and the bias) once the mask is chosen.
        bn: the BatchNorm that follows the layer (receives the fitted bias).
        steps: prune in this many increments (N:M: keep ``m-1`` of ``m``, ... down to ``n``; unstructured:
            ``amount / steps`` more each time), each followed by the refit: closer to OBC's one-weight-at-a-time
            greedy order than choosing the whole mask at once.

    Returns:
        The relative output error ``||W* X - W' X - b||^2 / ||W* X||^2`` on the calibration inputs, where ``W*`` is
        the unpruned weight, or its dense-target re-fit with dense inputs in ``stats``.
    """
    acc = stats if isinstance(stats, HessianAccumulator) else None
    hessian = stats if acc is None else acc.hessian
    cross = None if acc is None else acc.cross
    do_refit = refit and acc is not None and acc.rows > 0
    sink = None
    if do_refit:
        sink = bn if bn is not None and bn.running_mean is not None else getattr(module, "bias", None)
    if sink is not None:
        # A bias will absorb the mean: choose the mask on the centred statistics (the covariance), where the
        # large mean of post-SiLU activations does not drown the channels' variation.
        hessian = hessian - torch.outer(acc.sums, acc.sums) / acc.rows
        if cross is not None:
            cross = cross - torch.outer(acc.dense_sums, acc.sums) / acc.rows
    w = module.weight
    w0 = w.detach().flatten(1).to(torch.float64)
    w2 = w0
    if cross is not None:
        w2 = dense_target_weight(w0, hessian, cross, damp)
        if has_mask(module):
            w2 = w2 * module.weight_mask.flatten(1)
    keep = module.weight_mask.flatten(1).clone() if has_mask(module) else torch.ones_like(w0, dtype=torch.bool)
    perm = _channel_last_order(module)
    inv = None if perm is None else torch.argsort(perm)
    h = hessian if perm is None else hessian[perm][:, perm]
    cur, bias = w2, None
    for amount_k, n_k in _schedule(amount, n, m, steps):
        # From the second stage on, pruning the refitted weights W_k (the least-squares optimum for the current
        # mask) with H is exact: the target's residual is orthogonal to what W_k can reach, so
        # ||T - W'X||^2 = ||T - W_k X||^2 + ||(W_k - W')X||^2 for every W' inside the current mask.
        wp, old = (cur, keep) if perm is None else (cur[:, perm], keep[:, perm])
        res = sparsegpt_prune(wp, h, sparsity=amount_k, n=n_k, m=m if n_k is not None else None,
                              blocksize=blocksize, damp=damp, row_weight=row_weight, pruned=~old)
        cur, keep = (res.weight, res.mask) if perm is None else (res.weight[:, inv], res.mask[:, inv])
        if do_refit:
            cur, bias, rel = _refit(acc, w0, w2, keep, damp, with_bias=sink is not None, init=cur)
    if not do_refit:
        base = _quadratic(w2, hessian)
        rel = _quadratic(w2 - cur, hessian) / base if base > 0 else 0.0
    if bias is not None:
        if isinstance(sink, nn.BatchNorm2d):
            sink.running_mean.sub_(bias.to(sink.running_mean.dtype))
        else:
            sink.data.add_(bias.to(sink.dtype))
    w.data.copy_(cur.view_as(w).to(w.dtype))
    _set(module, keep.reshape(w.shape).contiguous(), f"{n}:{m}" if n is not None else "unstructured")
    return rel


def _schedule(amount: float | None, n: int | None, m: int | None, steps: int) -> list[tuple[float | None, int | None]]:
    """The stages ``[(amount_k, n_k)]`` of a layer pruned in ``steps`` increments: unstructured amounts
    ``amount * k / steps``; N:M keeps ``m - round((m - n) * k / steps)`` of every ``m`` (distinct stages only)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if n is None:
        return [(amount * k / steps, None) for k in range(1, steps + 1)]
    ns = [m - round((m - n) * k / steps) for k in range(1, steps + 1)]
    return [(None, v) for i, v in enumerate(ns) if v < m and (i == 0 or v != ns[i - 1])]


def _refit(acc: HessianAccumulator, w0: torch.Tensor, wt: torch.Tensor, keep: torch.Tensor, damp: float,
           with_bias: bool, init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Exact masked least squares for the kept weights, plus a per-channel bias with ``with_bias`` (see
    :func:`prune_layer`).

    ``w0`` is the unpruned weight (the ridge anchor), ``wt`` the weight whose output on the pruned inputs best
    reproduces the target (``w0`` itself, or the dense-target re-fit), ``init`` SparseGPT's weights (where an
    iterative solve starts, for layers too large to solve directly). Returns the new weight, the bias (or None)
    and the relative output error against the target's best dense fit ``T = wt x + bt`` (``bt`` its best bias,
    0 without one).
    """
    h, s, npos = acc.hessian, acc.sums, acc.rows
    if acc.cross is not None:  # target: the dense model's output W0 x_dense
        rhs, rhs_bias = w0 @ acc.cross, w0 @ acc.dense_sums
    else:  # target: this layer's own unpruned output W0 x
        rhs, rhs_bias = w0 @ h, w0 @ s
    new_w, bias = masked_least_squares(h, rhs, keep, w0, damp, sums=s if with_bias else None,
                                       count=npos if with_bias else None, rhs_bias=rhs_bias if with_bias else None,
                                       init=init)
    zeros = torch.zeros(new_w.shape[0], dtype=torch.float64, device=h.device)
    bt = (rhs_bias - wt @ s) / npos if with_bias else zeros
    b = zeros if bias is None else bias

    # ||(W1 - W2) x + (b1 - b2)||^2 summed over the calibration positions, exactly from the statistics.
    def energy(dw: torch.Tensor, db: torch.Tensor) -> float:
        return _quadratic(dw, h) + 2.0 * float((db * (dw @ s)).sum()) + npos * float((db * db).sum())

    base = energy(wt, bt)
    return new_w, bias, (max(energy(wt - new_w, bt - b), 0.0) / base if base > 0 else 0.0)


# --------------------------------------------------------------------------------------------------------------
# Layer-by-layer driver
# --------------------------------------------------------------------------------------------------------------


def _stages(model: nn.Module) -> tuple[list[nn.Module], list, set[int]]:
    """Top-level layers with their input routing: YOLOv5's ``model.model`` (``.f`` routing, ``model.save``),
    else the whole model as one stage."""
    seq = getattr(model, "model", None)
    if isinstance(seq, nn.Sequential) and len(seq) and all(hasattr(s, "f") for s in seq) and hasattr(model, "save"):
        return list(seq), [s.f for s in seq], set(model.save)
    return [model], [-1], set()


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


class _ActivationStream:
    """Cached outputs of the top-level layers over all calibration batches, advanced one layer at a time; an
    output is dropped as soon as its last consumer has run."""

    def __init__(self, stages, routes, save, last_use, images, device, dtype) -> None:
        self.stages, self.routes, self.save, self.last_use = stages, routes, save, last_use
        self.images, self.device, self.dtype = images, device, dtype
        self.cache: dict[int, list] = {}
        self.prev: list | None = None

    def input(self, i: int, b: int):
        if i == 0:
            return _as_float_images(self.images[b], self.device, self.dtype)
        f = self.routes[i]
        if f == -1:
            return self.prev[b]
        if isinstance(f, int):
            return self.cache[f][b]
        return [self.prev[b] if j == -1 else self.cache[j][b] for j in f]

    @torch.no_grad()
    def advance(self, i: int) -> None:
        """Compute stage ``i``'s outputs (its inputs must be available)."""
        self.prev = [self.stages[i](self.input(i, b)) for b in range(len(self.images))]
        if i in self.save:
            self.cache[i] = self.prev
        for j in [j for j in self.cache if self.last_use.get(j, -1) <= i]:  # every consumer has run
            del self.cache[j]


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
) -> CalibratedPruneReport:
    """Prune ``model`` in place, one layer at a time, with SparseGPT masks and weight updates from calibration data.

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
        refit: once SparseGPT has chosen a layer's mask, re-solve its kept weights exactly (per-row least squares)
            together with a per-channel bias that goes into the following BatchNorm's running mean (or the
            layer's bias); the mask is then chosen on the centred input statistics (see :func:`prune_layer`).
            Measured on yolov5n 2:4 (docs/results.md "Accuracy recovery"): 64 calibration images, held-out mAP50-95
            0.212 without, 0.255 with.
        steps: prune each layer in this many increments, each followed by the refit (see :func:`prune_layer`).
            Measured on yolov5n (64 calibration images, held-out mAP50-95): 75% unstructured 0.066 with 1 step,
            0.104 with 3; 2:4 0.255 with 1, 0.248 with 2 (its only other schedule, 3:4 then 2:4).
        progress: show a progress bar over the layers (on stderr; a layer takes seconds to a minute).

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
    amount, n, m = _check_pattern(amount, n, m)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got '{target}'")
    if bn_recalibration not in BN_RECALIBRATION:
        raise ValueError(f"bn_recalibration must be one of {', '.join(BN_RECALIBRATION)}, got '{bn_recalibration}'")
    method = "nm" if n is not None else "l1"
    selected, skipped = select_layers(model, method, m or 4, include, exclude, filter_fn)
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
    report = CalibratedPruneReport(method=method, amount=amount, n=n, m=m, skipped=list(skipped),
                                   calib_images=sum(int(x.shape[0]) for x in images))
    bns = _following_batchnorms(model)
    stages, routes, save = _stages(model)
    last_use: dict[int, int] = {}
    for i, f in enumerate(routes):
        for j in [f] if isinstance(f, int) else f:
            last_use[i - 1 if j == -1 else j] = i
    nb = len(images)
    pruned = _ActivationStream(stages, routes, save, last_use, images, device, dtype)
    dense = None
    if target == "dense":
        dense_model = copy.deepcopy(model)
        dstages, _, _ = _stages(dense_model)
        dense = _ActivationStream(dstages, routes, save, last_use, images, device, dtype)
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
                    rel = prune_layer(mod, accs[mod], amount, n, m, blocksize, damp,
                                      row_weight=_row_weight(bns.get(mod)) if amount is not None else None,
                                      refit=refit, bn=bns.get(mod), steps=steps)
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
        report.bn_recalibrated = recalibrate_batchnorm(model, (_as_float_images(x, device, dtype) for x in images))
    model.train(was_training)
    report.seconds = time.perf_counter() - t0
    report.peak_rss_mb = _peak_rss_mb()
    LOGGER.info("%s", report)
    return report


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
        ValueError: ``n_images < 1``; FileNotFoundError: the split has no images.
    """
    from sparseyolo.data.dataset import ValDataset, list_image_files, load_data_config

    if n_images < 1:
        raise ValueError(f"--calib-images must be at least 1, got {n_images}")
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
