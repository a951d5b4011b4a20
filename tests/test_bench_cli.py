"""`sparseyolo bench` and `sparseyolo sparsify` on a small pruned checkpoint (the packaged demo model)."""

from __future__ import annotations

import pytest
import torch

from sparseyolo import cli
from sparseyolo.bench import run_bench
from sparseyolo.checkpoint import load_model, save_checkpoint
from sparseyolo.demo import packaged_weights
from sparseyolo.prune import prune
from sparseyolo.utils.errors import ParameterError


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    model = load_model(packaged_weights(), fuse=False)
    prune(model, "nm", n=2, m=4)
    return save_checkpoint(model, tmp_path_factory.mktemp("bench") / "pruned24.pt")


def test_bench_rows_and_plots(pruned_ckpt, tmp_path):
    res = run_bench(str(pruned_ckpt), imgsz=64, batch=2, reps=2, onnx=False, out=tmp_path, compiled=False)
    names = [r.name for r in res.rows]
    assert names == ["pytorch fp32", "pytorch fp32 channels-last", "pytorch bf16 channels-last", "sparsify (sparse)",
                     "sparsify (auto)"]
    assert all(r.ms > 0 for r in res.rows)
    assert res.pruned_layers > 50 and abs(res.sparsity - 0.5) < 0.01
    assert res.dense_ms == min(r.ms for r in res.rows[:3]) and res.fastest_dense.name in names[:3]
    assert "returned" in res.rows[-1].note  # which model sparsify(auto) handed back
    assert sorted(p.name for p in res.plots) == ["bench_latency.png", "bench_layer_speedup.png"]
    assert all(p.stat().st_size > 10_000 for p in res.plots)
    table = res.table()
    assert "speedup = fastest dense runtime" in table and "batch 2, 64x64" in table


def test_bench_dense_checkpoint_has_no_sparse_rows(tmp_path):
    res = run_bench(str(packaged_weights()), imgsz=64, reps=1, onnx=False, plots=False, compiled=False, burst=2)
    assert [r.name for r in res.rows] == ["pytorch fp32", "pytorch fp32 channels-last", "pytorch bf16 channels-last"]
    assert res.pruned_layers == 0
    with pytest.raises(ParameterError, match="burst must be >= 1"):
        run_bench(str(packaged_weights()), burst=0)


def test_bench_runtime_rows_when_installed(pruned_ckpt):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    res = run_bench(str(pruned_ckpt), imgsz=64, reps=1, onnx=True, plots=False, compiled=False)
    rows = {r.name: r for r in res.rows}
    for name in ("onnxruntime fp32", "openvino", "openvino f32"):
        assert rows[name].ms > 0 and name in res.dense_rows
    assert "f32" in rows["openvino f32"].note.lower()


def test_bench_missing_runtime_is_a_row_that_says_so(pruned_ckpt, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    res = run_bench(str(pruned_ckpt), imgsz=64, reps=1, onnx=True, plots=False, compiled=False)
    row = next(r for r in res.rows if r.name == "openvino")
    assert row.ms != row.ms and "not installed" in row.note
    assert res.dense_ms == res.dense_ms  # the fastest of the runtimes that ran


def test_bench_bf16_sparse_variants(pruned_ckpt):
    res = run_bench(str(pruned_ckpt), imgsz=64, reps=1, onnx=False, plots=False, dtype=torch.bfloat16)
    rows = [r.name for r in res.rows]
    rows_by = {r.name: r for r in res.rows}
    assert res.dtype == "bfloat16" and "cpu_block" in rows_by["sparsify (sparse)"].note
    # compiled by default: the dense fp32 and bf16 models are dense rows, the compiled auto model a sparse one
    assert rows[3:5] == ["pytorch fp32 compiled", "pytorch bf16 compiled"] and rows[-1] == "sparsify (auto) compiled"
    assert {"pytorch fp32 compiled", "pytorch bf16 compiled"} <= set(res.dense_rows)
    assert res.rows[3].ms > 0 and res.rows[4].ms > 0 and res.rows[-1].ms > 0


def test_bench_compiles_the_named_backend(pruned_ckpt):
    res = run_bench(str(pruned_ckpt), imgsz=64, reps=1, onnx=False, plots=False, dtype=torch.bfloat16,
                    sparse_backend="cpu_block_tiles", compiled_variant="sparse")
    rows = {r.name: r for r in res.rows}
    assert "cpu_block_tiles" in rows["sparsify (sparse)"].note
    assert "sparsify (auto) compiled" not in rows and rows["sparsify (sparse) compiled"].ms > 0
    assert "cpu_block_tiles" in rows["sparsify (sparse) compiled"].note
    with pytest.raises(ParameterError, match="compiled_variant"):
        run_bench(str(pruned_ckpt), imgsz=64, reps=1, onnx=False, plots=False, compiled_variant="dense")


def test_bench_cli(pruned_ckpt, tmp_path, capsys):
    rc = cli.main(["bench", "--weights", str(pruned_ckpt), "--img", "64", "--reps", "1", "--no-onnx", "--no-compile",
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "sparsify (auto)" in out and "bench_latency.png" in out and "compiled" not in out
    assert cli.main(["bench", "--weights", str(pruned_ckpt), "--batch", "0"]) == 2
    if not torch.cuda.is_available():
        assert cli.main(["bench", "--weights", str(pruned_ckpt), "--device", "cuda", "--img", "64"]) == 2


def test_sparsify_cli_prints_the_report(pruned_ckpt, capsys):
    rc = cli.main(["sparsify", "--weights", str(pruned_ckpt), "--backend", "sparse", "--img", "64"])
    out = capsys.readouterr().out
    assert rc == 0 and "pruned convs sparse (backend=sparse" in out and "2:4" in out


def test_sparsify_cli_refuses_an_unpruned_checkpoint(capsys):
    assert cli.main(["sparsify", "--weights", str(packaged_weights()), "--img", "64"]) == 2
    assert "prune it first" in capsys.readouterr().err


def test_sparsify_cli_bf16_and_a_backend_name(pruned_ckpt, capsys):
    rc = cli.main(["sparsify", "--weights", str(pruned_ckpt), "--backend", "cpu_block", "--dtype", "bf16", "--img",
                   "64"])
    out = capsys.readouterr().out
    assert rc == 0 and "cpu_block" in out and "bfloat16" in out
    assert cli.main(["sparsify", "--weights", str(pruned_ckpt), "--backend", "nope", "--img", "64"]) == 2
    assert "backend should be one of" in capsys.readouterr().err
