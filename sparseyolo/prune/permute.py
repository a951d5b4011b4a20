"""Input-channel permutation for N:M sparsity (the channel-permutation idea of NVIDIA's ASP, arXiv:2104.08378).

N:M masks keep ``n`` of every ``m`` consecutive input channels. Which channels share a group is an accident of
the trained layout: two large weights that land in one group of a 2:4 pattern lose one of them, while a group
of four small weights keeps two it does not need. Reordering a layer's input channels changes the groups, and
the reorder is free when it is folded into the weights: permute the output channels of the layers that produce
those channels (conv weight and bias, the following BatchNorm) and the input channels of every layer that reads
them. The network computes the same function; only the grouping seen by the N:M mask changes.

Three steps, each usable alone:

- :func:`channel_spaces` traces the model (``torch.fx``) and finds every *channel space*: a set of channels that
  must be permuted together, with the convs that produce it, the per-channel modules on the way (BatchNorm,
  activations, pooling, upsampling; residual additions merge spaces) and the convs that read it, each at its
  input-channel offset (a concatenation places spaces side by side). A space that reaches anything else (the
  model's input or output, a reshape, a Linear, a grouped conv) is left as it is.
- :func:`search_permutation` finds, for a saliency matrix ``S[rows, channels]``, an order of the channels that
  maximises the saliency N:M keeps (per row and group, the top ``n`` of ``m``): greedy pairwise channel swaps
  between groups, many disjoint swaps per round, until no swap gains.
- :func:`permute_channels` runs both over a model and folds the permutations into its weights.

Apply it to the unpruned model, then prune (``sparseyolo prune --nm 2:4 --permute``). Example::

    from sparseyolo.prune import prune
    from sparseyolo.prune.permute import permute_channels
    report = permute_channels(model, 2, 4)      # model outputs unchanged (up to float rounding)
    print(report.summary())                     # kept saliency before -> after
    prune(model, "nm", n=2, m=4)
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sparseyolo.prune.calibration_data import as_float_images
from sparseyolo.prune.masks import has_mask
from sparseyolo.prune.obs import block_sums

__all__ = [
    "ChannelSpace",
    "PermutationReport",
    "activation_energy",
    "apply_permutations",
    "channel_spaces",
    "kept_saliency",
    "permute_channels",
    "search_permutation",
]

LOGGER = logging.getLogger(__name__)

#: Modules that act on each channel alone: they keep a space's channels in place and carry no per-channel state.
_ELEMENTWISE_MODULES = (
    nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Mish,
    nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.Upsample, nn.ZeroPad2d,
)
_ELEMENTWISE_FUNCTIONS = {
    F.silu, F.relu, F.relu6, F.leaky_relu, F.hardswish, F.hardsigmoid, F.gelu, F.mish, torch.sigmoid, torch.tanh,
    torch.relu, F.max_pool2d, F.avg_pool2d, F.interpolate, F.dropout,
}
_ELEMENTWISE_METHODS = {"sigmoid", "relu", "tanh", "contiguous", "clone", "float", "half", "to"}
_BINARY_FUNCTIONS = {operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.sub}


@dataclass
class ChannelSpace:
    """Channels that must be permuted together.

    Attributes:
        length: number of channels.
        producers: convs whose output channels these are (several when residual additions merge spaces).
        per_channel: ``(module, offset)``: modules with per-channel parameters or buffers on the way (BatchNorm2d),
            whose channels ``offset .. offset + length`` these are.
        consumers: ``(conv, offset)``: the conv reads these channels as its input channels
            ``offset .. offset + length``.
    """

    length: int
    producers: list[nn.Conv2d] = field(default_factory=list)
    per_channel: list[tuple[nn.Module, int]] = field(default_factory=list)
    consumers: list[tuple[nn.Conv2d, int]] = field(default_factory=list)


class _Tracer(fx.Tracer):
    """Leaves: torch.nn's own modules and detection heads (per-level 1x1 convs with shape-dependent decoding)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_detect_head(m) or super().is_leaf_module(m, qualname)


def _is_detect_head(m: nn.Module) -> bool:
    convs = getattr(m, "m", None)
    return (isinstance(convs, nn.ModuleList) and len(convs) > 0 and all(isinstance(c, nn.Conv2d) for c in convs)
            and getattr(m, "nl", None) == len(convs))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.length: list[int] = []

    def new(self, length: int) -> int:
        self.parent.append(len(self.parent))
        self.length.append(length)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
        return a


def channel_spaces(model: nn.Module) -> list[ChannelSpace]:
    """The permutable channel spaces of ``model`` (see the module docstring), in graph order.

    Raises:
        TypeError: the model cannot be traced by ``torch.fx`` (data-dependent control flow), with the reason.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises several types for untraceable code
        raise TypeError(f"channel permutation traces the model with torch.fx, which failed: {e}") from e
    modules = dict(model.named_modules())
    uf = _UnionFind()
    frozen: set[int] = set()
    producers: dict[int, list[nn.Conv2d]] = {}
    per_channel: dict[int, list[tuple[nn.Module, int]]] = {}
    consumers: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    conv_out: dict[nn.Conv2d, int] = {}  # a conv called twice produces one space
    conv_in: dict[nn.Conv2d, tuple[int, ...]] = {}
    layout: dict[fx.Node, tuple[int, ...]] = {}  # node -> its channel dim as spaces side by side

    def freeze(arg) -> None:
        for node in _nodes_in(arg):
            frozen.update(layout.get(node, ()))

    def unify(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
        if [uf.length[s] for s in a] != [uf.length[s] for s in b]:
            return None
        return tuple(uf.union(x, y) for x, y in zip(a, b, strict=True))

    def consume(conv: nn.Conv2d, lay: tuple[int, ...]) -> None:
        if conv in conv_in:
            merged = unify(conv_in[conv], lay)
            if merged is None:
                frozen.update(lay + conv_in[conv])
                return
            lay = merged
        conv_in[conv] = lay
        consumers.append((conv, lay))

    def produce(conv: nn.Conv2d) -> tuple[int, ...]:
        if conv not in conv_out:
            conv_out[conv] = uf.new(conv.out_channels)
            producers[conv_out[conv]] = [conv]
        return (conv_out[conv],)

    for node in graph.nodes:
        if node.op == "placeholder":
            continue  # the model's inputs: fixed channels (no layout)
        elif node.op == "get_attr":
            continue
        elif node.op == "call_module":
            mod = modules[node.target]
            src = node.args[0] if node.args else None
            lay = layout.get(src) if isinstance(src, fx.Node) else None
            if _is_detect_head(mod):
                inputs = list(src) if isinstance(src, (list, tuple)) else []
                if len(inputs) != len(mod.m):
                    freeze(node.args)
                    continue
                for conv, inp in zip(mod.m, inputs, strict=True):
                    if isinstance(inp, fx.Node) and inp in layout and _total(uf, layout[inp]) == conv.in_channels:
                        consume(conv, layout[inp])
                    else:
                        freeze(inp)
            elif isinstance(mod, nn.Conv2d):
                if lay is None or _total(uf, lay) != mod.in_channels:  # e.g. the model's input image
                    freeze(node.args)
                    layout[node] = produce(mod)
                elif mod.groups == 1:
                    consume(mod, lay)
                    layout[node] = produce(mod)
                else:  # grouped / depthwise: channels cannot move between groups
                    frozen.update(lay)
                    frozen.update(produce(mod))
                    layout[node] = produce(mod)
            elif isinstance(mod, nn.BatchNorm2d) and lay is not None and _total(uf, lay) == mod.num_features:
                offset = 0
                for s in lay:  # a BatchNorm over a concatenation is permuted slice by slice
                    per_channel.setdefault(s, []).append((mod, offset))
                    offset += uf.length[s]
                layout[node] = lay
            elif isinstance(mod, _ELEMENTWISE_MODULES) and lay is not None:
                layout[node] = lay
            else:
                freeze(node.args)
                freeze(node.kwargs)
        elif node.op in ("call_function", "call_method"):
            target = node.target
            args = node.args
            if target is torch.cat:
                parts = args[0]
                dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
                if dim == 1 and all(isinstance(p, fx.Node) and p in layout for p in parts):
                    layout[node] = tuple(s for p in parts for s in layout[p])
                else:
                    freeze(args)
            elif target in _BINARY_FUNCTIONS:
                tensors = [a for a in args[:2] if isinstance(a, fx.Node)]
                if len(tensors) == 1 and tensors[0] in layout:
                    layout[node] = layout[tensors[0]]
                elif len(tensors) == 2 and all(t in layout for t in tensors):
                    merged = unify(layout[tensors[0]], layout[tensors[1]])
                    if merged is None:
                        freeze(args)
                    else:
                        layout[node] = merged
                else:
                    freeze(args)
            elif (target in _ELEMENTWISE_FUNCTIONS or (node.op == "call_method" and target in _ELEMENTWISE_METHODS)) \
                    and args and isinstance(args[0], fx.Node) and args[0] in layout:
                layout[node] = layout[args[0]]
                freeze(args[1:])
                freeze(node.kwargs)
            else:
                freeze(args)
                freeze(node.kwargs)
        elif node.op == "output":
            freeze(node.args)

    roots: dict[int, ChannelSpace] = {}
    frozen_roots = {uf.find(s) for s in frozen}
    for s in range(len(uf.parent)):
        r = uf.find(s)
        if r in frozen_roots:
            continue
        space = roots.setdefault(r, ChannelSpace(uf.length[r]))
        space.producers.extend(p for p in producers.get(s, []) if p not in space.producers)
        space.per_channel.extend(p for p in per_channel.get(s, []) if p not in space.per_channel)
    for conv, lay in consumers:
        offset = 0
        for s in lay:
            r = uf.find(s)
            if r in roots and (conv, offset) not in roots[r].consumers:
                roots[r].consumers.append((conv, offset))
            offset += uf.length[s]
    return [sp for sp in roots.values() if sp.producers and sp.consumers and sp.length > 1]


def _total(uf: _UnionFind, lay: tuple[int, ...]) -> int:
    return sum(uf.length[s] for s in lay)


def _nodes_in(arg) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(arg, out.append)
    return out


# --- the search ---------------------------------------------------------------------------------------------


def kept_saliency(saliency: torch.Tensor, n: int, m: int, perm: torch.Tensor | None = None) -> float:
    """Saliency an N:M mask keeps: per row and group of ``m`` consecutive (permuted) channels, the top ``n``."""
    s = saliency if perm is None else saliency[:, perm]
    rows, length = s.shape
    return float(s.reshape(rows, length // m, m).topk(n, dim=-1).values.sum())


def search_permutation(
    saliency: torch.Tensor,
    n: int,
    m: int,
    max_rounds: int = 200,
    tol: float = 1e-6,
    chunk_rows: int = 256,
) -> tuple[torch.Tensor, int]:
    """An order of the channels that keeps more N:M saliency: ``(perm, rounds)``.

    ``saliency`` is ``Tensor[rows, channels]`` (non-negative; channels a multiple of ``m``); ``perm[j]`` is the
    channel placed at position ``j``. Greedy local search: each round scores every swap of two channels in
    different groups exactly, applies the best swaps that touch disjoint groups (their gains then add), and
    stops when no swap gains more than ``tol`` of the kept total (or after ``max_rounds``). The result never
    keeps less than the identity order.

    Scoring uses that the top ``n`` of a group with one member replaced by ``v`` is
    ``sum(top n-1 of the others) + max(v, n-th of the others)``, so every (group, slot, candidate) is one max
    over the rows.
    """
    if saliency.dim() != 2:
        raise ValueError(f"saliency must be 2-D [rows, channels], got shape {tuple(saliency.shape)}")
    rows, length = saliency.shape
    if length % m or not 1 <= n < m:
        raise ValueError(f"{length} channels do not split into groups of {m} keeping {n}")
    s = saliency.detach().float()
    perm = torch.arange(length)
    groups = length // m
    if groups < 2 or rows == 0:
        return perm, 0
    group_of = torch.arange(length) // m
    # each unordered pair of positions in different groups once: p < q
    invalid = (group_of[:, None] == group_of[None, :]) | torch.ones(length, length, dtype=torch.bool).tril()
    for rnd in range(1, max_rounds + 1):
        sg = s[:, perm].reshape(rows, groups, m)
        value = sg.topk(n, dim=-1).values.sum((0, 2))  # [G]
        total = float(value.sum())
        nv = torch.empty(groups, m, length, dtype=s.dtype)  # group g with slot i replaced by channel c
        for i in range(m):
            others = torch.cat((sg[..., :i], sg[..., i + 1:]), dim=-1)
            top = others.topk(n, dim=-1).values  # [R, G, n], descending
            base = top[..., : n - 1].sum((0, 2))  # [G]
            nth = top[..., n - 1]  # [R, G]
            acc = torch.zeros(groups, length, dtype=s.dtype)
            for r0 in range(0, rows, chunk_rows):
                acc += torch.maximum(s[r0:r0 + chunk_rows, None, :], nth[r0:r0 + chunk_rows, :, None]).sum(0)
            nv[:, i, :] = base[:, None] + acc
        by_pos = nv.reshape(length, length)[:, perm]  # [p, q]: p's group with p's slot holding q's channel
        vpos = value.repeat_interleave(m)
        gain = by_pos - vpos[:, None]
        gain = (gain + gain.T).masked_fill_(invalid, float("-inf"))
        threshold = tol * max(total, 1e-30)
        flat = gain.flatten()
        best = flat.topk(min(flat.numel(), 8 * groups))
        used: set[int] = set()
        swaps = 0
        for g, idx in zip(best.values.tolist(), best.indices.tolist(), strict=True):
            if g <= threshold:
                break
            p, q = divmod(idx, length)
            gp, gq = p // m, q // m
            if gp in used or gq in used:
                continue
            used.update((gp, gq))
            perm[p], perm[q] = perm[q].clone(), perm[p].clone()
            swaps += 1
        if swaps == 0:
            return perm, rnd
    return perm, max_rounds


# --- over a model -------------------------------------------------------------------------------------------


@dataclass
class PermutationReport:
    """What :func:`permute_channels` did: per permuted space, its size and the kept saliency before -> after."""

    #: ``(first producer's name, channels, kept saliency before, after, search rounds)`` per permuted space
    rows: list[tuple[str, int, float, float, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # producer, reason
    #: the permutation applied to each permuted space, by its first producer's name (what
    #: :func:`apply_permutations` replays on another copy of the same model)
    perms: dict[str, list[int]] = field(default_factory=dict)

    @property
    def before(self) -> float:
        return sum(r[2] for r in self.rows)

    @property
    def after(self) -> float:
        return sum(r[3] for r in self.rows)

    def summary(self) -> str:
        gain = self.after / self.before - 1 if self.before else 0.0
        return (f"channel permutation: {len(self.rows)} spaces permuted, {len(self.skipped)} left as they are; "
                f"kept N:M saliency {self.before:.4g} -> {self.after:.4g} ({gain:+.2%})")


def activation_energy(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[nn.Conv2d, torch.Tensor]:
    """Mean square of every conv's input, per input channel (``Tensor[in_channels]``), over ``batches``.

    With it, ``weight**2 * energy`` is the diagonal OBS saliency (the output error a weight's removal causes,
    without the other weights' compensation): what :func:`permute_channels` maximises for calibrated pruning.
    Batches are image tensors: uint8 0-255 (scaled to [0, 1], as calibration batches are) or float as the model
    takes them, on the model's device and dtype.
    """
    sums: dict[nn.Conv2d, torch.Tensor] = {}
    counts: dict[nn.Conv2d, int] = {}

    def hook(mod, args):
        x = args[0].detach().float()
        sums[mod] = sums.get(mod, 0) + x.square().sum((0, 2, 3))
        counts[mod] = counts.get(mod, 0) + x.numel() // x.shape[1]

    p = next(model.parameters())
    handles = [mod.register_forward_pre_hook(hook) for mod in model.modules() if isinstance(mod, nn.Conv2d)]
    try:
        with torch.no_grad():
            for x in batches:
                model(as_float_images(x, p.device, p.dtype))
    finally:
        for h in handles:
            h.remove()
    return {mod: sums[mod] / counts[mod] for mod in sums}


def permute_channels(
    model: nn.Module,
    n: int,
    m: int,
    block: int = 1,
    energy: Mapping[nn.Conv2d, torch.Tensor] | None = None,
    layers: Callable[[nn.Conv2d], bool] | None = None,
    max_rounds: int = 200,
    progress: bool = True,
) -> PermutationReport:
    """Permute ``model``'s channels in place so that N:M pruning keeps more saliency; outputs stay the same.

    Args:
        model: an unpruned model (no ``weight_mask``), traceable by ``torch.fx`` (YOLOv5 detectors are).
        n, m: the N:M pattern that will be applied.
        block: the mask will be shared by ``block`` consecutive output channels: the saliency of each block of
            rows is summed before the search (as the block mask is chosen).
        energy: per-conv input energy (:func:`activation_energy`): the saliency is ``weight**2 * energy`` (the
            calibrated criterion); None: ``|weight|`` (the magnitude criterion).
        layers: which consumer convs will be N:M pruned (default: every conv whose input channels divide by
            ``m``); the others still receive the permutation but do not steer it.
        max_rounds: per space, see :func:`search_permutation`.
        progress: show a progress bar over the channel spaces (on stderr).
    """
    masked = [name for name, mod in model.named_modules() if has_mask(mod)]
    if masked:
        raise ValueError(f"permute channels before pruning: {len(masked)} layers already have masks (first: "
                         f"{masked[0]}); permuting them would break their N:M groups")
    names = {mod: name for name, mod in model.named_modules()}
    report = PermutationReport()
    spaces = channel_spaces(model)
    for space in tqdm(spaces, desc="permute", disable=not progress, bar_format="{l_bar}{bar:20}{r_bar}"):
        label = names[space.producers[0]]
        if space.length % m:
            report.skipped.append((label, f"{space.length} channels are not a multiple of {m}"))
            continue
        parts = []
        for conv, offset in space.consumers:
            if offset % m or (layers is not None and not layers(conv)) or conv.in_channels % m:
                continue
            w = conv.weight.detach().float()[:, offset:offset + space.length]
            if energy is not None:
                e = energy.get(conv)
                sal = w.square() * (e[offset:offset + space.length].view(1, -1, 1, 1) if e is not None else 1.0)
            else:
                sal = w.abs()
            sal = block_sums(sal, block) if block > 1 else sal
            parts.append(sal.movedim(1, -1).reshape(-1, space.length))
        if not parts:
            report.skipped.append((label, "no N:M-pruned conv reads these channels"))
            continue
        s = torch.cat(parts)
        perm, rounds = search_permutation(s, n, m, max_rounds=max_rounds)
        before, after = kept_saliency(s, n, m), kept_saliency(s, n, m, perm)
        if after <= before:
            perm = torch.arange(space.length)
            after = before
        else:
            _apply(space, perm)
            report.perms[label] = perm.tolist()
        report.rows.append((label, space.length, before, after, rounds))
    LOGGER.info("%s", report.summary())
    return report


def apply_permutations(model: nn.Module, perms: Mapping[str, Sequence[int]]) -> None:
    """Permute ``model``'s channels as :func:`permute_channels` permuted another copy of it (``report.perms``).

    A dense teacher so permuted computes the same function as before, with every feature map's channels in the
    order of the permuted (and pruned) student's. Raises ``ValueError`` when a space named in ``perms`` is not in
    ``model`` or has another number of channels (another architecture).
    """
    names = {mod: name for name, mod in model.named_modules()}
    spaces = {names[space.producers[0]]: space for space in channel_spaces(model)}
    for label, perm in perms.items():
        space = spaces.get(label)
        if space is None or space.length != len(perm):
            have = "absent" if space is None else f"{space.length} channels"
            raise ValueError(f"cannot replay the channel permutation of {label} ({len(perm)} channels) on this "
                             f"model ({have}): it is not the model that was permuted")
        p = torch.as_tensor(list(perm), dtype=torch.long)
        if not torch.equal(p.sort().values, torch.arange(len(p))):
            raise ValueError(f"the recorded permutation of {label} is not a permutation of 0..{len(p) - 1}")
        _apply(space, p)


@torch.no_grad()
def _apply(space: ChannelSpace, perm: torch.Tensor) -> None:
    for conv in space.producers:
        _take(conv, "weight", perm, 0)
        _take(conv, "bias", perm, 0)
    for mod, offset in space.per_channel:
        idx = _slice_index(mod.num_features, offset, perm)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _take(mod, attr, idx, 0)
    for conv, offset in space.consumers:
        _take(conv, "weight", _slice_index(conv.in_channels, offset, perm), 1)


def _slice_index(size: int, offset: int, perm: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(size)
    idx[offset:offset + len(perm)] = perm + offset
    return idx


def _take(mod: nn.Module, attr: str, index: torch.Tensor, dim: int) -> None:
    t = getattr(mod, attr, None)
    if t is None:
        return
    t.copy_(t.index_select(dim, index.to(t.device)))
