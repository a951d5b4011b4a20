"""Progress bars of the long steps (calibration, bench, export) go to stderr, and can be turned off."""

from __future__ import annotations

import re

import pytest
import torch

from sparseyolo.utils.timing import time_round_robin
from sparseyolo.prune.calibrated import calibrated_prune
from tests.test_prune_calibrated import _Tiny


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8) for _ in range(2)]


@pytest.mark.parametrize("progress", [True, False])
def test_calibration_bar_counts_layers(progress, capsys):
    calibrated_prune(_Tiny().eval(), _batches(), n=2, m=4, progress=progress)
    err = capsys.readouterr().err
    # a bar line, not any mention (a stale logging handler of an earlier test may print a traceback to stderr)
    bar = re.search(r"calibrate: +\d+%", err)
    if progress:
        assert "calibrate: 100%" in err and "3/3" in err  # a, b and head; the 3-channel stem is skipped
    else:
        assert bar is None


@pytest.mark.parametrize("progress", [True, False])
def test_bench_bar_counts_rounds(progress, capsys):
    times = time_round_robin({"id": (lambda t: t + 1, torch.zeros(4))}, reps=5, warmup=1, progress=progress)
    assert set(times) == {"id"} and times["id"] >= 0
    err = capsys.readouterr().err
    assert ("bench: 100%" in err and "5/5" in err) if progress else re.search(r"bench: +\d+%", err) is None


def test_export_bar(tmp_path, capsys):
    pytest.importorskip("onnx", reason="export needs onnx: pip install onnx onnxruntime")
    from sparseyolo.demo import packaged_weights
    from sparseyolo.export import run_export

    run_export(packaged_weights(), imgsz=64, out=tmp_path / "m.onnx", check=False, progress=True)
    err = capsys.readouterr().err
    assert "export: 100%" in err and "3/3" in err  # load, export onnx, check zeros
