"""YOLOv5 building blocks (v6.0+ architecture).

Attribute names (``conv``, ``bn``, ``act``, ``cv1``, ``cv2``, ``cv3``, ``m``) follow the official YOLOv5
modules so that ``state_dict`` keys of official checkpoints map 1:1 onto these modules.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["autopad", "Conv", "Bottleneck", "C3", "SPPF", "Concat"]

# YOLOv5 trains with these BatchNorm settings (its initialize_weights sets them on every BatchNorm2d);
# official checkpoints store eps=1e-3, and fusing must use the same eps to reproduce their outputs.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k: int | list[int], p: int | list[int] | None = None, d: int = 1) -> int | list[int]:
    """Padding that keeps the spatial size ('same') for a stride-1 convolution.

    Args:
        k: kernel size (int or per-dimension list).
        p: explicit padding; returned unchanged when given.
        d: dilation; the effective kernel is ``d * (k - 1) + 1``.

    Returns:
        The padding, an int or a list matching ``k``.
    """
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU.

    Args:
        c1: input channels.
        c2: output channels.
        k: kernel size.
        s: stride.
        p: padding (``None``: 'same' via :func:`autopad`).
        g: groups.
        d: dilation.
        act: ``True`` for SiLU, an ``nn.Module`` to use it, anything else for identity.

    Shapes:
        ``x (Tensor[B, c1, H, W]) -> Tensor[B, c2, H', W']``.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        if act is True:
            self.act: nn.Module = nn.SiLU()
        elif isinstance(act, nn.Module):
            self.act = act
        else:
            self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv, BatchNorm, activation."""
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        """Forward after the BatchNorm was folded into ``conv`` (see ``DetectionModel.fuse``)."""
        return self.act(self.conv(x))


class Bottleneck(nn.Module):
    """1x1 Conv -> 3x3 Conv, with a residual add when ``shortcut`` and ``c1 == c2``.

    Args:
        c1: input channels.
        c2: output channels.
        shortcut: add the input to the output (only when the channel counts match).
        g: groups of the 3x3 conv.
        e: hidden-channel expansion, ``c_ = int(c2 * e)``.
    """

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, c1, H, W] -> Tensor[B, c2, H, W]``."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions.

    Two 1x1 branches of ``c_ = int(c2 * e)`` channels; one goes through ``n`` Bottlenecks, both are
    concatenated and mixed by a 1x1 conv to ``c2`` channels.

    Args:
        c1: input channels.
        c2: output channels.
        n: number of Bottlenecks.
        shortcut: residual adds inside the Bottlenecks.
        g: groups of the Bottleneck 3x3 convs.
        e: hidden-channel expansion.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, c1, H, W] -> Tensor[B, c2, H, W]``."""
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained ``k x k`` max-pools (stride 1) concatenated.

    Equivalent to pooling with kernels ``k, 2k-1, 3k-2`` in parallel (5, 9, 13 for ``k=5``).

    Args:
        c1: input channels.
        c2: output channels.
        k: max-pool kernel size.
    """

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, c1, H, W] -> Tensor[B, c2, H, W]``."""
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels by default)."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """``[Tensor[B, Ci, H, W], ...] -> Tensor[B, sum(Ci), H, W]``."""
        return torch.cat(x, self.d)
