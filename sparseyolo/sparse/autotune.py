"""The autotuner: per layer, time every backend that can run it and keep the fastest one that is correct.

:func:`tune_layer` packs the layer once per candidate backend (on the target device, in the target dtype), runs
each on a random input of the layer's input shape (in the layout the backend reads without a copy), compares
every output with the ``"dense"`` backend's (F.conv2d: oneDNN on the CPU, cuDNN on CUDA) and never picks a
backend whose output disagrees (non-finite where dense is finite, or a relative L2 difference above
``MAX_REL_DIFF`` for the dtype) or that raises; the rest are timed with
:func:`sparseyolo.utils.timing.interleaved_median_ms` (round-robin rounds, best median; host clock on the CPU,
CUDA events on a GPU). Results are cached per process in one cache keyed by (candidates, weight shape, nonzeros,
stride, padding, activation, input shape, dtype, device, threads): identical layers are timed once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from sparseyolo.sparse.backends import ConvGeometry, SparseBackend
from sparseyolo.sparse.modules import SparseConv2d
from sparseyolo.utils import timing

LOGGER = logging.getLogger(__name__)

# Largest relative L2 difference from the dense output that a candidate may have: both round the same
# fp32-accumulated sums to the output dtype (~3e-4 fp16, ~2e-3 bf16 relative; ~1e-7 fp32), so a correct backend
# stays far below; a wrong one is off by O(1).
MAX_REL_DIFF = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4, torch.float64: 1e-8}

_CACHE: dict[tuple, Tuning] = {}


@dataclass
class Tuning:
    """What :func:`tune_layer` measured for one layer and input shape.

    Attributes:
        times: backend name -> ms per call (``inf`` for a backend that was rejected).
        rejected: backend name -> why it was never chosen (wrong output, or the error it raised).
    """

    times: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> str:
        """The fastest backend (``"dense"`` when nothing finite was measured)."""
        finite = {k: v for k, v in self.times.items() if v < float("inf")}
        return min(finite, key=finite.get) if finite else "dense"


def clear_cache() -> None:
    _CACHE.clear()


def disagreement(y: torch.Tensor, ref: torch.Tensor) -> str:
    """"" when ``y`` matches the dense output ``ref`` (float32) up to rounding to ``y``'s dtype, else how it
    differs."""
    if y.shape != ref.shape:
        return f"has shape {tuple(y.shape)}, dense has {tuple(ref.shape)}"
    if not bool(torch.isfinite(y).all()):
        return "has non-finite values where the dense conv's has none" if bool(torch.isfinite(ref).all()) else ""
    rel = float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))
    limit = MAX_REL_DIFF.get(y.dtype, 1e-2)
    return f"differs from the dense conv's by {rel:.2e} relative (more than {limit:g})" if rel > limit else ""


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


@torch.no_grad()
def tune_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    activation: str,
    input_shape: tuple[int, ...],
    candidates: list[SparseBackend],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    reps: int = 5,
) -> Tuning:
    """Time ``candidates`` (backends whose ``why_not`` allowed this layer; ``"dense"`` is the reference and is
    timed too) on an input of ``input_shape``; see the module docstring.

    Args:
        weight (Tensor[Cout, Cin, KH, KW]): the BN-folded float32 weight with exact zeros.
        bias (Tensor[Cout], optional): float32.
        geometry, activation: the layer's.
        input_shape: ``(N, Cin, H, W)`` of the layer's input.
        candidates: the backends to compare.
        device, dtype: where and in which dtype the model will run.
        reps: timed samples per backend and round (two rounds).
    """
    device = torch.device(device)
    names = tuple(sorted(b.name for b in candidates))
    key = (names, tuple(weight.shape), int((weight != 0).sum()), geometry.stride, geometry.padding, activation,
           tuple(input_shape), str(dtype), _device_key(device), torch.get_num_threads())
    if key in _CACHE:
        return _CACHE[key]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(input_shape, generator=gen).to(device=device, dtype=dtype)
    ref_mod = SparseConv2d.from_weight(weight, bias, geometry, activation, backend="dense", dtype=dtype).to(device)
    ref = ref_mod(x).float()
    tuning = Tuning()
    fns = {}
    for be in candidates:
        try:
            mod = ref_mod if be.name == "dense" else SparseConv2d.from_weight(
                weight, bias, geometry, activation, backend=be, dtype=dtype).to(device)
            xb = x.contiguous(memory_format=be.memory_format)
            why = disagreement(mod(xb), ref)
        except Exception as e:  # noqa: BLE001 - a failing backend is never chosen
            why = f"failed: {type(e).__name__}: {e}"
        if why:
            LOGGER.warning("autotune: backend %s never chosen for %s: its output %s", be.name, geometry, why)
            tuning.rejected[be.name] = why
            tuning.times[be.name] = float("inf")
        else:
            fns[be.name] = (lambda m=mod, xb=xb: m(xb))
    try:
        tuning.times.update(timing.interleaved_median_ms(fns, device, reps))
    except Exception as e:  # noqa: BLE001 - time one by one to find the one that fails
        LOGGER.warning("autotune: timing failed (%s); timing the candidates one by one", e)
        for name, fn in fns.items():
            try:
                tuning.times.update(timing.interleaved_median_ms({name: fn}, device, reps))
            except Exception as e1:  # noqa: BLE001
                tuning.rejected[name], tuning.times[name] = f"failed while timed: {e1}", float("inf")
    _CACHE[key] = tuning
    return tuning
