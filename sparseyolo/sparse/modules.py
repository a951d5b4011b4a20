"""``SparseConv2d``: one pruned conv (with folded BatchNorm and fused SiLU) on exactly one sparse backend.

The module holds a backend (:mod:`sparseyolo.sparse.backends`: ``"cpu_csr"``, ``"cuda_mma_sp"``, ``"dense"``,
...) and the buffers that backend packed, registered as buffers: saved in ``state_dict``, moved by ``.to()``.
Nothing is repacked per forward. A module packed for one device raises on inputs of another (a CPU CSR
weight cannot run on CUDA): re-sparsify for that device (``sparsify(model, device="cuda", dtype=torch.float16)``
also takes a model that already holds SparseConv2d layers and repacks them).

Saving and loading: the buffers are the ``state_dict``'s tensors; the backend name, geometry, activation and
pattern go into the ``state_dict``'s per-module metadata (``state_dict._metadata``, next to PyTorch's own
``version``, kept by ``torch.save``/``torch.load(weights_only=True)``). ``load_state_dict`` into a SparseConv2d
of another backend rebinds it to the saved backend and buffer shapes; :meth:`SparseConv2d.from_state_dict`
builds one from a state dict alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from sparseyolo.sparse.backends import ConvGeometry, SparseBackend, get_backend
from sparseyolo.sparse.packing import PackedConvWeight

LOGGER = logging.getLogger(__name__)

ACTIVATIONS = ("identity", "silu")
_META_KEY = "sparse_conv"  # this module's entry in its state_dict metadata


class SparseConv2d(nn.Module):
    """``act(conv(x, W) + bias)`` on one sparse backend's packed weight.

    It is also the fused Conv-BN-SiLU block: :func:`sparseyolo.sparsify` folds the BatchNorm into ``W`` and
    ``bias`` and passes ``activation="silu"``, so the block is one op whose output is written once.

    Args:
        backend: a registered backend name or a :class:`~sparseyolo.sparse.backends.SparseBackend`.
        buffers: what ``backend.pack`` returned (registered as buffers under these names; ``bias`` may be None).
        geometry: channels, kernel size, stride, padding.
        activation: ``"identity"`` or ``"silu"``.
        pattern: the sparsity pattern it was pruned with (``"2:4"``, ``"unstructured"``), for reports.
        nnz: nonzeros of the dense weight (default: counted from ``backend.unpack``).

    Shapes:
        ``x (Tensor[N, Cin, H, W]) -> Tensor[N, Cout, H', W']``; the layout and dtypes each backend reads are in
        its module docstring.

    Caveats:
        Inference only (no autograd). Inputs on a device the backend does not run raise with what to do.
    """

    def __init__(
        self,
        backend: str | SparseBackend,
        buffers: Mapping[str, torch.Tensor | None],
        geometry: ConvGeometry,
        activation: str = "identity",
        pattern: str | None = None,
        nnz: int | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"SparseConv2d: activation should be one of {ACTIVATIONS}, got '{activation}'")
        self._bind(backend if isinstance(backend, SparseBackend) else get_backend(backend), geometry)
        self.activation = activation
        self.pattern = pattern
        for name, t in buffers.items():
            self.register_buffer(name, t)
        if "bias" not in buffers:
            self.register_buffer("bias", None)
        self.static = self.backend.static(self)
        self._nnz = int((self.dense_weight() != 0).sum()) if nnz is None else int(nnz)
        self.register_state_dict_post_hook(_save_metadata)

    def _bind(self, backend: SparseBackend, geometry: ConvGeometry) -> None:
        self.backend = backend
        self.geometry = geometry
        self.in_channels, self.out_channels = geometry.in_channels, geometry.out_channels
        self.kernel_size, self.stride, self.padding = geometry.kernel_size, geometry.stride, geometry.padding

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        geometry: ConvGeometry,
        activation: str = "identity",
        pattern: str | None = None,
        backend: str | SparseBackend = "cpu_csr",
        dtype: torch.dtype = torch.float32,
    ) -> SparseConv2d:
        """Pack a dense (masked, BN-folded) weight for ``backend``; raises ValueError when it cannot run it."""
        be = backend if isinstance(backend, SparseBackend) else get_backend(backend)
        if activation not in ACTIVATIONS:
            raise ValueError(f"SparseConv2d: activation should be one of {ACTIVATIONS}, got '{activation}'")
        w = weight.detach().to(torch.float32)
        if tuple(w.shape) != geometry.weight_shape:
            raise ValueError(f"SparseConv2d: weight shape {tuple(w.shape)} does not match the geometry's "
                             f"{geometry.weight_shape}")
        nnz = int((w != 0).sum())
        return cls(be, be.pack(w, bias, geometry, activation, dtype), geometry, activation, pattern, nnz)

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        activation: str = "identity",
        pattern: str | None = None,
        backend: str | SparseBackend = "cpu_csr",
        dtype: torch.dtype = torch.float32,
    ) -> SparseConv2d:
        """Pack ``conv`` (or ``weight``/``bias`` that replace its own, e.g. after folding a BatchNorm)."""
        geometry = ConvGeometry.from_conv(conv)
        w = conv.weight if weight is None else weight
        b = conv.bias if bias is None else bias
        return cls.from_weight(w, b, geometry, activation, pattern, backend, dtype)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> SparseConv2d:
        """A SparseConv2d rebuilt from what :meth:`state_dict` saved (needs its metadata: see the module doc)."""
        meta = getattr(state_dict, "_metadata", {}).get(prefix[:-1] if prefix else "", {}).get(_META_KEY)
        if meta is None:
            raise ValueError("SparseConv2d.from_state_dict: no SparseConv2d metadata for prefix "
                             f"'{prefix}' (a state dict rebuilt as a plain dict loses it; load it into a "
                             "sparsified model instead)")
        names = [k[len(prefix):] for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix):]]
        buffers = {n: state_dict[prefix + n] for n in names}
        return cls(meta["backend"], buffers, ConvGeometry.from_dict(meta["geometry"]), meta["activation"],
                   meta.get("pattern"), meta.get("nnz"))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        meta = local_metadata.get(_META_KEY)
        if meta is not None:
            if meta["backend"] != self.backend.name or self._buffer_shapes_differ(state_dict, prefix):
                # Saved from another backend (or another layer): take its buffer names and shapes.
                names = {k[len(prefix):] for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix):]}
                for n in set(self._buffers) - names - {"bias"}:
                    del self._buffers[n]
                for n in names:
                    self._buffers[n] = torch.empty_like(state_dict[prefix + n], device=self._device())
                if "bias" not in names:
                    self._buffers["bias"] = None
            # The saved layer's backend, geometry and activation, whatever this module had.
            self._bind(get_backend(meta["backend"]), ConvGeometry.from_dict(meta["geometry"]))
            self.activation, self.pattern, self._nnz = meta["activation"], meta.get("pattern"), meta.get("nnz", 0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not any(k.startswith(prefix) for k in missing_keys):
            self.static = self.backend.static(self)

    def _buffer_shapes_differ(self, state_dict, prefix) -> bool:
        for n, t in self._buffers.items():
            saved = state_dict.get(prefix + n)
            if (t is None) != (saved is None) or (t is not None and t.shape != saved.shape):
                return True
        return False

    def _device(self) -> torch.device:
        for t in self._buffers.values():
            if t is not None:
                return t.device
        return torch.device("cpu")

    @property
    def nnz(self) -> int:
        return self._nnz

    @property
    def sparsity(self) -> float:
        numel = self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return 1.0 - self.nnz / numel if numel else 0.0

    def packed(self) -> PackedConvWeight:
        """The CSR weight (:class:`~sparseyolo.sparse.packing.PackedConvWeight`) of a ``"cpu_csr"`` module."""
        if self.backend.name != "cpu_csr":
            raise ValueError(f"SparseConv2d.packed: the CSR weight exists for backend 'cpu_csr' only, this module "
                             f"runs '{self.backend.name}' (dense_weight() gives the weight of any backend)")
        return PackedConvWeight(self.values, self.columns, self.row_ptr, self.geometry.weight_shape)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense float32 weight ``[Cout, Cin, KH, KW]``."""
        return self.backend.unpack(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type not in self.backend.devices:
            raise RuntimeError(
                f"SparseConv2d({self.extra_repr()}): backend '{self.backend.name}' runs on "
                f"{'/'.join(self.backend.devices)} inputs, got a {x.device.type} input. A packed weight does not "
                f"change device by itself: re-sparsify for that device, e.g. sparsify(model, "
                f"device='{x.device.type}', dtype={x.dtype}) (it repacks SparseConv2d layers too)")
        return self.backend.forward(self, x)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, activation={self.activation}, sparsity={self.sparsity:.3f}, "
                f"backend={self.backend.name}" + (f", pattern={self.pattern}" if self.pattern else ""))


def _save_metadata(module: SparseConv2d, state_dict, prefix: str, local_metadata: dict) -> None:
    local_metadata[_META_KEY] = {"backend": module.backend.name, "geometry": module.geometry.as_dict(),
                                 "activation": module.activation, "pattern": module.pattern, "nnz": module.nnz}
