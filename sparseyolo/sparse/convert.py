"""``sparsify(model)``: fold BatchNorms and run each pruned convolution on the sparse kernel where it pays.

Walks any ``nn.Module``:

1. Conv blocks with ``.conv`` (``nn.Conv2d``), ``.bn`` (``nn.BatchNorm2d``, or none once fused) and ``.act``
   (our ``Conv``, Ultralytics' ``Conv``): the BatchNorm is folded into the conv, a SiLU/identity activation
   is fused into the kernel's epilogue; ``bn`` and ``act`` become ``nn.Identity`` so the block's own
   ``forward`` (``act(bn(conv(x)))``) keeps working.
2. Other conv -> BatchNorm pairs (torchvision's ResNets): found in a ``torch.fx`` trace of the model, or, when
   the model does not trace, as consecutive ``(Conv2d, BatchNorm2d)`` children of an ``nn.Sequential``.
3. Every other pruned ``nn.Conv2d`` (a detection head with its own bias).

A conv is *pruned* when it carries the ``weight_mask`` buffer of :func:`sparseyolo.prune.prune`. Each pruned
conv is given to :class:`SparseConv2d` (``backend="sparse"``), kept dense (``"dense"``), or, with ``"auto"``,
whichever of the two ran faster on this machine for its input shape, measured once and cached per process.
The decisions (and timings) are in ``model.sparsify_report`` (:class:`SparsifyReport`).
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo import ops
from sparseyolo.sparse.modules import SparseConv2d
from sparseyolo.sparse.packing import pack_conv_weight

LOGGER = logging.getLogger(__name__)

BACKENDS = ("auto", "sparse", "dense")
MASK_NAME = "weight_mask"
PATTERN_ATTR = "weight_mask_pattern"

# (weight shape, stride, padding, input shape, nnz, activation, threads) -> (dense_ms, sparse_ms)
_TIMING_CACHE: dict[tuple, tuple[float, float]] = {}


@dataclass
class LayerDecision:
    """What :func:`sparsify` did with one pruned conv."""

    name: str
    weight_shape: tuple[int, ...]
    stride: tuple[int, int]
    input_shape: tuple[int, ...] | None
    sparsity: float
    pattern: str
    backend: str  # "sparse" or "dense"
    dense_ms: float = float("nan")
    sparse_ms: float = float("nan")
    reason: str = ""

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms if self.sparse_ms == self.sparse_ms and self.sparse_ms > 0 else float("nan")


@dataclass
class SparsifyReport:
    """Per-layer decisions of :func:`sparsify`; ``str()`` gives a table."""

    backend: str
    threads: int
    layers: list[LayerDecision] = field(default_factory=list)
    folded_bn: int = 0
    #: "auto" only: whole-model forward times (ms) of the candidates it compared on ``example_input``:
    #: "sparse" (the per-layer choices), "dense" (all dense, NCHW) and "dense_channels_last".
    model_ms: dict[str, float] = field(default_factory=dict)
    #: "auto" only: which candidate was returned ("sparse", "dense" or "dense_channels_last").
    chosen: str = ""

    @property
    def sparse_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.backend == "sparse"]

    def table(self) -> str:
        head = (f"{'layer':<24} {'weight':<18} {'s':>1} {'input':<18} {'sparsity':>8} {'pattern':<12} "
                f"{'dense ms':>9} {'sparse ms':>9} {'speedup':>7}  backend")
        rows = [head]
        for d in self.layers:
            inp = "x".join(map(str, d.input_shape)) if d.input_shape else "-"
            rows.append(
                f"{d.name:<24} {'x'.join(map(str, d.weight_shape)):<18} {d.stride[0]:>1} {inp:<18} {d.sparsity:>8.3f} "
                f"{d.pattern:<12} {d.dense_ms:>9.3f} {d.sparse_ms:>9.3f} {d.speedup:>7.2f}  {d.backend}"
                + (f" ({d.reason})" if d.reason else "")
            )
        rows.append(f"{len(self.sparse_layers)}/{len(self.layers)} pruned convs sparse (backend={self.backend}, "
                    f"{self.threads} threads), {self.folded_bn} BatchNorms folded")
        if self.model_ms:
            times = ", ".join(f"{k} {v:.2f} ms" for k, v in self.model_ms.items())
            rows.append(f"whole model on example_input: {times} -> {self.chosen}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def sparsify_report(model: nn.Module) -> SparsifyReport | None:
    """The :class:`SparsifyReport` of a model returned by :func:`sparsify` (None otherwise)."""
    return getattr(model, "sparsify_report", None)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of ``bn(conv(x))`` in eval mode; zeros of the weight stay exact zeros."""
    w = conv.weight.detach()
    if bn is None:
        return w, None if conv.bias is None else conv.bias.detach()
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    b0 = conv.bias.detach() if conv.bias is not None else torch.zeros_like(std)
    return w * scale.reshape(-1, 1, 1, 1), beta + (b0 - bn.running_mean) * scale


def _dense_conv(conv: nn.Conv2d, w: torch.Tensor, b: torch.Tensor | None) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=b is not None, padding_mode=conv.padding_mode)
    new = new.to(device=w.device, dtype=w.dtype).requires_grad_(False)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _act_kind(act: nn.Module | None) -> str | None:
    if act is None or isinstance(act, nn.Identity):
        return "identity"
    if isinstance(act, nn.SiLU):
        return "silu"
    return None  # stays a module after the conv


def _ineligible(conv: nn.Conv2d) -> str:
    if conv.groups != 1:
        return "groups != 1"
    if conv.dilation != (1, 1):
        return "dilation"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return "padding mode"
    if conv.weight.dtype != torch.float32 or conv.weight.device.type != "cpu":
        return f"{conv.weight.device.type} {conv.weight.dtype} weight"
    return ""


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


@torch.no_grad()
def _measure(conv: nn.Conv2d, w: torch.Tensor, b: torch.Tensor | None, act: str, input_shape: tuple[int, ...],
             nnz: int, reps: int) -> tuple[float, float]:
    key = (tuple(w.shape), conv.stride, conv.padding, tuple(input_shape), nnz, act, torch.get_num_threads())
    if key not in _TIMING_CACHE:
        x = torch.randn(input_shape)
        packed = pack_conv_weight(w)
        wd = w.contiguous()

        def dense():
            y = F.conv2d(x, wd, b, conv.stride, conv.padding)
            return F.silu(y) if act == "silu" else y

        def sparse():
            return ops.sparse_conv2d(x, packed.values, packed.columns, packed.row_ptr, conv.kernel_size, b,
                                     conv.stride, conv.padding, act)

        # interleaved, so a burst of load on the machine hits both sides alike
        d1, s1 = _median_ms(dense, reps), _median_ms(sparse, reps)
        d2, s2 = _median_ms(dense, reps), _median_ms(sparse, reps)
        _TIMING_CACHE[key] = (min(d1, d2), min(s1, s2))
    return _TIMING_CACHE[key]


def _input_shapes(model: nn.Module, example_input: torch.Tensor, convs: set[int]) -> dict[int, tuple[int, ...]]:
    shapes: dict[int, tuple[int, ...]] = {}

    def record(mod: nn.Module, args: tuple) -> None:  # a pre-hook that returns something replaces the args
        shapes.setdefault(id(mod), tuple(args[0].shape))

    hooks = [mod.register_forward_pre_hook(record) for mod in model.modules() if id(mod) in convs]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return shapes


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


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def sparsify(
    model: nn.Module,
    backend: str = "auto",
    example_input: torch.Tensor | None = None,
    inplace: bool = False,
    reps: int = 5,
) -> nn.Module:
    """Fold BatchNorms and put each pruned conv on the sparse kernel (:class:`SparseConv2d`) where it pays.

    Args:
        model: any module; pruned convs carry ``weight_mask`` (:func:`sparseyolo.prune.prune`).
        backend: ``"sparse"`` (every eligible pruned conv), ``"dense"`` (fold only) or ``"auto"`` (per conv,
            the faster of dense ``F.conv2d`` and the sparse kernel for its input shape at the current thread
            count, measured once per shape and sparsity in this process; then the whole model with those choices
            is timed against the all-dense model in NCHW and in channels-last, and the fastest of the three is
            returned, so "auto" never returns a model slower than dense on ``example_input``).
        example_input (Tensor[N, 3, H, W], optional): the input shapes ``"auto"`` times; default a
            ``1x3x640x640`` tensor (YOLOv5's inference size).
        inplace: modify ``model`` itself instead of a deep copy (with ``"auto"``, use the returned model: it
            may be the all-dense candidate).
        reps: timed runs per side and shape for ``"auto"`` (median of ``reps``, best of two rounds).

    Returns:
        The converted model in eval mode, with ``model.sparsify_report`` (:class:`SparsifyReport`).

    Caveats:
        BatchNorms are folded with their running statistics (eval-mode semantics); the result is for
        inference. Convs with groups != 1, dilation, non-zero padding modes or non-float32/CPU weights stay
        dense (reason in the report). A conv block's activation is fused only when it is ``nn.SiLU`` or
        ``nn.Identity``; other activations stay modules after the conv. ``"auto"`` timings depend on the
        machine's load at conversion time.
    """
    if backend not in BACKENDS:
        raise ValueError(f"sparsify: backend should be one of {BACKENDS}, got '{backend}'")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    original = copy.deepcopy(model) if backend == "auto" else None  # for the whole-model check below
    report = SparsifyReport(backend=backend, threads=torch.get_num_threads())
    names = {id(m): n for n, m in model.named_modules()}

    # conv module -> (bn module or None, block owning act or None)
    plans: list[tuple[str, nn.Conv2d, str | None, nn.Module | None]] = []  # (conv name, conv, bn name, block)
    claimed: set[int] = set()
    for name, mod in list(model.named_modules()):
        conv, bn, act = getattr(mod, "conv", None), getattr(mod, "bn", None), getattr(mod, "act", None)
        if isinstance(conv, nn.Conv2d) and isinstance(act, nn.Module) and (bn is None or isinstance(bn, nn.BatchNorm2d)):
            prefix = f"{name}." if name else ""
            plans.append((prefix + "conv", conv, prefix + "bn" if bn is not None else None, mod))
            claimed.add(id(conv))
    pairs = _fx_pairs(model)
    if pairs is None:
        pairs = _sequential_pairs(model)
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        if id(conv) not in claimed:
            plans.append((conv_name, conv, bn_name, None))
            claimed.add(id(conv))
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and id(mod) not in claimed and MASK_NAME in mod._buffers:
            plans.append((name, mod, None, None))
            claimed.add(id(mod))

    pruned = {id(c) for _, c, _, _ in plans if MASK_NAME in c._buffers}
    shapes: dict[int, tuple[int, ...]] = {}
    if backend == "auto" and pruned:
        if example_input is None:
            example_input = torch.zeros(1, 3, 640, 640)
            LOGGER.info("sparsify: timing layers for a 1x3x640x640 input (pass example_input for another shape)")
        shapes = _input_shapes(model, example_input, pruned)

    for conv_name, conv, bn_name, block in plans:
        bn = model.get_submodule(bn_name) if bn_name else None
        w, b = _fold_bn(conv, bn)
        report.folded_bn += bn is not None
        act = _act_kind(getattr(block, "act", None)) if block is not None else "identity"
        fuse_act = act if act is not None else "identity"
        choice, reason, dms, sms = "dense", "", float("nan"), float("nan")
        if id(conv) in pruned:
            reason = _ineligible(conv)
            if not reason and backend == "sparse":
                choice = "sparse"
            elif not reason and backend == "auto":
                shape = shapes.get(id(conv))
                if shape is None:
                    reason = "not reached by example_input"
                else:
                    nnz = int((w != 0).sum())
                    dms, sms = _measure(conv, w, b, fuse_act, shape, nnz, reps)
                    choice = "sparse" if sms < dms else "dense"
                    reason = "" if choice == "sparse" else "dense was faster"
            numel = w.numel()
            report.layers.append(LayerDecision(
                name=names.get(id(conv), conv_name), weight_shape=tuple(w.shape), stride=tuple(conv.stride),
                input_shape=shapes.get(id(conv)), sparsity=float((w == 0).sum()) / numel if numel else 0.0,
                pattern=getattr(conv, PATTERN_ATTR, "unstructured"), backend=choice, dense_ms=dms, sparse_ms=sms,
                reason=reason))
        if choice == "sparse":
            new: nn.Module = SparseConv2d.from_dense(conv, w, b, activation=fuse_act,
                                                     pattern=getattr(conv, PATTERN_ATTR, None))
            if block is not None and act is not None:
                block.act = nn.Identity()
        elif bn is not None:
            new = _dense_conv(conv, w, b)
        else:
            continue  # nothing to fold, stays as it is
        _set(model, conv_name, new)
        if bn_name:
            _set(model, bn_name, nn.Identity())
    model.sparsify_report = report
    if backend == "auto" and report.sparse_layers:
        model = _whole_model_check(model, original, example_input, reps, report)
    LOGGER.info("sparsify: %d/%d pruned convs sparse, %d BatchNorms folded", len(report.sparse_layers),
                len(report.layers), report.folded_bn)
    return model


def _model_ms(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    with torch.no_grad():
        return _median_ms(lambda: model(x), reps)


def _same_output(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same_output, a, b))
    return True


def _whole_model_check(sparse_model: nn.Module, original: nn.Module, x: torch.Tensor, reps: int,
                       report: SparsifyReport) -> nn.Module:
    """Per-layer wins do not add up to a faster model when dense oneDNN runs faster in channels-last (our sparse
    kernel takes NCHW) or when layout changes between layers cost more than a layer saves. So "auto" times the
    whole model three ways on ``example_input`` (its per-layer choices; all dense; all dense with channels-last
    weights) and returns the fastest: ``sparsify`` never returns a model slower than the dense one it measured.
    """
    dense = sparsify(original, backend="dense", inplace=True)
    candidates: dict[str, nn.Module] = {"sparse": sparse_model, "dense": dense}
    inputs = {"sparse": x, "dense": x}
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = dense(x)
        try:
            dense_cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
            if _same_output(ref, dense_cl(x_cl)):
                candidates["dense_channels_last"], inputs["dense_channels_last"] = dense_cl, x_cl
        except Exception as e:  # noqa: BLE001 - a model that does not run channels-last (a .view, say)
            LOGGER.debug("sparsify: channels-last dense model not usable (%s)", e)
    # two interleaved rounds, best of each, as per layer; the channels-last model is fed a channels-last input
    # (a 3-channel NCHW image into its first conv costs a reorder), as a user of it would
    times = {k: _model_ms(m, inputs[k], reps) for k, m in candidates.items()}
    times = {k: min(t, _model_ms(candidates[k], inputs[k], reps)) for k, t in times.items()}
    report.model_ms = times
    report.chosen = min(times, key=times.get)
    if report.chosen == "sparse":
        return sparse_model
    why = f"whole model: {report.chosen} {times[report.chosen]:.1f} ms < sparse {times['sparse']:.1f} ms"
    for d in report.layers:
        if d.backend == "sparse":
            d.backend, d.reason = "dense", why
    LOGGER.info("sparsify: %s; returning the %s model%s", why, report.chosen.replace("_", " "),
                " (feed it x.contiguous(memory_format=torch.channels_last))"
                if report.chosen == "dense_channels_last" else "")
    chosen = candidates[report.chosen]
    chosen.sparsify_report = report
    return chosen
