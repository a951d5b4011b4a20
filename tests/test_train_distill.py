"""Distillation from the dense teacher in masked fine-tuning: the loss, the teacher's resolution, a training run."""

from __future__ import annotations

import pytest
import torch

from sparseyolo.train import TrainConfig, train
from sparseyolo.train.distill import DetectionDistiller, distillation_loss, resolve_teacher
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
