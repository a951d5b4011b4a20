"""benchmarks/bench_e2e_cpu.py --processes: merging several processes' measurements (made-up numbers, no model runs)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(dense_ms: float, openvino_ms: float, sparse_ms: float) -> dict:
    ms = {"pytorch fp32 compiled": dense_ms, "openvino f32": openvino_ms, "onnxruntime fp32": math.nan,
          "tiles 75% fp32 cpu_block compiled": sparse_ms}
    best = min(v for k, v in ms.items() if k != "tiles 75% fp32 cpu_block compiled" and not math.isnan(v))
    return {"rows": [{"model": "yolov5n", "weights": "w", "batch": 1, "notes": dict.fromkeys(ms, ""), "ms": ms,
                      "fastest_dense": "", "fastest_dense_ms": best}]}


def test_merge_takes_medians_of_per_process_ratios():
    sys.path.insert(0, str(ROOT))
    pytest.importorskip("sparseyolo")
    from benchmarks.bench_e2e_cpu import merge_processes

    # the PyTorch-compiled models move together from process to process, OpenVINO stays
    runs = [_run(27.0, 28.0, 24.0), _run(33.0, 27.0, 29.0), _run(30.0, 27.5, 26.0)]
    (row,) = merge_processes(runs)
    assert row["ms"]["tiles 75% fp32 cpu_block compiled"] == 26.0
    lo, mid, hi = row["ratio_range"]["tiles 75% fp32 cpu_block compiled"]
    assert (lo, mid, hi) == pytest.approx((27.0 / 29.0, 27.5 / 26.0, 27.0 / 24.0))
    # here the median of the ratios happens to equal the ratio of the medians; see the skewed case below
    assert row["fastest_dense"] == "openvino f32" and row["fastest_dense_ms"] == 27.5
    assert math.isnan(row["ms"]["onnxruntime fp32"]) and all(math.isnan(v) for v in row["ratio_range"]["onnxruntime fp32"])
    assert len(row["per_process"]) == 3
    # each process's own ratio (28/20, 27/30, 22/29: median 0.90), not the ratio of the medians (27/29 = 0.93)
    skewed = merge_processes([_run(40.0, 28.0, 20.0), _run(40.0, 27.0, 30.0), _run(40.0, 22.0, 29.0)])[0]
    assert skewed["ratio_range"]["tiles 75% fp32 cpu_block compiled"][1] == pytest.approx(27.0 / 30.0)
    assert skewed["fastest_dense_ms"] / skewed["ms"]["tiles 75% fp32 cpu_block compiled"] == pytest.approx(27.0 / 29.0)


def test_processes_must_be_positive(capsys):
    sys.path.insert(0, str(ROOT))
    pytest.importorskip("sparseyolo")
    from benchmarks.bench_e2e_cpu import main

    with pytest.raises(SystemExit):
        main(["--processes", "0"])
    assert "--processes must be at least 1" in capsys.readouterr().err
