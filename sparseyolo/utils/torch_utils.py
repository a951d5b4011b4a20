"""Device selection and timing helpers."""

from __future__ import annotations

import contextlib
import logging
import platform
import time

import torch

import sparseyolo
from sparseyolo.utils.timing import cuda_median_ms  # noqa: F401  (moved there; callers switch to it)

LOGGER = logging.getLogger(__name__)


def select_device(device: str | int | torch.device | None = "") -> torch.device:
    """Resolve a YOLOv5-style device string: ``''`` (CUDA if available, else CPU), ``'cpu'``, ``'0'``, ``'cuda:1'``.

    Raises:
        ValueError: a CUDA device was asked for but none is usable, with what was found.
    """
    if isinstance(device, torch.device):
        return device
    s = str(device).strip().lower().replace("cuda:", "").replace("none", "")
    if s == "cpu":
        return torch.device("cpu")
    if s == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} asks for CUDA, but torch sees no CUDA device here; use --device cpu")
    index = int(s.split(",")[0])
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(f"cuda:{index}")


def environment_line(device: torch.device) -> str:
    """``sparseyolo 0.1.0 Python-3.11.7 torch-2.14.1 CPU`` (or the CUDA device name and memory)."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        dev = f"CUDA:{device.index or 0} ({p.name}, {p.total_memory / 2**20:.0f}MiB)"
    else:
        dev = f"CPU ({torch.get_num_threads()} threads)"
    return f"sparseyolo {sparseyolo.__version__} Python-{platform.python_version()} torch-{torch.__version__} {dev}"


class Profile(contextlib.ContextDecorator):
    """Accumulating wall-clock timer; synchronises CUDA so GPU work is counted where it is launched."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.t = 0.0
        self.cuda = device is not None and device.type == "cuda"

    def _time(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def __enter__(self) -> "Profile":
        self.start = self._time()
        return self

    def __exit__(self, *exc) -> None:
        self.dt = self._time() - self.start
        self.t += self.dt


