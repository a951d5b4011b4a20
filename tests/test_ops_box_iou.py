"""sparseyolo::box_iou against a pure-torch reference, on CPU and CUDA."""

from __future__ import annotations

import pytest
import torch

from sparseyolo import ops
from tests.conftest import cpu_and_cuda


def _reference_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Obviously-correct float64 IoU, with 0 where the union is 0."""
    a, b = a.double(), b.double()
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def _random_boxes(n: int, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 600
    wh = torch.rand(n, 2, generator=g) * 120
    return torch.cat([xy, xy + wh], 1).to(device=device, dtype=dtype)


class TestBoxIou:
    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("n,m", [(1, 1), (13, 33), (65, 7), (257, 129)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_matches_reference(self, device, n, m, dtype):
        a, b = _random_boxes(n, 0, dtype, device), _random_boxes(m, 1, dtype, device)
        out = ops.box_iou(a, b)
        assert out.shape == (n, m) and out.dtype == dtype and out.device.type == device
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(out.double().cpu(), _reference_box_iou(a, b).cpu(), rtol=tol, atol=tol)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision_error_within_2x_torch(self, device, dtype):
        a32, b32 = _random_boxes(77, 2, device=device), _random_boxes(45, 3, device=device)
        a, b = a32.to(dtype), b32.to(dtype)
        ref = _reference_box_iou(a, b).cpu()  # exact IoU of the rounded boxes
        ours = (ops.box_iou(a, b).double().cpu() - ref).abs().max()
        # PyTorch's own error: the same formula evaluated with torch ops in this dtype.
        from sparseyolo.utils.boxes import box_iou as torch_box_iou

        theirs = (torch_box_iou(a, b, eps=0).double().cpu().nan_to_num(0) - ref).abs().max()
        assert ours <= 2 * theirs + torch.finfo(dtype).eps

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_edge_cases(self, device):
        boxes = torch.tensor(
            [
                [0, 0, 10, 10],  # reference box
                [0, 0, 10, 10],  # identical -> 1
                [10, 0, 20, 10],  # touching edge -> 0
                [2, 2, 2, 8],  # zero width inside -> 0
                [3, 3, 3, 3],  # a point
                [100, 100, 110, 110],  # disjoint -> 0
            ],
            dtype=torch.float32,
            device=device,
        )
        out = ops.box_iou(boxes, boxes).cpu()
        assert out[0, 1] == 1 and out[0, 2] == 0 and out[0, 3] == 0 and out[0, 5] == 0
        assert out[4, 4] == 0, "two zero-area boxes have IoU 0, not NaN"
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), _reference_box_iou(boxes, boxes).cpu())

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_empty(self, device):
        a = torch.zeros(0, 4, device=device)
        b = _random_boxes(5, 0, device=device)
        assert ops.box_iou(a, b).shape == (0, 5)
        assert ops.box_iou(b, a).shape == (5, 0)

    def test_non_contiguous_input(self):
        a = _random_boxes(20, 4)
        wide = torch.zeros(20, 8)
        wide[:, ::2] = a
        torch.testing.assert_close(ops.box_iou(wide[:, ::2], a), ops.box_iou(a, a))

    @pytest.mark.parametrize(
        "a,b,match",
        [
            (torch.zeros(3, 5), torch.zeros(2, 4), r"boxes1 should be a \[N, 4\] tensor"),
            (torch.zeros(3, 4), torch.zeros(4), r"boxes2 should be a \[M, 4\] tensor"),
            (torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.float64), "same dtype"),
            (torch.zeros(3, 4, dtype=torch.int32), torch.zeros(2, 4, dtype=torch.int32), "float32, float64"),
        ],
    )
    def test_bad_input_errors(self, a, b, match):
        with pytest.raises(RuntimeError, match=match):
            ops.box_iou(a, b)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_opcheck(self, device):
        a, b = _random_boxes(9, 5, device=device), _random_boxes(4, 6, device=device)
        torch.library.opcheck(torch.ops.sparseyolo.box_iou.default, (a, b))

    def test_torch_compile(self):
        a, b = _random_boxes(11, 7), _random_boxes(6, 8)
        compiled = torch.compile(lambda x, y: ops.box_iou(x, y) * 2, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(a, b), ops.box_iou(a, b) * 2)
