"""`sparseyolo bench` and `sparseyolo sparsify` on a small pruned checkpoint (the packaged demo model)."""

from __future__ import annotations

import pytest
import torch

from sparseyolo import cli
from sparseyolo.bench import run_bench
from sparseyolo.checkpoint import load_model, save_checkpoint
from sparseyolo.demo import packaged_weights
from sparseyolo.prune import prune


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    model = load_model(packaged_weights(), fuse=False)
    prune(model, "nm", n=2, m=4)
    return save_checkpoint(model, tmp_path_factory.mktemp("bench") / "pruned24.pt")


def test_bench_rows_and_plots(pruned_ckpt, tmp_path):
    res = run_bench(str(pruned_ckpt), imgsz=64, batch=2, reps=2, onnx=False, out=tmp_path)
    names = [r.name for r in res.rows]
    assert names == ["dense (NCHW)", "dense (channels_last)", "sparsify (sparse)", "sparsify (auto)"]
    assert all(r.ms > 0 for r in res.rows)
    assert res.pruned_layers > 50 and abs(res.sparsity - 0.5) < 0.01
    assert res.dense_ms == min(res.rows[0].ms, res.rows[1].ms)
    assert "returned" in res.rows[-1].note  # which model sparsify(auto) handed back
    assert sorted(p.name for p in res.plots) == ["bench_latency.png", "bench_layer_speedup.png"]
    assert all(p.stat().st_size > 10_000 for p in res.plots)
    table = res.table()
    assert "speedup = fastest dense PyTorch / variant" in table and "batch 2, 64x64" in table


def test_bench_dense_checkpoint_has_no_sparse_rows(tmp_path):
    res = run_bench(str(packaged_weights()), imgsz=64, reps=1, onnx=False, plots=False)
    assert [r.name for r in res.rows] == ["dense (NCHW)", "dense (channels_last)"] and res.pruned_layers == 0


def test_bench_onnxruntime_row_matches_when_installed(pruned_ckpt):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    res = run_bench(str(pruned_ckpt), imgsz=64, reps=1, onnx=True, plots=False)
    assert "onnxruntime (dense)" in [r.name for r in res.rows]


def test_bench_cli(pruned_ckpt, tmp_path, capsys):
    rc = cli.main(["bench", "--weights", str(pruned_ckpt), "--img", "64", "--reps", "1", "--no-onnx", "--out",
                   str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "sparsify (auto)" in out and "bench_latency.png" in out
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
