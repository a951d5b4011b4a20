"""Tile pruning (16 x 32 and 32 x 32 tiles of a conv tap): masks, the prune() method, the kernel skipping the tiles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseyolo.prune import prune
from sparseyolo.prune.tiles import expand_tiles, is_tile_mask, pattern_tile_rows, tile_mask, tile_norms, tile_pattern
from sparseyolo.sparse.block_packing import pack_block_sparse


def test_tile_norms_against_a_loop():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(33, 40, 3, 1, generator=gen)  # edge tiles on both channel axes
    norms = tile_norms(w)
    assert norms.shape == (3, 2, 3, 1)
    for b in range(3):
        for q in range(2):
            ref = w[16 * b:16 * b + 16, 32 * q:32 * q + 32].pow(2).sum(dim=(0, 1)).sqrt()
            assert torch.allclose(norms[b, q], ref)


@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 0.75])
def test_tile_mask_prunes_the_weakest_tiles(amount):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(48, 64, 3, 3, generator=gen)
    mask = tile_mask(w, amount)
    assert mask.dtype == torch.bool and mask.shape == w.shape and is_tile_mask(mask)
    norms = tile_norms(w).flatten()
    kept = tile_norms(mask.float()).flatten() > 0
    assert int((~kept).sum()) == round(amount * norms.numel())
    if 0 < amount:
        assert norms[~kept].max() <= norms[kept].min()


def test_is_tile_mask_rejects_other_patterns():
    m = torch.ones(16, 32, 1, 1, dtype=torch.bool)
    m[3, 5] = False
    assert not is_tile_mask(m)
    assert is_tile_mask(expand_tiles(torch.tensor([[[[True]]]]), (16, 32, 1, 1)))


def test_prune_method_tile_and_the_kernel_skips_the_tiles():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 1))
    report = prune(model, "tile", 0.5, exclude="0")
    assert set(report.pruned) == {"1.weight", "2.weight"}
    for mod in (model[1], model[2]):
        assert mod.weight_mask_pattern == "tile16x32" and is_tile_mask(mod.weight_mask)
        packed = pack_block_sparse(mod.weight.detach(), torch.bfloat16, "tiles32")
        assert packed.units == packed.dense_units() // 2
    # masks only grow: a second, sparser call keeps the first call's pruned tiles pruned
    first = model[1].weight_mask.clone()
    prune(model, "tile", 0.75, exclude="0")
    assert not (model[1].weight_mask & ~first).any()
    assert is_tile_mask(model[1].weight_mask)


def test_tiles_of_32_rows_are_two_16_row_tiles_pruned_together():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(80, 40, 3, 3, generator=gen)  # 3 tiles of 32 rows, the last one 16 rows short
    norms = tile_norms(w, 32)
    assert norms.shape == (3, 2, 3, 3)
    assert torch.allclose(norms[1, 0, 2, 1], w[32:64, :32, 2, 1].norm())
    mask = tile_mask(w, 0.5, rows=32)
    assert is_tile_mask(mask, 32) and is_tile_mask(mask)  # a 32 x 32 tile is two 16 x 32 tiles
    kept = tile_norms(mask.float(), 32) > 0
    assert int((~kept).sum()) == round(0.5 * kept.numel())
    assert norms[~kept].max() <= norms[kept].min()
    half = torch.ones(32, 32, 1, 1, dtype=torch.bool)
    half[16:] = False  # one 16 x 32 tile of a 32 x 32 one
    assert is_tile_mask(half) and not is_tile_mask(half, 32)
    assert (tile_pattern(), tile_pattern(32)) == ("tile16x32", "tile32x32")
    assert [pattern_tile_rows(p) for p in ("tile16x32", "tile32x32", "2:4", "unstructured")] == [16, 32, None, None]
    with pytest.raises(ValueError, match="16 or 32"):
        tile_pattern(8)


def test_prune_method_tile_block_32_and_the_kernel_runs_twins():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 96, 3), nn.Conv2d(96, 40, 1))
    prune(model, "tile", 0.75, block=32, exclude="0")
    for mod in (model[1], model[2]):
        assert mod.weight_mask_pattern == "tile32x32" and is_tile_mask(mod.weight_mask, 32)
        packed = pack_block_sparse(mod.weight.detach(), torch.float32)
        ptr = packed.block_ptr
        for b in range(0, ptr.numel() - 2, 2):  # blocks 2k and 2k+1 have the same units: the kernel's twins
            assert torch.equal(packed.taps[ptr[b]:ptr[b + 1]], packed.taps[ptr[b + 1]:ptr[b + 2]])
    # masks only grow: 16 x 32 tiles pruned on top leave a 16 x 32 tile mask, recorded as such
    prune(model, "tile", 0.9, exclude="0")
    assert model[1].weight_mask_pattern == "tile16x32" and is_tile_mask(model[1].weight_mask)
    assert not is_tile_mask(model[1].weight_mask, 32)
    for bad in (8, 64):
        with pytest.raises(ValueError, match="16 or 32"):
            prune(nn.Sequential(nn.Conv2d(32, 32, 1)), "tile", 0.5, block=bad)
    with pytest.raises(ValueError, match="methods 'nm' and 'tile'"):
        prune(nn.Sequential(nn.Conv2d(32, 32, 1)), "l1", 0.5, block=4)


def test_prune_tile_needs_amount():
    with pytest.raises(ValueError, match="amount"):
        prune(nn.Sequential(nn.Conv2d(32, 32, 1)), "tile")


def test_cli_offers_every_prune_method():
    from sparseyolo import cli
    from sparseyolo.prune.methods import METHODS

    assert tuple(cli._PRUNE_METHODS) == METHODS


def test_prune_config_accepts_tile_also_with_calibration():
    from sparseyolo.prune import PruneConfig
    from sparseyolo.utils.errors import ParameterError

    assert PruneConfig(method="tile", amount=0.5).validate().prune_kwargs()["amount"] == 0.5
    assert PruneConfig(method="tile", amount=0.5, block=32).validate().prune_kwargs()["block"] == 32
    with pytest.raises(ParameterError, match="16 or 32"):
        PruneConfig(method="tile", amount=0.5, block=8).validate()
    with pytest.raises(ParameterError, match="block is for methods nm and tile"):
        PruneConfig(method="l1", amount=0.5, block=4).validate()
    cfg = PruneConfig(method="tile", amount=0.5, calibrate="data.yaml").validate()
    assert cfg.steps == 3 and cfg.to_dict()["calib_steps"] == 3


def test_cli_prunes_32_row_tiles(tmp_path, capsys):
    from sparseyolo import cli
    from sparseyolo.checkpoint import load_checkpoint, load_model
    from sparseyolo.demo import packaged_weights

    out = tmp_path / "t32.pt"
    assert cli.main(["prune", "--weights", str(packaged_weights()), "--method", "tile", "--amount", "0.75",
                     "--block", "32", "--out", str(out)]) == 0
    assert load_checkpoint(out).meta["pruning"]["block"] == 32
    masked = [mod for mod in load_model(out, fuse=False).modules() if hasattr(mod, "weight_mask")]
    assert masked and all(is_tile_mask(mod.weight_mask, 32) for mod in masked)
    capsys.readouterr()
    assert cli.main(["prune", "--weights", str(packaged_weights()), "--method", "tile", "--amount", "0.75",
                     "--block", "8", "--out", str(out)]) == 2
    assert "--block is the tiles' height for method tile: 16 or 32, got 8" in capsys.readouterr().err
