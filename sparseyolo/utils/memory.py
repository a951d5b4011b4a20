"""How the process's C allocator treats the memory of freed activations.

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves blocks above its mmap threshold (128 KiB at
first, raised as such blocks are freed, up to 32 MiB) with a fresh ``mmap`` and returns them to the kernel on
``free``, and gives back the top of its heap once more than its trim threshold is free there. A forward pass at
640 x 640 allocates and frees activations of 0.1-7 MB, so the pages of many of them are faulted in and zeroed by the
kernel again on every forward: measured on yolov5n, 2 threads, compiled by ``torch.compile``, about 5,200 minor page
faults per forward and 5-6 ms of a 24-30 ms forward, dense or sparse, and more or less in each process depending on
where the dynamic threshold stopped (runtimes with their own memory arena, onnxruntime and OpenVINO, pay none of it).

:func:`reuse_freed_memory` sets the thresholds once (``mallopt``) so freed blocks stay in the heap for the next
forward, as a caching allocator keeps them: the process keeps its peak memory instead of returning it. The
``sparseyolo`` command calls it at start (``SPARSEYOLO_MALLOC=default`` leaves the allocator alone); a program that
runs models with the Python API calls it once itself, or sets the same glibc variables
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``), or preloads jemalloc or tcmalloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["MALLOC_ENV", "configure_from_env", "reuse_freed_memory"]

LOGGER = logging.getLogger(__name__)

#: Environment variable: ``default`` keeps the C allocator's own behaviour in the ``sparseyolo`` command.
MALLOC_ENV = "SPARSEYOLO_MALLOC"

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only; musl and other platforms raise AttributeError)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def reuse_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20,
                       top_pad: int = 64 << 20) -> bool:
    """Make glibc keep freed blocks for reuse: allocations below ``mmap_threshold`` come from the heap, which is
    grown ``top_pad`` at a time and trimmed only when ``trim_threshold`` is free at its top.

    Affects every later allocation of the whole process (the process keeps its peak memory). Returns True when
    the thresholds were set, False where the C library is not glibc (then nothing changes).
    """
    libc = _glibc()
    if libc is None:
        LOGGER.debug("reuse_freed_memory: the C library is not glibc; allocator left as it is")
        return False
    settings = ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad))
    ok = all([libc.mallopt(param, value) == 1 for param, value in settings])  # every one tried
    if not ok:
        LOGGER.warning("reuse_freed_memory: glibc refused a threshold (mmap %d, trim %d, top pad %d)",
                       mmap_threshold, trim_threshold, top_pad)
    return ok


def configure_from_env() -> bool:
    """What the ``sparseyolo`` command does at start: :func:`reuse_freed_memory` unless ``SPARSEYOLO_MALLOC`` is
    ``default``. Returns whether the thresholds were set."""
    choice = os.environ.get(MALLOC_ENV, "reuse").strip().lower()
    if choice == "default":
        return False
    if choice != "reuse":
        LOGGER.warning("%s=%s is neither 'reuse' nor 'default'; using 'reuse'", MALLOC_ENV, choice)
    return reuse_freed_memory()
