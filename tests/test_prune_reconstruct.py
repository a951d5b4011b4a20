"""Stage reconstruction after one-shot pruning: the objective, masks kept bit-exact, per-stage gains, refusals, CLI."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.models.yolo import DetectionModel, load_config
from sparseyolo.prune import is_nm_mask, prune
from sparseyolo.prune.calibrated import calibrated_prune
from sparseyolo.prune.masks import has_mask
from sparseyolo.prune.reconstruct import reconstruct_stages, stage_error
from sparseyolo.prune.stages import ActivationStream, model_stages


def _tiny_yolo(seed: int = 0) -> DetectionModel:
    cfg, _ = load_config("yolov5n.yaml")
    cfg = copy.deepcopy(cfg)
    cfg.update({"width_multiple": 0.125, "nc": 3})
    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=3).eval()
    for mod in model.modules():  # trained-looking BatchNorms: not the identity of a fresh init
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return model


def _images(n: int = 3, size: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


class TestStageError:
    def test_relative_squared_error(self):
        t = torch.randn(2, 3, 4, 4)
        out = t + 0.1 * torch.randn(2, 3, 4, 4)
        ref = (out - t).square().sum() / t.square().sum()
        torch.testing.assert_close(stage_error(out, t), ref)
        assert float(stage_error(t, t)) == 0.0

    def test_lists_sum_over_tensors(self):
        a, b = [torch.randn(2, 3), torch.randn(4)], [torch.randn(2, 3), torch.randn(4)]
        ref = sum((x - y).square().sum() for x, y in zip(a, b)) / sum(y.square().sum() for y in b)
        torch.testing.assert_close(stage_error(a, b), ref)

    def test_detect_output_compares_the_raw_maps(self):
        raw_o, raw_t = [torch.randn(1, 3, 4, 4, 8)], [torch.randn(1, 3, 4, 4, 8)]
        decoded_o, decoded_t = torch.randn(1, 48, 8) * 1000, torch.randn(1, 48, 8) * 1000
        torch.testing.assert_close(stage_error((decoded_o, raw_o), (decoded_t, raw_t)), stage_error(raw_o, raw_t))

    def test_mismatched_outputs(self):
        with pytest.raises(ValueError, match="2 tensors"):
            stage_error([torch.ones(2), torch.ones(2)], [torch.ones(2)])


class TestActivationStream:
    def test_stage_outputs_reproduce_the_model(self):
        model = _tiny_yolo()
        images = _images(2)
        stream = ActivationStream(model, images)
        stages, _, _ = model_stages(model)
        for i in range(len(stages)):
            stream.advance(i)
        with torch.no_grad():
            for b, x in enumerate(images):
                want = model(x.float() / 255)[0]
                torch.testing.assert_close(stream.prev[b][0], want)
        assert not stream.cache  # every saved output was dropped after its last reader

    def test_generic_model_is_one_stage(self):
        seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        stages, routes, save = model_stages(seq)
        assert stages == [seq] and routes == [-1] and save == set()


@pytest.fixture(scope="module")
def pruned():
    """A tiny YOLOv5 2:4-pruned by magnitude (large stage errors to reduce) and its dense twin."""
    model = _tiny_yolo()
    dense = copy.deepcopy(model)
    prune(model, "nm", n=2, m=4)
    return model, dense


class TestReconstruct:
    def test_lowers_every_kept_stage_error_and_keeps_the_masks(self, pruned):
        model, dense = (copy.deepcopy(m) for m in pruned)
        masks = {name: mod.weight_mask.clone() for name, mod in model.named_modules() if hasattr(mod, "weight_mask")}
        running = {name: b.clone() for name, b in model.named_buffers() if "running" in name}
        dense_state = copy.deepcopy(dense.state_dict())
        images = _images()
        with torch.no_grad():
            err_before = float(stage_error(model(images[0].float() / 255), dense(images[0].float() / 255)))
        report = reconstruct_stages(model, dense, images, iters=40, lr=3e-3, progress=False)

        with_masks = [i for i, st in enumerate(model_stages(model)[0]) if any(has_mask(m) for m in st.modules())]
        assert [label for label, *_ in report.rows] == [f"model.{i}" for i in with_masks]  # every pruned stage
        assert report.images == 6 and report.iters == 40
        assert report.after < report.before
        for label, before, after, kept in report.rows:
            assert after <= before, label
            assert kept == (after < before)
        assert any(kept for *_, kept in report.rows)
        with torch.no_grad():
            err_after = float(stage_error(model(images[0].float() / 255), dense(images[0].float() / 255)))
        assert err_after < err_before  # the whole model's output (raw maps) is closer to the dense one
        for name, mod in model.named_modules():
            if name in masks:
                assert torch.equal(mod.weight_mask, masks[name]), name
                assert is_nm_mask(mod.weight_mask, 2, 4)
                assert not bool(_bits(mod.weight.detach())[~mod.weight_mask].any()), name  # +0.0, bit-exact
        for name, b in model.named_buffers():
            if name in running:
                assert torch.equal(b, running[name]), name  # BatchNorm statistics untouched
        for k, v in dense.state_dict().items():
            assert torch.equal(v, dense_state[k]), k  # the dense model only ran forward
        assert not model.training and all(not p.requires_grad or p.grad is None for p in model.parameters())
        assert "stage reconstruction" in str(report) and "model." in report.table()

    def test_a_stage_that_does_not_improve_is_put_back(self, pruned):
        model, dense = (copy.deepcopy(m) for m in pruned)
        state = copy.deepcopy(model.state_dict())
        report = reconstruct_stages(model, dense, _images(), iters=3, lr=1e3, progress=False)  # diverges
        assert report.rows and not any(kept for *_, kept in report.rows)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert report.after == report.before
        assert "put back" in str(report)

    def test_deterministic_for_a_seed(self, pruned):
        a, b = (copy.deepcopy(pruned[0]) for _ in range(2))
        for m in (a, b):
            reconstruct_stages(m, pruned[1], _images(), iters=5, progress=False, seed=3)
        for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), k

    def test_generic_model_after_calibrated_pruning(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
                              nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
                              nn.Conv2d(8, 4, 1)).eval()
        dense = copy.deepcopy(model)
        images = _images(size=16)
        calibrated_prune(model, images, n=2, m=4, progress=False)
        with torch.no_grad():
            before = sum(F.mse_loss(model(x.float() / 255), dense(x.float() / 255)) for x in images)
        report = reconstruct_stages(model, dense, images, iters=60, lr=1e-3, progress=False)
        with torch.no_grad():
            after = sum(F.mse_loss(model(x.float() / 255), dense(x.float() / 255)) for x in images)
        assert len(report.rows) == 1 and float(after) <= float(before)
        assert is_nm_mask(model[3].weight_mask, 2, 4)

    def test_refusals(self, pruned):
        model, dense = pruned
        images = _images(1)
        with pytest.raises(ValueError, match="no pruned layer"):
            reconstruct_stages(copy.deepcopy(dense), dense, images)
        with pytest.raises(ValueError, match="not the same architecture"):
            reconstruct_stages(model, _tiny_yolo().float().model[:3], images)
        with pytest.raises(ValueError, match="float32"):
            reconstruct_stages(copy.deepcopy(model).half(), dense, images)
        with pytest.raises(ValueError, match="calibration images"):
            reconstruct_stages(model, dense, [])
        with pytest.raises(ValueError, match="iters"):
            reconstruct_stages(model, dense, images, iters=0)
        with pytest.raises(ValueError, match="lr"):
            reconstruct_stages(model, dense, images, lr=0.0)


class TestConfig:
    def test_needs_calibration_and_sane_values(self):
        from sparseyolo.prune import PruneConfig
        from sparseyolo.utils.errors import ParameterError

        with pytest.raises(ParameterError, match="needs calibrate"):
            PruneConfig(method="nm", reconstruct=300).validate()
        with pytest.raises(ParameterError, match=">= 0"):
            PruneConfig(method="nm", calibrate="x.yaml", reconstruct=-1).validate()
        with pytest.raises(ParameterError, match="positive"):
            PruneConfig(method="nm", calibrate="x.yaml", reconstruct=10, reconstruct_lr=0.0).validate()
        cfg = PruneConfig(method="nm", calibrate="x.yaml", reconstruct=10).validate()
        assert PruneConfig.from_dict(cfg.to_dict()).reconstruct == 10
        assert PruneConfig.from_dict({"method": "nm", "n": 2, "m": 4}).reconstruct == 0  # an older file


class TestCli:
    # the command with --reconstruct on yolov5n: tests/test_prune_calibrated.py::TestYolov5n::test_cli_records_the_recipe
    def test_cli_refuses_without_calibration(self, tmp_path, capsys):
        from sparseyolo import cli

        assert cli.main(["prune", "--weights", str(tmp_path / "never_read.pt"), "--nm", "2:4",
                         "--reconstruct", "300", "--out", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err
        assert "--reconstruct" in err and "--calibrate" in err
