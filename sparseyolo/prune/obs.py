"""Optimal Brain Surgeon pruning of one layer from its input statistics (the SparseGPT solver).

A layer computes ``Y = W X`` with ``W`` Tensor[rows, d] (for a convolution: ``Cout`` rows and
``d = Cin * kh * kw`` im2col columns) and ``X`` Tensor[d, N] (one column per output position of every calibration
image). Pruning minimises the layer's output error ``||W X - W' X||_F^2`` over masked ``W'``; with
``H = X X^T`` (Tensor[d, d]) the error is ``tr((W - W') H (W - W')^T)``, a quadratic form that depends on the data
only through ``H``, and it is separable over rows.

For one row, removing weight ``q`` and re-fitting the others optimally costs ``w_q^2 / [H^-1]_qq`` and moves the
row by ``-(w_q / [H^-1]_qq) H^-1[q, :]`` (Optimal Brain Surgeon; Hassibi & Stork 1993). OBC (Frantar et al.,
NeurIPS 2022) applies this greedily weight by weight; SparseGPT (Frantar & Alistarh, ICML 2023) makes it
practical for every row at once by visiting the columns in a fixed order: after columns ``0..j-1`` have been
fixed, the inverse Hessian of the remaining columns is read off the upper Cholesky factor ``U`` of ``H^-1``
(row ``j`` of ``U`` is the update direction, ``U_jj^2`` the denominator), so one factorisation serves all rows
and all steps. Updates to later columns are applied lazily per block of columns (one GEMM per block).

Mask selection follows SparseGPT: unstructured masks are chosen per block of columns by the OBS saliency
``w^2 / U_jj^2`` of the current (already updated) weights; N:M masks are chosen per group of ``m`` consecutive
columns, keeping the ``n`` most salient of each row.

SparseGPT's result is not the best weight for the mask it ends with: a pruned column is compensated only by the
columns after it. :func:`masked_least_squares` then re-solves each row exactly for its final mask (optionally with
a free bias), which can only lower the output error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

LOGGER = logging.getLogger(__name__)

#: SparseGPT's default dampening: 1% of the mean diagonal of H is added to the diagonal (Frantar & Alistarh 2023,
#: section 3 and their reference code); it keeps the Cholesky factorisation stable when ``H`` is rank-deficient
#: (fewer positions than columns, or correlated channels) at a negligible bias.
DEFAULT_DAMP = 0.01
#: Columns per lazy-update block. 128 is SparseGPT's choice; the result does not depend on it for N:M masks and
#: only through the adaptive mask selection for unstructured ones.
DEFAULT_BLOCKSIZE = 128
#: ``masked_least_squares(method="auto")`` solves exactly (per-row Cholesky) up to this many flops per layer
#: (``rows * k^3 / 3`` for ``k`` kept columns; every yolov5n layer stays below it even unpruned: at most
#: 256 * 1153^3 / 3 = 1.3e11, a few seconds here), and by conjugate gradients above it (yolov5s's 3x3 convs
#: with 256 input and 512 output channels at 2:4: 2.6e11; ResNet-18's with 512 and 512: 2.1e12).
DIRECT_SOLVE_FLOPS = 1.5e11
#: Conjugate-gradient steps of the iterative refit.
DEFAULT_CG_ITERS = 50


@dataclass
class ObsResult:
    """What :func:`sparsegpt_prune` returns.

    Attributes:
        weight (Tensor[rows, d]): the updated weight, exactly zero wherever ``mask`` is False.
        mask (Tensor[rows, d] bool): True = kept.
        error: ``tr(dW H dW^T)`` with the undamped ``H`` (the summed squared output error over the calibration
            positions, up to the scale ``H`` was accumulated with).
        baseline: ``tr(W H W^T)``, the squared norm of the original output, so ``error / baseline`` is the
            relative output error.
        damp: the dampening actually added to the diagonal (relative to the mean diagonal).
    """

    weight: torch.Tensor
    mask: torch.Tensor
    error: float
    baseline: float
    damp: float

    @property
    def relative_error(self) -> float:
        return self.error / self.baseline if self.baseline > 0 else 0.0


def _upper_cholesky_of_inverse(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``; the dampening grows 10x per failure."""
    mean_diag = float(torch.diag(h).mean())
    scale = mean_diag if mean_diag > 0 else 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(6):
        lower, info = torch.linalg.cholesky_ex(h + (damp * scale) * eye)
        if int(info) == 0:
            # H^-1 = L^-T L^-1 via a triangular solve and a GEMM: torch.cholesky_inverse is ~20x slower on CPU
            # (12 s vs 0.6 s for d = 2304 in float64 on this 2-core machine).
            linv = torch.linalg.solve_triangular(lower, eye, upper=False)
            hinv = linv.t() @ linv
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                return upper, damp
        LOGGER.debug("H not positive definite with damp %.3g (attempt %d); increasing it", damp, attempt)
        damp = damp * 10 if damp > 0 else 1e-6
    raise RuntimeError(f"could not factorise the layer Hessian even with dampening {damp:g} of its mean diagonal")


def _spd_inverse(h: torch.Tensor) -> torch.Tensor:
    """``H^-1`` of a positive definite ``H`` from its Cholesky factor (triangular solve and GEMM; see above)."""
    lower = torch.linalg.cholesky(h)
    linv = torch.linalg.solve_triangular(lower, torch.eye(h.shape[0], dtype=h.dtype, device=h.device), upper=False)
    return linv.t() @ linv


def _check_problem(who: str, weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None, n: int | None,
                   m: int | None, block_rows: int, groups: bool = False) -> bool:
    """Validate the arguments of a layer solver (:func:`sparsegpt_prune`, :func:`~sparseyolo.prune.admm.admm_prune`)
    and return whether the pattern is N:M; ``groups``: the solver was given column groups (blocks of rows allowed
    without N:M)."""
    if weight.dim() != 2:
        raise ValueError(f"{who}: weight should be a 2D matrix, got {weight.dim()}D")
    d = weight.shape[1]
    if hessian.shape != (d, d):
        raise ValueError(f"{who}: hessian should be {d}x{d} for a weight with {d} columns, got {tuple(hessian.shape)}")
    nm = n is not None or m is not None
    if nm == (sparsity is not None):
        raise ValueError(f"{who}: give either sparsity (unstructured) or n and m (N:M), not both or neither")
    if nm:
        if n is None or m is None or not 1 <= n < m:
            raise ValueError(f"{who}: N:M needs 1 <= n < m, got {n}:{m}")
        if d % m:
            raise ValueError(f"{who}: {d} columns are not a multiple of m={m}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{who}: sparsity must be in [0, 1), got {sparsity}")
    if not (isinstance(block_rows, int) and block_rows >= 1):
        raise ValueError(f"{who}: block_rows must be a positive int, got {block_rows!r}")
    if block_rows > 1 and not nm and not groups:
        raise ValueError(f"{who}: block_rows shares N:M choices (or column groups); unstructured masks take no blocks")
    return nm


def nm_keep(salience: torch.Tensor, n: int, m: int, block_rows: int = 1,
            forced: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive columns of each row (of each block of ``block_rows`` rows,
    on the block's summed salience); ``forced`` entries (True = must be pruned) are never kept and, with a block,
    prune their column for the whole block. Ties keep the lower column. Returns Tensor[rows, d] bool."""
    rows, d = salience.shape
    sal = salience.clamp(min=0.0)
    if forced is not None:
        sal = sal.masked_fill(forced, -1.0)
    if block_rows > 1:
        sal = block_sums(sal.clamp(min=0.0), block_rows, repeat=True)
        if forced is not None:
            sal = sal.masked_fill(block_sums(forced.double(), block_rows, repeat=True) > 0, -1.0)
    groups = sal.reshape(rows, d // m, m)
    top = torch.sort(groups, dim=2, descending=True, stable=True).indices[:, :, :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True).reshape(rows, d)
    return keep if forced is None else keep & ~forced


def prune_cheapest_groups(cost: torch.Tensor, alive: torch.Tensor, sparsity: float,
                          keep_one_per_block: bool = True) -> torch.Tensor:
    """Which groups stay: of ``cost`` Tensor[blocks, groups] (lower = cheaper to prune), the cheapest ``alive`` ones
    go until ``round(sparsity * cost.numel())`` groups are pruned, the ones already dead counted; with
    ``keep_one_per_block`` each block's most costly alive group is never a candidate. Ties prune the lower flat
    index first. Returns the new ``alive`` Tensor[blocks, groups] bool."""
    alive = alive.clone()
    need = round(sparsity * cost.numel()) - int((~alive).sum())
    if need > 0:
        candidates = cost.masked_fill(~alive, float("inf"))
        if keep_one_per_block:
            top = torch.argmax(cost.masked_fill(~alive, -1.0), dim=1)
            has = alive.any(1)
            candidates[has, top[has]] = float("inf")
        need = min(need, int(torch.isfinite(candidates).sum()))
        alive.view(-1)[torch.sort(candidates.flatten(), stable=True).indices[:need]] = False
    return alive


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    damp: float = DEFAULT_DAMP,
    row_weight: torch.Tensor | None = None,
    pruned: torch.Tensor | None = None,
    block_rows: int = 1,
) -> ObsResult:
    """Prune a weight matrix and update its kept entries to minimise ``tr(dW H dW^T)`` (SparseGPT).

    Give either ``sparsity`` (unstructured: exactly ``round(sparsity * rows * d)`` entries pruned, plus any
    already ``pruned`` beyond that) or ``n`` and ``m`` (keep ``n`` of every ``m`` consecutive columns in each row;
    ``d % m == 0``).

    Args:
        weight (Tensor[rows, d]): the layer weight as a matrix; not modified.
        hessian (Tensor[d, d]): ``sum x x^T`` over the layer's input columns (any positive scale).
        sparsity: fraction in ``[0, 1)`` for unstructured pruning.
        n, m: the N:M pattern, ``1 <= n < m``.
        blocksize: columns per lazy-update block (rounded down to a multiple of ``m`` for N:M).
        damp: dampening, as a fraction of the mean diagonal of ``H``.
        row_weight (Tensor[rows], optional): positive weight of each row's error when unstructured masks compare
            rows (e.g. a following BatchNorm's ``|gamma| / sigma``); it scales saliencies by ``row_weight^2``.
            N:M masks never compare rows, so it has no effect on them.
        pruned (Tensor[rows, d] bool, optional): entries that must be pruned (an existing mask's False entries).
        block_rows: N:M only: every ``block_rows`` consecutive rows (the last block may be shorter) share one N:M
            choice, made on the saliency summed over the block's rows (the pattern block-sparse kernels want).

    Returns:
        An :class:`ObsResult`; the computation runs in float64 and the weight comes back in ``weight.dtype``.

    Caveats:
        Columns whose input is always zero (``H_jj == 0``) carry no output; their weights are zeroed first, as
        SparseGPT does, so they are pruned before anything else. Among equal saliencies an N:M group keeps the
        lower column and unstructured selection prunes the lower flat index first (stable sorts).
    """
    nm = _check_problem("sparsegpt_prune", weight, hessian, sparsity, n, m, block_rows)
    rows, d = weight.shape
    if nm:
        blocksize = max(m, blocksize // m * m)
    if blocksize < 1:
        raise ValueError(f"sparsegpt_prune: blocksize must be positive, got {blocksize}")

    f64 = torch.float64
    w = weight.detach().to(f64).clone()
    h = hessian.detach().to(f64).clone()
    h_orig = h.clone()
    forced = torch.zeros_like(w, dtype=torch.bool) if pruned is None else pruned.to(w.device, torch.bool).clone()
    dead = torch.diag(h) == 0
    if bool(dead.any()):
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
    w[forced] = 0.0
    upper, used_damp = _upper_cholesky_of_inverse(h, damp)
    rw2 = None if row_weight is None else row_weight.detach().to(f64).reshape(rows, 1) ** 2

    keep = torch.ones_like(w, dtype=torch.bool)
    total_prune = 0 if nm else round(sparsity * rows * d)
    pruned_so_far = 0
    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        cols = i2 - i1
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        diag1 = torch.diag(u1)
        keep1 = torch.ones_like(w1, dtype=torch.bool)
        forced1 = forced[:, i1:i2]
        if not nm:
            # Quotas telescope so that the layer gets exactly round(sparsity * rows * d) pruned entries; a block
            # with more forced entries than its share takes them all, and later blocks prune that much less.
            quota = min(max(round(sparsity * rows * i2) - pruned_so_far, int(forced1.sum())), rows * cols)
            pruned_so_far += quota
            if quota:
                sal = w1 ** 2 / diag1.reshape(1, -1) ** 2
                if rw2 is not None:
                    sal = sal * rw2
                sal = sal.masked_fill(forced1, -1.0)
                order = torch.sort(sal.flatten(), stable=True).indices
                keep1.view(-1)[order[:quota]] = False
        for j in range(cols):
            if nm and j % m == 0:  # one choice per block of rows: the block's summed saliency
                sal = w1[:, j:j + m] ** 2 / diag1[j:j + m].reshape(1, -1) ** 2
                keep1[:, j:j + m] = nm_keep(sal, n, m, block_rows, forced1[:, j:j + m])
            col = w1[:, j]
            q = torch.where(keep1[:, j], col, torch.zeros_like(col))
            e = (col - q) / diag1[j]
            # OBS update of the not-yet-fixed columns of this block; column j becomes exactly q.
            w1[:, j:] -= e.unsqueeze(1) * u1[j, j:].unsqueeze(0)
            w1[:, j] = q
            err1[:, j] = e
        w[:, i1:i2] = w1
        keep[:, i1:i2] = keep1
        if i2 < d:
            w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    w[~keep] = 0.0  # exact +0.0 (not -0.0) where pruned
    if not nm and total_prune and int((~keep).sum()) < total_prune:  # pragma: no cover - quotas are exact
        raise AssertionError("sparsegpt_prune: pruned fewer entries than asked")

    dw = weight.detach().to(f64) - w
    w0 = weight.detach().to(f64)
    error, baseline = _quadratic(dw, h_orig), _quadratic(w0, h_orig)
    return ObsResult(weight=w.to(weight.dtype), mask=keep, error=error, baseline=baseline, damp=used_damp)


def block_sums(t: torch.Tensor, block: int, repeat: bool = False) -> torch.Tensor:
    """Rows of ``t`` summed over blocks of ``block`` consecutive rows (the last block may be shorter):
    ``Tensor[ceil(rows / block), ...]``, or with ``repeat`` each block's sum repeated back to its rows."""
    ids = torch.arange(t.shape[0], device=t.device) // block
    sums = torch.zeros((int(ids[-1]) + 1, *t.shape[1:]), dtype=t.dtype, device=t.device).index_add_(0, ids, t)
    return sums[ids] if repeat else sums


def output_error(weight: torch.Tensor, new_weight: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W - W') H (W - W')^T)``: the summed squared output change of a linear map with input Hessian ``H``."""
    dw = (weight.detach() - new_weight.detach()).to(torch.float64)
    return _quadratic(dw, hessian.to(torch.float64))


def _quadratic(w: torch.Tensor, h: torch.Tensor) -> float:
    """``tr(w h w^T)``."""
    return float(((w @ h) * w).sum())


def masked_least_squares(
    hessian: torch.Tensor,
    rhs: torch.Tensor,
    mask: torch.Tensor,
    reference: torch.Tensor,
    damp: float = DEFAULT_DAMP,
    sums: torch.Tensor | None = None,
    count: int | None = None,
    rhs_bias: torch.Tensor | None = None,
    max_bytes: int = 1 << 28,
    init: torch.Tensor | None = None,
    method: str = "auto",
    cg_iters: int = DEFAULT_CG_ITERS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The best kept weights for a FIXED mask: each row's exact least-squares fit to a target output.

    For row ``r`` with kept columns ``S`` this minimises ``sum_x (t_r(x) - w_S x_S - b_r)^2 + l ||w_S - ref_S||^2``
    over the positions ``x`` the statistics were summed over, with ``l = damp * mean(diag H)``. SparseGPT's
    column-by-column updates only compensate a pruned weight with the columns after it, so its result is not
    this optimum; refitting once the mask is known can only lower the (undamped) output error. The optional free
    bias ``b_r`` absorbs the mean output shift pruning leaves (it goes into a following BatchNorm's running
    mean or the layer's bias).

    Args:
        hessian (Tensor[d, d]): ``H = sum x x^T``.
        rhs (Tensor[rows, d]): ``sum t(x) x^T``, the targets against the inputs (``W H`` to reproduce ``W x``).
        mask (Tensor[rows, d] bool): True = kept; the result is exactly zero elsewhere.
        reference (Tensor[rows, d]): the weights the ridge term pulls towards (the unpruned ones).
        damp: ridge strength as a fraction of the mean diagonal of ``H`` (as in :func:`sparsegpt_prune`).
        sums (Tensor[d]), count, rhs_bias (Tensor[rows]): ``sum x``, the number of positions, and ``sum t(x)``;
            give all three to fit a bias per row, none to fit none.
        max_bytes: memory for the batched per-row systems; rows are solved in chunks that fit.
        init (Tensor[rows, d], optional): a starting point for ``"cg"`` (e.g. SparseGPT's weights); default
            ``reference`` masked.
        method: ``"direct"`` (one Cholesky per row: ``rows * k^3 / 3`` flops for ``k`` kept columns), ``"cg"``
            (``cg_iters`` steps of Jacobi-preconditioned conjugate gradients on all rows at once, ``rows * d^2``
            flops each, started from ``init``: every step lowers the objective, so it is never worse than
            ``init``), or ``"auto"``: direct up to :data:`DIRECT_SOLVE_FLOPS`, else cg.
        cg_iters: conjugate-gradient steps for ``"cg"``.

    Returns:
        ``(weight Tensor[rows, d], bias Tensor[rows] or None)`` in float64.
    """
    rows, d = rhs.shape
    if hessian.shape != (d, d) or mask.shape != (rows, d) or reference.shape != (rows, d):
        raise ValueError(f"masked_least_squares: shapes do not agree: hessian {tuple(hessian.shape)}, rhs "
                         f"{tuple(rhs.shape)}, mask {tuple(mask.shape)}, reference {tuple(reference.shape)}")
    with_bias = sums is not None
    if with_bias != (count is not None) or with_bias != (rhs_bias is not None):
        raise ValueError("masked_least_squares: give sums, count and rhs_bias together (to fit a bias) or none")
    if with_bias and count < 1:
        raise ValueError("masked_least_squares: a bias needs at least one position (count >= 1)")
    if method not in ("auto", "direct", "cg"):
        raise ValueError(f"masked_least_squares: method must be auto, direct or cg, got '{method}'")
    f64 = torch.float64
    h = hessian.to(f64)
    lam = damp * float(torch.diag(h).mean().clamp_min(1e-12))
    mask = mask.to(torch.bool)
    kept = mask.sum(1)
    kmax = int(kept.max()) if rows else 0
    out_w = torch.zeros(rows, d, dtype=f64, device=h.device)
    out_b = torch.zeros(rows, dtype=f64, device=h.device) if with_bias else None
    if kmax == 0:  # every weight pruned: only the bias (the mean target) is left to fit
        if with_bias:
            out_b = rhs_bias.to(f64) / count
        return out_w, out_b
    if method == "auto":
        method = "direct" if rows * (kmax + int(with_bias)) ** 3 / 3 <= DIRECT_SOLVE_FLOPS else "cg"
    if method == "cg":
        return _masked_cg(h, rhs.to(f64), mask, reference.to(f64), lam, sums, count, rhs_bias, init, cg_iters)
    # Each row's kept columns first (in column order), padded to kmax; padded slots get an identity equation.
    idx = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :kmax]
    valid = torch.arange(kmax, device=h.device).unsqueeze(0) < kept.unsqueeze(1)
    b = rhs.to(f64).gather(1, idx) + lam * reference.to(f64).gather(1, idx)
    k1 = kmax + int(with_bias)
    chunk = max(1, min(rows, max_bytes // (8 * k1 * k1 * 2)))
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        ix, v = idx[r0:r1], valid[r0:r1]
        vv = v.to(f64)
        g = h[ix.unsqueeze(2), ix.unsqueeze(1)] * (vv.unsqueeze(2) * vv.unsqueeze(1))
        g.diagonal(dim1=1, dim2=2).add_(torch.where(v, lam, 1.0))
        rb = b[r0:r1] * vv
        if with_bias:
            s = sums.to(f64)[ix] * vv  # [c, kmax]
            g = torch.cat([torch.cat([g, s.unsqueeze(2)], 2),
                           torch.cat([s, torch.full_like(s[:, :1], float(count))], 1).unsqueeze(1)], 1)
            rb = torch.cat([rb, rhs_bias.to(f64)[r0:r1].unsqueeze(1)], 1)
        lower, info = torch.linalg.cholesky_ex(g)
        if bool((info != 0).any()):  # pragma: no cover - g is positive definite for lam > 0 or count >= 1
            sol = torch.linalg.lstsq(g, rb.unsqueeze(2)).solution.squeeze(2)
        else:
            sol = torch.cholesky_solve(rb.unsqueeze(2), lower).squeeze(2)
        wk = sol[:, :kmax] * vv
        out_w[r0:r1].scatter_(1, ix, wk)
        if with_bias:
            out_b[r0:r1] = sol[:, kmax]
    out_w[~mask] = 0.0
    return out_w, out_b


def _masked_cg(h, rhs, mask, reference, lam, sums, count, rhs_bias, init, iters):
    """Jacobi-preconditioned conjugate gradients for :func:`masked_least_squares`, all rows at once.

    The unknowns are each row's kept weights (and bias); the matrix-vector product of every row is one GEMM with
    ``H + lam I`` followed by the mask, so a step costs ``rows * d^2`` flops whatever the mask.
    """
    f64 = torch.float64
    m = mask.to(f64)
    a = h + lam * torch.eye(h.shape[0], dtype=f64, device=h.device)
    inv_diag = 1.0 / torch.diag(a).clamp_min(1e-300)
    with_bias = sums is not None
    s = sums.to(f64) if with_bias else None
    x = (reference if init is None else init.to(f64)) * m
    bw = (rhs + lam * reference) * m
    if with_bias:
        xb = (rhs_bias.to(f64) - x @ s) / count  # the best bias for the starting weights
        bb = rhs_bias.to(f64)

    def apply(pw, pb):
        yw = (pw @ a) * m
        if not with_bias:
            return yw, None
        return yw + pb.unsqueeze(1) * s.unsqueeze(0) * m, pw @ s + count * pb

    def dot(uw, ub, vw, vb):
        out = (uw * vw).sum(1)
        return out + ub * vb if with_bias else out

    aw, ab = apply(x, xb if with_bias else None)
    rw = bw - aw
    rb = bb - ab if with_bias else None
    zw, zb = rw * inv_diag, (rb / count if with_bias else None)
    pw, pb = zw.clone(), (zb.clone() if with_bias else None)
    rz = dot(rw, rb, zw, zb)
    rz0 = rz.clone()
    for _ in range(iters):
        apw, apb = apply(pw, pb)
        pap = dot(pw, pb, apw, apb)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), torch.zeros_like(rz))
        x += alpha.unsqueeze(1) * pw
        rw -= alpha.unsqueeze(1) * apw
        if with_bias:
            xb += alpha * pb
            rb -= alpha * apb
        zw = rw * inv_diag
        zb = rb / count if with_bias else None
        rz_new = dot(rw, rb, zw, zb)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        pw = zw + beta.unsqueeze(1) * pw
        if with_bias:
            pb = zb + beta * pb
        rz = rz_new
        if bool((rz <= 1e-24 * rz0.clamp_min(1e-300)).all()):
            break
    x = x * m
    x[~mask] = 0.0
    return x, (xb if with_bias else None)


def group_obs_mask(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    col_groups: torch.Tensor,
    block_rows: int,
    sparsity: float,
    keep: torch.Tensor | None = None,
    damp: float = DEFAULT_DAMP,
    row_weight: torch.Tensor | None = None,
    keep_one_per_block: bool = True,
) -> torch.Tensor:
    """Mask pruning whole groups of weights by their OBS cost: a group is ``block_rows`` consecutive rows times the
    columns of one column group (a ``16 x 32`` tile of a conv tap, or a row-block column), and the groups of
    lowest cost (:func:`group_obs_costs`) are pruned until ``round(sparsity * groups)`` are.

    With ``keep_one_per_block`` (the default) every block of rows keeps its most costly group: a small layer (one
    16 x 32 tile per tap) is never emptied, so fewer groups than asked may be pruned there.

    The costs are exact for removing one group; pruned together, the groups' interactions are ignored, which is
    why :func:`sparseyolo.prune.layerwise.prune_layer` prunes in steps with an exact refit between them.

    Args:
        weight, hessian, col_groups, block_rows, keep, damp, row_weight: as for :func:`group_obs_costs`.
        sparsity: fraction of the ``ceil(rows / block_rows) * G`` groups pruned in the result, in ``[0, 1)``;
            groups already pruned (none of their entries kept in ``keep``) count toward it.
        keep_one_per_block: never prune a block's last kept group.

    Returns:
        The new mask, Tensor[rows, d] bool; the pruned entries of ``keep`` stay pruned.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"group_obs_mask: sparsity must be in [0, 1), got {sparsity}")
    rows, d = weight.shape
    keep = torch.ones(rows, d, dtype=torch.bool, device=weight.device) if keep is None else keep.to(weight.device,
                                                                                                  torch.bool)
    cost = group_obs_costs(weight, hessian, col_groups, block_rows, keep, damp, row_weight)
    alive = prune_cheapest_groups(cost, torch.isfinite(cost), sparsity, keep_one_per_block)
    col_groups = col_groups.to(weight.device, torch.int64)
    return keep & alive[torch.arange(rows, device=weight.device) // block_rows][:, col_groups]


def group_obs_costs(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    col_groups: torch.Tensor,
    block_rows: int,
    keep: torch.Tensor | None = None,
    damp: float = DEFAULT_DAMP,
    row_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The OBS cost of pruning each group of weights, Tensor[ceil(rows / block_rows), G] float64 (``inf`` for a
    group already pruned).

    Group ``(b, g)`` is rows ``b*block_rows ..`` (the last block may be shorter) times the columns ``q`` with
    ``col_groups == g``. Its cost is the output error of pruning it and re-fitting the rest of each of its rows
    optimally: the multi-weight OBS saliency ``sum_r w_rq^T ([H_K^-1]_qq)^-1 w_rq`` over the block's rows ``r``
    (Hassibi & Stork 1993; the structured form used by OBC, Frantar et al. 2022), with ``H_K^-1`` the inverse of
    the (damped) ``H`` over the columns the block still keeps.

    Args:
        weight (Tensor[rows, d]): the current weight (treated as zero where ``keep`` is False).
        hessian (Tensor[d, d]): the input statistics ``sum x x^T``.
        col_groups (Tensor[d] int64): the group of every column, ``0 .. G-1`` (in any column order).
        block_rows: rows sharing each group.
        keep (Tensor[rows, d] bool, optional): the current mask; a block keeps the columns any of its rows keeps.
        damp: dampening of ``H``, as a fraction of its mean diagonal.
        row_weight (Tensor[rows], optional): weight of each row's error when groups of different blocks compete
            (a following BatchNorm's ``|gamma| / sigma``); costs scale by ``row_weight^2``.
    """
    rows, d = weight.shape
    if hessian.shape != (d, d) or col_groups.shape != (d,):
        raise ValueError(f"group_obs_mask: a {rows}x{d} weight needs a {d}x{d} hessian and {d} column groups, got "
                         f"{tuple(hessian.shape)} and {tuple(col_groups.shape)}")
    if not (isinstance(block_rows, int) and block_rows >= 1):
        raise ValueError(f"group_obs_mask: block_rows must be a positive int, got {block_rows!r}")
    f64 = torch.float64
    dev = weight.device
    w = weight.detach().to(f64).clone()
    h = hessian.detach().to(dev, f64).clone()
    keep = torch.ones(rows, d, dtype=torch.bool, device=dev) if keep is None else keep.to(dev, torch.bool)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0  # no input ever reaches these columns: they cost nothing to prune
    w[~keep] = 0.0
    mean_diag = float(torch.diag(h).mean())
    h += (damp * (mean_diag if mean_diag > 0 else 1.0)) * torch.eye(d, dtype=f64, device=dev)
    rw2 = torch.ones(rows, dtype=f64, device=dev) if row_weight is None else row_weight.detach().to(dev, f64) ** 2

    col_groups = col_groups.to(dev, torch.int64)
    n_groups = int(col_groups.max()) + 1
    n_blocks = -(-rows // block_rows)
    # the columns of each group, grouped by size (edge tiles are narrower) so that the small inverses batch
    members = [torch.nonzero(col_groups == g).flatten() for g in range(n_groups)]
    by_size: dict[int, list[int]] = {}
    for g, idx in enumerate(members):
        by_size.setdefault(int(idx.numel()), []).append(g)
    cost = torch.full((n_blocks, n_groups), float("inf"), dtype=f64, device=dev)
    for b in range(n_blocks):
        r0, r1 = b * block_rows, min((b + 1) * block_rows, rows)
        kept_cols = keep[r0:r1].any(0)
        alive = torch.zeros(n_groups, dtype=torch.long, device=dev).index_add_(0, col_groups, kept_cols.long()) > 0
        # H^-1 over the kept columns; pruned columns get an identity block (their weights are zero: they add
        # nothing to a group's cost)
        k = torch.nonzero(kept_cols).flatten()
        hinv = torch.eye(d, dtype=f64, device=dev)
        if k.numel():
            hinv[k.unsqueeze(1), k.unsqueeze(0)] = _spd_inverse(h[k][:, k])
        wb = w[r0:r1]
        for gs in by_size.values():
            idx = torch.stack([members[g] for g in gs])  # [n, size]
            sub = hinv[idx.unsqueeze(2), idx.unsqueeze(1)]  # [n, size, size]
            wq = wb[:, idx]  # [block rows, n, size]
            per_row = torch.einsum("rni,nij,rnj->rn", wq, torch.linalg.inv(sub), wq)
            gs_t = torch.tensor(gs, device=dev)
            cost[b, gs_t] = torch.where(alive[gs_t], (per_row * rw2[r0:r1].unsqueeze(1)).sum(0), float("inf"))
    return cost
