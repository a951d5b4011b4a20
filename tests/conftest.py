"""Shared test fixtures: the ../shared data folder and device parametrisation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sparseyolo.extension import ExtensionNotBuiltError, load_extension

# sparseyolo.ops loads the compiled extension on an op's first call; the op tests also reach the registered ops
# directly (torch.ops.sparseyolo.*, for opcheck), so load it up front. Without it those tests fail on their
# first op call with the build instructions.
try:
    load_extension()
except ExtensionNotBuiltError:
    pass

# ../shared sits beside the checkout for developers and CI; users do not have it.
SHARED = Path(os.environ.get("SPARSEYOLO_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "wgmma: runs the sm_90a wgmma.sp kernel (device_check runs these in their own "
                            "process: a fault there poisons the CUDA context)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder (weights, coco128, reference outputs); skips the test when it is absent."""
    if not (SHARED / "weights" / "yolov5n.pt").is_file():
        pytest.skip(f"../shared not found at {SHARED} (set SPARSEYOLO_SHARED); it holds the test weights and data")
    return SHARED


def cpu_and_cuda():
    """Parametrisation over devices: 'cpu' always, 'cuda' marked so it skips without a GPU."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
