"""The sparse-backend protocol: what a way of running one pruned conv must provide.

A backend is a stateless object registered by name (:mod:`sparseyolo.sparse.backends.registry`). A
:class:`~sparseyolo.sparse.SparseConv2d` holds exactly one backend and the buffers its :meth:`SparseBackend.pack`
returned, so the packed weight is saved in ``state_dict`` and moves with ``.to()``. The protocol:

* ``name``: the registry name (``"dense"``, ``"cpu_csr"``, ``"cuda_mma_sp"``, ...).
* ``devices`` / ``dtypes``: device types and input dtypes it runs (``available_backends`` filters on them).
* ``why_not(weight, geometry, activation, device, dtype)``: ``None`` when it can run this conv for inputs of that
  device and dtype, else a short reason for the report (``"weight is not 2:4 sparse along Cin"``).
* ``pack(weight, bias, geometry, activation, dtype)``: the buffers (name -> tensor or None) it runs from, from the
  BN-folded dense float32 weight with exact zeros. Called once, at conversion; never per forward.
* ``forward(module, x)``: the conv on ``module``'s buffers (``module.<buffer name>``), geometry and activation.
* ``unpack(module)``: the dense float32 weight the buffers hold (reports, re-sparsifying for another device).
* ``memory_format``: the input layout it reads without a copy (the autotuner feeds it that layout).
* ``static(module)``: Python values ``forward`` needs from the buffers (e.g. which gather a packed weight uses),
  read once when the buffers are set and kept in ``module.static``, so ``forward`` never reads a tensor's value:
  no host sync per call, and ``torch.compile`` traces the model without a graph break.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ConvGeometry:
    """The shape of one conv (groups = 1, dilation = 1, zero padding): everything but its weights."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ConvGeometry:
        """The geometry of ``conv``; raises ValueError for what no backend runs (groups, dilation, padding modes)."""
        if conv.groups != 1 or conv.dilation != (1, 1) or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(
                f"SparseConv2d supports groups=1, dilation=1, numeric zero padding; got groups={conv.groups}, "
                f"dilation={conv.dilation}, padding={conv.padding!r}, padding_mode={conv.padding_mode}"
            )
        return cls(conv.in_channels, conv.out_channels, _pair(conv.kernel_size), _pair(conv.stride),
                   _pair(conv.padding))

    @classmethod
    def from_dict(cls, d: dict) -> ConvGeometry:
        return cls(int(d["in_channels"]), int(d["out_channels"]), _pair(d["kernel_size"]), _pair(d["stride"]),
                   _pair(d["padding"]))

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def apply_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    """``y`` after the fused activation (``"identity"`` or ``"silu"``), in place where ``y`` is a fresh tensor."""
    return torch.nn.functional.silu(y, inplace=True) if activation == "silu" else y


class SparseBackend(abc.ABC):
    """Base class of the backends; see the module docstring for the protocol."""

    name: str = ""
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    memory_format: torch.memory_format = torch.contiguous_format
    #: Not yet shown correct on hardware: registered only by :mod:`sparseyolo.sparse.experimental`.
    experimental: bool = False
    #: ``False``: ``sparsify``'s ``"auto"`` never tries it (run it by naming it), e.g. a kernel whose fault would
    #: end the process's CUDA context before the output check could reject it.
    in_auto: bool = True

    def supports(self, device: str | torch.device, dtype: torch.dtype) -> str | None:
        """``None`` when inputs of this device type and dtype are in ``devices``/``dtypes``, else why not."""
        dev = torch.device(device).type
        if dev not in self.devices:
            return f"runs on {'/'.join(self.devices)} only, not {dev}"
        if dtype not in self.dtypes:
            return f"takes {'/'.join(str(d).replace('torch.', '') for d in self.dtypes)} only, not " \
                   f"{str(dtype).replace('torch.', '')}"
        return None

    def why_not(self, weight: torch.Tensor, geometry: ConvGeometry, activation: str, device: str | torch.device,
                dtype: torch.dtype) -> str | None:
        """Why this backend cannot run the conv for such inputs (``None``: it can). Subclasses add their own
        conditions after this device/dtype check."""
        return self.supports(device, dtype)

    @abc.abstractmethod
    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry, activation: str,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor | None]:
        """The buffers this backend runs from (registered on the module under these names)."""

    @abc.abstractmethod
    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``act(conv(x, W) + bias)`` from ``module``'s buffers."""

    def static(self, module: nn.Module) -> dict[str, object]:
        """Python values derived from ``module``'s buffers, for ``forward`` (kept in ``module.static``)."""
        return {}

    @abc.abstractmethod
    def unpack(self, module: nn.Module) -> torch.Tensor:
        """The dense float32 weight ``[Cout, Cin, KH, KW]`` that ``module``'s buffers hold (exact zeros kept)."""

    def __deepcopy__(self, memo: dict) -> SparseBackend:
        return self  # stateless and registered once: a deep-copied model keeps the registered instance

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
