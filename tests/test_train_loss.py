"""YOLOv5 loss: CIoU, anchor matching worked out by hand, perfect predictions, gradients, gains."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from sparseyolo.models import DetectionModel
from sparseyolo.train.loss import LossGains, YoloLoss, bbox_ciou, build_targets, scaled_loss_gains


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolov5n.yaml").train()


def _cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1)


def _empty_preds(model: DetectionModel, bs: int, size: int) -> list[torch.Tensor]:
    det = model.model[-1]
    return [torch.zeros(bs, det.na, size // int(s), size // int(s), det.no) for s in det.stride]


class TestCIoU:
    def test_matches_torchvision(self):
        g = torch.Generator().manual_seed(0)
        b1 = torch.cat((torch.rand(64, 2, generator=g) * 10, torch.rand(64, 2, generator=g) * 5 + 0.1), 1).double()
        b2 = torch.cat((torch.rand(64, 2, generator=g) * 10, torch.rand(64, 2, generator=g) * 5 + 0.1), 1).double()
        ours = bbox_ciou(b1, b2, eps=1e-12)
        ref = torchvision.ops.complete_box_iou(_cxcywh_to_xyxy(b1), _cxcywh_to_xyxy(b2), eps=1e-12).diagonal()
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)

    def test_identical_is_one_disjoint_is_negative(self):
        b = torch.tensor([[5.0, 5.0, 2.0, 3.0]])
        assert bbox_ciou(b, b).item() == pytest.approx(1.0, abs=1e-6)
        far = torch.tensor([[50.0, 50.0, 2.0, 3.0]])
        assert bbox_ciou(b, far).item() < 0


class TestBuildTargets:
    def test_hand_counts(self, model):
        """One 40x40 px box centred at (0.3, 0.7) of a 256 px image, with the yolov5n anchors.

        P3 (32x32 grid, anchors/8 = (1.25,1.625) (2,3.75) (4.125,2.875)): box 5x5 cells, ratio to the first anchor is
        exactly 4 (not < 4) -> 2 anchors. Centre (9.6, 22.4): x frac 0.6 -> right neighbour (32-9.6 = 22.4, frac 0.4);
        y frac 0.4 -> upper neighbour. 3 cells x 2 anchors = 6.
        P4 (16x16, box 2.5 cells): all 3 anchors within 4x. Centre (4.8, 11.2): right and upper neighbours -> 9.
        P5 (8x8, box 1.25): only anchor 0 (3.625, 2.8125). Centre (2.4, 5.6): left (frac 0.4) and lower
        (8-5.6 = 2.4, frac 0.4) neighbours -> 3.
        """
        targets = torch.tensor([[0, 7, 0.3, 0.7, 40 / 256, 40 / 256]])
        levels = build_targets(_empty_preds(model, 1, 256), targets, model.model[-1].anchors)
        assert [len(lt.b) for lt in levels] == [6, 9, 3]
        p3 = levels[0]
        assert sorted(set(p3.a.tolist())) == [1, 2]
        assert sorted(set(zip(p3.gi.tolist(), p3.gj.tolist()))) == [(9, 21), (9, 22), (10, 22)]
        p5 = levels[2]
        assert p5.a.tolist() == [0, 0, 0]
        assert sorted(zip(p5.gi.tolist(), p5.gj.tolist())) == [(1, 5), (2, 5), (2, 6)]
        assert (torch.cat([lt.cls for lt in levels]) == 7).all()
        # Offsets of neighbour-cell positives stay within the decodable range [-0.5, 1.5].
        xy = torch.cat([lt.tbox[:, :2] for lt in levels])
        assert xy.min() >= -0.5 and xy.max() <= 1.5

    def test_border_cells_get_no_outside_neighbour(self, model):
        # Centre in the first cell's left half: no left neighbour (gxy > 1 fails), and indices stay on the grid.
        targets = torch.tensor([[0, 0, 0.2 / 32, 0.5 + 0.2 / 32, 0.05, 0.05]])
        levels = build_targets(_empty_preds(model, 1, 256), targets, model.model[-1].anchors)
        for lt, size in zip(levels, (32, 16, 8), strict=True):
            assert (lt.gi >= 0).all() and (lt.gi < size).all() and (lt.gj >= 0).all() and (lt.gj < size).all()
        assert 0 in levels[0].gi.tolist() and -1 not in levels[0].gi.tolist()

    def test_no_targets(self, model):
        levels = build_targets(_empty_preds(model, 2, 128), torch.zeros(0, 6), model.model[-1].anchors)
        assert all(len(lt.b) == 0 for lt in levels)


class TestYoloLoss:
    def test_perfect_box_prediction_has_tiny_box_loss(self, model):
        """Logits set to invert the decoding at every positive of one label give CIoU ~ 1."""
        targets = torch.tensor([[0, 3, 0.41, 0.37, 0.21, 0.17]])
        preds = _empty_preds(model, 1, 256)
        det = model.model[-1]
        for p, lt in zip(preds, build_targets(preds, targets, det.anchors), strict=True):
            sxy = (lt.tbox[:, :2] + 0.5) / 2  # xy = 2 s - 0.5
            swh = torch.sqrt(lt.tbox[:, 2:] / lt.anchors) / 2  # wh = (2 s)^2 anchor
            p[lt.b, lt.a, lt.gj, lt.gi, 0:2] = torch.logit(sxy.clamp(1e-6, 1 - 1e-6), eps=None)
            p[lt.b, lt.a, lt.gj, lt.gi, 2:4] = torch.logit(swh, eps=None)
        loss_fn = YoloLoss(model, scaled_loss_gains(LossGains(), det.nl, det.nc, 256))
        _, (lbox, lobj, lcls) = loss_fn(preds, targets)
        assert lbox.item() < 1e-5
        assert lobj.item() > 0 and lcls.item() > 0  # objectness/class logits were left at 0

        bad = [p.clone() for p in preds]
        for p in bad:
            p[..., 0:4] = 0
        _, (lbox_bad, _, _) = loss_fn(bad, targets)
        assert lbox_bad.item() > 100 * max(lbox.item(), 1e-9)

    def test_gradients_flow_and_loss_is_batch_scaled(self, model):
        torch.manual_seed(1)
        imgs = torch.rand(2, 3, 128, 128)
        targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 5, 0.25, 0.6, 0.2, 0.2]])
        model.zero_grad()
        preds = model(imgs)
        loss_fn = YoloLoss(model, scaled_loss_gains(LossGains(), 3, model.nc, 128))
        loss, items = loss_fn(preds, targets)
        assert torch.isfinite(loss) and loss.item() > 0
        assert loss.item() == pytest.approx(items.sum().item() * 2, rel=1e-5)
        loss.backward()
        head = model.model[-1].m
        for conv in head:
            assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        first = model.model[0].conv.weight.grad
        assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0

    def test_label_smoothing_targets(self, model):
        loss_fn = YoloLoss(model, LossGains(label_smoothing=0.1))
        assert (loss_fn.cls_pos, loss_fn.cls_neg) == pytest.approx((0.95, 0.05))

    def test_empty_targets_only_objectness(self, model):
        preds = _empty_preds(model, 2, 128)
        loss, (lbox, lobj, lcls) = YoloLoss(model)(preds, torch.zeros(0, 6))
        assert lbox.item() == 0 and lcls.item() == 0
        # All logits 0: BCE = log 2 per level, weighted by the balance (4, 1, 0.4) and the obj gain 1.
        assert lobj.item() == pytest.approx(math.log(2) * (4.0 + 1.0 + 0.4), rel=1e-5)


def test_scaled_gains_follow_train_py():
    g = scaled_loss_gains(LossGains(), nl=3, nc=80, imgsz=640)
    assert (g.box, g.cls, g.obj) == pytest.approx((0.05, 0.5, 1.0))
    g = scaled_loss_gains(LossGains(), nl=3, nc=20, imgsz=320)
    assert (g.box, g.cls, g.obj) == pytest.approx((0.05, 0.125, 0.25))
