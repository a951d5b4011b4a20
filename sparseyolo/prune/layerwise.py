"""One layer of calibrated pruning: its input statistics, the mask (ADMM or SparseGPT), then the exact refit.

:func:`prune_layer` prunes one ``Conv2d``/``Linear`` from the statistics of its input (:class:`HessianAccumulator`
over the im2col columns of :func:`layer_input_columns`); :mod:`sparseyolo.prune.calibrated` drives it layer by
layer through a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.prune.admm import admm_prune
from sparseyolo.prune.config import SOLVERS
from sparseyolo.prune.levels import Level, NMBlock, parse_level
from sparseyolo.prune.masks import has_mask
from sparseyolo.prune.methods import _set
from sparseyolo.prune.obs import (
    DEFAULT_BLOCKSIZE,
    DEFAULT_DAMP,
    _quadratic,
    group_obs_mask,
    masked_least_squares,
    sparsegpt_prune,
)
from sparseyolo.prune.tiles import tile_column_groups, tile_height, tile_pattern


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


def following_batchnorms(model: nn.Module) -> dict[nn.Module, nn.BatchNorm2d]:
    """``{conv: bn}`` for YOLOv5-style blocks holding ``.conv`` (Conv2d) and ``.bn`` (BatchNorm2d)."""
    out = {}
    for mod in model.modules():
        conv, bn = getattr(mod, "conv", None), getattr(mod, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
            out[conv] = bn
    return out


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
    block: int = 1,
    tiles: bool = False,
    solver: str = "admm",
) -> float:
    """Prune one ``Conv2d``/``Linear`` in place given its input statistics, and register the mask.

    Three steps: (1) with dense inputs in ``stats`` (``stats.cross``), the weight is first re-fitted to the
    UNPRUNED model's output (:func:`dense_target_weight`); (2) the ``solver`` chooses the mask and updates the
    kept weights (:func:`sparseyolo.prune.admm.admm_prune` or :func:`sparseyolo.prune.obs.sparsegpt_prune`);
    (3) with ``refit``, the kept weights are re-solved for that mask, together with a per-channel bias that
    absorbs the mean output shift (:func:`sparseyolo.prune.obs.masked_least_squares`: exactly, or for layers too
    large for per-row Cholesky by conjugate gradients started from the solver's weights). The bias goes into the
    following BatchNorm ``bn`` (``running_mean -= bias``, so its eval-mode output is that of ``conv + bias``), else
    into the layer's own bias; a layer with neither gets no bias term.

    Args:
        module: the layer; an existing ``weight_mask`` is honoured (its pruned entries stay pruned).
        stats: a :class:`HessianAccumulator` filled on this layer, or just its Hessian Tensor[d, d] (then no
            dense target and no bias).
        amount: unstructured fraction (of tiles with ``tiles``); or ``n``, ``m``: N:M along input channels.
        blocksize, damp, row_weight: see :func:`sparseyolo.prune.obs.sparsegpt_prune`.
        refit: re-solve the kept weights (and the bias) once the mask is chosen.
        bn: the BatchNorm that follows the layer (receives the fitted bias).
        steps: prune in this many increments (N:M: keep ``m-1`` of ``m``, ... down to ``n``; unstructured:
            ``amount / steps`` more each time), each followed by the refit: closer to OBC's one-weight-at-a-time
            greedy order than choosing the whole mask at once.
        block: N:M: every ``block`` consecutive output channels share one N:M choice, made on their summed OBS
            saliency (the pattern of ``prune(..., block=B)``, which the block-sparse CPU kernel wants). Tiles: the
            tiles' output channels, 16 (or 1, the same) or 32.
        tiles: prune ``amount`` of the ``16 x 32`` (``block=32``: ``32 x 32``) tiles of each tap (a conv;
            :mod:`sparseyolo.prune.tiles`), the tiles of least OBS cost (:func:`sparseyolo.prune.obs.group_obs_mask`)
            at each step. Without ``refit`` the kept weights stay as they are.
        solver: how each step's mask is chosen: ``"admm"`` (the whole mask at once,
            :func:`sparseyolo.prune.admm.admm_prune`) or ``"sparsegpt"`` (column by column, with SparseGPT's weight
            updates; tiles: each tile's OBS cost, :func:`sparseyolo.prune.obs.group_obs_mask`). The refit that
            follows is the same.

    Returns:
        The relative output error ``||W* X - W' X - b||^2 / ||W* X||^2`` on the calibration inputs, where ``W*`` is
        the unpruned weight, or its dense-target re-fit with dense inputs in ``stats``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
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
    if tiles:
        if w.dim() != 4:
            raise ValueError("tile pruning is for conv weights [Cout, Cin, KH, KW]")
        rows = tile_height(block)
        groups = tile_column_groups(w.shape, w.device)
        for amount_k, _ in _schedule(amount, None, None, steps):
            if solver == "admm":
                res = admm_prune(cur, hessian, sparsity=amount_k, damp=damp, row_weight=row_weight, pruned=~keep,
                                 block_rows=rows, col_groups=groups)
                keep, cur = res.mask, (res.weight if not do_refit else cur * res.mask)
            else:
                keep = group_obs_mask(cur, hessian, groups, rows, amount_k, keep, damp, row_weight)
                cur = cur * keep
            if do_refit:
                cur, bias, rel = _refit(acc, w0, w2, keep, damp, with_bias=sink is not None, init=cur)
    for amount_k, n_k in _schedule(amount, n, m, steps) if not tiles else ():
        # From the second stage on, pruning the refitted weights W_k (the least-squares optimum for the current
        # mask) with H is exact: the target's residual is orthogonal to what W_k can reach, so
        # ||T - W'X||^2 = ||T - W_k X||^2 + ||(W_k - W')X||^2 for every W' inside the current mask.
        wp, old = (cur, keep) if perm is None else (cur[:, perm], keep[:, perm])
        pattern_k = {"sparsity": amount_k, "n": n_k, "m": m if n_k is not None else None, "damp": damp,
                     "row_weight": row_weight, "pruned": ~old, "block_rows": block if n_k is not None else 1}
        if solver == "admm":
            res = admm_prune(wp, h, **pattern_k)
        else:
            res = sparsegpt_prune(wp, h, blocksize=blocksize, **pattern_k)
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
    pattern = tile_pattern(rows) if tiles else f"{n}:{m}" if n is not None else "unstructured"
    _set(module, keep.reshape(w.shape).contiguous(), pattern)
    return rel


def prune_layer_at(module: nn.Module, stats: HessianAccumulator, level: Level, bn: nn.BatchNorm2d | None,
                   steps: int = 3, damp: float = DEFAULT_DAMP, solver: str = "admm", refit: bool = True,
                   tiles: bool = True, blocksize: int = DEFAULT_BLOCKSIZE) -> float:
    """:func:`prune_layer` at one level (:mod:`sparseyolo.prune.levels`): a float, that share of the tiles (or,
    without ``tiles``, of the weights) in ``steps`` increments; an N:M-block level in one step (the one other
    schedule of 2:4, 3:4 then 2:4, was no better per row). The rows are weighted by the following BatchNorm's
    scale either way. Returns the relative output error."""
    p = parse_level(level)
    kw = (dict(n=p.n, m=p.m, block=p.block, steps=1) if isinstance(p, NMBlock)
          else dict(amount=p, tiles=tiles, steps=steps))
    return float(prune_layer(module, stats, blocksize=blocksize, damp=damp, row_weight=_row_weight(bn),
                             refit=refit, bn=bn, solver=solver, **kw))


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
