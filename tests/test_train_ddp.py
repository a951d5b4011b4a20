"""DDP fine-tuning under torchrun: 2 CPU processes (gloo), a couple of steps; ranks agree and masks hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._train_helpers import make_dataset

WORKER = Path(__file__).resolve().parent / "_ddp_train_worker.py"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nm", "gradual-l1"])
def test_two_ranks_agree_and_masks_hold(shared, tmp_path, method):
    data = make_dataset(tmp_path / "data", n=4)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(WORKER), str(shared / "weights" / "yolov5n.pt"), str(data), str(out), method,
    ]  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2  # 4 images, 1 per rank per batch
    assert r0["violations"] == [] and r1["violations"] == []
    assert r0["n_masks"] > 0 and r0["n_masks"] == r1["n_masks"]
    assert r0["masks"] == r1["masks"]
    assert r0["weights"] == r1["weights"]
    assert r0["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert r0["last_exists"] and r1["last_exists"]  # rank 0 wrote it before the barrier
