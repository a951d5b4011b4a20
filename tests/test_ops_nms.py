"""sparseyolo::nms and sparseyolo::yolo_nms against pure-torch + torchvision references, on CPU and CUDA.

Exactness: on float32 inputs the fused op must return the reference's rows bit for bit (boxes, scores,
classes, order). Ties: the op breaks equal scores by ascending ``anchor * nc + class`` (``nms``: box
index); torchvision's internal sort is not stable, so where the reference's tie order is unspecified the
comparison falls back to torchvision's own test rule (same scores, row for row).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseyolo import ops
from tests.conftest import cpu_and_cuda

MAX_WH = 7680  # the reference's per-class box offset


# --------------------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------------------


def _reference_yolo_nms(
    pred: torch.Tensor,
    conf_thres: float,
    iou_thres: float,
    classes=None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """YOLOv5's non_max_suppression in plain torch + torchvision.ops.nms, on CPU, float32."""
    pred = pred.detach().float().cpu()
    nc = pred.shape[2] - 5
    multi_label = multi_label and nc > 1
    out = []
    for x in pred:
        x = x[x[:, 4] > conf_thres]
        conf_all = x[:, 5:] * x[:, 4:5]
        box = torch.stack(
            [x[:, 0] - x[:, 2] / 2, x[:, 1] - x[:, 3] / 2, x[:, 0] + x[:, 2] / 2, x[:, 1] + x[:, 3] / 2], 1
        )
        if multi_label:
            i, j = (conf_all > conf_thres).nonzero(as_tuple=False).T
            det = torch.cat([box[i], conf_all[i, j, None], j[:, None].float()], 1)
        else:
            conf, j = conf_all.max(1, keepdim=True) if len(x) else (conf_all[:, :1], conf_all[:, :1].long())
            det = torch.cat([box, conf, j.float()], 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(list(classes), dtype=torch.float32)).any(1)]
        det = det[det[:, 4].argsort(descending=True, stable=True)[:max_nms]]
        offset = det[:, 5:6] * (0 if agnostic else MAX_WH)
        keep = torchvision.ops.nms(det[:, :4] + offset, det[:, 4], iou_thres)[:max_det]
        out.append(det[keep])
    return out


def _reference_greedy(det: torch.Tensor, iou_thres: float, agnostic: bool) -> torch.Tensor:
    """Greedy NMS over rows already in the op's order (stable), for exact tie tests: Python loops."""
    offset = det[:, 5:6] * (0 if agnostic else MAX_WH)
    boxes = (det[:, :4] + offset).tolist()
    kept: list[int] = []
    for i, b in enumerate(boxes):
        ok = True
        for k in kept:
            a = boxes[k]
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = w * h
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > iou_thres:
                ok = False
                break
        if ok:
            kept.append(i)
    return det[kept]


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor], tie_tolerant: bool = False) -> None:
    assert len(got) == len(want)
    for b, (g, w) in enumerate(zip(got, want)):
        g = g.float().cpu()
        assert g.shape == w.shape, f"image {b}: {g.shape[0]} detections, reference {w.shape[0]}"
        if torch.equal(g, w):
            continue
        assert tie_tolerant, f"image {b}: rows differ:\n{g}\n{w}"
        # torchvision's rule for ties: where kept rows differ, their scores must match.
        assert torch.equal(g[:, 4], w[:, 4]), f"image {b}: scores differ"


def _yolo_pred(
    b: int, n: int, nc: int, seed: int, device: str = "cpu", dtype: torch.dtype = torch.float32, img: float = 640.0
) -> torch.Tensor:
    """YOLO-like raw output: most objectness tiny, a few high; boxes clustered so that NMS has work."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(b, max(1, n // 20), 2, generator=g) * img
    pick = torch.randint(0, centers.shape[1], (b, n), generator=g)
    xy = torch.gather(centers, 1, pick[..., None].expand(b, n, 2)) + torch.randn(b, n, 2, generator=g) * 8
    wh = 10 + torch.rand(b, n, 2, generator=g) * 120
    obj = torch.rand(b, n, 1, generator=g) ** 6
    cls = torch.rand(b, n, nc, generator=g) ** 3
    return torch.cat([xy, wh, obj, cls], 2).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------------
# yolo_nms
# --------------------------------------------------------------------------------------------------------


class TestYoloNms:
    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("b,n,nc", [(1, 13, 1), (2, 257, 3), (3, 1000, 80)])
    @pytest.mark.parametrize("multi_label", [False, True])
    @pytest.mark.parametrize("agnostic", [False, True])
    @pytest.mark.parametrize("conf,iou", [(0.001, 0.6), (0.25, 0.45), (0.05, 0.3)])
    def test_matches_reference(self, device, b, n, nc, multi_label, agnostic, conf, iou):
        pred = _yolo_pred(b, n, nc, seed=n + nc, device=device)
        got = ops.yolo_nms(pred, conf, iou, agnostic=agnostic, multi_label=multi_label)
        _assert_same(got, _reference_yolo_nms(pred, conf, iou, agnostic=agnostic, multi_label=multi_label))
        assert all(g.device.type == device and g.dtype == torch.float32 for g in got)

    @pytest.mark.parametrize("multi_label", [False, True])
    def test_matches_sparseyolo_utils_nms(self, multi_label):
        nms_mod = pytest.importorskip("sparseyolo.utils.nms")
        pred = _yolo_pred(2, 2000, 80, seed=5)
        for conf in (0.001, 0.25):
            want = [w.float() for w in nms_mod.non_max_suppression(pred, conf, 0.6, multi_label=multi_label)]
            _assert_same(ops.yolo_nms(pred, conf, 0.6, multi_label=multi_label), want)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("multi_label", [False, True])
    def test_class_filter(self, device, multi_label):
        pred = _yolo_pred(2, 500, 6, seed=3, device=device)
        for classes in ([0, 2], [5], [1, 99, -1], []):
            got = ops.yolo_nms(pred, 0.01, 0.5, classes=classes, multi_label=multi_label)
            _assert_same(got, _reference_yolo_nms(pred, 0.01, 0.5, classes=classes, multi_label=multi_label))
        cls_t = torch.tensor([2, 0], device=device, dtype=torch.int32)
        _assert_same(
            ops.yolo_nms(pred, 0.01, 0.5, classes=cls_t, multi_label=multi_label),
            _reference_yolo_nms(pred, 0.01, 0.5, classes=[0, 2], multi_label=multi_label),
        )

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("max_det,max_nms", [(1, 30000), (5, 30000), (300, 17), (3, 1), (50, 400)])
    def test_caps(self, device, max_det, max_nms):
        pred = _yolo_pred(3, 800, 10, seed=max_det + max_nms, device=device)
        for ml in (False, True):
            got = ops.yolo_nms(pred, 0.001, 0.5, multi_label=ml, max_det=max_det, max_nms=max_nms)
            _assert_same(got, _reference_yolo_nms(pred, 0.001, 0.5, multi_label=ml, max_det=max_det, max_nms=max_nms))
            assert all(len(g) <= min(max_det, max_nms) for g in got)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_padded_form(self, device):
        pred = _yolo_pred(4, 600, 5, seed=9, device=device)
        dets, counts = ops.yolo_nms_padded(pred, 0.01, 0.5, multi_label=True, max_det=40)
        assert dets.shape == (4, 40, 6) and counts.shape == (4,) and counts.dtype == torch.int64
        assert dets.device.type == device and counts.device.type == device
        want = _reference_yolo_nms(pred, 0.01, 0.5, multi_label=True, max_det=40)
        for b in range(4):
            c = int(counts[b])
            assert c == len(want[b])
            assert torch.equal(dets[b, :c].cpu(), want[b]) and not dets[b, c:].any(), "rows past counts are zero"
        # W never exceeds the candidates possible: N * labels per anchor.
        assert ops.yolo_nms_padded(pred[:, :7], 0.01, 0.5, max_det=300)[0].shape == (4, 7, 6)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_empty_inputs(self, device):
        for shape in [(0, 100, 85), (2, 0, 85)]:
            pred = torch.rand(shape, device=device)
            dets, counts = ops.yolo_nms_padded(pred, 0.25, 0.45)
            assert dets.shape[0] == shape[0] and dets.shape[2] == 6 and counts.shape == (shape[0],)
            assert (counts == 0).all()
            assert all(len(d) == 0 and d.shape[1] == 6 for d in ops.yolo_nms(pred))

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("multi_label", [False, True])
    def test_all_below_threshold(self, device, multi_label):
        pred = _yolo_pred(3, 400, 8, seed=1, device=device)
        pred[..., 4] = 0.2  # obj passes 0.1 but obj * cls <= 0.2 * 0.49 < 0.1
        pred[..., 5:] = pred[..., 5:].clamp(max=0.49)
        assert all(len(d) == 0 for d in ops.yolo_nms(pred, 0.1, 0.5, multi_label=multi_label))
        pred[..., 4] = 0.1  # obj == conf_thres fails the strict prefilter
        pred[..., 5:] = 1.0
        assert all(len(d) == 0 for d in ops.yolo_nms(pred, 0.1, 0.5, multi_label=multi_label))

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_at_threshold(self, device):
        # Scores exactly at float32(conf_thres) fail (strict >), the next float up passes; IoU exactly at a
        # threshold does not suppress.
        t = torch.tensor(0.3, dtype=torch.float32)
        up = torch.nextafter(t, torch.tensor(1.0))
        pred = torch.zeros(1, 4, 6, device=device)
        pred[0, :, :4] = torch.tensor([[10, 10, 10, 10], [100, 100, 10, 10], [200, 200, 10, 10], [15, 10, 10, 10.0]])
        pred[0, :, 4] = 1.0
        pred[0, :, 5] = torch.tensor([t.item(), up.item(), 0.9, 0.8])
        got = ops.yolo_nms(pred, 0.3, 1 / 3)[0].cpu()
        # Box 3 overlaps box 0 with IoU exactly 50/150 = 1/3: not above the threshold, kept; box 0 fails conf.
        want = _reference_yolo_nms(pred, 0.3, 1 / 3)[0]
        _assert_same([got], [want])
        assert got[:, 4].tolist() == pytest.approx([0.9, 0.8, up.item()])

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_zero_area_and_identical_boxes(self, device):
        pred = torch.zeros(1, 6, 7, device=device)
        pred[0, :, :4] = torch.tensor(
            [[50, 50, 0, 0], [50, 50, 0, 0], [80, 80, 20, 20], [80, 80, 20, 20], [80, 80, 20, 20], [80, 80, 0, 10.0]]
        )
        pred[0, :, 4] = 0.9
        pred[0, :, 5] = torch.tensor([0.9, 0.8, 0.7, 0.7, 0.6, 0.5])
        pred[0, :, 6] = 0.2
        for ml in (False, True):
            got = ops.yolo_nms(pred, 0.1, 0.5, multi_label=ml)[0].cpu()
            _assert_same([got], _reference_yolo_nms(pred, 0.1, 0.5, multi_label=ml))
            # Zero-area boxes never suppress (IoU 0/0), identical boxes keep the first (equal scores: lower
            # anchor), the zero-width box inside box 2 has IoU 0.
            cls0 = got[got[:, 5] == 0]
            assert cls0[:, 4].tolist() == pytest.approx([0.81, 0.72, 0.63, 0.45])

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_ties_deterministic(self, device):
        # Many equal scores: the op's order is (score desc, anchor * nc + class asc); compare exactly with a
        # stable greedy, and with torchvision under its tie rule.
        g = torch.Generator().manual_seed(0)
        pred = _yolo_pred(2, 300, 4, seed=2)
        pred[..., 4] = 1.0
        pred[..., 5:] = torch.randint(1, 5, (2, 300, 4), generator=g).float() / 4
        pred = pred.to(device)
        for ml, ag in [(False, False), (True, False), (True, True)]:
            got = ops.yolo_nms(pred, 0.1, 0.4, multi_label=ml, agnostic=ag, max_det=1000)
            ref = _reference_yolo_nms(pred, 0.1, 0.4, multi_label=ml, agnostic=ag, max_det=1000)
            _assert_same(got, ref, tie_tolerant=True)
            for b in range(2):
                cand = _reference_yolo_nms(pred[b : b + 1], 0.1, 1.0, multi_label=ml, agnostic=True, max_det=10**6)[0]
                _assert_same([got[b]], [_reference_greedy(cand, 0.4, ag)])

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_nan_inf_scores(self, device):
        nan, inf = float("nan"), float("inf")
        pred = _yolo_pred(1, 8, 3, seed=4)
        pred[0, :, 0] = torch.arange(8) * 200.0  # disjoint boxes
        pred[0, :, 4] = torch.tensor([nan, 0.9, inf, 0.9, 0.9, inf, 0.9, 0.9])
        pred[0, :, 5:] = 0.5
        pred[0, 3, 6] = nan  # NaN class score: drops that pair, and the anchor in single-label mode
        pred[0, 4, 5] = inf  # inf class score: conf inf
        pred[0, 5, 5:] = torch.tensor([0.0, 0.5, 0.5])  # inf * 0 = NaN
        pred = pred.to(device)
        for ml in (False, True):
            got = ops.yolo_nms(pred, 0.25, 0.5, multi_label=ml)[0].cpu()
            want = _reference_yolo_nms(pred, 0.25, 0.5, multi_label=ml)[0]
            assert got.shape == want.shape
            assert torch.equal(got[:, 4:], want[:, 4:]) and torch.equal(got[:, :4], want[:, :4])
            assert not got[:, 4].isnan().any(), "NaN never passes the threshold"
            assert (got[:, 4] == inf).sum() >= 2, "+inf passes and ranks first"
            anchors = (got[:, 0] + got[:, 2]) / 2 / 200
            assert 0 not in anchors.round().tolist(), "NaN objectness drops the anchor"
            assert (3 in anchors.round().tolist()) == ml

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision(self, device, dtype):
        # Documented rule: 16-bit inputs behave as if upcast to float32, outputs rounded once.
        pred = _yolo_pred(2, 700, 20, seed=6, device=device, dtype=dtype)
        for ml in (False, True):
            got = ops.yolo_nms(pred, 0.01, 0.5, multi_label=ml)
            assert all(g.dtype == dtype for g in got)
            want = [w.to(dtype) for w in _reference_yolo_nms(pred.float(), 0.01, 0.5, multi_label=ml)]
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert torch.equal(g.cpu(), w)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_large_batch(self, device):
        pred = _yolo_pred(64, 1500, 80, seed=10, device=device)
        _assert_same(ops.yolo_nms(pred, 0.25, 0.45), _reference_yolo_nms(pred, 0.25, 0.45))

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_large_n(self, device):
        # 100k anchors x 4 classes, multi-label at a low threshold: more than max_nms candidates.
        pred = _yolo_pred(1, 100_000, 4, seed=11, device=device)
        pred[..., 4] = pred[..., 4].sqrt()
        got = ops.yolo_nms(pred, 0.001, 0.6, multi_label=True)
        _assert_same(got, _reference_yolo_nms(pred, 0.001, 0.6, multi_label=True))
        assert ((pred[0, :, 4:5] > 0.001) & (pred[0, :, 5:] * pred[0, :, 4:5] > 0.001)).sum() > 30000

    def test_real_model_outputs(self, shared):
        """Outputs of yolov5n on coco128 images: fused op == reference at val and detect settings."""
        np = pytest.importorskip("numpy")
        checkpoint = pytest.importorskip("sparseyolo.checkpoint")
        augment = pytest.importorskip("sparseyolo.data.augment")
        from PIL import Image

        model = checkpoint.load_model(shared / "weights" / "yolov5n.pt")
        files = sorted((shared / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:4]
        ims = []
        for f in files:
            im = np.asarray(Image.open(f).convert("RGB"))[..., ::-1]  # BGR like cv2
            im = augment.letterbox(im, 640, auto=False)[0]
            ims.append(torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))).float() / 255)
        with torch.no_grad():
            pred = model(torch.stack(ims))
        pred = pred[0] if isinstance(pred, (list, tuple)) else pred
        assert pred.shape[1:] == (25200, 85)
        for conf, iou, ml in [(0.001, 0.6, True), (0.25, 0.45, False)]:
            _assert_same(ops.yolo_nms(pred, conf, iou, multi_label=ml), _reference_yolo_nms(pred, conf, iou, multi_label=ml))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        n=st.integers(1, 120),
        nc=st.integers(1, 6),
        seed=st.integers(0, 2**31 - 1),
        conf=st.floats(0.0, 0.6),
        iou=st.floats(0.0, 1.0),
        multi_label=st.booleans(),
        agnostic=st.booleans(),
        max_det=st.integers(1, 50),
        max_nms=st.integers(1, 200),
    )
    def test_properties(self, n, nc, seed, conf, iou, multi_label, agnostic, max_det, max_nms):
        pred = _yolo_pred(1, n, nc, seed)
        pred[..., :2] /= 8  # crowd the boxes so that suppression happens
        dets = ops.yolo_nms(pred, conf, iou, agnostic=agnostic, multi_label=multi_label, max_det=max_det,
                            max_nms=max_nms)[0]
        _assert_same([dets], _reference_yolo_nms(pred, conf, iou, agnostic=agnostic, multi_label=multi_label,
                                                 max_det=max_det, max_nms=max_nms))
        assert len(dets) <= max_det and (dets[:-1, 4] >= dets[1:, 4]).all()
        # IoU as the NMS sees it: per-class offset boxes (unless agnostic), float32, compared in double.
        def nms_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            off_a = a[:, 5:6] * (0 if agnostic else MAX_WH)
            off_b = b[:, 5:6] * (0 if agnostic else MAX_WH)
            return ops.box_iou(a[:, :4] + off_a, b[:, :4] + off_b).double()

        # 1. no two kept boxes of one class (any class if agnostic) overlap above iou.
        same = torch.ones(len(dets), len(dets), dtype=torch.bool) if agnostic else dets[:, 5:6] == dets[:, 5:6].T
        assert not ((nms_iou(dets, dets) > iou) & same).triu(1).any()
        # 2. every candidate that passed the thresholds and the max_nms cap is kept, or overlaps a kept
        #    higher-ranked box of its class, or comes after the max_det-th kept box.
        cand = _reference_yolo_nms(pred, conf, 1.0, agnostic=True, multi_label=multi_label, max_det=10**9,
                                   max_nms=max_nms)[0]
        kept_rows = {tuple(r) for r in dets.tolist()}
        last_rank = None
        for rank, row in enumerate(cand.tolist()):
            if tuple(row) in kept_rows:
                last_rank = rank
                continue
            if len(dets) == max_det and last_rank is not None and rank > last_rank:
                continue  # capped by max_det
            cls_ok = torch.ones(len(dets), dtype=torch.bool) if agnostic else dets[:, 5] == row[5]
            higher = dets[:, 4] >= row[4]
            iou_k = nms_iou(dets, torch.tensor([row]))[:, 0] > iou
            assert (cls_ok & higher & iou_k).any(), f"candidate {row} dropped without a suppressor"

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_opcheck(self, device):
        pred = _yolo_pred(2, 50, 3, seed=12, device=device)
        classes = torch.tensor([0, 2], device=device)
        torch.library.opcheck(torch.ops.sparseyolo.yolo_nms.default, (pred, 0.01, 0.5, None, False, True, 20, 100))
        torch.library.opcheck(torch.ops.sparseyolo.yolo_nms.default, (pred, 0.1, 0.5, classes, True, False, 300, 30000))

    def test_torch_compile(self):
        pred = _yolo_pred(2, 64, 3, seed=13)
        fn = torch.compile(lambda p: ops.yolo_nms_padded(p, 0.01, 0.5, multi_label=True), fullgraph=True, backend="eager")
        got, want = fn(pred), ops.yolo_nms_padded(pred, 0.01, 0.5, multi_label=True)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(pred=torch.zeros(100, 85)), r"pred should be a \[B, N, 5 \+ nc\] tensor"),
            (dict(pred=torch.zeros(1, 100, 5)), r"pred needs at least one class \(nc >= 1\)"),
            (dict(pred=torch.zeros(1, 10, 85, dtype=torch.float64)), "float32, float16 or bfloat16"),
            (dict(conf_thres=1.5), r"conf_thres should be in \[0, 1\]"),
            (dict(conf_thres=-0.1), r"conf_thres should be in \[0, 1\]"),
            (dict(conf_thres=float("nan")), r"conf_thres should be in \[0, 1\]"),
            (dict(iou_thres=2.0), r"iou_thres should be in \[0, 1\]"),
            (dict(max_det=0), "max_det should be >= 1"),
            (dict(max_nms=0), "max_nms should be >= 1"),
            (dict(classes=torch.tensor([[1]])), "classes should be a 1D tensor"),
            (dict(classes=torch.tensor([1.0])), "classes should be int64 or int32"),
        ],
    )
    def test_bad_input_errors(self, kwargs, match):
        args = dict(pred=torch.rand(1, 10, 85), conf_thres=0.25, iou_thres=0.45)
        args.update(kwargs)
        with pytest.raises(RuntimeError, match="sparseyolo::yolo_nms: .*" + match):
            ops.yolo_nms(**args)


# --------------------------------------------------------------------------------------------------------
# nms / batched_nms
# --------------------------------------------------------------------------------------------------------


def _random_boxes(n: int, seed: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 80
    return torch.cat([xy, xy + wh], 1).to(device)


class TestNms:
    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("n", [1, 13, 65, 1000, 5000])
    @pytest.mark.parametrize("iou", [0.0, 0.3, 0.5, 0.8, 1.0])
    def test_matches_torchvision(self, device, n, iou):
        boxes, scores = _random_boxes(n, n, device), torch.rand(n, generator=torch.Generator().manual_seed(n)).to(device)
        got = ops.nms(boxes, scores, iou)
        assert got.dtype == torch.int64 and got.device.type == device
        assert torch.equal(got.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), iou))

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_ties_lower_index_first(self, device):
        boxes = _random_boxes(400, 1, device)
        scores = torch.randint(0, 6, (400,), generator=torch.Generator().manual_seed(1)).float().to(device)
        got = ops.nms(boxes, scores, 0.5).cpu()
        order = scores.cpu().argsort(descending=True, stable=True)
        det = torch.cat([boxes.cpu()[order], scores.cpu()[order, None], torch.zeros(400, 1)], 1)
        want = _reference_greedy(det, 0.5, agnostic=True)
        assert torch.equal(boxes.cpu()[got], want[:, :4])
        tv = torchvision.ops.nms(boxes.cpu(), scores.cpu(), 0.5)
        assert torch.equal(scores.cpu()[got], scores.cpu()[tv]), "torchvision's rule: same scores"

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_nan_and_empty(self, device):
        boxes = _random_boxes(5, 2, device)
        boxes[1] = boxes[0]
        scores = torch.tensor([0.5, float("nan"), 0.9, float("inf"), -1.0], device=device)
        got = ops.nms(boxes, scores, 0.5).cpu()
        assert got[0] == 1 and got[1] == 3, "NaN ranks above +inf (torch.sort's order)"
        assert 0 not in got.tolist(), "box 0 is identical to the NaN-scored box 1, which suppresses it"
        assert torch.equal(got, torchvision.ops.nms(boxes.cpu(), scores.cpu(), 0.5))
        assert ops.nms(boxes[:0], scores[:0], 0.5).shape == (0,)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision(self, device, dtype):
        boxes, scores = _random_boxes(300, 3, device).to(dtype), torch.rand(300).to(device, dtype)
        want = torchvision.ops.nms(boxes.float().cpu(), scores.float().cpu(), 0.5)
        got = ops.nms(boxes, scores, 0.5).cpu()
        assert torch.equal(scores.cpu()[got], scores.cpu()[want])

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_batched_matches_torchvision(self, device):
        boxes, scores = _random_boxes(600, 4, device), torch.rand(600).to(device)
        idxs = torch.randint(0, 7, (600,)).to(device)
        got = ops.batched_nms(boxes, scores, idxs, 0.5).cpu()
        want = torchvision.ops.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5)
        assert torch.equal(got, want)
        assert ops.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).shape == (0,)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_opcheck(self, device):
        boxes, scores = _random_boxes(30, 5, device), torch.rand(30).to(device)
        torch.library.opcheck(torch.ops.sparseyolo.nms.default, (boxes, scores, 0.5))

    @pytest.mark.parametrize(
        "boxes,scores,match",
        [
            (torch.zeros(3, 5), torch.zeros(3), r"boxes should be a \[N, 4\] tensor"),
            (torch.zeros(3, 4), torch.zeros(3, 1), r"scores should be a \[N\] tensor"),
            (torch.zeros(3, 4), torch.zeros(2), "the same N"),
            (torch.zeros(3, 4), torch.zeros(3, dtype=torch.float16), "the same dtype"),
            (torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), "float32, float16 or bfloat16"),
        ],
    )
    def test_bad_input_errors(self, boxes, scores, match):
        with pytest.raises(RuntimeError, match="sparseyolo::nms: .*" + match):
            ops.nms(boxes, scores, 0.5)


def test_reference_is_yolov5_semantics():
    """The test reference itself agrees with sparseyolo.utils.nms where both are defined."""
    nms_mod = pytest.importorskip("sparseyolo.utils.nms")
    pred = _yolo_pred(2, 500, 5, seed=14)
    for ml in (False, True):
        want = nms_mod.non_max_suppression(pred, 0.01, 0.5, multi_label=ml, classes=[1, 3], agnostic=True, max_det=20)
        _assert_same(_reference_yolo_nms(pred, 0.01, 0.5, classes=[1, 3], agnostic=True, multi_label=ml, max_det=20), want)
    assert math.isclose(MAX_WH, nms_mod.MAX_WH)
