"""Reference NMS (YOLOv5 semantics) on small hand-built inputs whose answers are known."""

from __future__ import annotations

import pytest
import torch

from sparseyolo.utils.nms import MAX_WH, non_max_suppression
from tests.conftest import cpu_and_cuda


def _row(cx: float, cy: float, w: float, h: float, obj: float, cls: list[float]) -> list[float]:
    return [cx, cy, w, h, obj, *cls]


def _pred(rows: list[list[float]], device: str = "cpu") -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.float32, device=device)


@pytest.mark.parametrize("device", cpu_and_cuda())
class TestReferenceNMS:
    def test_overlapping_same_class_suppressed(self, device: str) -> None:
        p = _pred(
            [
                _row(50, 50, 20, 20, 0.9, [0.9, 0.1]),  # conf 0.81
                _row(51, 51, 20, 20, 0.8, [0.9, 0.1]),  # conf 0.72, IoU ~0.82 with the first -> suppressed
                _row(150, 150, 20, 20, 0.7, [0.2, 0.9]),  # conf 0.63, far away
            ],
            device,
        )
        (out,) = non_max_suppression(p, conf_thres=0.25, iou_thres=0.45)
        assert out.shape == (2, 6) and out.device.type == device
        torch.testing.assert_close(
            out.cpu(), torch.tensor([[40.0, 40, 60, 60, 0.81, 0], [140, 140, 160, 160, 0.63, 1]])
        )

    def test_xywh_to_xyxy_and_conf_is_obj_times_cls(self, device: str) -> None:
        (out,) = non_max_suppression(_pred([_row(10, 20, 4, 8, 0.5, [0.0, 0.0, 0.8])], device), conf_thres=0.25)
        torch.testing.assert_close(out.cpu(), torch.tensor([[8.0, 16, 12, 24, 0.4, 2]]))

    def test_objectness_prefilter_is_strict(self, device: str) -> None:
        # obj exactly at the threshold is dropped (YOLOv5 uses '>'), even with a perfect class score
        p = _pred([_row(10, 10, 4, 4, 0.25, [1.0]), _row(30, 30, 4, 4, 0.26, [1.0])], device)
        (out,) = non_max_suppression(p, conf_thres=0.25)
        assert out[:, :4].cpu().tolist() == [[28.0, 28, 32, 32]]

    def test_conf_threshold_applies_to_product(self, device: str) -> None:
        # obj passes, obj * cls does not
        (out,) = non_max_suppression(_pred([_row(10, 10, 4, 4, 0.5, [0.4, 0.3])], device), conf_thres=0.25)
        assert out.shape == (0, 6)

    def test_different_classes_do_not_suppress(self, device: str) -> None:
        p = _pred([_row(50, 50, 20, 20, 0.9, [0.9, 0.0]), _row(50, 50, 20, 20, 0.9, [0.0, 0.8])], device)
        (out,) = non_max_suppression(p)
        assert out[:, 5].cpu().tolist() == [0.0, 1.0]
        (out,) = non_max_suppression(p, agnostic=True)
        assert out[:, 5].cpu().tolist() == [0.0]

    def test_multi_label(self, device: str) -> None:
        p = _pred([_row(50, 50, 20, 20, 1.0, [0.9, 0.6, 0.1])], device)
        (single,) = non_max_suppression(p, conf_thres=0.25)
        (multi,) = non_max_suppression(p, conf_thres=0.25, multi_label=True)
        torch.testing.assert_close(single[:, 4:].cpu(), torch.tensor([[0.9, 0.0]]))
        # one row per class above the threshold, same box, sorted by conf
        torch.testing.assert_close(multi[:, 4:].cpu(), torch.tensor([[0.9, 0.0], [0.6, 1.0]]))
        assert torch.equal(multi[0, :4], multi[1, :4])

    def test_class_filter(self, device: str) -> None:
        p = _pred(
            [
                _row(10, 10, 4, 4, 0.9, [0.9, 0.0, 0.0]),
                _row(30, 30, 4, 4, 0.9, [0.0, 0.9, 0.0]),
                _row(50, 50, 4, 4, 0.9, [0.0, 0.0, 0.9]),
            ],
            device,
        )
        (out,) = non_max_suppression(p, classes=[2, 0])
        assert sorted(out[:, 5].cpu().tolist()) == [0.0, 2.0]
        (out,) = non_max_suppression(p, classes=[1], multi_label=True)
        assert out[:, 5].cpu().tolist() == [1.0]

    def test_max_det_keeps_best(self, device: str) -> None:
        rows = [_row(20 * i + 10, 10, 4, 4, 0.3 + 0.05 * i, [1.0]) for i in range(10)]
        (out,) = non_max_suppression(_pred(rows, device), max_det=3)
        assert out[:, 4].cpu().tolist() == pytest.approx([0.75, 0.7, 0.65])

    def test_max_nms_truncates_candidates(self, device: str) -> None:
        rows = [_row(20 * i + 10, 10, 4, 4, 0.3 + 0.05 * i, [1.0]) for i in range(10)]
        (out,) = non_max_suppression(_pred(rows, device), max_nms=2)
        assert out[:, 4].cpu().tolist() == pytest.approx([0.75, 0.7])

    def test_empty_inputs(self, device: str) -> None:
        empty = torch.zeros(2, 0, 85, device=device)
        assert [o.shape for o in non_max_suppression(empty)] == [(0, 6), (0, 6)]
        low = torch.rand(3, 50, 85, device=device)
        low[..., 4] = 0.1
        outs = non_max_suppression(low, conf_thres=0.25)
        assert len(outs) == 3 and all(o.shape == (0, 6) and o.device.type == device for o in outs)

    def test_batch_is_per_image(self, device: str) -> None:
        a = _row(50, 50, 20, 20, 0.9, [0.9])
        b = _row(150, 150, 20, 20, 0.8, [0.9])
        p = torch.tensor([[a, b], [b, b]], device=device)
        out = non_max_suppression(p)
        assert [len(o) for o in out] == [2, 1]

    def test_class_offset_separates_far_boxes(self, device: str) -> None:
        # boxes of class 0 and 1 at opposite ends of a max-size image still never interact
        p = _pred(
            [_row(MAX_WH - 10, 10, 20, 20, 0.9, [0.9, 0.0]), _row(MAX_WH - 10, 10, 20, 20, 0.9, [0.0, 0.8])], device
        )
        assert len(non_max_suppression(p)[0]) == 2

    def test_labels_are_added(self, device: str) -> None:
        p = _pred([_row(10, 10, 4, 4, 0.1, [0.9, 0.0])], device)
        labels = [torch.tensor([[1.0, 100, 100, 10, 10]], device=device)]
        (out,) = non_max_suppression(p, labels=labels)
        assert out.cpu().tolist() == [[95.0, 95, 105, 105, 1.0, 1.0]]

    def test_accepts_model_output_tuple(self, device: str) -> None:
        p = _pred([_row(10, 10, 4, 4, 0.9, [0.9])], device)
        assert torch.equal(non_max_suppression((p, []))[0], non_max_suppression(p)[0])


@pytest.mark.parametrize(("kw", "name"), [({"conf_thres": 1.5}, "conf_thres"), ({"iou_thres": -0.1}, "iou_thres")])
def test_thresholds_validated(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be in \\[0, 1\\]"):
        non_max_suppression(torch.zeros(1, 1, 6), **kw)


def test_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"Tensor\[B, N, 5 \+ nc\]"):
        non_max_suppression(torch.zeros(10, 85))
