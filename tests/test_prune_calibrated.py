"""One-shot calibrated (OBS / SparseGPT) pruning: solver, input statistics, model driver, BN re-calibration, CLI."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.prune import is_nm_mask, prune
from sparseyolo.prune.calibrated import (
    HessianAccumulator,
    _schedule,
    calibrated_prune,
    dense_target_weight,
    layer_input_columns,
    prune_layer,
    recalibrate_batchnorm,
)
from sparseyolo.prune.obs import masked_least_squares, output_error, sparsegpt_prune


def _correlated_input(seed: int, b: int = 6, c: int = 16, hw: int = 11) -> torch.Tensor:
    """Channels with shared structure (as real activations have), so that re-fitting the kept weights pays."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, c // 2, hw, hw, generator=g)
    mix = torch.randn(c, c // 2, generator=g)
    x = torch.einsum("oc,bchw->bohw", mix, base) + 0.3 * torch.randn(b, c, hw, hw, generator=g)
    return F.silu(x)


def _reference_hessian(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Explicit im2col: every output position's receptive field, flattened in weight order (c, i, j)."""
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    xp = F.pad(x, (pw, pw, ph, ph)).double()
    rows = []
    for b in range(x.shape[0]):
        for oy in range(0, xp.shape[2] - kh + 1, sh):
            for ox in range(0, xp.shape[3] - kw + 1, sw):
                rows.append(xp[b, :, oy:oy + kh, ox:ox + kw].reshape(-1))
    X = torch.stack(rows, 1)
    return X @ X.t()


class TestHessian:
    @pytest.mark.parametrize("k,stride,pad", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (6, 2, 2)])
    def test_matches_explicit_im2col(self, k, stride, pad):
        conv = nn.Conv2d(5, 7, k, stride, pad, bias=False)
        x = torch.randn(2, 5, 9, 13)
        acc = HessianAccumulator(conv)
        acc.add(x[:1])
        acc.add(x[1:])
        torch.testing.assert_close(acc.hessian, _reference_hessian(conv, x), rtol=1e-5, atol=1e-4)
        out = conv(x)
        assert acc.rows == out.shape[0] * out.shape[2] * out.shape[3]

    def test_columns_reproduce_conv(self):
        conv = nn.Conv2d(4, 6, 3, 2, 1, bias=False)
        x = torch.randn(2, 4, 10, 7)
        cols = layer_input_columns(conv, x)
        y = conv.weight.flatten(1) @ cols
        torch.testing.assert_close(y.view_as(conv(x)), conv(x), rtol=1e-5, atol=1e-5)

    def test_linear(self):
        lin = nn.Linear(6, 3)
        x = torch.randn(4, 5, 6)
        acc = HessianAccumulator(lin)
        acc.add(x)
        X = x.reshape(-1, 6).double()
        torch.testing.assert_close(acc.hessian, X.t() @ X, rtol=1e-5, atol=1e-5)  # float32 GEMM per batch

    def test_cross_term_equals_hessian_for_same_input(self):
        conv = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
        x = torch.randn(2, 4, 6, 6)
        acc = HessianAccumulator(conv, cross=True)
        acc.add(x, x)
        torch.testing.assert_close(acc.cross, acc.hessian)
        w = conv.weight.flatten(1)
        torch.testing.assert_close(dense_target_weight(w, acc.hessian, acc.cross, 0.01), w.double())


class TestSolver:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("pattern", ["2:4", "1:4", "2:8", 0.5, 0.75])
    def test_beats_magnitude_on_conv(self, seed, pattern):
        torch.manual_seed(seed)
        conv = nn.Conv2d(16, 13, 3, padding=1, bias=False)
        x = _correlated_input(seed)
        acc = HessianAccumulator(conv)
        acc.add(x)
        ref = conv(x).detach()
        calib, mag = copy.deepcopy(conv), copy.deepcopy(conv)
        if isinstance(pattern, str):
            n, m = (int(v) for v in pattern.split(":"))
            prune_layer(calib, acc.hessian, n=n, m=m, blocksize=32)
            prune(mag, "nm", n=n, m=m)
            assert is_nm_mask(calib.weight_mask, n, m)
            assert calib.weight_mask_pattern == pattern
        else:
            prune_layer(calib, acc.hessian, amount=pattern, blocksize=32)
            prune(mag, "l1", amount=pattern)
            assert int((~calib.weight_mask).sum()) == round(pattern * conv.weight.numel())
        w = calib.weight.detach()
        assert bool((w[~calib.weight_mask] == 0).all())
        assert not bool(torch.signbit(w[~calib.weight_mask]).any())  # +0.0, what the kernels expect
        with torch.no_grad():
            err_calib = float((calib(x) - ref).pow(2).sum())
            err_mag = float((mag(x) - ref).pow(2).sum())
        assert err_calib < 0.9 * err_mag, (err_calib, err_mag)

    def test_beats_magnitude_on_linear(self):
        torch.manual_seed(0)
        lin = nn.Linear(32, 20, bias=False)
        x = _correlated_input(3, b=4, c=32, hw=8).permute(0, 2, 3, 1).reshape(-1, 32)
        acc = HessianAccumulator(lin)
        acc.add(x)
        calib, mag = copy.deepcopy(lin), copy.deepcopy(lin)
        prune_layer(calib, acc.hessian, n=2, m=4)
        prune(mag, "nm", n=2, m=4)
        assert is_nm_mask(calib.weight_mask, 2, 4)
        ref = lin(x)
        assert (calib(x) - ref).norm() < (mag(x) - ref).norm()

    def test_reported_error_is_output_error(self):
        torch.manual_seed(0)
        w = torch.randn(9, 24, dtype=torch.float64)
        x = torch.randn(24, 200, dtype=torch.float64)
        h = x @ x.t()
        res = sparsegpt_prune(w, h, n=2, m=4, blocksize=8)
        assert res.error == pytest.approx(float(((w - res.weight) @ x).pow(2).sum()), rel=1e-9)
        assert res.error == pytest.approx(output_error(w, res.weight, h), rel=1e-12)
        assert res.baseline == pytest.approx(float((w @ x).pow(2).sum()), rel=1e-9)

    def test_nm_mask_independent_of_blocksize(self):
        torch.manual_seed(1)
        w = torch.randn(6, 32, dtype=torch.float64)
        x = torch.randn(32, 100, dtype=torch.float64)
        a = sparsegpt_prune(w, x @ x.t(), n=2, m=4, blocksize=8)
        b = sparsegpt_prune(w, x @ x.t(), n=2, m=4, blocksize=32)
        assert torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.weight, b.weight)

    def test_existing_mask_kept(self):
        torch.manual_seed(0)
        w = torch.randn(8, 16)
        x = torch.randn(16, 64)
        pruned = torch.zeros(8, 16, dtype=torch.bool)
        pruned[:, 0] = True
        res = sparsegpt_prune(w, x @ x.t(), sparsity=0.25, pruned=pruned)
        assert not res.mask[:, 0].any()
        assert int((~res.mask).sum()) == 32

    def test_dead_inputs_pruned_first(self):
        torch.manual_seed(0)
        w = torch.randn(4, 8)
        x = torch.randn(8, 50)
        x[3] = 0  # an input channel that is always zero
        res = sparsegpt_prune(w, x @ x.t(), n=2, m=4)
        assert not res.mask[:, 3].any()

    def test_bad_args(self):
        w, h = torch.randn(4, 8), torch.eye(8)
        with pytest.raises(ValueError, match="either sparsity"):
            sparsegpt_prune(w, h)
        with pytest.raises(ValueError, match="either sparsity"):
            sparsegpt_prune(w, h, sparsity=0.5, n=2, m=4)
        with pytest.raises(ValueError, match="1 <= n < m"):
            sparsegpt_prune(w, h, n=4, m=4)
        with pytest.raises(ValueError, match="multiple of m"):
            sparsegpt_prune(torch.randn(4, 6), torch.eye(6), n=2, m=4)
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            sparsegpt_prune(w, h, sparsity=1.0)
        with pytest.raises(ValueError, match="8x8"):
            sparsegpt_prune(w, torch.eye(7), sparsity=0.5)


class TestMaskedLeastSquares:
    """The refit of the kept weights for a fixed mask, against per-row ``torch.linalg.lstsq`` on the raw data."""

    @pytest.mark.parametrize("bias", [False, True])
    @pytest.mark.parametrize("mask_kind", ["2:4", "unstructured", "empty_row"])
    def test_matches_lstsq(self, bias, mask_kind):
        g = torch.Generator().manual_seed(3)
        rows, d, npos = 6, 16, 300
        x = torch.randn(d, npos, generator=g, dtype=torch.float64) + 0.5  # nonzero mean: the bias matters
        t = torch.randn(rows, d, generator=g, dtype=torch.float64) @ x + 2.0
        if mask_kind == "2:4":
            mask = torch.zeros(rows, d, dtype=torch.bool)
            for r in range(rows):
                for q in range(0, d, 4):
                    mask[r, q + torch.randperm(4, generator=g)[:2]] = True
        else:
            mask = torch.rand(rows, d, generator=g) < 0.4
            if mask_kind == "empty_row":
                mask[2] = False
                mask[4] = True
        extra = dict(sums=x.sum(1), count=npos, rhs_bias=t.sum(1)) if bias else {}
        w, b = masked_least_squares(x @ x.t(), t @ x.t(), mask, torch.randn(rows, d, dtype=torch.float64),
                                    damp=0.0, **extra)
        assert (b is None) == (not bias)
        assert bool((w[~mask] == 0).all())
        for r in range(rows):
            cols = [x[mask[r]].t()] + ([torch.ones(npos, 1, dtype=torch.float64)] if bias else [])
            a = torch.cat(cols, 1)
            if a.shape[1] == 0:
                continue
            sol = torch.linalg.lstsq(a, t[r].unsqueeze(1)).solution.flatten()
            torch.testing.assert_close(w[r, mask[r]], sol[:int(mask[r].sum())], rtol=1e-7, atol=1e-8)
            if bias:
                assert float(b[r]) == pytest.approx(float(sol[-1]), rel=1e-7, abs=1e-8)

    def test_ridge_pulls_towards_reference(self):
        x = torch.zeros(4, 10, dtype=torch.float64)  # no information at all: the ridge decides
        ref = torch.arange(8, dtype=torch.float64).view(2, 4)
        mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
        w, _ = masked_least_squares(x @ x.t() + 1e-3 * torch.eye(4, dtype=torch.float64), torch.zeros(2, 4), mask,
                                    ref, damp=1e3)
        torch.testing.assert_close(w, ref * mask, rtol=1e-3, atol=1e-3)

    def test_chunked_equals_whole(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(12, 80, generator=g, dtype=torch.float64)
        w0 = torch.randn(9, 12, generator=g, dtype=torch.float64)
        mask = torch.rand(9, 12, generator=g) < 0.5
        args = (x @ x.t(), w0 @ x @ x.t(), mask, w0, 0.01)
        kw = dict(sums=x.sum(1), count=80, rhs_bias=(w0 @ x).sum(1))
        a = masked_least_squares(*args, **kw)
        b = masked_least_squares(*args, **kw, max_bytes=1)  # one row per chunk
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])

    @staticmethod
    def _problem(seed: int = 0, rows: int = 7, d: int = 24, npos: int = 400):
        g = torch.Generator().manual_seed(seed)
        x = F.silu(torch.randn(d, npos, generator=g, dtype=torch.float64)) + 0.2
        w0 = torch.randn(rows, d, generator=g, dtype=torch.float64)
        t = w0 @ x + 0.1 * torch.randn(rows, npos, generator=g, dtype=torch.float64)
        mask = torch.rand(rows, d, generator=g) < 0.5
        return x, w0, t, mask

    @staticmethod
    def _objective(x, t, w, b, w0, lam):
        fit = t - w @ x - (0.0 if b is None else b.unsqueeze(1))
        return float(fit.pow(2).sum() + lam * (w - w0 * (w != 0)).pow(2).sum())

    @pytest.mark.parametrize("bias", [False, True])
    def test_cg_converges_to_direct(self, bias):
        x, w0, t, mask = self._problem()
        extra = dict(sums=x.sum(1), count=x.shape[1], rhs_bias=t.sum(1)) if bias else {}
        args = (x @ x.t(), t @ x.t(), mask, w0, 0.01)
        wd, bd = masked_least_squares(*args, **extra, method="direct")
        wc, bc = masked_least_squares(*args, **extra, method="cg", cg_iters=200)
        torch.testing.assert_close(wc, wd, rtol=1e-6, atol=1e-8)
        if bias:
            torch.testing.assert_close(bc, bd, rtol=1e-6, atol=1e-8)
        assert bool((wc[~mask] == 0).all())

    @pytest.mark.parametrize("iters", [1, 3, 10])
    def test_cg_never_worse_than_its_start(self, iters):
        x, w0, t, mask = self._problem(1)
        h = x @ x.t()
        lam = 0.01 * float(torch.diag(h).mean())
        start = w0 * mask + 0.3  # a poor start, masked below
        start = start * mask
        extra = dict(sums=x.sum(1), count=x.shape[1], rhs_bias=t.sum(1))
        w, b = masked_least_squares(h, t @ x.t(), mask, w0, 0.01, **extra, method="cg", init=start, cg_iters=iters)
        b_start = (t.sum(1) - start @ x.sum(1)) / x.shape[1]
        before = self._objective(x, t, start, b_start, w0 * mask, lam)
        after = self._objective(x, t, w, b, w0 * mask, lam)
        assert after <= before

    def test_auto_switches_to_cg_above_the_budget(self, monkeypatch):
        import sparseyolo.prune.obs as obs

        x, w0, t, mask = self._problem(2)
        args = (x @ x.t(), t @ x.t(), mask, w0, 0.01)
        monkeypatch.setattr(obs, "DIRECT_SOLVE_FLOPS", 0.0)
        w_auto, _ = obs.masked_least_squares(*args, init=w0 * mask, cg_iters=3)
        w_cg, _ = obs.masked_least_squares(*args, init=w0 * mask, cg_iters=3, method="cg")
        assert torch.equal(w_auto, w_cg)
        with pytest.raises(ValueError, match="auto, direct or cg"):
            obs.masked_least_squares(*args, method="qr")

    def test_bad_args(self):
        h, r, mk = torch.eye(4), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool)
        with pytest.raises(ValueError, match="shapes do not agree"):
            masked_least_squares(h, r, mk[:, :3], r)
        with pytest.raises(ValueError, match="together"):
            masked_least_squares(h, r, mk, r, sums=torch.zeros(4))
        with pytest.raises(ValueError, match="count >= 1"):
            masked_least_squares(h, r, mk, r, sums=torch.zeros(4), count=0, rhs_bias=torch.zeros(2))


class TestRefit:
    """``prune_layer`` with the statistics: the exact refit (and bias into the BatchNorm) after SparseGPT."""

    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("pattern", ["2:4", 0.5])
    def test_refit_lowers_output_error(self, seed, pattern):
        torch.manual_seed(seed)
        conv = nn.Conv2d(16, 12, 3, padding=1, bias=False)
        bn = nn.BatchNorm2d(12).eval()
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        x = _correlated_input(seed) + 0.5  # shifted inputs: pruning moves the output mean
        acc = HessianAccumulator(conv)
        acc.add(x)
        with torch.no_grad():
            ref = bn(conv(x))
        kw = dict(n=2, m=4) if pattern == "2:4" else dict(amount=pattern)
        errors = {}
        for refit in (False, True):
            c, b = copy.deepcopy(conv), copy.deepcopy(bn)
            rel = prune_layer(c, acc, blocksize=32, refit=refit, bn=b, **kw)
            with torch.no_grad():
                errors[refit] = float((b(c(x)) - ref).pow(2).sum())
                # the reported relative error is the pre-BN output error of conv + fitted bias
                pre = c(x) + (bn.running_mean - b.running_mean).view(1, -1, 1, 1)
                measured = float((pre - conv(x)).pow(2).sum() / conv(x).pow(2).sum())
            assert rel == pytest.approx(measured, rel=1e-3, abs=1e-7)
            assert bool((c.weight[~c.weight_mask] == 0).all())
            if not refit:
                assert torch.equal(b.running_mean, bn.running_mean)
        assert errors[True] < errors[False], errors

    def test_bias_goes_into_layer_bias_without_batchnorm(self):
        torch.manual_seed(0)
        conv = nn.Conv2d(8, 4, 1, bias=True)
        x = F.relu(torch.randn(3, 8, 7, 7)) + 1.0
        acc = HessianAccumulator(conv)
        acc.add(x)
        before = conv.bias.detach().clone()
        c = copy.deepcopy(conv)
        prune_layer(c, acc, n=1, m=4)
        assert not torch.equal(c.bias, before)
        with torch.no_grad():  # the refit (with its bias) beats SparseGPT's weights with the old bias
            plain = copy.deepcopy(conv)
            prune_layer(plain, acc, n=1, m=4, refit=False)
            ref = conv(x)
            assert float((c(x) - ref).pow(2).sum()) < float((plain(x) - ref).pow(2).sum())

    def test_no_bias_anywhere(self):
        conv = nn.Conv2d(8, 4, 1, bias=False)
        x = torch.randn(2, 8, 5, 5) + 1.0
        acc = HessianAccumulator(conv)
        acc.add(x)
        prune_layer(conv, acc, n=2, m=4)  # nowhere to put a bias: weights only, no error
        assert conv.bias is None and is_nm_mask(conv.weight_mask, 2, 4)


class TestSteps:
    def test_schedule(self):
        assert _schedule(None, 2, 4, 1) == [(None, 2)]
        assert _schedule(None, 2, 4, 2) == [(None, 3), (None, 2)]
        assert _schedule(None, 2, 4, 5) == [(None, 3), (None, 2)]  # only distinct stages
        assert _schedule(None, 1, 8, 3) == [(None, 6), (None, 3), (None, 1)]
        assert _schedule(0.75, None, None, 3) == [(0.25, None), (0.5, None), (0.75, None)]
        with pytest.raises(ValueError, match="at least 1"):
            _schedule(0.5, None, None, 0)

    @pytest.mark.parametrize("pattern", ["2:4", 0.75])
    def test_stepwise_pattern_is_exact(self, pattern):
        torch.manual_seed(0)
        conv = nn.Conv2d(16, 12, 3, padding=1, bias=False)
        x = _correlated_input(1)
        acc = HessianAccumulator(conv)
        acc.add(x)
        kw = dict(n=2, m=4) if pattern == "2:4" else dict(amount=pattern)
        prune_layer(conv, acc, blocksize=16, steps=3, **kw)
        if pattern == "2:4":
            assert is_nm_mask(conv.weight_mask, 2, 4)
        else:
            assert int((~conv.weight_mask).sum()) == round(pattern * conv.weight.numel())
        assert bool((conv.weight[~conv.weight_mask] == 0).all())

    def test_forced_entries_concentrated_in_one_block_keep_the_total(self):
        torch.manual_seed(0)
        w = torch.randn(8, 32)
        x = torch.randn(32, 100)
        pruned = torch.zeros(8, 32, dtype=torch.bool)
        pruned[:, :8] = True  # the whole first block of 8 columns, a quarter of the layer
        res = sparsegpt_prune(w, x @ x.t(), sparsity=0.5, pruned=pruned, blocksize=8)
        assert int((~res.mask).sum()) == 128 and not res.mask[:, :8].any()


class _Tiny(nn.Module):
    """conv-bn-act, a branch reusing the same input twice (sibling group), and a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.b = nn.Conv2d(8, 8, 1, bias=False)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn(self.stem(x)))
        return self.head(torch.cat((F.silu(self.a(x)), F.silu(self.b(x))), 1))


class TestDriver:
    def _batches(self, n: int = 3) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return [torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8) for _ in range(n)]

    @pytest.mark.parametrize("target", ["dense", "layer"])
    def test_generic_model_nm(self, target):
        torch.manual_seed(0)
        model = _Tiny().eval()
        report = calibrated_prune(model, self._batches(), n=2, m=4, target=target, bn_recalibration="reset")
        assert set(report.pruned) == {"a.weight", "b.weight", "head.weight"}
        assert ("stem", "3 input channels, not a multiple of m=4") in report.skipped
        for mod in (model.a, model.b, model.head):
            assert is_nm_mask(mod.weight_mask, 2, 4)
            assert bool((mod.weight[~mod.weight_mask] == 0).all())
        assert report.calib_images == 6 and report.bn_recalibrated == 1
        assert report.calib_rows["b.weight"] == 6 * 8 * 8
        assert not model.training

    def test_unstructured_count_per_layer(self):
        model = _Tiny().eval()
        report = calibrated_prune(model, self._batches(), amount=0.5, bn_recalibration="none")
        for name, mod in (("a", model.a), ("b", model.b), ("head", model.head), ("stem", model.stem)):
            assert int((~mod.weight_mask).sum()) == round(0.5 * mod.weight.numel()), name
        assert report.bn_recalibrated == 0

    def test_errors(self):
        model = _Tiny().eval()
        with pytest.raises(ValueError, match="calibration images"):
            calibrated_prune(model, [], n=2, m=4)
        with pytest.raises(ValueError, match="either amount"):
            calibrated_prune(model, self._batches(), amount=0.5, n=2, m=4)
        with pytest.raises(ValueError, match="1 <= n < m"):
            calibrated_prune(model, self._batches(), n=3, m=2)
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            calibrated_prune(model, self._batches(), amount=1.5)
        with pytest.raises(ValueError, match="no prunable layer"):
            calibrated_prune(model, self._batches(), n=2, m=4, include="nothing*")
        with pytest.raises(ValueError, match="steps must be"):
            calibrated_prune(model, self._batches(), n=2, m=4, steps=0)
        with pytest.raises(ValueError, match="bn_recalibration"):
            calibrated_prune(model, self._batches(), n=2, m=4, bn_recalibration="sometimes")


class TestBatchNormRecalibration:
    def test_matches_statistics_of_the_data(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)).eval()
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(7.0)
        batches = [torch.randn(4, 3, 10, 10) * 2 + 1 for _ in range(3)]
        assert recalibrate_batchnorm(model, batches) == 1
        y = torch.cat([model[0](x) for x in batches])
        torch.testing.assert_close(model[1].running_mean, y.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
        # the stored variance is the mean of the per-batch unbiased variances
        var = torch.stack([model[0](x).transpose(0, 1).reshape(4, -1).var(1) for x in batches]).mean(0)
        torch.testing.assert_close(model[1].running_var, var, rtol=1e-4, atol=1e-5)
        assert model[1].momentum == 0.1 and not model.training and model[1].num_batches_tracked == 3


@pytest.fixture(scope="module")
def coco8_batches(shared):
    from sparseyolo.prune.calibrated import calibration_batches

    data = {"path": str(shared / "data" / "coco8"), "train": "images/train", "val": "images/val",
            "names": [str(i) for i in range(80)]}
    return calibration_batches(data, n_images=2, img_size=160, batch_size=2)


class TestYolov5n:
    def test_end_to_end_nm(self, shared, coco8_batches, tmp_path):
        from sparseyolo.checkpoint import load_model, save_checkpoint

        model = load_model(shared / "weights" / "yolov5n.pt", fuse=False)
        bn = model.model[1].bn
        mean_before = bn.running_mean.clone()
        report = calibrated_prune(model, coco8_batches, n=2, m=4, bn_recalibration="reset")
        assert report.calib_images == 2 and len(report.pruned) == 59
        assert [name for name, _ in report.skipped] == ["model.0.conv"]
        for name, mod in model.named_modules():
            if name in ("model.1.conv", "model.24.m.2"):
                assert is_nm_mask(mod.weight_mask, 2, 4)
                assert bool((mod.weight[~mod.weight_mask] == 0).all())
        assert all(0.0 <= e < 0.5 for e in report.rel_error.values())
        # BN statistics re-estimated on the calibration images: changed, finite, positive variances
        assert not torch.equal(bn.running_mean, mean_before)
        assert bool(torch.isfinite(bn.running_mean).all()) and bool((bn.running_var > 0).all())
        # the pruned model saves and loads with its masks
        path = save_checkpoint(model, tmp_path / "calibrated.pt", pruning={"method": "nm", "n": 2, "m": 4})
        back = load_model(path, fuse=False)
        assert is_nm_mask(back.model[1].conv.weight_mask, 2, 4)

    def test_cli_records_the_recipe(self, shared, tmp_path, capsys):
        from sparseyolo import cli
        from sparseyolo.checkpoint import load_checkpoint, load_model

        data = tmp_path / "coco8.yaml"
        data.write_text(f"path: {shared / 'data' / 'coco8'}\ntrain: images/train\nval: images/val\n"
                        f"names: {[str(i) for i in range(80)]}\n")
        out = tmp_path / "cal.pt"
        assert cli.main(["prune", "--weights", str(shared / "weights" / "yolov5n.pt"), "--nm", "2:4",
                         "--calibrate", str(data), "--calib-images", "2", "--calib-img", "160", "--no-refit",
                         "--reconstruct", "2", "--out", str(out)]) == 0
        meta = load_checkpoint(out).meta["pruning"]
        assert meta["refit"] is False and meta["calib_images"] == 2 and meta["calib_target"] == "dense"
        assert meta["calib_steps"] == 1  # the default for N:M
        # stage reconstruction (tests/test_prune_reconstruct.py): every stage with a pruned conv, recorded
        assert "stage reconstruction: 18 stages, 2 iterations each on 2 images" in capsys.readouterr().out
        assert meta["reconstruct"] == 2 and meta["reconstruct_lr"] == 1e-3
        assert is_nm_mask(load_model(out, fuse=False).model[1].conv.weight_mask, 2, 4)

    def test_cli_errors(self, shared, tmp_path, capsys):
        from sparseyolo import cli

        argv = ["prune", "--weights", str(shared / "weights" / "yolov5n.pt"), "--out", str(tmp_path / "x.pt"),
                "--calibrate", str(tmp_path / "missing.yaml")]
        assert cli.main([*argv, "--method", "global", "--amount", "0.5"]) == 2
        assert "--calibrate works with --method l1" in capsys.readouterr().err
        assert cli.main([*argv, "--nm", "2:4"]) == 2
        assert "data yaml not found" in capsys.readouterr().err
        assert cli.main([*argv, "--nm", "2:4", "--calib-images", "0"]) == 2
        assert "at least 1" in capsys.readouterr().err
        assert cli.main([*argv, "--nm", "2:4", "--calib-steps", "0"]) == 2
        assert "--calib-steps must be at least 1" in capsys.readouterr().err
