"""Timers: one place for how sparseyolo times a function, on the CPU and on a CUDA device.

* :func:`median_ms`: host wall clock (``time.perf_counter``), median of ``reps`` calls after a warm-up call.
* :func:`cuda_median_ms`: device time per call between CUDA events, calls back to back (see its docstring).
* :func:`interleaved_median_ms`: several functions timed in rounds, round-robin, best median of the rounds per
  function, so that a burst of load on a shared machine hits every candidate alike. The autotuner
  (:mod:`sparseyolo.sparse.autotune`) and ``sparsify``'s whole-model check use it.
* :func:`time_round_robin`: whole forwards of several variants, one call (or a short burst) of each per round,
  median per variant (``sparseyolo bench``, the demo, benchmarks/bench_e2e_cpu.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tqdm import tqdm


def median_ms(fn: Callable[[], Any], reps: int = 5, warmup: int = 1) -> float:
    """Median host milliseconds of ``fn()`` over ``reps`` calls, after ``warmup`` untimed calls (CPU work)."""
    if reps < 1:
        raise ValueError(f"median_ms: reps must be >= 1, got {reps}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def cuda_median_ms(fn, args_list: list[tuple], reps: int = 10, warmup: int = 3, calls: int | None = None) -> float:
    """Median device milliseconds per call of ``fn(*args)``, with ``args`` rotating through ``args_list``.

    Each of the ``reps`` samples times ``calls`` back-to-back calls (default: one pass over ``args_list``, at least
    4) between two CUDA events, after one untimed lead call. The lead call keeps the device busy while the host
    enqueues the start event and the timed calls, and back to back each call's launch work overlaps the device
    work of the one before, as in a model's forward pass. So the figure is the device's time per call; the host's
    dispatch cost shows only where it exceeds that. (Timing one call at a time between events adds the host's
    dispatch of that call to every sample: tens of microseconds, a large share of a small layer.)

    Raises whatever ``fn`` raises; the caller decides whether a failing method is an error.
    """
    if not args_list:
        raise ValueError("cuda_median_ms: args_list is empty (give [()] for a function of no arguments)")
    calls = max(4, len(args_list)) if calls is None else calls
    if calls < 1 or reps < 1:
        raise ValueError(f"cuda_median_ms: calls and reps must be >= 1, got {calls} and {reps}")
    n = len(args_list)
    for i in range(warmup):
        fn(*args_list[i % n])
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn(*args_list[-1])  # lead call, not timed
        start.record()
        for i in range(calls):
            fn(*args_list[i % n])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def device_median_ms(fn: Callable[[], Any], device: str | torch.device, reps: int = 5) -> float:
    """:func:`cuda_median_ms` (3 calls per sample) for a CUDA ``device``, :func:`median_ms` otherwise."""
    if torch.device(device).type == "cuda":
        return cuda_median_ms(fn, [()], reps=reps, calls=3)
    return median_ms(fn, reps)


def interleaved_median_ms(fns: Mapping[str, Callable[[], Any]], device: str | torch.device = "cpu", reps: int = 5,
                          rounds: int = 2) -> dict[str, float]:
    """Milliseconds per call of each of ``fns``: ``rounds`` round-robin passes of :func:`device_median_ms`, best
    (smallest) median of the rounds per function.

    Raises whatever a function raises (time the candidates that may fail one by one, or catch it).
    """
    if rounds < 1:
        raise ValueError(f"interleaved_median_ms: rounds must be >= 1, got {rounds}")
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], device_median_ms(fn, device, reps))
    return best


@torch.no_grad()
def time_round_robin(variants: dict[str, tuple[object, torch.Tensor]], reps: int, sync=lambda: None,
                     warmup: int = 2, progress: bool = False, burst: int = 1) -> dict[str, float]:
    """Median ms per variant ``{name: (fn, x)}``: ``warmup`` calls each, then ``reps`` rounds calling every variant
    in turn, round-robin, so that a change of machine load hits every variant alike. ``progress``: a bar over the
    rounds (on stderr).

    ``burst``: calls of a variant back to back in each round. With ``burst`` > 1 the first call of each burst is
    not timed (it pays for the caches and branch predictors the previous variant left; one runtime can run 20%
    slower right after another's forward) and the other ``burst - 1`` are, as a deployed model runs: the median is
    then over ``reps * (burst - 1)`` calls. 1 (default): one timed call per variant per round.
    """
    if burst < 1:
        raise ValueError(f"time_round_robin: burst must be >= 1, got {burst}")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn, x in variants.values():
        for _ in range(warmup):
            fn(x)
    sync()
    for _ in tqdm(range(max(reps, 1)), desc="bench", unit="round", disable=not progress,
                  bar_format="{l_bar}{bar:20}{r_bar}"):
        for k, (fn, x) in variants.items():
            if burst > 1:
                fn(x)
                sync()
            for _ in range(max(burst - 1, 1)):
                t0 = time.perf_counter()
                fn(x)
                sync()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}
