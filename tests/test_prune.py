"""sparseyolo.prune: methods, layer selection, masks through training, report, compressed checkpoints, CLI."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from sparseyolo import cli, ops
from sparseyolo.checkpoint import load_model, save_checkpoint
from sparseyolo.models import build_model
from sparseyolo.prune import (
    apply_masks,
    enforce_masks,
    get_masks,
    is_nm_mask,
    prune,
    remove_masks,
    sparsity_report,
)
from tests.conftest import cpu_and_cuda


def _model(seed: int = 0) -> nn.Module:
    """yolov5n with random weights and non-trivial BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_model("yolov5n").eval()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.running_mean.normal_()
    return model


def _assert_masked_exactly(model: nn.Module) -> None:
    """The central equality: masked weights hold exact +0.0 wherever the mask is False."""
    masks = get_masks(model)
    assert masks
    for name, mask in masks.items():
        w = model.get_submodule(name.rsplit(".", 1)[0]).weight
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert (w[~mask] == 0).all() and not torch.signbit(w[~mask]).any(), name


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _assert_state_bit_exact(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(_bits(a[k].cpu()), _bits(b[k].cpu())), k


class TestMethods:
    @pytest.mark.parametrize("method,kwargs", [("l1", {"amount": 0.3}), ("global", {"amount": 0.3}), ("nm", {})])
    def test_masks_and_zeros(self, method, kwargs):
        model = _model()
        report = prune(model, method, **kwargs)
        _assert_masked_exactly(model)
        assert "model.3.conv.weight_mask" in model.state_dict()
        assert report.pruned and abs(report.sparsity - (0.5 if method == "nm" else 0.3)) < 1e-3

    def test_l1_per_layer_amount(self):
        model = _model()
        prune(model, "l1", amount=0.3)
        for name, mask in get_masks(model).items():
            assert int((~mask).sum()) == round(0.3 * mask.numel()), name

    def test_global_one_threshold(self):
        model = _model()
        scores = torch.cat([m.weight.detach().abs().flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
        prune(model, "global", amount=0.4)
        pruned = torch.cat([(~m.weight_mask).flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
        assert int(pruned.sum()) == round(0.4 * scores.numel())
        assert scores[pruned].max() <= scores[~pruned].min()

    def test_global_floor_and_cap(self):
        model = _model()
        prune(model, "global", amount=0.5, min_layer_sparsity=0.2, max_layer_sparsity=0.7)
        sp = [float((~m).float().mean()) for m in get_masks(model).values()]
        assert min(sp) >= 0.2 - 1e-3 and max(sp) <= 0.7 + 1e-3

    def test_nm_pattern_and_stem_skipped(self):
        model = _model()
        report = prune(model, "nm", n=2, m=4)
        assert ("model.0.conv", "3 input channels, not a multiple of m=4") in report.skipped
        for name, mask in get_masks(model).items():
            assert is_nm_mask(mask, 2, 4), name
            w = model.get_submodule(name.rsplit(".", 1)[0]).weight
            assert torch.equal(mask, ops.nm_mask(w, 2, 4) | mask)

    def test_nm_same_masks_before_and_after_fusion(self):
        # BN scales a whole output channel; an N:M group lives in one, so the ranking inside it is unchanged.
        before, after = _model(), _model()
        prune(before, "nm")
        after.fuse()
        prune(after, "nm")
        mb, ma = get_masks(before), get_masks(after)
        same = sum(int((mb[k] == ma[k]).sum()) for k in mb)
        total = sum(v.numel() for v in mb.values())
        assert same >= total - 8  # only rounding ties of the fused products can flip a pair

    def test_fusion_keeps_masks_and_zeros(self):
        model = _model()
        prune(model, "l1", amount=0.3)
        masks = {k: v.clone() for k, v in get_masks(model).items()}
        model.fuse()
        assert {k: v for k, v in get_masks(model).items()}.keys() == masks.keys()
        assert all(torch.equal(get_masks(model)[k], masks[k]) for k in masks)
        _assert_masked_exactly(model)

    @pytest.mark.parametrize("method", ["l1", "global"])
    def test_masks_only_grow(self, method):
        model = _model()
        previous = None
        for amount in (0.1, 0.3, 0.05, 0.6):
            prune(model, method, amount=amount)
            pruned = {k: ~v.clone() for k, v in get_masks(model).items()}
            if previous is not None:
                assert previous.keys() == pruned.keys()
                assert not any((previous[k] & ~pruned[k]).any() for k in previous), "a pruned weight came back"
            previous = pruned
        total = sum(v.numel() for v in previous.values())
        assert abs(sum(int(v.sum()) for v in previous.values()) / total - 0.6) < 1e-3

    def test_nm_after_nm_and_l1_after_nm(self):
        model = _model()
        prune(model, "nm", n=2, m=4)
        before = {k: v.clone() for k, v in get_masks(model).items()}
        prune(model, "nm", n=2, m=4)
        assert all(torch.equal(before[k], v) for k, v in get_masks(model).items())
        prune(model, "nm", n=1, m=4)
        for k, v in get_masks(model).items():
            assert is_nm_mask(v, 1, 4) and not (v & ~before[k]).any()
        prune(model, "l1", amount=0.8)
        assert all(getattr(model.get_submodule(k.rsplit(".", 1)[0]), "weight_mask_pattern") == "unstructured"
                   for k in get_masks(model))
        _assert_masked_exactly(model)

    def test_selection_patterns_and_filter(self):
        model = _model()
        report = prune(model, "l1", amount=0.3, include="model.2*", exclude=["*.cv3.*"],
                       filter_fn=lambda name, mod: mod.out_channels != 8)
        assert report.pruned and all(k.startswith("model.2") and ".cv3." not in k for k in report.pruned)
        reasons = dict(report.skipped)
        assert reasons["model.0.conv"].startswith("not matched by --include")
        assert reasons["model.2.cv3.conv"] == "excluded by pattern '*.cv3.*'"

    def test_any_module_grouped_conv_skipped(self):
        net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3, groups=16), nn.Flatten(), nn.Linear(16, 8))
        report = prune(net, "nm", n=2, m=4)
        assert set(report.pruned) == {"0.weight", "3.weight"}
        assert dict(report.skipped)["1"] == "grouped convolution (groups=16)"
        _assert_masked_exactly(net)

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            ({"method": "nm", "n": 4, "m": 4}, r"1 <= n < m <= 16"),
            ({"method": "nm", "n": 5, "m": 4}, r"1 <= n < m <= 16"),
            ({"method": "l1", "amount": 1.0}, r"amount must be in \[0, 1\)"),
            ({"method": "global", "amount": -0.1}, r"amount must be in \[0, 1\)"),
            ({"method": "l1"}, "amount is required"),
            ({"method": "nm", "amount": 0.5}, "takes n and m, not amount"),
            ({"method": "magnitude", "amount": 0.5}, "unknown pruning method"),
            ({"method": "l1", "amount": 0.3, "include": "nothing*"}, "no prunable layer"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            prune(_model(), **kwargs)

    def test_no_prunable_layer_for_nm(self):
        with pytest.raises(ValueError, match="no prunable layer.*not a multiple of m=4"):
            prune(nn.Sequential(nn.Conv2d(3, 8, 3)), "nm")


class TestMasksInTraining:
    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_enforce_masks_keeps_zeros(self, device):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1)).to(device)
        prune(net, "nm")
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        handle = enforce_masks(net, opt)
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(2, 8, 9, 9, device=device)).square().mean().backward()
            opt.step()
            _assert_masked_exactly(net)
            assert all((net.get_submodule(k[:-7]).weight.grad[~m] == 0).all() for k, m in get_masks(net).items())
        handle.remove()
        opt.zero_grad()
        net(torch.randn(2, 8, 9, 9, device=device)).square().mean().backward()
        opt.step()
        w = net[0].weight
        assert (w[~net[0].weight_mask] != 0).any(), "after remove() the optimizer is free again"

    def test_apply_masks_is_one_op_call(self, monkeypatch):
        model = _model()
        prune(model, "l1", amount=0.3)
        calls = []
        real = ops.apply_masks_
        monkeypatch.setattr(ops, "apply_masks_", lambda ts, ms: (calls.append(len(ts)), real(ts, ms)))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        assert apply_masks(model) == 60
        assert calls == [60]
        _assert_masked_exactly(model)

    def test_remove_masks(self):
        model = _model()
        prune(model, "nm")
        assert remove_masks(model) == 59
        assert not get_masks(model) and not any(k.endswith("weight_mask") for k in model.state_dict())


class TestReport:
    def test_table(self):
        model = _model()
        report = prune(model, "nm")
        rep = sparsity_report(model, skipped=report.skipped)
        text = str(rep)
        assert "model.24.m.2.weight" in text and "2:4" in text and "dense" in text
        assert "skipped model.0.conv" in text
        assert abs(rep.masked_sparsity - 0.5) < 1e-9
        assert rep.compressed_bytes < 0.62 * rep.dense_bytes


class TestCheckpoints:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    @pytest.mark.parametrize("recipe", ["nm", "l1", "mixed"])
    def test_reload_bit_exact(self, tmp_path, dtype, recipe):
        model = _model()
        if recipe in ("nm", "mixed"):
            prune(model, "nm", exclude="model.2*")
        if recipe in ("l1", "mixed"):
            prune(model, "l1", amount=0.3, include="model.2*" if recipe == "mixed" else None)
        with torch.no_grad():  # a kept weight that is exactly zero, and a negative zero, survive too
            for mod, value in ((model.model[3].conv, 0.0), (model.model[4].cv1.conv, -0.0)):
                mod.weight[tuple(mod.weight_mask.nonzero()[0].tolist())] = value
        model = model.to(dtype)
        path = save_checkpoint(model, tmp_path / "p.pt")
        raw = torch.load(path, weights_only=True)
        assert raw["version"] == 2 and raw["sparse_weights"]
        assert not any(k.endswith("weight_mask") for k in raw["state_dict"])
        back = load_model(path, fuse=False, dtype=dtype)
        _assert_state_bit_exact(model.state_dict(), back.state_dict())
        assert {k: getattr(back.get_submodule(k[:-7]), "weight_mask_pattern") for k in get_masks(back)} == {
            k: getattr(model.get_submodule(k[:-7]), "weight_mask_pattern") for k in get_masks(model)
        }

    def test_load_fused_keeps_masks(self, tmp_path):
        model = _model()
        prune(model, "nm")
        path = save_checkpoint(model, tmp_path / "p.pt")
        fused = load_model(path, fuse=True)
        assert fused.is_fused() and len(get_masks(fused)) == 59
        _assert_masked_exactly(fused)
        ref = copy.deepcopy(model).fuse()
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(fused(x)[0], ref(x)[0])

    def test_unmasked_nonzero_weight_stays_dense(self, tmp_path, caplog):
        model = _model()
        prune(model, "nm")
        with torch.no_grad():
            w = model.model[3].conv.weight
            w[~model.model[3].conv.weight_mask] = 1.0  # changed without apply_masks
        path = save_checkpoint(model, tmp_path / "p.pt")
        assert "model.3.conv.weight" in torch.load(path, weights_only=True)["state_dict"]
        back = load_model(path, fuse=False)
        _assert_state_bit_exact(model.state_dict(), back.state_dict())

    def test_yolov5n_2to4_file_size(self, shared, tmp_path):
        dense = load_model(shared / "weights" / "yolov5n.pt", fuse=False)
        dense_path = save_checkpoint(copy.deepcopy(dense).half(), tmp_path / "dense.pt")
        prune(dense, "nm", n=2, m=4)
        pruned = dense.half()
        path = save_checkpoint(pruned, tmp_path / "2to4.pt")
        ratio = path.stat().st_size / dense_path.stat().st_size
        assert ratio <= 0.65, ratio
        back = load_model(path, fuse=False, dtype=torch.float16)
        _assert_state_bit_exact(pruned.state_dict(), back.state_dict())


class TestCli:
    @pytest.fixture()
    def weights(self, tmp_path):
        return save_checkpoint(_model(), tmp_path / "dense.pt")

    def test_prune_command(self, weights, tmp_path, capsys):
        out = tmp_path / "p.pt"
        assert cli.main(["prune", "--weights", str(weights), "--nm", "2:4", "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert "model.24.m.2.weight" in text and "skipped model.0.conv" in text and "compressed" in text
        model = load_model(out, fuse=False)
        assert len(get_masks(model)) == 59 and model.meta["pruning"]["method"] == "nm"

    @pytest.mark.parametrize(
        "extra,match",
        [
            (["--nm", "4:4"], "1 <= n < m <= 16"),
            (["--nm", "two:four"], "looks like 2:4"),
            (["--method", "l1"], "needs --amount"),
            (["--amount", "1.5"], r"must be in \[0, 1\)"),
            (["--method", "nm", "--amount", "0.3"], "takes --nm N:M"),
            (["--amount", "0.3", "--include", "nothing"], "no prunable layer"),
        ],
    )
    def test_prune_errors(self, weights, tmp_path, capsys, extra, match):
        assert cli.main(["prune", "--weights", str(weights), "--out", str(tmp_path / "x.pt"), *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert __import__("re").search(match, err), err


def test_oracle_helper_is_exhaustive():
    """The reference of test_ops_nm_sparsity enumerates all C(m, n) patterns (sanity of the test itself)."""
    assert len(list(itertools.combinations(range(16), 5))) == 4368


@pytest.mark.parametrize(
    "spec,method,match",
    [("2:4", "l1", "needs prune_method nm"), ("0.3", "nm", "takes an N:M pattern"), ("abc", None, "takes an amount"),
     ("4:2", None, "1 <= n < m <= 16"), ("1.0", None, r"\[0, 1\)")],
)
def test_prune_from_spec_errors(spec, method, match):
    from sparseyolo.prune import prune_from_spec

    with pytest.raises(ValueError, match=match):
        prune_from_spec(_model(), spec, method)


def test_prune_from_spec_methods():
    from sparseyolo.prune import prune_from_spec

    assert prune_from_spec(_model(), "2:4").method == "nm"
    assert prune_from_spec(_model(), 0.3).method == "l1"
    assert prune_from_spec(_model(), "0.3", "global").method == "global"


class TestBlockNM:
    def test_rows_of_a_block_share_the_pattern_and_stay_nm(self):
        conv = torch.nn.Conv2d(16, 10, 3)  # 10 output channels: blocks 0-3, 4-7 and a short tail 8-9
        prune(conv, "nm", n=2, m=4, block=4)
        mask = conv.weight_mask
        assert is_nm_mask(mask, 2, 4)
        for start, stop in ((0, 4), (4, 8), (8, 10)):
            assert bool((mask[start:stop] == mask[start]).all())
        assert not bool((mask[0] == mask[4]).all())  # different blocks choose independently

    def test_block_keeps_the_largest_summed_magnitudes(self):
        conv = torch.nn.Conv2d(4, 4, 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1.0, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 1.0], [0.4, 0.1, 0.1, 0.1],
                                            [0.1, 0.1, 0.1, 0.1]]).view(4, 4, 1, 1))
        prune(conv, "nm", n=2, m=4, block=4)
        # column sums 1.6, 0.5, 0.7, 1.5: channels 0 and 3 kept in every row
        assert conv.weight_mask.view(4, 4).tolist() == [[True, False, False, True]] * 4

    def test_block_1_is_plain_nm_and_errors(self):
        a, b = torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(8, 8, 3)
        b.load_state_dict(a.state_dict())
        prune(a, "nm", n=2, m=4)
        prune(b, "nm", n=2, m=4, block=1)
        assert torch.equal(a.weight_mask, b.weight_mask)
        with pytest.raises(ValueError, match="block .* is for methods 'nm' and 'tile'"):
            prune(torch.nn.Conv2d(8, 8, 3), "l1", amount=0.5, block=4)
        with pytest.raises(ValueError, match="needs a layer without masks"):
            prune(a, "nm", n=2, m=4, block=4)
        with pytest.raises(ValueError, match="block must be a positive int"):
            prune(torch.nn.Conv2d(8, 8, 3), "nm", n=2, m=4, block=0)


def test_prune_cli_nm_block(tmp_path, capsys):
    from sparseyolo.demo import packaged_weights

    out = tmp_path / "b4.pt"
    assert cli.main(["prune", "--weights", str(packaged_weights()), "--nm", "2:4", "--nm-block", "4",
                     "--out", str(out)]) == 0
    model = load_model(out, fuse=False)
    masked = [m for m in model.modules() if hasattr(m, "weight_mask")]
    assert len(masked) > 50
    for mod in masked:
        mask = mod.weight_mask
        full = mask.shape[0] // 4 * 4
        assert is_nm_mask(mask, 2, 4)
        assert bool((mask[:full].view(-1, 4, *mask.shape[1:]) == mask[:full:4].unsqueeze(1)).all())
    capsys.readouterr()
    assert cli.main(["prune", "--weights", str(packaged_weights()), "--method", "l1", "--amount", "0.3",
                     "--nm-block", "4", "--out", str(out)]) == 2
    assert "--block is for methods nm and tile" in capsys.readouterr().err
    # --nm-block goes with --calibrate (tests/test_prune_calibrated_blocks.py); here the data is what is missing
    assert cli.main(["prune", "--weights", str(packaged_weights()), "--nm", "2:4", "--nm-block", "4",
                     "--calibrate", "x.yaml", "--out", str(out)]) == 2
    assert "data yaml not found: x.yaml" in capsys.readouterr().err
    assert cli.main(["prune", "--weights", str(packaged_weights()), "--nm-block", "0", "--out", str(out)]) == 2
    assert "--block must be >= 1" in capsys.readouterr().err
