"""Distillation from the dense teacher in masked fine-tuning: the loss, the teacher's resolution, a training run."""

from __future__ import annotations

import copy

import pytest
import torch

from sparseyolo.train import TrainConfig, train
from sparseyolo.models import build_model
from sparseyolo.train.distill import (
    DetectionDistiller,
    distillation_loss,
    feature_blocks,
    feature_loss,
    resolve_teacher,
)
from sparseyolo.train.loss import LossGains
from sparseyolo.utils.errors import ParameterError
from tests._train_helpers import make_dataset


def _outputs(seed: int, nc: int = 3, b: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, s, s, 5 + nc, generator=g) for s in (8, 4, 2)]


class TestLoss:
    def test_zero_when_the_student_matches_and_positive_otherwise(self):
        t = _outputs(0)
        gains = LossGains()
        assert float(distillation_loss([x.clone() for x in t], t, gains)) == pytest.approx(0.0, abs=1e-6)
        assert float(distillation_loss(_outputs(1), t, gains)) > 0.01

    def test_gradients_reach_the_student_only(self):
        t = [x.requires_grad_(True) for x in _outputs(0)]
        s = [x.requires_grad_(True) for x in _outputs(1)]
        distillation_loss(s, t, LossGains()).backward()
        assert all(x.grad is not None and bool(x.grad.abs().sum() > 0) for x in s)
        assert all(x.grad is None for x in t)

    def test_classes_and_boxes_count_where_the_teacher_sees_objects(self):
        t, s = _outputs(0), [x.clone() for x in _outputs(0)]
        for x in t:
            x[..., 4] = -30.0  # the teacher sees nothing anywhere
        for x in s:
            x[..., 4] = -30.0
            x[..., :4] += 3.0  # boxes and classes differ, but only where nothing is seen
            x[..., 5:] -= 3.0
        assert float(distillation_loss(s, t, LossGains())) < 1e-3
        t[0][0, 0, 0, 0, 4] = 30.0  # one confident cell: its box and classes now count
        s[0][0, 0, 0, 0, 4] = 30.0
        assert float(distillation_loss(s, t, LossGains())) > 0.5

    def test_single_class_and_bad_inputs(self):
        t = _outputs(0, nc=1)
        assert float(distillation_loss(_outputs(1, nc=1), t, LossGains())) > 0
        with pytest.raises(ValueError, match="output levels"):
            distillation_loss(t[:2], t, LossGains())
        with pytest.raises(ValueError, match="differ in shape"):
            distillation_loss(_outputs(1, nc=2), t, LossGains())
        with pytest.raises(ValueError, match="must be > 0"):
            DetectionDistiller(torch.nn.Identity(), LossGains(), weight=0.0)


def test_resolve_teacher(shared, tmp_path):
    from sparseyolo.checkpoint import load_model, save_checkpoint
    from sparseyolo.prune import prune

    dense = shared / "weights" / "yolov5n.pt"
    assert resolve_teacher(None, dense, False) is None and resolve_teacher("none", dense, True) is None
    assert resolve_teacher("auto", dense, True) == str(dense)  # dense weights pruned in this run teach themselves
    assert resolve_teacher("auto", dense, False) is None  # dense, not pruned: nothing to distil from
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found"):
        resolve_teacher(str(tmp_path / "missing.pt"), dense, False)
    model = load_model(dense, fuse=False)
    prune(model, "nm", n=2, m=4)
    here = save_checkpoint(model, tmp_path / "p.pt", pruning={"method": "nm", "source": str(dense)})
    gone = save_checkpoint(model, tmp_path / "q.pt", pruning={"method": "nm", "source": str(tmp_path / "gone.pt")})
    assert resolve_teacher("auto", here, False) == str(dense)
    assert resolve_teacher("auto", gone, False) is None
    assert resolve_teacher(str(dense), gone, False) == str(dense)
    # the meta a caller has read already is used as it is, not read again
    assert resolve_teacher("auto", gone, False, meta={"pruning": {"source": str(dense)}}) == str(dense)
    assert resolve_teacher("auto", here, False, meta={}) is None


def test_pruning_record_names_the_dense_source():
    """A fine-tuned file records how its masks were made, with the dense checkpoint they came from, so that
    ``--teacher auto`` finds the teacher of an already fine-tuned file too."""
    from sparseyolo.prune import PruneConfig
    from sparseyolo.train.engine import _pruning_record

    pruned = {"pruning": {"method": "nm", "n": 2, "m": 4, "source": "dense.pt", "permute": True}}
    assert _pruning_record(None, pruned, "p.pt", False) == pruned["pruning"]  # masks kept: the record carried
    assert _pruning_record(None, {}, "p.pt", False) is None
    here = _pruning_record(PruneConfig(method="l1", amount=0.3), {}, "dense.pt", True)
    assert here["method"] == "l1" and here["source"] == "dense.pt" and here["permute"] is False
    grown = _pruning_record(PruneConfig(method="l1", amount=0.6), pruned, "p.pt", False)
    assert grown["amount"] == 0.6 and grown["source"] == "dense.pt" and grown["permute"] is True


@pytest.mark.slow
def test_training_with_the_dense_teacher(shared, tmp_path):
    from sparseyolo.train import PruneRecipe

    data = make_dataset(tmp_path / "data", n=4)
    cfg = TrainConfig(weights=str(shared / "weights" / "yolov5n.pt"), data=str(data), imgsz=128, batch_size=2, nbs=2,
                      warmup_epochs=0, workers=0, project=str(tmp_path / "runs"), noval=True, epochs=1,
                      prune=PruneRecipe(method="nm", n=2, m=4), distill=2.0)
    result = train(cfg)
    row = result.history[-1]
    assert row["distill_loss"] > 0  # the 2:4 student differs from its dense teacher
    assert "distill_loss" in (result.save_dir / "results.csv").read_text().splitlines()[0]
    plain = train(TrainConfig(**{**cfg.__dict__, "teacher": None, "name": "plain"}))
    assert "distill_loss" not in plain.history[-1]
    with pytest.raises(ParameterError, match="distill"):
        TrainConfig(distill=0.0).check()


class TestFeatureImitation:
    def test_feature_loss_is_relative_and_checks_its_inputs(self):
        t = [torch.randn(2, 4, 8, 8), 10 * torch.randn(2, 8, 4, 4)]
        assert float(feature_loss([x.clone() for x in t], t)) == pytest.approx(0.0, abs=1e-7)
        assert float(feature_loss([torch.zeros_like(x) for x in t], t)) == pytest.approx(1.0, rel=1e-6)
        # relative: scaling a block's features, the student's and the teacher's alike, leaves the loss as it was
        s = [x + 0.3 * torch.randn_like(x) for x in t]
        scaled = float(feature_loss([s[0], 100 * s[1]], [t[0], 100 * t[1]]))
        assert scaled == pytest.approx(float(feature_loss(s, t)), rel=1e-5) and scaled > 0.01
        with pytest.raises(ValueError, match="same non-zero number"):
            feature_loss(t[:1], t)
        with pytest.raises(ValueError, match="differ in shape"):
            feature_loss([t[1], t[0]], t)

    def test_blocks_are_the_weighted_modules_before_detect(self):
        model = build_model("yolov5n.yaml", nc=3)
        blocks = feature_blocks(model)
        names = {type(b).__name__ for b in blocks}
        assert names <= {"Conv", "C3", "SPPF"} and {"Conv", "C3", "SPPF"} <= names
        assert len(blocks) == 18  # yolov5n: 24 modules before Detect, 4 Concat and 2 Upsample hold no weights
        with pytest.raises(ValueError, match="YOLOv5 detection model"):
            feature_blocks(torch.nn.Conv2d(3, 3, 1))

    def test_distiller_adds_the_feature_term_and_removes_its_hooks(self):
        torch.manual_seed(0)
        teacher = build_model("yolov5n.yaml", nc=3).eval()
        student = copy.deepcopy(teacher).train()
        imgs = torch.rand(2, 3, 64, 64)
        head_only = DetectionDistiller(teacher, LossGains())
        both = DetectionDistiller(teacher, LossGains(), student=student, feature_weight=2.0)
        preds = student(imgs)
        # the same weights: the features match (BatchNorm of the train-mode student uses batch statistics, so the
        # head outputs differ a little; the feature term is what is checked here)
        loss_same = float(both(imgs, preds)[1]) - float(head_only(imgs, preds)[1])
        with torch.no_grad():
            student.model[2].cv1.conv.weight.mul_(0.0)  # a block that loses its function
        preds = student(imgs)
        loss, item = both(imgs, preds)
        extra = float(item) - float(head_only(imgs, preds)[1])
        assert extra > loss_same + 0.1 and not item.requires_grad
        loss.backward()  # the feature term reaches blocks before the head through the student's graph
        assert student.model[1].conv.weight.grad.abs().sum() > 0
        with pytest.raises(RuntimeError, match="not recorded"):
            both(imgs, preds)  # the features of that forward were used already
        frozen = copy.deepcopy(student).eval()  # an eval copy (the EMA) never fills the student's tap
        frozen(imgs)
        with pytest.raises(RuntimeError, match="not recorded"):
            both(imgs, preds)
        both.close()
        assert not any(m._forward_hooks for m in student.modules())
        assert not any(m._forward_hooks for m in teacher.modules())
        with pytest.raises(ValueError, match="needs the student"):
            DetectionDistiller(teacher, LossGains(), feature_weight=1.0)
        with pytest.raises(ValueError, match=">= 0"):
            DetectionDistiller(teacher, LossGains(), student=student, feature_weight=-1.0)
        with pytest.raises(ParameterError, match="feature_distill"):
            TrainConfig(feature_distill=-0.5).check()


@pytest.mark.slow
def test_training_with_feature_imitation_and_frozen_batchnorm(shared, tmp_path):
    from sparseyolo.checkpoint import load_model
    from sparseyolo.train import PruneRecipe

    weights = shared / "weights" / "yolov5n.pt"
    data = make_dataset(tmp_path / "data", n=4)
    cfg = TrainConfig(weights=str(weights), data=str(data), imgsz=128, batch_size=2, nbs=2, warmup_epochs=0,
                      workers=0, project=str(tmp_path / "runs"), noval=True, epochs=1, lr0=0.01,
                      prune=PruneRecipe(method="nm", n=2, m=4), feature_distill=1.0, freeze_bn=True)
    result = train(cfg)
    head_only = train(TrainConfig(**{**cfg.__dict__, "feature_distill": 0.0, "name": "head"}))
    # the same batches: the feature term is added on top of the head's
    assert result.history[-1]["distill_loss"] > head_only.history[-1]["distill_loss"] + 1.0
    assert not any(m._forward_hooks for m in result.model.modules())  # the student's taps are gone
    dense = dict(load_model(weights, fuse=False).named_modules())
    bns = [(n, m) for n, m in result.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for name, bn in bns:  # frozen statistics: exactly the checkpoint's; the scale and shift trained
        torch.testing.assert_close(bn.running_mean, dense[name].running_mean, rtol=0, atol=0)
        torch.testing.assert_close(bn.running_var, dense[name].running_var, rtol=0, atol=0)
    assert any(not torch.equal(bn.weight, dense[name].weight) for name, bn in bns)
    moving = train(TrainConfig(**{**cfg.__dict__, "freeze_bn": False, "name": "moving"}))
    assert any(not torch.equal(bn.running_mean, dense[name].running_mean)
               for name, bn in moving.model.named_modules() if isinstance(bn, torch.nn.BatchNorm2d))
    with pytest.raises(ParameterError, match="needs a dense teacher"):
        train(TrainConfig(**{**cfg.__dict__, "teacher": None, "name": "noteacher"}))


@pytest.mark.slow
def test_feature_imitation_of_a_permuted_student(shared, tmp_path, capsys):
    """A checkpoint pruned with --permute has its channels in another order than its dense source: the teacher is
    permuted the same way (from the record the file keeps), or feature imitation is refused."""
    from sparseyolo import cli
    from sparseyolo.checkpoint import load_checkpoint, load_model, save_checkpoint
    from sparseyolo.train.engine import _align_teacher, _channel_order

    dense = shared / "weights" / "yolov5n.pt"
    data = make_dataset(tmp_path / "data", n=4)
    out = tmp_path / "perm.pt"
    assert cli.main(["prune", "--weights", str(dense), "--nm", "2:4", "--permute", "--out", str(out)]) == 0
    capsys.readouterr()
    student = load_model(out, fuse=False).eval()
    x = torch.rand(2, 3, 64, 64)

    def features(model):
        tap = DetectionDistiller(model.eval(), LossGains(), student=model, feature_weight=1.0)
        tap._taps[0].training_only = False
        with torch.no_grad():
            model(x)
        feats = tap._taps[0].take()
        tap.close()
        return feats

    meta = load_checkpoint(out).meta
    aligned = load_model(dense, fuse=False)
    _align_teacher(aligned, _channel_order(meta), out)
    # magnitude 2:4 damages the model, but far less than comparing channels in two orders
    err_aligned = float(feature_loss(features(student), features(aligned)))
    err_unaligned = float(feature_loss(features(student), features(load_model(dense, fuse=False))))
    assert err_aligned < 0.5 * err_unaligned
    unrecorded = save_checkpoint(student, tmp_path / "old.pt", pruning=meta["pruning"])  # a file of before the record
    with pytest.raises(ParameterError, match="does not record how"):
        _align_teacher(load_model(dense, fuse=False), _channel_order(load_checkpoint(unrecorded).meta), unrecorded)
    assert _channel_order({}) == (False, None)
    # fine-tuning carries the record to its own files, and a second fine-tune can imitate features again
    cfg = TrainConfig(weights=str(out), data=str(data), imgsz=64, batch_size=2, nbs=2, warmup_epochs=0, workers=0,
                      project=str(tmp_path / "runs"), noval=True, epochs=1, teacher=str(dense), feature_distill=1.0)
    first = train(cfg)
    assert load_checkpoint(first.last).meta["channel_permutation"] == meta["channel_permutation"]
    assert resolve_teacher("auto", first.last, False) == str(dense)  # the dense source is carried too
    again = train(TrainConfig(**{**cfg.__dict__, "weights": str(first.last), "name": "again"}))
    assert again.history[-1]["distill_loss"] > 0
    with pytest.raises(ParameterError, match="does not record how"):
        train(TrainConfig(**{**cfg.__dict__, "weights": str(unrecorded), "name": "old"}))
