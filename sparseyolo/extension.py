"""Loading of the compiled ops library ``sparseyolo._C`` (registers ``torch.ops.sparseyolo.*``)."""

from __future__ import annotations

import functools

import torch


class ExtensionNotBuiltError(ImportError):
    """The C++/CUDA extension is missing or does not load."""


@functools.cache
def load_extension() -> None:
    """Import ``sparseyolo._C`` once; its TORCH_LIBRARY blocks register the ops with the dispatcher.

    Raises:
        ExtensionNotBuiltError: with the command that builds it, when the import fails.
    """
    try:
        from sparseyolo import _C  # noqa: F401
    except ImportError as e:
        raise ExtensionNotBuiltError(
            "sparseyolo's compiled ops (sparseyolo._C) are not available: "
            f"{e}. Build them with `pip install --no-build-isolation -e .` in the source tree "
            "(needs a C++ compiler; CUDA kernels are added when nvcc is found)."
        ) from e
    from sparseyolo import _meta_registrations  # noqa: F401  (fake kernels for torch.compile)


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA backends (a GPU is not needed to answer)."""
    load_extension()
    return torch._C._dispatch_has_kernel_for_dispatch_key("sparseyolo::box_iou", "CUDA")
