"""The one-of-each helpers: BatchNorm folding, the masked-sparsity measure, run-folder naming."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from sparseyolo.prune import masked_sparsity, prune, sparsity_report
from sparseyolo.utils.run_dirs import increment_dir
from sparseyolo.utils.torch_utils import fold_bn


def _conv_bn(bias: bool, seed: int = 0) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(8, 13, 3, padding=1, bias=bias)
    bn = nn.BatchNorm2d(13)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.weight[:, ::2] = 0  # pruned weights
        if bias:
            conv.bias.copy_(torch.randn(13, generator=g))
        bn.weight.copy_(torch.rand(13, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(13, generator=g))
        bn.running_mean.copy_(torch.randn(13, generator=g))
        bn.running_var.copy_(torch.rand(13, generator=g) + 0.1)
    return conv, bn.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_fold_bn_matches_conv_then_bn_and_keeps_zeros(bias):
    conv, bn = _conv_bn(bias)
    conv, bn = conv.double(), bn.double()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    w, b = fold_bn(conv.weight, conv.bias, bn)
    ref = bn(conv(x))
    torch.testing.assert_close(nn.functional.conv2d(x, w, b, padding=1), ref)
    assert bool((w[conv.weight == 0] == 0).all()) and w.shape == conv.weight.shape


def test_fold_bn_without_bn_is_identity():
    conv, _ = _conv_bn(True)
    w, b = fold_bn(conv.weight, conv.bias, None)
    assert torch.equal(w, conv.weight) and torch.equal(b, conv.bias) and not w.requires_grad
    assert fold_bn(conv.weight, None, None)[1] is None


def test_fold_bn_is_yolov5s_numbers():
    """fuse_conv_and_bn (model.fuse()) uses it: YOLOv5's diag(s) @ W, bit for bit."""
    from sparseyolo.models import fuse_conv_and_bn

    conv, bn = _conv_bn(False, seed=3)
    fused = fuse_conv_and_bn(conv, bn)
    s = bn.weight.div(torch.sqrt(bn.eps + bn.running_var))
    w = torch.mm(torch.diag(s), conv.weight.view(13, -1)).view(conv.weight.shape)
    b = bn.bias - bn.weight.mul(bn.running_mean).div(torch.sqrt(bn.running_var + bn.eps))
    assert torch.equal(fused.weight, w.detach()) and torch.equal(fused.bias, b.detach())


def test_masked_sparsity_is_the_reports_figure():
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1))
    assert masked_sparsity(model) == 0.0
    prune(model, "l1", amount=0.3, include=["0", "1"])
    rep = sparsity_report(model)
    assert masked_sparsity(model) == pytest.approx(rep.masked_sparsity) and 0.29 < rep.masked_sparsity < 0.31


def test_increment_dir(tmp_path):
    base = tmp_path / "runs" / "exp"
    assert increment_dir(base) == base and base.is_dir()
    assert increment_dir(base) == tmp_path / "runs" / "exp2"
    assert increment_dir(base, exist_ok=True) == base
    assert increment_dir(base) == tmp_path / "runs" / "exp3"


def test_increment_dir_concurrent_runs_get_distinct_folders(tmp_path):
    got: list = []
    barrier = threading.Barrier(8)

    def run():
        barrier.wait()
        got.append(increment_dir(tmp_path / "exp"))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and all(p.is_dir() for p in got)
