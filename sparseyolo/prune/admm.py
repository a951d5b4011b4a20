"""Layer-wise pruning masks by ADMM: the whole mask chosen at once, instead of SparseGPT's column-by-column greedy.

The problem is that of :mod:`sparseyolo.prune.obs`: for a layer ``Y = W X`` with input statistics ``H = X X^T``,
find the ``W'`` of a given sparsity pattern (N:M, N:M shared by a block of rows, unstructured, or whole groups such
as the ``16 x 32`` tiles of a conv tap) that minimises ``tr((W - W') H (W - W')^T)``. SparseGPT fixes the mask
column by column, left to right, and a pruned weight can only be compensated by the columns after it, so its
early choices are made before it knows what the later columns will need.

ADMM (Boyd et al. 2011; for pruned layers Boza 2024, arXiv:2401.02938) splits the problem into a smooth part and
the pattern constraint, ``min f(W) + 1_pattern(Z)`` subject to ``W = Z``, and alternates

- ``W <- argmin f(W) + rho/2 ||W - Z + U||^2``: one linear solve, ``W = (W0 H + rho (Z - U)) (H + rho I)^-1``,
  cheap for every ``rho`` from one eigendecomposition of ``H``;
- ``Z <- projection of W + U onto the pattern``: keep, per N:M group (or per layer, or per group), the entries of
  largest magnitude, which needs no Hessian at all;
- ``U <- U + W - Z`` (the scaled dual: the accumulated disagreement, which pushes ``W`` towards the pattern).

``rho`` grows geometrically over the iterations, so the early ones explore (``W`` stays near the dense optimum and
the mask can still change) and the late ones settle (``W`` is pulled onto a fixed mask). Everything runs in
coordinates where ``H`` has a unit diagonal (column ``j`` scaled by ``sqrt(H_jj)``): the projection's magnitude is
then ``|w_j| sqrt(H_jj)``, the first-order output contribution of a weight, and one ``rho`` range fits every layer.
The mask comes from the last projection; :func:`sparseyolo.prune.layerwise.prune_layer` then re-solves the kept
weights exactly for it, as it does after SparseGPT.

Measured (docs/results.md, "Choosing the mask by ADMM"; ``benchmarks/calib_solvers.py``): each of yolov5n's 59
convs pruned to 2:4 alone, on the same statistics and with the same exact refit, is left with less output error
by ADMM's mask than by SparseGPT's in all 59 (12% less summed, median ratio 0.86), and whole calibrated models
keep more held-out mAP (2:4 with channel permutation 77% -> 81% of dense, 50% unstructured 81% -> 87%).
"""

from __future__ import annotations

import torch

from sparseyolo.prune.obs import (
    DEFAULT_DAMP,
    ObsResult,
    _check_problem,
    _quadratic,
    block_sums,
    nm_keep,
    prune_cheapest_groups,
)

#: Iterations of the ADMM loop. The layer error of yolov5n's 2:4 masks changes by < 0.5% between 60 and 200.
DEFAULT_ADMM_ITERS = 100
#: ``rho`` at the first and last iteration, relative to the unit diagonal of the scaled ``H``; geometric between.
#: Ranges from (0.001, 100) to (0.1, 10) gave yolov5n 2:4 layer errors within 2% of each other.
DEFAULT_ADMM_RHO = (0.01, 10.0)


def top_keep(salience: torch.Tensor, sparsity: float, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Prune the ``round(sparsity * numel)`` entries of least salience (and every ``forced`` one, counted in that
    quota; beyond it when there are more). Ties prune the lower flat index first. Returns a bool mask."""
    sal = salience.clamp(min=0.0)
    quota = round(sparsity * sal.numel())
    if forced is not None:
        sal = sal.masked_fill(forced, -1.0)
        quota = max(quota, int(forced.sum()))
    keep = torch.ones(sal.numel(), dtype=torch.bool, device=sal.device)
    keep[torch.sort(sal.flatten(), stable=True).indices[:quota]] = False
    return keep.view_as(sal)


def group_keep(salience: torch.Tensor, col_groups: torch.Tensor, block_rows: int, sparsity: float,
               forced: torch.Tensor | None = None, keep_one_per_block: bool = True) -> torch.Tensor:
    """Prune whole groups (``block_rows`` rows x the columns of one ``col_groups`` value) of least summed salience
    until ``round(sparsity * groups)`` are pruned, as :func:`sparseyolo.prune.obs.group_obs_mask` counts them: a
    group already emptied by ``forced`` counts toward it, and with ``keep_one_per_block`` no block of rows loses
    its last group. Returns Tensor[rows, d] bool."""
    rows, d = salience.shape
    col_groups = col_groups.to(salience.device, torch.int64)
    n_groups = int(col_groups.max()) + 1
    row_block = torch.arange(rows, device=salience.device) // block_rows
    kept = torch.ones(rows, d, dtype=torch.bool, device=salience.device) if forced is None else ~forced
    per_row = torch.zeros(rows, n_groups, dtype=salience.dtype, device=salience.device).index_add_(
        1, col_groups, salience.clamp(min=0.0) * kept)
    alive = block_sums(torch.zeros(rows, n_groups, dtype=torch.long, device=salience.device).index_add_(
        1, col_groups, kept.long()), block_rows) > 0
    alive = prune_cheapest_groups(block_sums(per_row, block_rows), alive, sparsity, keep_one_per_block)
    return kept & alive[row_block][:, col_groups]


def admm_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    damp: float = DEFAULT_DAMP,
    row_weight: torch.Tensor | None = None,
    pruned: torch.Tensor | None = None,
    block_rows: int = 1,
    col_groups: torch.Tensor | None = None,
    iters: int = DEFAULT_ADMM_ITERS,
    rho: tuple[float, float] = DEFAULT_ADMM_RHO,
) -> ObsResult:
    """Choose a pruning mask by ADMM and return it with ADMM's weights (see the module docstring).

    The pattern, as for :func:`sparseyolo.prune.obs.sparsegpt_prune`: ``n, m`` (N:M along columns, every
    ``block_rows`` rows sharing one choice), or ``sparsity`` (unstructured over the whole matrix; with
    ``col_groups``, whole groups of ``block_rows`` rows x one column group, as
    :func:`sparseyolo.prune.obs.group_obs_mask`, every block of rows keeping at least one group).

    Args:
        weight (Tensor[rows, d]): the weight to approximate; not modified.
        hessian (Tensor[d, d]): ``sum x x^T`` over the layer's inputs (any positive scale).
        damp: ``damp * mean(diag H)`` is added to the diagonal of ``H``, as in SparseGPT.
        row_weight (Tensor[rows], optional): unstructured and group masks only: each row's salience is scaled by
            ``row_weight^2`` (the rows' errors in a following BatchNorm's units).
        pruned (Tensor[rows, d] bool, optional): entries that must be pruned.
        iters, rho: ADMM iterations and the first and last ``rho`` (geometric in between).

    Returns:
        An :class:`~sparseyolo.prune.obs.ObsResult`: ``mask``, ``weight`` (ADMM's last projection, zero where
        pruned; not the exact optimum for the mask, which :func:`sparseyolo.prune.obs.masked_least_squares` gives)
        and its error against ``weight`` on the undamped ``H``.
    """
    nm = _check_problem("admm_prune", weight, hessian, sparsity, n, m, block_rows, groups=col_groups is not None)
    rows, d = weight.shape
    if nm and col_groups is not None:
        raise ValueError("admm_prune: col_groups is for group sparsity (with sparsity), not N:M")
    if iters < 1 or not 0.0 < rho[0] <= rho[1]:
        raise ValueError(f"admm_prune: needs iters >= 1 and 0 < rho[0] <= rho[1], got {iters}, {rho}")

    f64 = torch.float64
    dev = weight.device
    w0 = weight.detach().to(f64)
    h = hessian.detach().to(dev, f64).clone()
    h_orig = h.clone()
    forced = None if pruned is None or not bool(pruned.any()) else pruned.to(dev, torch.bool)
    dead = torch.diag(h) == 0
    w = w0.clone()
    if bool(dead.any()):  # no input reaches these columns: their weights carry nothing and go first
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
    mean_diag = float(torch.diag(h).mean())
    scale = torch.diag(h).sqrt()
    h += (damp * mean_diag) * torch.eye(d, dtype=f64, device=dev)
    hn = h / torch.outer(scale, scale)
    lam, q = torch.linalg.eigh(hn)
    rw2 = None if row_weight is None or nm else row_weight.detach().to(dev, f64).reshape(rows, 1) ** 2

    def project(v: torch.Tensor) -> torch.Tensor:
        sal = v * v if rw2 is None else v * v * rw2
        if nm:
            return nm_keep(sal, n, m, block_rows, forced)
        if col_groups is not None:
            return group_keep(sal, col_groups, block_rows, sparsity, forced)
        return top_keep(sal, sparsity, forced)

    wn = w * scale
    target = wn @ hn
    keep = project(wn)
    z = wn * keep
    u = torch.zeros_like(wn)
    prev = None
    for k in range(iters):
        r = rho[0] * (rho[1] / rho[0]) ** (k / max(iters - 1, 1))
        if prev is not None:
            u *= prev / r  # the scaled dual is y / rho: rescale it with rho
        prev = r
        x = (((target + r * (z - u)) @ q) / (lam + r)) @ q.t()
        keep = project(x + u)
        z = (x + u) * keep
        u += x - z
    new_w = z / scale
    new_w[~keep] = 0.0
    return ObsResult(weight=new_w.to(weight.dtype), mask=keep, error=_quadratic(w0 - new_w, h_orig),
                     baseline=_quadratic(w0, h_orig), damp=damp)
