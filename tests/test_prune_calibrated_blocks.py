"""Calibrated pruning for the patterns block-sparse kernels want: N:M shared by blocks of output channels, and
whole 16 x 32 tiles chosen by their OBS cost (``sparseyolo.prune.obs.group_obs_mask``)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.prune import is_nm_mask, prune
from sparseyolo.prune.calibrated import HessianAccumulator, calibrated_prune, prune_layer
from sparseyolo.prune.obs import group_obs_costs, group_obs_mask, masked_least_squares, sparsegpt_prune
from sparseyolo.prune.tiles import TILE_PATTERN, is_tile_mask, tile_column_groups, tile_mask, tile_norms


def _spd(d: int, seed: int, n: int = 400) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d // 2, generator=g, dtype=torch.float64) @ torch.randn(d // 2, d, generator=g,
                                                                               dtype=torch.float64)
    x = x + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x.t() @ x


def _correlated_input(seed: int, b: int = 4, c: int = 48, hw: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, c // 3, hw, hw, generator=g)
    mix = torch.randn(c, c // 3, generator=g)
    return F.silu(torch.einsum("oc,bchw->bohw", mix, base) + 0.3 * torch.randn(b, c, hw, hw, generator=g))


def _best_error_without(w: torch.Tensor, h: torch.Tensor, removed: torch.Tensor, keep: torch.Tensor) -> float:
    """min over w' supported on ``keep & ~removed`` of ``(w - w') H (w - w')^T`` for one row, by least squares."""
    k = torch.nonzero(keep & ~removed).flatten()
    if k.numel() == 0:
        return float(w @ h @ w)
    # w' = argmin: H_kk w'_k = (H w)_k
    wk = torch.linalg.solve(h[k][:, k], (h @ w)[k])
    full = torch.zeros_like(w)
    full[k] = wk
    dw = w - full
    return float(dw @ h @ dw)


class TestGroupObsMask:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_costs_are_the_exact_refit_errors_and_the_cheapest_group_goes(self, seed):
        # 5 rows in blocks of 2 (a short last block), 12 columns in 4 groups of 3 (not contiguous)
        rows, d, block = 5, 12, 2
        h = _spd(d, seed)
        w = torch.randn(rows, d, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        groups = torch.tensor([0, 1, 2, 3] * 3)
        n_blocks = 3
        keep0 = torch.ones(rows, d, dtype=torch.bool)
        keep0[0:2, groups == 3] = False  # one group already pruned: it counts, and the costs use the kept columns
        w = w * keep0
        row_weight = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0], dtype=torch.float64)
        costs = group_obs_costs(w, h, groups, block, keep=keep0, damp=0.0, row_weight=row_weight)
        expect = torch.full((n_blocks, 4), float("inf"), dtype=torch.float64)
        none = torch.zeros(d, dtype=torch.bool)
        for b, g in itertools.product(range(n_blocks), range(4)):
            r = range(b * block, min((b + 1) * block, rows))
            if keep0[r[0], groups == g].any():
                expect[b, g] = sum(row_weight[i] ** 2 * (_best_error_without(w[i], h, groups == g, keep0[i])
                                                         - _best_error_without(w[i], h, none, keep0[i])) for i in r)
        torch.testing.assert_close(costs, expect, rtol=1e-6, atol=1e-8)
        mask = group_obs_mask(w, h, groups, block, 2 / (n_blocks * 4), keep=keep0, damp=0.0, row_weight=row_weight)
        b, g = divmod(int(torch.argmin(costs)), 4)
        assert torch.equal(mask, keep0 & ~(((torch.arange(rows) // block) == b).unsqueeze(1)
                                            & (groups == g).unsqueeze(0)))

    def test_tile_structure_and_exact_count(self):
        conv_shape = (40, 48, 3, 3)  # 3 row blocks (last one 8 rows), 2 input tiles (the second 16 wide) per tap
        d = 48 * 9
        h = _spd(d, 3, n=1200)
        w = torch.randn(40, d, dtype=torch.float64)
        groups = tile_column_groups(conv_shape)
        assert groups.shape == (d,) and int(groups.max()) + 1 == 18
        for sparsity in (0.0, 0.25, 0.5, 0.9):
            mask = group_obs_mask(w, h, groups, 16, sparsity)
            conv_mask = mask.view(conv_shape)
            assert is_tile_mask(conv_mask)
            kept = int(conv_mask.view(40, 48, 9)[::16, ::32].sum())  # one entry of each tile
            assert kept == 54 - round(sparsity * 54)

    def test_bad_arguments(self):
        h, w, g = _spd(6, 0), torch.randn(2, 6, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
        with pytest.raises(ValueError, match="sparsity must be in"):
            group_obs_mask(w, h, g, 1, 1.0)
        with pytest.raises(ValueError, match="6 column groups"):
            group_obs_mask(w, h, g[:4], 1, 0.5)
        with pytest.raises(ValueError, match="block_rows"):
            group_obs_mask(w, h, g, 0, 0.5)


class TestBlockNM:
    def test_shared_by_each_block_and_identity_hessian_keeps_the_block_top(self):
        rows, d = 10, 16
        w = torch.randn(rows, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        res = sparsegpt_prune(w, torch.eye(d, dtype=torch.float64), n=2, m=4, block_rows=4, damp=0.0)
        assert is_nm_mask(res.mask, 2, 4)
        for r0, r1 in ((0, 4), (4, 8), (8, 10)):  # the last block is 2 rows
            assert bool((res.mask[r0:r1] == res.mask[r0]).all())
            # with H = I there is no compensation: the block keeps its 2 largest summed w^2 of each group of 4
            top = (w[r0:r1] ** 2).sum(0).view(-1, 4).topk(2, dim=1).indices
            expect = torch.zeros(d // 4, 4, dtype=torch.bool).scatter_(1, top, True).view(-1)
            assert torch.equal(res.mask[r0], expect)

    def test_block_one_is_per_row_and_forced_entries_prune_the_block(self):
        h = _spd(16, 1)
        w = torch.randn(6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        a = sparsegpt_prune(w, h, n=2, m=4)
        b = sparsegpt_prune(w, h, n=2, m=4, block_rows=1)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)
        forced = torch.zeros(6, 16, dtype=torch.bool)
        forced[1, 5] = True  # one row of block 0 must drop column 5: the whole block drops it
        res = sparsegpt_prune(w, h, n=2, m=4, block_rows=3, pruned=forced)
        assert not res.mask[0:3, 5].any() and is_nm_mask(res.mask, 2, 4)

    def test_bad_arguments(self):
        w, h = torch.randn(4, 8), torch.eye(8)
        with pytest.raises(ValueError, match="unstructured masks take no blocks"):
            sparsegpt_prune(w, h, sparsity=0.5, block_rows=2)
        with pytest.raises(ValueError, match="block_rows must be a positive int"):
            sparsegpt_prune(w, h, n=2, m=4, block_rows=0)


def _stats(conv: nn.Conv2d, x: torch.Tensor) -> HessianAccumulator:
    acc = HessianAccumulator(conv)
    acc.add(x)
    return acc


def _refit_error(conv: nn.Conv2d, acc: HessianAccumulator, mask: torch.Tensor) -> float:
    """Relative output error of the best weights for ``mask`` (exact masked least squares, no bias)."""
    w0 = conv.weight.detach().flatten(1).double()
    h = acc.hessian
    new, _ = masked_least_squares(h, w0 @ h, mask.flatten(1), w0, damp=0.01)
    dw = w0 - new
    return float(((dw @ h) * dw).sum() / ((w0 @ h) * w0).sum())


class TestPruneLayer:
    @pytest.mark.parametrize("amount", [0.5, 0.75])
    def test_tiles_beat_magnitude_tiles_with_the_same_refit(self, amount):
        torch.manual_seed(0)
        conv = nn.Conv2d(48, 40, 3, padding=1, bias=False)
        x = _correlated_input(0)
        acc = _stats(conv, x)
        magnitude = _refit_error(conv, acc, tile_mask(conv.weight.detach(), amount))
        layer = nn.Conv2d(48, 40, 3, padding=1, bias=False)
        layer.weight.data.copy_(conv.weight.data)
        rel = prune_layer(layer, acc, amount=amount, tiles=True, steps=3)
        assert is_tile_mask(layer.weight_mask) and layer.weight_mask_pattern == TILE_PATTERN
        tiles = 3 * 2 * 9
        kept = int((layer.weight_mask.view(40, 48, 9)[::16, ::32]).sum())
        assert kept == tiles - round(amount * tiles)
        assert bool((layer.weight[~layer.weight_mask] == 0).all())
        assert rel < magnitude
        assert rel == pytest.approx(_refit_error(conv, acc, layer.weight_mask), rel=0.05)

    def test_block_nm_mask_is_shared_and_error_between_row_and_magnitude_block(self):
        torch.manual_seed(1)
        conv = nn.Conv2d(48, 40, 3, padding=1, bias=False)
        acc = _stats(conv, _correlated_input(1))
        per_row = nn.Conv2d(48, 40, 3, padding=1, bias=False)
        blocked = nn.Conv2d(48, 40, 3, padding=1, bias=False)
        for layer in (per_row, blocked):
            layer.weight.data.copy_(conv.weight.data)
        e_row = prune_layer(per_row, acc, n=2, m=4)
        e_block = prune_layer(blocked, acc, n=2, m=4, block=8)
        mag = nn.Conv2d(48, 40, 3, padding=1, bias=False)
        mag.weight.data.copy_(conv.weight.data)
        prune(mag, "nm", n=2, m=4, block=8)
        assert is_nm_mask(blocked.weight_mask, 2, 4)
        assert bool((blocked.weight_mask.view(5, 8, -1) == blocked.weight_mask.view(5, 8, -1)[:, :1]).all())
        assert e_row < e_block < _refit_error(conv, acc, mag.weight_mask)


class TestDriver:
    def _model(self) -> nn.Sequential:
        torch.manual_seed(2)
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 48, 3, padding=1),
                             nn.BatchNorm2d(48), nn.SiLU(), nn.Conv2d(48, 32, 1)).eval()

    def test_tiles_end_to_end_beat_magnitude_on_other_images(self):
        model = self._model()
        model[3].running_mean.uniform_(-0.5, 0.5)
        model[3].running_var.uniform_(0.5, 2.0)
        calib = [torch.rand(4, 3, 16, 16) for _ in range(3)]
        held_out = torch.rand(4, 3, 16, 16)
        dense = model(held_out)
        mag = self._model()
        mag.load_state_dict(model.state_dict())
        prune(mag, "tile", 0.5)
        report = calibrated_prune(model, calib, amount=0.5, method="tile", progress=False)
        assert set(report.pruned) == {"0.weight", "2.weight", "5.weight"}
        for i in (0, 2, 5):
            assert is_tile_mask(model[i].weight_mask) and model[i].weight_mask_pattern == TILE_PATTERN
        err = float((model(held_out) - dense).detach().pow(2).mean())
        err_mag = float((mag(held_out) - dense).detach().pow(2).mean())
        assert err < 0.5 * err_mag

    def test_tiles_of_32_rows(self):
        model = self._model()
        calib = [torch.rand(4, 3, 16, 16) for _ in range(2)]
        report = calibrated_prune(model, calib, amount=0.5, method="tile", block=32, progress=False)
        assert "of the 32x32 tiles" in str(report)
        for i in (0, 2, 5):
            mask = model[i].weight_mask
            assert is_tile_mask(mask, 32) and model[i].weight_mask_pattern == "tile32x32", i
            assert bool((model[i].weight[~mask] == 0).all())
        assert not model[2].weight_mask.all()  # 48 x 288: 2 x 9 tiles, half of them pruned (one kept per block)

    def test_block_nm_driver_and_errors(self):
        model = self._model()
        calib = [torch.rand(2, 3, 16, 16)]
        calibrated_prune(model, calib, n=2, m=4, block=16, progress=False)
        w = model[2].weight_mask
        assert is_nm_mask(w, 2, 4) and bool((w.view(3, 16, -1) == w.view(3, 16, -1)[:, :1]).all())
        with pytest.raises(ValueError, match="for methods nm and tile"):
            calibrated_prune(self._model(), calib, amount=0.5, block=4, progress=False)
        with pytest.raises(ValueError, match="16 or 32"):
            calibrated_prune(self._model(), calib, amount=0.5, method="tile", block=8, progress=False)
        with pytest.raises(ValueError, match="does not fit the pattern"):
            calibrated_prune(self._model(), calib, n=2, m=4, method="tile", progress=False)
        lin = nn.Sequential(nn.Conv2d(3, 32, 1), nn.Flatten(), nn.Linear(32 * 4, 8))
        report = calibrated_prune(lin, [torch.rand(2, 3, 2, 2)], amount=0.5, method="tile", progress=False)
        assert ("2", "a Linear layer (tiles are of conv taps)") in report.skipped


def test_cli_calibrates_tiles_and_block_nm_of_yolov5n(shared, tmp_path):
    from sparseyolo import cli
    from sparseyolo.checkpoint import load_checkpoint, load_model

    data = tmp_path / "coco8.yaml"
    data.write_text(f"path: {shared / 'data' / 'coco8'}\ntrain: images/train\nval: images/val\n"
                    f"names: {[str(i) for i in range(80)]}\n")
    common = ["prune", "--weights", str(shared / "weights" / "yolov5n.pt"), "--calibrate", str(data),
              "--calib-images", "2", "--calib-img", "160", "--include", "model.2*", "model.3*"]
    tiles, block = tmp_path / "tiles.pt", tmp_path / "block.pt"
    assert cli.main([*common, "--method", "tile", "--amount", "0.5", "--calib-steps", "2", "--out", str(tiles)]) == 0
    assert cli.main([*common, "--nm", "2:4", "--nm-block", "8", "--out", str(block)]) == 0
    meta = load_checkpoint(tiles).meta["pruning"]
    assert meta["method"] == "tile" and meta["calibrate"] == str(data) and meta["calib_steps"] == 2
    assert load_checkpoint(block).meta["pruning"]["block"] == 8
    mt, mb = load_model(tiles, fuse=False), load_model(block, fuse=False)
    layers = [name for name, mod in mt.named_modules() if hasattr(mod, "weight_mask")]
    assert layers and all(name.startswith(("model.2", "model.3")) for name in layers)
    for name, mod in mt.named_modules():
        if hasattr(mod, "weight_mask"):
            assert is_tile_mask(mod.weight_mask), name
            kept = tile_norms(mod.weight_mask.float()) > 0  # [blocks, input tiles, KH, KW]
            blocks = kept.shape[0]  # each block of 16 output channels keeps at least one tile
            assert int((~kept).sum()) == min(round(0.5 * kept.numel()), kept.numel() - blocks), name
            assert bool(kept.flatten(1).any(1).all()), name
    for name, mod in mb.named_modules():
        if hasattr(mod, "weight_mask"):
            w = mod.weight_mask
            rows = w.shape[0] // 8 * 8
            assert is_nm_mask(w, 2, 4) and bool((w[:rows].view(-1, 8, *w.shape[1:]) == w[:rows:8].unsqueeze(1)).all())


def test_a_block_keeps_its_last_group_and_an_emptied_layer_still_gets_its_bias():
    h, w = _spd(32, 4), torch.randn(16, 32, dtype=torch.float64)
    one_tile = torch.zeros(32, dtype=torch.int64)  # a 16 x 32 layer is a single tile
    assert bool(group_obs_mask(w, h, one_tile, 16, 0.75).all())
    assert not bool(group_obs_mask(w, h, one_tile, 16, 0.75, keep_one_per_block=False).any())
    groups = torch.arange(32) // 8  # 4 groups: at 0.99 each of the 2 blocks keeps exactly one
    w2 = torch.randn(32, 32, dtype=torch.float64)
    mask = group_obs_mask(w2, h, groups, 16, 0.99)
    assert [int(mask[b * 16].view(4, 8).any(1).sum()) for b in (0, 1)] == [1, 1]
    # the refit of a layer with nothing kept fits only the bias: the mean target over the positions
    out_w, out_b = masked_least_squares(h, w @ h, torch.zeros(16, 32, dtype=torch.bool), w, sums=torch.ones(32),
                                        count=4, rhs_bias=torch.arange(16.0))
    assert not out_w.any() and torch.allclose(out_b, torch.arange(16.0, dtype=torch.float64) / 4)
