"""Device selection, BatchNorm folding and timing helpers."""

from __future__ import annotations

import contextlib
import logging
import platform
import time

import torch
from torch import nn

from sparseyolo._version import __version__
from sparseyolo.utils.errors import ParameterError
from sparseyolo.utils.timing import cuda_median_ms  # noqa: F401  (moved there; callers switch to it)

LOGGER = logging.getLogger(__name__)


def select_device(device: str | int | torch.device | None = "") -> torch.device:
    """Resolve a YOLOv5-style device string: ``''`` (CUDA if available, else CPU), ``'cpu'``, ``'0'``, ``'cuda:1'``.

    Raises:
        ParameterError: a CUDA device was asked for but none is usable, with what was found.
    """
    if isinstance(device, torch.device):
        return device
    s = str(device).strip().lower().replace("cuda:", "").replace("none", "")
    if s == "cpu":
        return torch.device("cpu")
    if s == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} asks for CUDA, but torch sees no CUDA device here; use device 'cpu'",
                             "device")
    index = int(s.split(",")[0])
    if index >= torch.cuda.device_count():
        raise ParameterError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible", "device")
    return torch.device(f"cuda:{index}")


def environment_line(device: torch.device) -> str:
    """``sparseyolo 0.1.0 Python-3.11.7 torch-2.14.1 CPU`` (or the CUDA device name and memory)."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        dev = f"CUDA:{device.index or 0} ({p.name}, {p.total_memory / 2**20:.0f}MiB)"
    else:
        dev = f"CPU ({torch.get_num_threads()} threads)"
    return f"sparseyolo {__version__} Python-{platform.python_version()} torch-{torch.__version__} {dev}"


@torch.no_grad()
def fold_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of ``bn(conv(x))`` as one convolution, with ``bn`` in eval mode (running statistics).

    ``W' = W * s`` per output channel and ``b' = s * b + (beta - gamma * mean / sqrt(var + eps))`` with
    ``s = gamma / sqrt(eps + var)``: YOLOv5's ``fuse_conv_and_bn`` expressions, in its order, so a fused model
    has YOLOv5's numbers. The weight is scaled elementwise (YOLOv5 multiplies by ``diag(s)``, which gives the same
    values) so that every zero of ``weight`` stays an exact zero: pruned weights stay pruned.

    Args:
        weight (Tensor[Cout, Cin/groups, kh, kw]): the convolution's weight.
        bias (Tensor[Cout] or None): the convolution's bias.
        bn: the BatchNorm2d that follows the convolution; None returns ``weight`` and ``bias`` unchanged.

    Returns:
        ``(weight', bias')``: new tensors (detached); ``bias'`` is None only when ``bn`` and ``bias`` are None.
    """
    weight = weight.detach()
    if bn is None:
        return weight, None if bias is None else bias.detach()
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma.div(torch.sqrt(bn.eps + bn.running_var))
    b_conv = torch.zeros_like(std) if bias is None else bias.detach()
    b_bn = beta - gamma.mul(bn.running_mean).div(std)
    w = weight * scale.to(weight.dtype).reshape(-1, *([1] * (weight.dim() - 1)))
    return w, scale * b_conv + b_bn


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


