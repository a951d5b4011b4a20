"""The registry of sparse backends: name -> :class:`~sparseyolo.sparse.backends.base.SparseBackend`.

Built-in backends register themselves when :mod:`sparseyolo.sparse.backends` is imported ("dense", "cpu_csr",
"cuda_mma_sp"); experimental ones only through :mod:`sparseyolo.sparse.experimental` (opt-in). A new
backend (say a CPU kernel in another layout) is one module with one :class:`SparseBackend` subclass and one
``register_backend(MyBackend())`` call; ``sparsify``'s ``auto`` then times it wherever its ``why_not`` says
it applies.
"""

from __future__ import annotations

import torch

from sparseyolo.sparse.backends.base import SparseBackend

_BACKENDS: dict[str, SparseBackend] = {}


def register_backend(backend: SparseBackend, replace: bool = False) -> SparseBackend:
    """Add ``backend`` under ``backend.name``; a second backend of the same name raises unless ``replace``."""
    if not isinstance(backend, SparseBackend):
        raise TypeError(f"register_backend: expected a SparseBackend instance, got {type(backend).__name__}")
    if not backend.name:
        raise ValueError(f"register_backend: {type(backend).__name__} has no name")
    if backend.name in _BACKENDS and not replace and _BACKENDS[backend.name] is not backend:
        raise ValueError(f"register_backend: a backend named '{backend.name}' is already registered "
                         f"({_BACKENDS[backend.name]!r}); pass replace=True to replace it")
    _BACKENDS[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    """Remove a backend (tests that register fakes clean up with it); unknown names are ignored."""
    _BACKENDS.pop(name, None)


def get_backend(name: str) -> SparseBackend:
    """The backend registered as ``name``; raises ValueError naming the registered ones."""
    try:
        return _BACKENDS[name]
    except KeyError:
        hint = (" (experimental GPU backends register with SPARSEYOLO_EXPERIMENTAL_GPU=1 or "
                "sparseyolo.sparse.experimental.register_experimental_backends())")
        raise ValueError(f"unknown sparse backend '{name}'; registered: {', '.join(backend_names())}{hint}") from None


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def available_backends(device: str | torch.device, dtype: torch.dtype) -> list[SparseBackend]:
    """Registered backends that run inputs of this device type and dtype (whatever the conv), in registry order."""
    return [b for b in _BACKENDS.values() if b.supports(device, dtype) is None]
