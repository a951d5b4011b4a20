"""Which convs :func:`~sparseyolo.sparse.sparsify` converts, with which BatchNorm and activation: :class:`Plan`.

Finds conv blocks (``.conv``/``.bn``/``.act``), conv -> BatchNorm pairs (a ``torch.fx`` trace, else consecutive
children of an ``nn.Sequential``), other pruned convs, and SparseConv2d layers to repack; folds each BatchNorm
into its conv's weight and bias (eval-mode statistics; zeros of the weight stay exact zeros).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from sparseyolo.sparse.backends import ConvGeometry
from sparseyolo.sparse.modules import SparseConv2d
from sparseyolo.utils.torch_utils import fold_bn

LOGGER = logging.getLogger(__name__)

MASK_NAME = "weight_mask"
PATTERN_ATTR = "weight_mask_pattern"


@dataclass
class Plan:
    """One conv to convert: its BN-folded float32 CPU weight and bias, geometry and fusable activation."""

    name: str
    conv: nn.Module  # nn.Conv2d, or a SparseConv2d to repack
    bn_name: str | None
    block: nn.Module | None  # the block whose .act is fused (None: nothing to fuse)
    weight: torch.Tensor
    bias: torch.Tensor | None
    geometry: ConvGeometry | None  # None when no backend can take the conv (see ineligible)
    act_kind: str | None  # "identity"/"silu" when the block's act can be fused, None when it stays a module
    pattern: str | None
    pruned: bool
    ineligible: str = ""

    @property
    def fused_act(self) -> str:
        return self.act_kind if self.act_kind is not None else "identity"

    def dense_conv(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the folded weight and bias (for a conv that stays dense)."""
        c = self.conv
        new = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                        bias=self.bias is not None, padding_mode=c.padding_mode)
        new = new.to(device=c.weight.device, dtype=c.weight.dtype).requires_grad_(False)
        with torch.no_grad():
            new.weight.copy_(self.weight)
            if self.bias is not None:
                new.bias.copy_(self.bias)
        return new


def act_kind(act: nn.Module | None) -> str | None:
    if act is None or isinstance(act, nn.Identity):
        return "identity"
    if isinstance(act, nn.SiLU):
        return "silu"
    return None  # stays a module after the conv


def _geometry(conv: nn.Conv2d) -> tuple[ConvGeometry | None, str]:
    if conv.groups != 1:
        return None, "groups != 1"
    if conv.dilation != (1, 1):
        return None, "dilation"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None, "padding mode"
    return ConvGeometry.from_conv(conv), ""


def _fx_pairs(model: nn.Module) -> list[tuple[str, str]] | None:
    """(conv name, bn name) where a traced graph feeds a Conv2d's only use into a BatchNorm2d."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any model that does not trace falls back to the Sequential rule
        LOGGER.debug("sparsify: torch.fx could not trace %s (%s); using the nn.Sequential rule", type(model).__name__, e)
        return None
    mods = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            for (n1, m1), (n2, m2) in zip(kids, kids[1:]):
                if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + n1, prefix + n2))
    return pairs


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def conv_plan(model: nn.Module, name: str, conv: nn.Conv2d, bn_name: str | None, block: nn.Module | None) -> Plan:
    """The :class:`Plan` of one conv (``bn_name``: its BatchNorm, folded; ``block``: whose ``.act`` it fuses)."""
    bn = model.get_submodule(bn_name) if bn_name else None
    w, b = fold_bn(conv.weight, conv.bias, bn)
    geometry, why = _geometry(conv)
    kind = act_kind(getattr(block, "act", None)) if block is not None else "identity"
    return Plan(name, conv, bn_name, block, w.float().cpu(), None if b is None else b.float().cpu(), geometry, kind,
                getattr(conv, PATTERN_ATTR, None), MASK_NAME in conv._buffers, why)


def find_plans(model: nn.Module) -> list[Plan]:
    """Every conv :func:`sparsify` folds or converts, in module order (blocks, BN pairs, other pruned convs,
    SparseConv2d layers)."""
    plans: list[Plan] = []
    claimed: set[int] = set()
    for name, mod in list(model.named_modules()):
        conv, bn, act = getattr(mod, "conv", None), getattr(mod, "bn", None), getattr(mod, "act", None)
        if isinstance(conv, nn.Conv2d) and isinstance(act, nn.Module) and (bn is None or isinstance(bn, nn.BatchNorm2d)):
            prefix = f"{name}." if name else ""
            plans.append(conv_plan(model, prefix + "conv", conv, prefix + "bn" if bn is not None else None, mod))
            claimed.add(id(conv))
    pairs = _fx_pairs(model)
    if pairs is None:
        pairs = _sequential_pairs(model)
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        if id(conv) not in claimed:
            plans.append(conv_plan(model, conv_name, conv, bn_name, None))
            claimed.add(id(conv))
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and id(mod) not in claimed and MASK_NAME in mod._buffers:
            plans.append(conv_plan(model, name, mod, None, None))
            claimed.add(id(mod))
        elif isinstance(mod, SparseConv2d):
            b = None if mod.bias is None else mod.bias.detach().float().cpu()
            plans.append(Plan(name, mod, None, None, mod.dense_weight().float().cpu(), b, mod.geometry, mod.activation,
                              mod.pattern, True))
    return plans
