"""Sparsity where it pays: levels, per-layer errors, per-layer latencies, the profile's choice, per-layer amounts."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from sparseyolo import ops
from sparseyolo.models.common import Conv
from sparseyolo.prune import PruneConfig
from sparseyolo.prune.calibrated import calibrated_prune
from sparseyolo.prune.levels import NMBlock, canonical_level, level_label, level_order, parse_level
from sparseyolo.prune.masks import PATTERN_ATTR
from sparseyolo.prune.methods import is_nm_mask
from sparseyolo.prune.sensitivity import layer_variants, model_outputs, output_distortion
from sparseyolo.prune.tiles import is_tile_mask, tile_norms
from sparseyolo.sparse.speedup_profile import (
    LayerLatency,
    ModelAnchors,
    anchor_level,
    choose_profile,
    kernel_layers,
    layer_latencies,
    measure_anchors,
    profile_kernel,
    profile_mask,
    profile_tile_mask,
    search_profile,
)
from sparseyolo.utils.errors import ParameterError


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(Conv(3, 32, 3, 2), Conv(32, 64, 3, 1), Conv(64, 64, 1, 1), Conv(64, 48, 3, 2)).eval()
    for m in net.modules():  # trained-looking BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def _batches(n: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (2, 3, 64, 64), generator=gen, dtype=torch.uint8) for _ in range(n)]


def _is_nm_block_mask(mask: torch.Tensor, n: int, m: int, block: int) -> bool:
    """N:M along input channels, the same choice in every row of each block of ``block`` output channels."""
    rows = torch.arange(mask.shape[0]) // block * block
    return is_nm_mask(mask, n, m) and torch.equal(mask, mask[rows])


# ------------------------------------------------------------------------------------------------------------------
# levels
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, canonical, label", [
    (0.5, 0.5, "tiles 50%"),
    ("0.25", 0.25, "tiles 25%"),
    (0, 0.0, "tiles 0%"),
    ("2:4b32", "2:4b32", "2:4 b32"),
    (" 1:4b16 ", "1:4b16", "1:4 b16"),
    (NMBlock(2, 8, 4), "2:8b4", "2:8 b4"),
])
def test_levels_parse_to_one_form(given, canonical, label):
    assert canonical_level(given) == canonical and type(canonical_level(given)) is type(canonical)
    assert level_label(given) == label


@pytest.mark.parametrize("bad", [1.0, -0.1, "2:4", "2:4 b32", "4:2b8", "2:4b0", "b32", True, None, float("nan")])
def test_levels_refuse_what_is_not_one(bad):
    with pytest.raises(ValueError, match="level"):
        parse_level(bad)


def test_levels_sort_tiles_first_then_nm_blocks():
    levels = ["2:4b32", 0.75, "2:4b16", 0.0, "1:4b32", 0.25]
    assert sorted(levels, key=level_order) == [0.0, 0.25, 0.75, "2:4b16", "2:4b32", "1:4b32"]
    assert anchor_level(levels) == 0.75 and anchor_level(["2:4b32"]) == "2:4b32"


# ------------------------------------------------------------------------------------------------------------------
# layer_variants
# ------------------------------------------------------------------------------------------------------------------


def test_tile_errors_grow_with_the_level_and_leave_the_model_alone():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    errs = layer_variants(net, _batches(), [0.25, 0.5, 0.75], exclude="0.*", progress=False).errors
    assert set(errs) == {"1.conv", "2.conv", "3.conv"}
    for name, by_level in errs.items():
        assert list(by_level) == [0.25, 0.5, 0.75]
        e = list(by_level.values())
        assert all(0.0 < v < 1.5 for v in e), (name, e)
        assert e[0] <= e[1] + 1e-6 <= e[2] + 2e-6, (name, e)  # more tiles pruned: more error
    after = net.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(hasattr(m, "weight_mask") for m in net.modules())


def test_tile_errors_match_pruning_that_layer_alone():
    net = _net()
    errs = layer_variants(net, _batches(), [0.5], include="2.conv", progress=False).errors
    report = calibrated_prune(net, _batches(), amount=0.5, method="tile", include="2.conv", target="layer",
                              steps=3, progress=False)
    # first pruned layer: its inputs are the dense model's, so the two solves are the same problem
    assert errs["2.conv"][0.5] == pytest.approx(report.rel_error["2.conv.weight"], rel=1e-6)


def test_stitched_variants_are_the_layers_pruned_alone():
    net = _net()
    variants = layer_variants(net, _batches(), [0.5, 0.75], exclude="0.*", progress=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stitched = variants.stitch(net, {"1.conv": 0.75, "2.conv": 0.0, "3.conv": 0.5})
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model itself is untouched
    for name, level in (("1.conv", 0.75), ("3.conv", 0.5)):
        weight, mask, mean = variants.weights[name][level]
        conv = stitched.get_submodule(name)
        assert torch.equal(conv.weight, weight) and torch.equal(conv.weight_mask, mask) and is_tile_mask(mask)
        assert torch.equal(stitched.get_submodule(name.replace("conv", "bn")).running_mean, mean)
    assert not hasattr(stitched[2].conv, "weight_mask") and torch.equal(stitched[2].conv.weight, net[2].conv.weight)
    images = [b for b in _batches(2)]
    reference = model_outputs(net, images)
    assert output_distortion(net, images, reference) == 0.0
    light = output_distortion(variants.stitch(net, {"3.conv": 0.5}), images, reference)
    heavy = output_distortion(variants.stitch(net, {"1.conv": 0.75, "3.conv": 0.75}), images, reference)
    assert 0.0 < light < heavy


def test_layer_variants_take_nm_block_levels_where_the_channels_fit():
    net = _net()
    variants = layer_variants(net, _batches(), [0.5, "2:4b32"], progress=False)
    assert list(variants.errors["0.conv"]) == [0.5]  # 3 input channels: no 2:4 there
    for name in ("1.conv", "2.conv", "3.conv"):
        assert list(variants.errors[name]) == [0.5, "2:4b32"]
        assert 0.0 < variants.errors[name]["2:4b32"] < 1.0
        weight, mask, _ = variants.weights[name]["2:4b32"]
        assert _is_nm_block_mask(mask, 2, 4, 32) and torch.equal(weight != 0, weight != 0 & mask)
    stitched = variants.stitch(net, {"1.conv": "2:4b32", "2.conv": 0.5, "3.conv": 0.0})
    assert getattr(stitched[1].conv, PATTERN_ATTR) == "2:4"
    assert _is_nm_block_mask(stitched[1].conv.weight_mask, 2, 4, 32)
    assert is_tile_mask(stitched[2].conv.weight_mask) and not hasattr(stitched[3].conv, "weight_mask")
    assert torch.equal(stitched[1].conv.weight, variants.weights["1.conv"]["2:4b32"][0])


@pytest.mark.parametrize("levels", [[], [0.0], [1.0], [0.5, -0.1], ["2:4"], ["4:2b8"], ["2:4b0"], [True]])
def test_layer_variants_refuse_bad_levels(levels):
    with pytest.raises(ValueError, match="level"):
        layer_variants(_net(), _batches(1), levels, progress=False)


# ------------------------------------------------------------------------------------------------------------------
# calibrated_prune(amounts=...)
# ------------------------------------------------------------------------------------------------------------------


def test_calibrated_prune_takes_one_amount_per_layer():
    net = _net()
    stem = net[0].conv.weight.detach().clone()
    amounts = {"1.conv": 0.5, "2.conv": 0.0, "3.conv": 0.75}
    report = calibrated_prune(net, _batches(), amounts=amounts, method="tile", progress=False)
    assert set(report.pruned) == {f"{n}.weight" for n in amounts}
    for name, amount in amounts.items():
        conv = net.get_submodule(name)
        assert is_tile_mask(conv.weight_mask)
        tiles = tile_norms(conv.weight_mask.float()) > 0
        assert int((~tiles).sum()) == round(amount * tiles.numel()), name
    assert not hasattr(net[0].conv, "weight_mask") and torch.equal(net[0].conv.weight, stem)
    assert "per-layer levels (tiles 0% x1, tiles 50% x1, tiles 75% x1)" in str(report)


def test_calibrated_prune_takes_nm_block_levels_per_layer():
    net = _net()
    amounts = {"1.conv": "2:4b32", "2.conv": 0.5, "3.conv": NMBlock(2, 4, 16)}
    report = calibrated_prune(net, _batches(), amounts=amounts, method="tile", progress=False)
    assert _is_nm_block_mask(net[1].conv.weight_mask, 2, 4, 32) and not _is_nm_block_mask(
        net[1].conv.weight_mask, 2, 4, 64)  # 64 output channels: two blocks, chosen apart
    assert _is_nm_block_mask(net[3].conv.weight_mask, 2, 4, 16)
    assert getattr(net[1].conv, PATTERN_ATTR) == "2:4" and is_tile_mask(net[2].conv.weight_mask)
    assert report.pruned["1.conv.weight"] == 0.5
    assert report.levels == {"1.conv": "2:4b32", "2.conv": 0.5, "3.conv": "2:4b16"}
    assert "per-layer levels (tiles 50% x1, 2:4 b16 x1, 2:4 b32 x1)" in str(report)


@pytest.mark.parametrize("kwargs, match", [
    (dict(amounts={"0.conv": "2:4b32"}, method="tile"), "multiple of M: 0.conv"),
    (dict(amounts={"1.conv": "2:4"}, method="tile"), "level"),
    (dict(amounts={"1.conv": 0.5}, amount=0.5, method="tile"), "amounts"),
    (dict(amounts={"1.conv": 0.5}, n=2, m=4), "amounts"),
    (dict(amounts={"1.conv": 0.5}, method="tile", block=32), "each level names its own pattern"),
    (dict(amounts={"1.conv": 1.0}, method="tile"), r"\[0, 1\)"),
    (dict(amounts={"no.such.layer": 0.5}, method="tile"), "does not have"),
])
def test_calibrated_prune_refuses_bad_amounts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibrated_prune(_net(), _batches(1), progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# choose_profile
# ------------------------------------------------------------------------------------------------------------------


def _lat(name: str, dense: float, k0: float, k50: float, k75: float) -> LayerLatency:
    return LayerLatency(name, (64, 64, 3, 3), (1, 64, 40, 40), dense, {0.0: k0, 0.5: k50, 0.75: k75})


LATS = {
    "a": _lat("a", 1.0, 0.8, 0.6, 0.4),   # the kernel pays at 0
    "b": _lat("b", 1.0, 1.2, 0.9, 0.5),   # slower at 0, faster pruned (a stride-2 conv)
    "c": _lat("c", 0.5, 0.4, 0.35, 0.3),
    "d": _lat("d", 0.2, 0.9, 0.8, 0.7),   # the kernel never pays (the stem)
}
ERRS = {"a": {0.5: 0.10, 0.75: 0.30}, "b": {0.5: 0.01, 0.75: 0.02}, "c": {0.5: 0.05, 0.75: 0.50}, "d": {}}


def _anchors(a: float = 1.0, b: float = 1.0) -> ModelAnchors:
    moved = kernel_layers(LATS)
    dense = 10.0
    alone_0 = sum(LATS[n].dense_ms - LATS[n].kernel_ms[0.0] for n in moved)
    alone_top = sum(LATS[n].kernel_ms[0.0] - LATS[n].kernel_ms[0.75] for n in moved)
    return ModelAnchors(dense, dense - a * alone_0, dense - a * alone_0 - b * alone_top, 0.75, moved)


def _brute_force(anchors: ModelAnchors, target: float) -> float:
    """Least summed error over every combination of options whose predicted time meets the target."""
    a = (anchors.dense_ms - anchors.kernel_ms) / sum(LATS[n].dense_ms - LATS[n].kernel_ms[0.0]
                                                      for n in anchors.kernel_layers)
    b = (anchors.kernel_ms - anchors.sparse_ms) / sum(LATS[n].kernel_ms[0.0] - LATS[n].kernel_ms[0.75]
                                                      for n in anchors.kernel_layers)
    per_layer = []
    for name, lat in LATS.items():
        opts = [(0.0, 0.0)]
        if name in anchors.kernel_layers:
            for level, ms in lat.kernel_ms.items():
                err = 0.0 if level == 0.0 else ERRS[name][level]
                opts.append((a * (lat.dense_ms - lat.kernel_ms[0.0]) + b * (lat.kernel_ms[0.0] - ms), err))
        per_layer.append(opts)
    best = math.inf
    for combo in itertools.product(*per_layer):
        if anchors.dense_ms - sum(s for s, _ in combo) <= anchors.dense_ms / target + 1e-9:
            best = min(best, sum(e for _, e in combo))
    return best


def test_kernel_layers_include_convs_that_only_pay_when_pruned():
    assert kernel_layers(LATS) == ("a", "b", "c")


@pytest.mark.parametrize("target", [1.0, 1.03, 1.06, 1.1, 1.14])
@pytest.mark.parametrize("scale", [(1.0, 1.0), (1.4, 1.2)])
def test_choose_profile_is_the_least_error_that_meets_the_target(target, scale):
    anchors = _anchors(*scale)
    prof = choose_profile(LATS, ERRS, anchors, target)
    best = _brute_force(anchors, target)
    assert prof.feasible
    assert prof.predicted_ms <= anchors.dense_ms / target + 1e-9
    assert sum(r.error for r in prof.rows) == pytest.approx(best, abs=1e-9)
    by_name = {r.name: r for r in prof.rows}
    assert by_name["d"].level is None  # the kernel never pays there
    assert by_name["a"].level is not None  # free: the kernel at 0 saves time at no error
    assert prof.amounts() == {r.name: r.level for r in prof.rows if r.level is not None}


def test_choose_profile_is_exact_at_the_anchors():
    anchors = _anchors(1.3, 1.1)
    everything = choose_profile(LATS, {n: {0.75: 0.0, 0.5: 0.0} for n in LATS}, anchors, 5.0)
    assert not everything.feasible  # 5x is out of reach: the fastest profile, every moved conv at 75%
    assert everything.predicted_ms == pytest.approx(anchors.sparse_ms)
    assert {r.name for r in everything.rows if r.level == 0.75} == set(anchors.kernel_layers)
    free = choose_profile(LATS, ERRS, anchors, 1.0)
    assert sum(r.error for r in free.rows) == 0.0
    assert {r.name: r.level for r in free.rows} == {"a": 0.0, "b": None, "c": 0.0, "d": None}


def test_choose_profile_measures_the_target_against_the_faster_dense_model():
    # fp32 dense faster than bf16 dense (a CPU without AMX): the target divides the bar, the savings still start
    # from the bf16 model that the pruned model is
    base = _anchors()
    bar = replace(base, bar_ms=9.5)
    assert bar.target_base_ms == 9.5 and base.target_base_ms == base.dense_ms
    for target in (1.0, 1.03, 1.05):
        prof = choose_profile(LATS, ERRS, bar, target)
        assert prof.feasible and prof.dense_model_ms == 9.5
        assert prof.predicted_ms <= 9.5 / target + 1e-9
        assert prof.predicted_speedup == pytest.approx(9.5 / prof.predicted_ms)
        # the same profile needs more saved than against the bf16 model
        assert sum(r.error for r in prof.rows) >= sum(r.error for r in choose_profile(LATS, ERRS, base, target).rows)
    everything = choose_profile(LATS, {n: {0.75: 0.0, 0.5: 0.0} for n in LATS}, bar, 5.0)
    assert not everything.feasible and everything.predicted_ms == pytest.approx(base.sparse_ms)


def test_choose_profile_when_the_layers_alone_and_the_models_disagree():
    # without AMX: every conv alone slower on the kernel with nothing pruned, the whole model on it a little faster
    lats = {"a": _lat("a", 1.0, 1.4, 1.1, 0.5), "b": _lat("b", 1.0, 1.3, 0.9, 0.6), "c": _lat("c", 0.5, 0.7, 0.6, 0.3)}
    errs = {"a": {0.5: 0.1, 0.75: 0.3}, "b": {0.5: 0.05, 0.75: 0.2}, "c": {0.5: 0.01, 0.75: 0.02}}
    moved = kernel_layers(lats)
    assert moved == ("a", "b", "c")
    anchors = ModelAnchors(10.0, 9.8, 9.0, 0.75, moved)  # all at 75%: 1.0 ms saved in-model, 1.1 ms alone
    everything = choose_profile(lats, {n: {0.75: 0.0, 0.5: 0.0} for n in lats}, anchors, 5.0)
    assert not everything.feasible and everything.predicted_ms == pytest.approx(anchors.sparse_ms)
    for target in (1.01, 1.05, 1.1):
        prof = choose_profile(lats, errs, anchors, target)
        for r in prof.rows:  # never an option slower alone than dense: the kernel at 0, c at 50%
            assert r.level is None or r.ms < lats[r.name].dense_ms, r
            assert r.saved_ms == pytest.approx(0.0 if r.level is None else (1.0 / 1.1) * (r.dense_ms - r.ms))
        assert prof.predicted_ms <= 10.0 / target + 1e-9 or not prof.feasible


def test_choose_profile_coefficients_steer_pruning_away_from_a_layer():
    plain = {r.name: r.level for r in choose_profile(LATS, ERRS, _anchors(), 1.06).rows}
    assert plain["b"] == 0.75  # the cheapest error per saved ms
    steered = choose_profile(LATS, ERRS, _anchors(), 1.06, coefficients={"b": 1e3})
    assert {r.name: r.level for r in steered.rows}["b"] is None
    assert steered.feasible and steered.predicted_ms <= 10.0 / 1.06 + 1e-9
    for r in steered.rows:  # the rows report the errors themselves, not the weighted ones
        assert r.error == (ERRS[r.name][r.level] if r.level else 0.0)


def test_search_profile_finds_a_profile_the_true_cost_prefers():
    true_weight = {"a": 0.05, "b": 40.0, "c": 0.2}  # what the summed error does not know: b matters most

    def evaluate(amounts):
        return sum(true_weight[n] * ERRS[n][lv] for n, lv in amounts.items() if lv)

    anchors = _anchors()
    plain = choose_profile(LATS, ERRS, anchors, 1.06)
    found = search_profile(LATS, ERRS, anchors, 1.06, evaluate, iters=60, seed=0)  # a stochastic search: seeded
    assert found.feasible and found.predicted_ms <= anchors.dense_ms / 1.06 + 1e-9
    assert found.distortion == pytest.approx(evaluate(found.amounts()))
    assert found.distortion < evaluate(plain.amounts())
    out_of_reach = search_profile(LATS, ERRS, anchors, 5.0, evaluate, iters=10)
    assert not out_of_reach.feasible


def test_choose_profile_weighs_nm_block_levels_like_tile_levels():
    """An N:M level is one more option per conv: taken where it saves at least as much for less error, and the
    profile stays the least error that meets the target."""
    lats = {n: replace(lat, kernel_ms={**lat.kernel_ms, "2:4b32": lat.kernel_ms[0.5] - 0.05})
            for n, lat in LATS.items() if n != "d"} | {"d": LATS["d"]}
    errs = {n: {**e, "2:4b32": 0.5 * e[0.5]} for n, e in ERRS.items() if n != "d"} | {"d": {}}
    anchors = _anchors()
    for target in (1.03, 1.06, 1.1, 1.12, 1.14):
        prof = choose_profile(lats, errs, anchors, target)
        assert prof.feasible and prof.predicted_ms <= anchors.dense_ms / target + 1e-9
        assert all(r.level not in (0.5,) for r in prof.rows)  # 2:4b32 dominates tiles 50% here
        without = choose_profile(LATS, ERRS, anchors, target)
        assert sum(r.error for r in prof.rows) <= sum(r.error for r in without.rows) + 1e-12
    prof = choose_profile(lats, errs, anchors, 1.12)
    assert prof.amounts() == {"a": "2:4b32", "b": 0.75, "c": "2:4b32"} and "2:4 b32" in prof.table()


def test_choose_profile_table_names_every_choice():
    prof = choose_profile(LATS, ERRS, _anchors(), 1.1)
    text = prof.table()
    for r in prof.rows:
        assert r.name in text
    assert "predicted" in text and "1.1x" in text


def test_choose_profile_refuses_a_non_positive_target():
    with pytest.raises(ValueError, match="positive"):
        choose_profile(LATS, ERRS, _anchors(), 0.0)


# ------------------------------------------------------------------------------------------------------------------
# layer_latencies and measure_anchors (the tile kernel runs on every CPU; only its speed needs AMX)
# ------------------------------------------------------------------------------------------------------------------


def test_profile_kernel_follows_the_cpu(monkeypatch):
    monkeypatch.setenv("SPARSEYOLO_CPU_ISA", "avx512_bf16")  # no AMX: bf16 convs are the slow precision there
    assert profile_kernel() == ("cpu_block", torch.float32)
    monkeypatch.delenv("SPARSEYOLO_CPU_ISA")
    expected = ("cpu_block_tiles", torch.bfloat16) if ops.cpu_isa() == "amx" else ("cpu_block", torch.float32)
    assert profile_kernel() == expected


def test_layer_latencies_refuse_a_precision_without_a_kernel():
    with pytest.raises(ValueError, match="bfloat16 or float32"):
        layer_latencies(_net(), [0.5], example_input=torch.zeros(1, 3, 64, 64), reps=1, dtype=torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_latencies_time_every_conv_dense_and_at_each_level(dtype):
    net = _net()
    lat = layer_latencies(net, [0.5, 0.75], example_input=torch.zeros(1, 3, 64, 64), reps=2, dtype=dtype)
    assert list(lat) == ["0.conv", "1.conv", "2.conv", "3.conv"]
    for name, entry in lat.items():
        assert entry.dense_ms > 0
        assert entry.input_shape[0] == 1 and len(entry.input_shape) == 4
        if name != "0.conv":  # the stem (3 input channels) may be left to oneDNN, never the others
            assert set(entry.kernel_ms) == {0.0, 0.5, 0.75} and all(v > 0 for v in entry.kernel_ms.values())
    assert lat["1.conv"].input_shape == (1, 32, 32, 32)
    only = layer_latencies(net, [0.5], example_input=torch.zeros(1, 3, 64, 64), reps=1, names={"2.conv"})
    assert list(only) == ["2.conv"]


def test_layer_latencies_time_nm_block_levels_where_the_channels_fit():
    lat = layer_latencies(_net(), ["2:4b32"], example_input=torch.zeros(1, 3, 64, 64), reps=1,
                          dtype=torch.float32)
    assert "2:4b32" not in lat["0.conv"].kernel_ms  # 3 input channels
    for name in ("1.conv", "2.conv", "3.conv"):
        assert set(lat[name].kernel_ms) == {0.0, "2:4b32"}


def test_layer_latencies_skip_a_level_that_prunes_nothing():
    """A 16 x 32 1x1 conv is one tile, always kept: its "75%" is level 0 again and is not timed apart (two timings
    of the same work would offer the profile their noise as a saving)."""
    torch.manual_seed(0)
    net = nn.Sequential(Conv(3, 32, 3, 2), Conv(32, 16, 1, 1)).eval()
    lat = layer_latencies(net, [0.75, "2:4b32"], example_input=torch.zeros(1, 3, 64, 64), reps=1,
                          dtype=torch.float32)
    assert set(lat["1.conv"].kernel_ms) == {0.0, "2:4b32"}


def test_profile_mask_of_an_nm_block_level():
    w = torch.randn(48, 64, 3, 3, generator=torch.Generator().manual_seed(4))
    assert _is_nm_block_mask(profile_mask(w, "2:4b32"), 2, 4, 32)
    assert profile_mask(torch.randn(16, 6, 3, 3), "2:4b32") is None  # 6 input channels: not a multiple of 4
    assert torch.equal(profile_mask(w, 0.5), profile_tile_mask(w, 0.5))


@pytest.mark.parametrize("shape, level, pruned", [
    ((64, 64, 3, 3), 0.5, 36),      # 4 x 2 x 9 = 72 tiles: the 36 smallest
    ((16, 32, 1, 1), 0.75, 0),      # one tile per tap and block: never emptied
    ((32, 32, 3, 3), 0.75, 14),     # 2 blocks x 9 taps: round(13.5) = 14 pruned, each block keeps some
    ((64, 64, 1, 1), 0.0, 0),
])
def test_profile_tile_mask_keeps_a_tile_per_block(shape, level, pruned):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(*shape, generator=gen)
    mask = profile_tile_mask(w, level)
    assert is_tile_mask(mask) and mask.shape == w.shape
    kept = tile_norms(mask.float()) > 0
    assert int((~kept).sum()) == pruned
    assert kept.flatten(1).any(dim=1).all()  # every block of 16 output channels keeps a tile


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measure_anchors_compiles_the_models(dtype):
    net = _net()
    x = torch.zeros(1, 3, 64, 64)
    lat = layer_latencies(net, [0.75], example_input=x, reps=2, dtype=dtype)
    lat = {n: LayerLatency(v.name, v.weight_shape, v.input_shape, 1e3, v.kernel_ms) for n, v in lat.items()
           if v.kernel_ms}  # every conv the kernel takes counts as paying, whatever this machine times
    anchors = measure_anchors(net, lat, 0.75, example_input=x, reps=2, dtype=dtype)
    assert anchors.kernel_layers == tuple(lat) and anchors.level == 0.75
    assert min(anchors.dense_ms, anchors.kernel_ms, anchors.sparse_ms) > 0
    assert 0 < anchors.bar_ms <= anchors.dense_ms  # the faster of the dense fp32 and bf16 models
    assert not any(hasattr(m, "weight_mask") for m in net.modules())  # the model itself is not pruned


# ------------------------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------------------------


def test_prune_config_for_a_target_speedup():
    cfg = PruneConfig(method="tile", target_speedup=1.5, levels=[0.5, 0.75], calibrate="data.yaml").validate()
    assert cfg.to_dict()["target_speedup"] == 1.5
    for bad, field in [
        (dict(method="tile", target_speedup=1.5, levels=[0.5]), "calibrate"),
        (dict(method="tile", target_speedup=1.5, levels=[0.5], calibrate="d.yaml", amount=0.5), "amount"),
        (dict(method="tile", target_speedup=-1.0, levels=[0.5], calibrate="d.yaml"), "target_speedup"),
        (dict(method="tile", target_speedup=1.5, levels=[1.5], calibrate="d.yaml"), "levels"),
        (dict(method="l1", target_speedup=1.5, levels=[0.5], calibrate="d.yaml", amount=None), "method"),
    ]:
        with pytest.raises(ParameterError) as info:
            PruneConfig(**bad).validate()
        assert field in info.value.params, (bad, info.value.params)


@pytest.mark.parametrize("extra, says", [
    ([], "--calibrate"),                                               # a profile needs calibration images
    (["--calibrate", "d.yaml", "--method", "nm"], "--method"),         # it chooses tiles
    (["--calibrate", "d.yaml", "--amount", "0.5"], "--amount"),        # one or the other
    (["--calibrate", "d.yaml", "--levels", "0.5", "1.0"], "--levels"),
])
def test_cli_prune_target_speedup_refuses_what_does_not_fit(extra, says, capsys, tmp_path):
    from sparseyolo import cli

    rc = cli.main(["prune", "--weights", str(tmp_path / "none.pt"), "--target-speedup", "1.5",
                   "--out", str(tmp_path / "out.pt"), *extra])
    assert rc == 2
    assert says in capsys.readouterr().err


def test_cli_prune_target_speedup_says_when_the_kernel_does_not_pay(monkeypatch, capsys, tmp_path):
    """On a CPU where the kernel is never faster than oneDNN at any level, the command stops with a clear message
    before compiling anything."""
    from sparseyolo import cli
    from sparseyolo.demo import packaged_weights
    from sparseyolo.sparse import speedup_profile

    monkeypatch.setattr(cli, "_calibration_batches", lambda model, cfg: _batches(1))
    monkeypatch.setattr(speedup_profile, "layer_latencies", lambda model, levels, names=None: {
        n: LayerLatency(n, (16, 16, 1, 1), (1, 16, 8, 8), 0.01, {0.0: 0.05, 0.5: 0.04}) for n in sorted(names)})
    monkeypatch.setattr(speedup_profile, "measure_anchors", lambda *a, **k: pytest.fail("anchors measured"))
    rc = cli.main(["prune", "--weights", str(packaged_weights()), "--target-speedup", "1.3", "--calibrate",
                   "unused.yaml", "--out", str(tmp_path / "out.pt")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no conv runs faster" in err and profile_kernel()[0] in err and not (tmp_path / "out.pt").exists()


def test_cli_prune_target_speedup_chooses_and_records_nm_block_levels(monkeypatch, capsys, tmp_path):
    """Through the command with the times faked (the kernel's speed is this machine's; the choice is what is
    tested): where 2:4 shared by 32 channels is timed fastest and calibrates no worse, the profile takes it, the
    checkpoint holds that pattern and records the levels offered and chosen."""
    from sparseyolo import cli
    from sparseyolo.checkpoint import load_checkpoint, load_model
    from sparseyolo.demo import packaged_weights
    from sparseyolo.sparse import speedup_profile

    def fake_latencies(model, levels, names=None):
        assert levels == [0.5, "2:4b32"]
        return {n: LayerLatency(n, (16, 16, 1, 1), (1, 16, 8, 8), 1.0, {0.0: 0.95, 0.5: 0.8, "2:4b32": 0.5})
                for n in sorted(names)}

    monkeypatch.setattr(cli, "_calibration_batches", lambda model, cfg: _batches(1))
    monkeypatch.setattr(speedup_profile, "layer_latencies", fake_latencies)
    monkeypatch.setattr(speedup_profile, "measure_anchors", lambda model, lat, level: ModelAnchors(
        60.0, 58.0, 50.0, level, kernel_layers(lat)))
    out = tmp_path / "out.pt"
    rc = cli.main(["prune", "--weights", str(packaged_weights()), "--target-speedup", "1.25", "--calibrate",
                   "unused.yaml", "--levels", "0.5", "2:4b32", "--search-iters", "0", "--no-measure",
                   "--include", "model.[1-4].*", "--fp32", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "2:4 b32" in capsys.readouterr().out
    recipe = load_checkpoint(out).meta["pruning"]
    assert recipe["levels"] == [0.5, "2:4b32"] and recipe["target_speedup"] == 1.25
    chosen = recipe["layer_amounts"]
    nm = sorted(name for name, level in chosen.items() if level == "2:4b32")
    assert nm and set(chosen.values()) <= {0.0, 0.5, "2:4b32"}
    model = load_model(str(out), fuse=False)
    for name in nm:
        assert _is_nm_block_mask(model.get_submodule(name).weight_mask, 2, 4, 32), name


def test_cli_levels_default_is_the_profiles():
    from sparseyolo import cli
    from sparseyolo.sparse.speedup_profile import DEFAULT_LEVELS

    assert tuple(float(v) for v in cli._PROFILE_LEVELS) == DEFAULT_LEVELS
