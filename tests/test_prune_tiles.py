"""Tile pruning (16 x 32 tiles of a conv tap): masks, the prune() method, and the kernel skipping the tiles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseyolo.prune import prune
from sparseyolo.prune.tiles import expand_tiles, is_tile_mask, tile_mask, tile_norms
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


def test_prune_tile_needs_amount():
    with pytest.raises(ValueError, match="amount"):
        prune(nn.Sequential(nn.Conv2d(32, 32, 1)), "tile")


def test_cli_offers_every_prune_method():
    from sparseyolo import cli
    from sparseyolo.prune.methods import METHODS

    assert tuple(cli._PRUNE_METHODS) == METHODS


def test_prune_config_accepts_tile_also_with_calibration():
    from sparseyolo.prune import PruneConfig

    assert PruneConfig(method="tile", amount=0.5).validate().prune_kwargs()["amount"] == 0.5
    cfg = PruneConfig(method="tile", amount=0.5, calibrate="data.yaml").validate()
    assert cfg.steps == 3 and cfg.to_dict()["calib_steps"] == 3
