"""Input-channel permutation for N:M (sparseyolo.prune.permute): the spaces found, the search, and that the
permuted model computes the same function and keeps more saliency under N:M."""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml
from torch import nn

from sparseyolo.prune import is_nm_mask, prune
from sparseyolo.prune.permute import (
    activation_energy,
    apply_permutations,
    channel_spaces,
    kept_saliency,
    permute_channels,
    search_permutation,
)


def _randomise_batchnorms(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.weight.data = torch.rand(c, generator=g) + 0.5
            mod.bias.data = torch.randn(c, generator=g) * 0.2
            mod.running_mean = torch.randn(c, generator=g) * 0.2
            mod.running_var = torch.rand(c, generator=g) + 0.5


class _Toy(nn.Module):
    """Residual add, a concat read by a BatchNorm and a conv, a grouped conv and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)
        self.bn = nn.BatchNorm2d(12)
        self.d = nn.Conv2d(12, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.e = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = x + self.b(torch.relu(self.a(x)))  # stem and b share a space; a reads it too
        z = self.bn(torch.cat((y, self.c(y)), 1))  # BatchNorm over two spaces side by side
        u = self.dw(torch.nn.functional.silu(self.d(z)))  # d's output goes into a grouped conv: fixed
        return self.head(self.e(u).mean((2, 3)))  # e's output goes to a mean and a Linear: fixed


def test_spaces_of_a_toy_model():
    model = _Toy()
    spaces = {tuple(sorted(id(p) for p in s.producers)): s for s in channel_spaces(model)}
    names = {id(mod): name for name, mod in model.named_modules()}
    found = {tuple(sorted(names[i] for i in key)): s for key, s in spaces.items()}
    assert set(found) == {("b", "stem"), ("a",), ("c",)}
    shared = found[("b", "stem")]
    assert shared.length == 8
    assert {(names[id(c)], o) for c, o in shared.consumers} == {("a", 0), ("c", 0), ("d", 0)}
    assert {(names[id(mod)], o) for mod, o in shared.per_channel} == {("bn", 0)}
    assert {(names[id(c)], o) for c, o in found[("c",)].consumers} == {("d", 8)}
    assert {(names[id(mod)], o) for mod, o in found[("c",)].per_channel} == {("bn", 8)}


def test_toy_model_output_is_unchanged_and_its_fixed_channels_stay():
    torch.manual_seed(0)
    model = _Toy().eval()
    _randomise_batchnorms(model, 1)
    x = torch.randn(2, 3, 12, 12)
    before = model(x)
    e_weight = model.e.weight.clone()
    dw_weight = model.dw.weight.clone()
    report = permute_channels(model, 2, 4)
    assert report.rows and report.after >= report.before
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.e.weight, e_weight) and torch.equal(model.dw.weight, dw_weight)


@pytest.mark.parametrize("seed", range(4))
def test_search_never_loses_and_ends_where_no_swap_gains(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(6, 12, generator=g) ** 3  # heavy-tailed, so the grouping matters
    perm, rounds = search_permutation(s, 2, 4)
    assert sorted(perm.tolist()) == list(range(12)) and rounds >= 1
    best = kept_saliency(s, 2, 4, perm)
    assert best >= kept_saliency(s, 2, 4) - 1e-6
    for p, q in itertools.combinations(range(12), 2):
        if p // 4 == q // 4:
            continue
        other = perm.clone()
        other[p], other[q] = perm[q], perm[p]
        assert kept_saliency(s, 2, 4, other) <= best + 1e-5 * best


def test_search_finds_the_optimum_of_a_small_case_by_brute_force():
    # 8 channels, 2:4: the optimum over all 35 splits into two groups
    g = torch.Generator().manual_seed(3)
    s = torch.rand(5, 8, generator=g) ** 4
    optimum = max(kept_saliency(s, 2, 4, torch.tensor(list(a) + [c for c in range(8) if c not in a]))
                  for a in itertools.combinations(range(8), 4))
    perm, _ = search_permutation(s, 2, 4)
    assert kept_saliency(s, 2, 4, perm) == pytest.approx(optimum, rel=1e-5)


def test_search_separates_two_large_channels():
    s = torch.full((3, 8), 0.1)
    s[:, 0] = s[:, 1] = s[:, 2] = 5.0  # three large channels in one group of 4: 2:4 keeps only two
    perm, _ = search_permutation(s, 2, 4)
    group_of = {int(c): j // 4 for j, c in enumerate(perm)}
    assert max([group_of[0], group_of[1], group_of[2]].count(g) for g in (0, 1)) == 2
    assert kept_saliency(s, 2, 4, perm) == pytest.approx(3 * (3 * 5.0 + 0.1), rel=1e-6)


def test_search_rejects_bad_shapes():
    with pytest.raises(ValueError, match="groups of 4"):
        search_permutation(torch.rand(3, 10), 2, 4)
    with pytest.raises(ValueError, match="2-D"):
        search_permutation(torch.rand(3, 8, 1), 2, 4)


def _yolov5n(seed: int) -> nn.Module:
    from sparseyolo.models import CONFIG_DIR, DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel(yaml.safe_load((CONFIG_DIR / "yolov5n.yaml").read_text())).eval()
    _randomise_batchnorms(model, seed)
    return model


def _kept_magnitude(model: nn.Module) -> float:
    return sum(float((mod.weight.detach() * mod.weight_mask).abs().sum()) for mod in model.modules()
               if hasattr(mod, "weight_mask"))


@pytest.mark.parametrize("block", [1, 16])
def test_yolov5n_outputs_unchanged_and_nm_keeps_more(block):
    model = _yolov5n(0)
    x = torch.rand(1, 3, 96, 96)
    before = model(x)[0]
    plain = _yolov5n(0)
    report = permute_channels(model, 2, 4, block=block, max_rounds=6)
    # every top-level layer's output is permutable but the detect head's: 50 spaces, none skipped
    assert len(report.rows) == 50 and not report.skipped
    assert report.after > report.before
    torch.testing.assert_close(model(x)[0], before, rtol=1e-4, atol=1e-3)
    prune(model, "nm", n=2, m=4, block=block)
    prune(plain, "nm", n=2, m=4, block=block)
    assert all(is_nm_mask(mod.weight_mask, 2, 4) for mod in model.modules() if hasattr(mod, "weight_mask"))
    if block == 1:  # the search maximised exactly this
        assert _kept_magnitude(model) > _kept_magnitude(plain)


def test_recorded_permutations_replay_on_another_copy():
    model, other = _yolov5n(0), _yolov5n(0)
    report = permute_channels(model, 2, 4, max_rounds=6, progress=False)
    assert report.perms and all(sorted(p) == list(range(len(p))) for p in report.perms.values())
    assert any(p != sorted(p) for p in report.perms.values())
    apply_permutations(other, report.perms)  # a dense teacher put in the permuted student's channel order
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    label, perm = next(iter(report.perms.items()))
    with pytest.raises(ValueError, match="not the model that was permuted"):
        apply_permutations(_yolov5n(0), {label: perm + [len(perm)]})
    with pytest.raises(ValueError, match="not the model that was permuted"):
        apply_permutations(_yolov5n(0), {"model.99.conv": perm})
    with pytest.raises(ValueError, match="not a permutation"):
        apply_permutations(_yolov5n(0), {label: [0] * len(perm)})


def test_energy_saliency_and_uint8_batches():
    model = _yolov5n(1)
    batches = [torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)]
    energy = activation_energy(model, batches)
    stem = model.model[0].conv
    assert energy[stem].shape == (3,) and bool((energy[stem] > 0).all()) and float(energy[stem].max()) <= 1.0
    x = batches[0].float() / 255
    before = model(x)[0]
    report = permute_channels(model, 2, 4, energy=energy, max_rounds=4)
    assert report.after > report.before
    torch.testing.assert_close(model(x)[0], before, rtol=1e-4, atol=1e-3)


def test_pruned_models_and_untraceable_ones_are_refused():
    model = _yolov5n(2)
    prune(model, "nm", n=2, m=4)
    with pytest.raises(ValueError, match="before pruning"):
        permute_channels(model, 2, 4)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x  # data-dependent: fx cannot trace it

    with pytest.raises(TypeError, match="torch.fx"):
        permute_channels(Branchy(), 2, 4)


def test_cli_permute_with_calibration(shared, tmp_path, capsys):
    from sparseyolo import cli
    from sparseyolo.checkpoint import load_checkpoint, load_model

    data = tmp_path / "coco8.yaml"
    data.write_text(f"path: {shared / 'data' / 'coco8'}\ntrain: images/train\nval: images/val\n"
                    f"names: {[str(i) for i in range(80)]}\n")
    out = tmp_path / "perm.pt"
    assert cli.main(["prune", "--weights", str(shared / "weights" / "yolov5n.pt"), "--nm", "2:4", "--permute",
                     "--calibrate", str(data), "--calib-images", "2", "--calib-img", "128",
                     "--include", "model.2.*", "--out", str(out)]) == 0
    assert "channel permutation: " in capsys.readouterr().out  # the CLI logs to stdout
    meta = load_checkpoint(out).meta
    assert meta["pruning"]["permute"] is True
    assert meta["channel_permutation"] and all(isinstance(p, list) for p in meta["channel_permutation"].values())
    model = load_model(out, fuse=False)
    masked = [mod for mod in model.modules() if hasattr(mod, "weight_mask")]
    assert masked and all(is_nm_mask(mod.weight_mask, 2, 4) for mod in masked)


def test_permute_is_refused_where_it_does_not_apply(tmp_path, capsys):
    from sparseyolo import cli

    code = cli.main(["prune", "--weights", str(tmp_path / "none.pt"), "--method", "l1", "--amount", "0.3",
                     "--permute", "--out", str(tmp_path / "o.pt")])
    assert code != 0 and "--permute" in capsys.readouterr().err


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_over_spaces(progress, capsys):
    permute_channels(_Toy().eval(), 2, 4, progress=progress)
    err = capsys.readouterr().err
    assert ("permute: 100%" in err and "3/3" in err) if progress else "permute:" not in err


def test_config_refuses_permute_outside_one_shot_nm():
    from sparseyolo.prune import PruneConfig
    from sparseyolo.utils.errors import ParameterError

    assert PruneConfig(method="nm", permute=True).validate().permute
    with pytest.raises(ParameterError, match="not method l1"):
        PruneConfig(method="l1", amount=0.3, permute=True).validate()
    with pytest.raises(ParameterError, match="then fine-tune"):
        PruneConfig(method="nm", permute=True).validate(epochs=5)
