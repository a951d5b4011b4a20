"""YOLOv5 detection head and the yaml-driven detection model."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from sparseyolo.models.common import C3, SPPF, Bottleneck, Concat, Conv
from sparseyolo.utils.torch_utils import fold_bn

__all__ = ["Detect", "DetectionModel", "parse_model", "load_config", "make_divisible", "fuse_conv_and_bn", "CONFIG_DIR"]

LOGGER = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Square input used once at build time to measure each Detect level's stride (as YOLOv5 does).
_STRIDE_PROBE = 256


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x``."""
    return int(math.ceil(x / divisor) * divisor)


class Detect(nn.Module):
    """YOLOv5 detection head: one 1x1 conv per level predicting ``na * (5 + nc)`` channels.

    Args:
        nc: number of classes.
        anchors: per level, a flat list of ``(w, h)`` anchor pairs in input pixels.
        ch: input channels of each level.
        inplace: kept for compatibility with YOLOv5 checkpoints; decoding never modifies the raw outputs.

    Attributes:
        anchors (Tensor[nl, na, 2]): persistent buffer; after ``DetectionModel`` builds, in grid units
            (pixels divided by the level's stride), exactly as official checkpoints store it.
        stride (Tensor[nl]): pixels per grid cell of each level (set by ``DetectionModel``).

    Shapes:
        input: list of ``nl`` tensors ``Tensor[B, ch[i], H_i, W_i]``.
        training: list of raw ``Tensor[B, na, H_i, W_i, 5 + nc]``.
        eval: ``(Tensor[B, sum(na * H_i * W_i), 5 + nc], raw list)``; rows are ``(cx, cy, w, h)`` in input
        pixels, then sigmoid objectness and sigmoid class scores.
    """

    def __init__(self, nc: int = 80, anchors: Any = (), ch: Any = (), inplace: bool = True) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace
        self.stride = torch.ones(self.nl)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Apply the per-level convs; in eval mode also decode boxes (see class docstring)."""
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                # Rebuilt every call (tiny tensors): a cache would go stale when anchors or stride are
                # loaded or changed after a first forward.
                self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
                # bf16 (8-bit mantissa) cannot hold a 640-pixel coordinate to better than 2-4 px: a bf16 model
                # decodes in fp32; fp16/fp32 models decode in their own dtype, as YOLOv5 does
                y = x[i].float() if x[i].dtype == torch.bfloat16 else x[i]
                xy, wh, conf = y.sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + self.grid[i].to(xy.dtype)) * self.stride[i].to(xy.dtype)
                wh = (wh * 2) ** 2 * self.anchor_grid[i].to(wh.dtype)
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return x if self.training else (torch.cat(z, 1), x)

    def _make_grid(self, nx: int, ny: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets ``Tensor[1, na, ny, nx, 2]`` (minus 0.5) and anchor sizes in pixels, same shape."""
        d = self.anchors[i].device
        t = torch.float32 if self.anchors.dtype == torch.bfloat16 else self.anchors.dtype
        shape = (1, self.na, ny, nx, 2)
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i].to(d)).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid

    def _apply(self, fn: Any, recurse: bool = True) -> Detect:
        # ``stride`` is a plain attribute, not a buffer, so that state_dict keys stay identical to
        # YOLOv5's; it still has to follow .to()/.half()/.cuda().
        super()._apply(fn, recurse)
        self.stride = fn(self.stride)
        return self


# Module names allowed in a config's module column; configs are data, never eval'd.
_MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "Concat": Concat,
    "Detect": Detect,
    "nn.Upsample": nn.Upsample,
    "nn.BatchNorm2d": nn.BatchNorm2d,
}
_CHANNEL_MODULES = (Conv, Bottleneck, C3, SPPF)


def _resolve_arg(a: Any, d: dict) -> Any:
    """Replace the names a config may use in args ('nc', 'anchors', 'None') by their values."""
    if isinstance(a, str):
        if a in ("nc", "anchors"):
            return d[a]
        if a == "None":
            return None
    return a


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a YOLOv5 model dict.

    Args:
        d: the config (``nc``, ``depth_multiple``, ``width_multiple``, ``anchors``, ``backbone``, ``head``).
        ch: ``[input channels]``.

    Returns:
        ``(layers, save)``: an ``nn.Sequential`` whose layers carry ``.i`` (index), ``.f`` (from), ``.type``
        and ``.np`` (parameter count), and the sorted indices of layers whose outputs are reused later.

    Raises:
        ValueError: an unknown module name or a malformed row.
    """
    anchors, nc, gd, gw = d["anchors"], d["nc"], d["depth_multiple"], d["width_multiple"]
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)

    layers, save, c2 = [], [], ch[-1]
    for i, row in enumerate(d["backbone"] + d["head"]):
        try:
            f, n, name, args = row
        except (TypeError, ValueError) as e:
            raise ValueError(f"config row {i} should be [from, repeats, module, args], got {row!r}") from e
        if name not in _MODULES:
            raise ValueError(f"config row {i}: unknown module {name!r}; known: {sorted(_MODULES)}")
        m = _MODULES[name]
        args = [_resolve_arg(a, d) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n

        if m in _CHANNEL_MODULES:
            c1, c2 = ch[f], args[0]
            if c2 != no:  # only the Detect outputs escape the width scaling
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m is C3:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            args = [ch[f]]
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):  # number of anchors instead of sizes
                args[1] = [list(range(args[1] * 2))] * len(f)
        else:
            c2 = ch[f]

        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        m_.i, m_.f, m_.type = i, f, f"{m.__module__}.{m.__name__}"
        m_.np = sum(x.numel() for x in m_.parameters())
        LOGGER.debug("%3s %18s %3s %10s  %-40s %s", i, f, n, m_.np, m_.type, args)
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


def check_anchor_order(m: Detect) -> None:
    """Flip the anchor levels in place if their order (by area) disagrees with the stride order."""
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da = a[-1] - a[0]
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        LOGGER.info("reversing anchor order to match the stride order")
        m.anchors[:] = m.anchors.flip(0)


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding convolution.

    The folding is :func:`sparseyolo.utils.torch_utils.fold_bn` (YOLOv5's expressions, so the fused numbers match
    its fused models); this wraps the result in a new conv and moves a pruning mask along.

    Args:
        conv: the convolution (with or without bias).
        bn: the BatchNorm2d that follows it.

    Returns:
        A new ``nn.Conv2d`` with a bias and ``requires_grad=False`` parameters.
    """
    fused = (
        nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=True,
        )
        .requires_grad_(False)
        .to(device=conv.weight.device, dtype=conv.weight.dtype)
    )

    w, b = fold_bn(conv.weight, conv.bias, bn)
    fused.weight.copy_(w)
    fused.bias.copy_(b)
    mask = conv._buffers.get("weight_mask")
    if mask is not None:  # a pruning mask (sparseyolo.prune) moves to the fused conv; its zeros stay exact
        fused.register_buffer("weight_mask", mask.clone())
        fused.weight.masked_fill_(~mask, 0)
        if hasattr(conv, "weight_mask_pattern"):
            fused.weight_mask_pattern = conv.weight_mask_pattern
    return fused


def load_config(cfg: dict | str | Path) -> tuple[dict, str]:
    """Read a model config.

    Args:
        cfg: a config dict (deep-copied), a yaml path, or a built-in name such as ``"yolov5s"``/``"yolov5s.yaml"``.

    Returns:
        ``(config dict, yaml file name)``; the name is ``""`` for a dict.

    Raises:
        FileNotFoundError: neither an existing file nor a built-in config.
    """
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg), ""
    path = Path(cfg)
    if not path.is_file():
        builtin = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
        if not builtin.is_file():
            raise FileNotFoundError(
                f"model config {str(cfg)!r} not found (built-ins: {sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))})"
            )
        path = builtin
    with open(path, encoding="utf-8", errors="ignore") as fh:
        return yaml.safe_load(fh), path.name


class DetectionModel(nn.Module):
    """YOLOv5 detector built from a config.

    Args:
        cfg: a config dict, a yaml path, or a built-in config name such as ``"yolov5s.yaml"``.
        ch: input channels.
        nc: number of classes; overrides the config's ``nc``.
        anchors: overrides the config's anchors.

    Attributes:
        model (nn.Sequential): the layers, each with ``.i``, ``.f``, ``.type``, ``.np``.
        save (list[int]): indices of layers whose outputs later layers read.
        yaml (dict): the config used. yaml_file (str): its file name ("" when built from a dict).
        names (list[str]): class names. nc (int): number of classes.
        stride (Tensor[nl]): stride of each output level.

    Shapes:
        ``forward(Tensor[B, ch, H, W])`` with ``H, W`` multiples of the largest stride (32); see
        :class:`Detect` for the output.
    """

    def __init__(
        self, cfg: dict | str | Path = "yolov5s.yaml", ch: int = 3, nc: int | None = None, anchors: Any = None
    ) -> None:
        super().__init__()
        self.yaml, self.yaml_file = load_config(cfg)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            LOGGER.info("overriding config nc=%s with nc=%s", self.yaml["nc"], nc)
            self.yaml["nc"] = nc
        if anchors:
            LOGGER.info("overriding config anchors with anchors=%s", anchors)
            self.yaml["anchors"] = round(anchors) if isinstance(anchors, float) else anchors
        self.model, self.save = parse_model(copy.deepcopy(self.yaml), ch=[ch])
        self.nc: int = self.yaml["nc"]
        self.names: list[str] = [str(i) for i in range(self.nc)]
        self.inplace = self.yaml.get("inplace", True)

        m = self.model[-1]
        if not isinstance(m, Detect):
            raise ValueError("the last layer of a detection config must be Detect")
        m.inplace = self.inplace
        s = _STRIDE_PROBE
        # Probe in eval mode so BatchNorm running stats stay untouched; the raw per-level maps are
        # Tensor[1, na, ny, nx, no] and the square probe gives stride = s / ny.
        self.eval()
        with torch.no_grad():
            _, raw = self.forward(torch.zeros(1, ch, s, s))
        self.train()
        m.stride = torch.tensor([s / x.shape[2] for x in raw])
        check_anchor_order(m)
        m.anchors /= m.stride.view(-1, 1, 1)
        self.stride = m.stride
        self._initialize_biases()

    def forward(self, x: torch.Tensor) -> Any:
        """Run the layers, routing inputs by each layer's ``.f`` and keeping the ``.save`` outputs."""
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _initialize_biases(self) -> None:
        """Prior biases for a fresh model: ~8 objects per 640x640 image per level, class prior 0.6/nc.

        These priors come from the YOLOv5 recipe (itself after RetinaNet's prior-probability init,
        arXiv:1708.02002 sec. 4.1).
        """
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride, strict=True):
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5 : 5 + m.nc] += math.log(0.6 / (m.nc - 0.99999))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def _apply(self, fn: Any, recurse: bool = True) -> DetectionModel:
        super()._apply(fn, recurse)
        self.stride = self.model[-1].stride
        return self

    def fuse(self) -> DetectionModel:
        """Fold every Conv's BatchNorm into its convolution (in place) and switch it to ``forward_fuse``."""
        LOGGER.info("Fusing layers... ")
        for m in self.modules():
            if isinstance(m, Conv) and hasattr(m, "bn"):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, "bn")
                m.forward = m.forward_fuse
        self.info()
        return self

    def is_fused(self) -> bool:
        """True when no Conv keeps a BatchNorm."""
        return not any(isinstance(m, Conv) and hasattr(m, "bn") for m in self.modules())

    def info(self, img_size: int | list[int] = 640) -> str:
        """Log and return the one-line summary YOLOv5 prints (layers, parameters, gradients, GFLOPs).

        GFLOPs count 2 x multiply-accumulates of the convolutions on one ``stride x stride`` image scaled
        to ``img_size``, as YOLOv5's thop-based count does (thop is not needed here).
        """
        n_p = sum(x.numel() for x in self.parameters())
        n_g = sum(x.numel() for x in self.parameters() if x.requires_grad)
        fs = ""
        try:
            fs = f", {self.flops(img_size):.1f} GFLOPs"
        except Exception as e:  # a summary must not fail because of an exotic layer
            LOGGER.debug("FLOP count failed: %s", e)
        name = Path(self.yaml_file).stem.replace("yolov5", "YOLOv5") if self.yaml_file else "Model"
        # "Layers" are leaf modules, as Ultralytics counts them: the official fused yolov5n gives 124.
        n_l = sum(1 for m in self.modules() if not m._modules)
        line = f"{name} summary: {n_l} layers, {n_p:,} parameters, {n_g:,} gradients{fs}"
        LOGGER.info(line)
        return line

    def flops(self, img_size: int | list[int] = 640) -> float:
        """GFLOPs (2 x MACs) of one forward pass at ``img_size`` (int or ``[h, w]``)."""
        from torch.utils.flop_counter import FlopCounterMode

        p = next(self.parameters())
        stride = max(int(self.stride.max()), 32)
        im = torch.zeros((1, self.yaml.get("ch", 3), stride, stride), device=p.device, dtype=p.dtype)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                self.forward(im)
        finally:
            self.train(was_training)
        imgsz = img_size if isinstance(img_size, (list, tuple)) else [img_size, img_size]
        return counter.get_total_flops() / 1e9 * imgsz[0] / stride * imgsz[1] / stride
