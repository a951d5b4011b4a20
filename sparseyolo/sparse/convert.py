"""``sparsify(model, config)``: fold BatchNorms and run each pruned convolution on the backend that pays.

Walks any ``nn.Module``:

1. Conv blocks with ``.conv`` (``nn.Conv2d``), ``.bn`` (``nn.BatchNorm2d``, or none once fused) and ``.act``
   (our ``Conv``, Ultralytics' ``Conv``): the BatchNorm is folded into the conv, a SiLU/identity activation
   is fused into the kernel's epilogue; ``bn`` and ``act`` become ``nn.Identity`` so the block's own
   ``forward`` (``act(bn(conv(x)))``) keeps working.
2. Other conv -> BatchNorm pairs (torchvision's ResNets): found in a ``torch.fx`` trace of the model, or, when
   the model does not trace, as consecutive ``(Conv2d, BatchNorm2d)`` children of an ``nn.Sequential``.
3. Every other pruned ``nn.Conv2d`` (a detection head with its own bias).
4. :class:`SparseConv2d` layers of an already sparsified model: repacked for the configured device and dtype.

A conv is *pruned* when it carries the ``weight_mask`` buffer of :func:`sparseyolo.prune.prune`. Which backend
runs it (:mod:`sparseyolo.sparse.backends`) follows :class:`SparsifyConfig`: one named backend wherever it
applies, or ``"auto"`` (:mod:`sparseyolo.sparse.autotune`: the fastest correct one for the layer's input shape,
measured once per process). The decisions (and timings) are in ``model.sparsify_report``
(:class:`~sparseyolo.sparse.report.SparsifyReport`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

from sparseyolo.sparse import autotune
from sparseyolo.sparse.backends import SparseBackend, available_backends, backend_names, get_backend
from sparseyolo.sparse.folding import Plan, find_plans, set_module
from sparseyolo.sparse.modules import SparseConv2d
from sparseyolo.sparse.report import LayerDecision, SparsifyReport
from sparseyolo.utils import timing

LOGGER = logging.getLogger(__name__)

#: Shortcuts for ``backend=``: ``"auto"`` (autotune among every registered backend for the device/dtype),
#: ``"sparse"`` (the default sparse backend of the device, wherever it applies), ``"dense"`` (fold only).
BACKENDS = ("auto", "sparse", "dense")
#: The backend ``"sparse"`` means on each device type (and, on the CPU, dtype: bf16 has only the block kernel).
DEFAULT_SPARSE = {"cpu": "cpu_csr", "cpu/bfloat16": "cpu_block", "cuda": "cuda_mma_sp"}


@dataclass(frozen=True)
class SparsifyConfig:
    """How :func:`sparsify` converts a model (in the spirit of torchao's ``sparsify_(model, config)``).

    Attributes:
        backends: backend names a pruned conv may run on: ``("auto",)`` (the autotuner picks among every
            registered backend that runs ``device``/``dtype``, dense included), one name (that backend wherever
            its ``why_not`` allows, dense elsewhere), several names (the autotuner picks among them and dense),
            ``("sparse",)`` (the device's default sparse backend) or ``("dense",)`` (fold BatchNorms only).
        device: where the model will run (``"cpu"`` or ``"cuda"``); the result is moved there.
        dtype: the model's dtype there (float32 on the CPU today; float16/bfloat16 on CUDA).
        example_input (Tensor[N, 3, H, W], optional): the input shapes the autotuner times; default a
            ``1x3x640x640`` tensor (YOLOv5's inference size).
        reps: timed runs per candidate and round (median of ``reps``, best of two rounds).
        inplace: modify ``model`` itself instead of a deep copy (with ``"auto"``, use the returned model: it
            may be the all-dense candidate).
    """

    backends: tuple[str, ...] = ("auto",)
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32
    example_input: torch.Tensor | None = None
    reps: int = 5
    inplace: bool = False

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    @property
    def label(self) -> str:
        return ",".join(self.backends)


def _resolve(config: SparsifyConfig) -> tuple[str, list[SparseBackend]]:
    """(mode, backends): mode "dense" (fold only), "fixed" (one sparse backend) or "auto" (tune among them)."""
    registered = backend_names()
    for name in config.backends:
        if name not in BACKENDS and name not in registered:
            raise ValueError(f"sparsify: backend should be one of {BACKENDS + tuple(n for n in registered if n != 'dense')}"
                             f", got '{name}'")
    if tuple(config.backends) == ("dense",):
        return "dense", []
    dev = config.device_type
    names: list[str] = []
    for name in config.backends:
        if name == "auto":
            names += [b.name for b in available_backends(dev, config.dtype) if b.name != "dense" and b.in_auto]
        elif name == "sparse":
            if dev not in DEFAULT_SPARSE:
                raise ValueError(f"sparsify: no default sparse backend for device '{dev}'")
            names.append(DEFAULT_SPARSE.get(f"{dev}/{str(config.dtype).replace('torch.', '')}", DEFAULT_SPARSE[dev]))
        elif name != "dense":
            names.append(name)
    names = list(dict.fromkeys(names))
    backends = [get_backend(n) for n in names]
    for be in backends:
        why = be.supports(dev, config.dtype)
        if why and "auto" not in config.backends:
            raise ValueError(f"sparsify: backend '{be.name}' {why} (device={dev}, dtype={config.dtype})")
    backends = [be for be in backends if be.supports(dev, config.dtype) is None]
    if not backends:
        raise ValueError(f"sparsify: no registered sparse backend runs {config.dtype} on {dev}; registered: "
                         f"{', '.join(registered)}. Use dtype=torch.float32 or torch.bfloat16 on the CPU, "
                         "float16/bfloat16 on CUDA, or backend='dense'")
    fixed = len(backends) == 1 and "auto" not in config.backends and "dense" not in config.backends
    return ("fixed" if fixed else "auto"), backends


def layer_input_shapes(model: nn.Module, example_input: torch.Tensor, targets: set[int]) -> dict[int, tuple[int, ...]]:
    """``{id(module): input shape}`` of the modules in ``targets`` (ids) on one forward of ``example_input``."""
    shapes: dict[int, tuple[int, ...]] = {}

    def record(mod: nn.Module, args: tuple) -> None:  # a pre-hook that returns something replaces the args
        shapes.setdefault(id(mod), tuple(args[0].shape))

    hooks = [mod.register_forward_pre_hook(record) for mod in model.modules() if id(mod) in targets]
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), torch.empty(0))
    try:
        with torch.no_grad():
            model(example_input.to(device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _decide(plan: Plan, mode: str, backends: list[SparseBackend], shape: tuple[int, ...] | None,
            config: SparsifyConfig) -> tuple[SparseBackend | None, LayerDecision]:
    """The backend for one pruned conv (None: dense) and its report row."""
    w = plan.weight
    numel = w.numel()
    d = LayerDecision(name=plan.name, weight_shape=tuple(w.shape), stride=plan.geometry.stride if plan.geometry else
                      tuple(plan.conv.stride), input_shape=shape, sparsity=float((w == 0).sum()) / numel if numel
                      else 0.0, pattern=plan.pattern or "unstructured", backend="dense")
    if plan.ineligible:
        d.reason = plan.ineligible
        return None, d
    if mode == "dense":
        return None, d
    dev, dtype = config.device_type, config.dtype
    why = {be.name: be.why_not(w, plan.geometry, plan.fused_act, dev, dtype) for be in backends}
    usable = [be for be in backends if why[be.name] is None]
    if not usable:
        d.reason = "; ".join(f"{n}: {r}" for n, r in why.items())
        return None, d
    if mode == "fixed":
        d.backend, d.backend_name = "sparse", usable[0].name
        return usable[0], d
    if shape is None:
        d.reason = "not reached by example_input"
        return None, d
    tuning = autotune.tune_layer(w, plan.bias, plan.geometry, plan.fused_act, shape, [get_backend("dense"), *usable],
                                 dev, dtype, config.reps)
    d.times = dict(tuning.times)
    d.dense_ms = tuning.times.get("dense", float("nan"))
    sparse_times = [t for n, t in tuning.times.items() if n != "dense"]
    d.sparse_ms = min(sparse_times) if sparse_times else float("nan")
    best = tuning.best
    if best == "dense":
        d.reason = "dense was faster" if d.sparse_ms < float("inf") else "; ".join(
            f"{n}: {r}" for n, r in tuning.rejected.items())
        return None, d
    d.backend, d.backend_name = "sparse", best
    return get_backend(best), d


def sparsify(
    model: nn.Module,
    config: SparsifyConfig | str | None = None,
    *,
    backend: str | None = None,
    example_input: torch.Tensor | None = None,
    inplace: bool | None = None,
    reps: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Fold BatchNorms and put each pruned conv on a sparse backend (:class:`SparseConv2d`) where it pays.

    Args:
        model: any module; pruned convs carry ``weight_mask`` (:func:`sparseyolo.prune.prune`); SparseConv2d
            layers of a sparsified model are repacked.
        config: a :class:`SparsifyConfig` (default ``SparsifyConfig()``: ``"auto"`` on the CPU in float32), or a
            backend name as a positional shortcut.
        backend, example_input, inplace, reps, device, dtype: shortcuts that replace the config's field
            (``backend="sparse"`` is ``backends=("sparse",)``). With ``"auto"`` on the CPU, after the per-layer
            choices the whole model is timed against the all-dense model in NCHW and in channels-last, and the
            fastest of the three is returned, so "auto" never returns a model slower than dense on
            ``example_input``.

    Returns:
        The converted model in eval mode on ``device``, with ``model.sparsify_report`` (:class:`SparsifyReport`).

    Raises:
        ValueError: an unknown backend, or no registered sparse backend for ``device``/``dtype``.

    Caveats:
        BatchNorms are folded with their running statistics (eval-mode semantics); the result is for
        inference. Convs with groups != 1, dilation or non-zero padding modes stay dense (reason in the report).
        A conv block's activation is fused only when it is ``nn.SiLU`` or ``nn.Identity``; other activations
        stay modules after the conv. ``"auto"`` timings depend on the machine's load at conversion time. On
        CUDA the whole-model comparison is not made (the per-layer choice, checked against cuDNN, stands).
    """
    if isinstance(config, str):
        if backend is not None:
            raise ValueError("sparsify: give the backend once (positionally or as backend=)")
        config, backend = None, config
    config = config or SparsifyConfig()
    overrides = {k: v for k, v in dict(example_input=example_input, inplace=inplace, reps=reps, device=device,
                                       dtype=dtype).items() if v is not None}
    if backend is not None:
        overrides["backends"] = (backend,)
    config = replace(config, **overrides)
    mode, backends = _resolve(config)
    if not config.inplace:
        model = copy.deepcopy(model)
    model.eval()
    whole_model_check = mode == "auto" and config.device_type == "cpu"
    original = copy.deepcopy(model) if whole_model_check else None
    report = SparsifyReport(backend=config.label, threads=torch.get_num_threads(), device=config.device_type,
                            dtype=str(config.dtype).replace("torch.", ""))
    plans = find_plans(model)

    example = config.example_input
    shapes: dict[int, tuple[int, ...]] = {}
    pruned = [p for p in plans if p.pruned]
    if mode == "auto" and pruned:
        if example is None:
            example = torch.zeros(1, 3, 640, 640)
            LOGGER.info("sparsify: timing layers for a 1x3x640x640 input (pass example_input for another shape)")
        shapes = layer_input_shapes(model, example, {id(p.conv) for p in pruned})

    sparse_modules: list[tuple[str, nn.Module]] = []
    for plan in plans:
        report.folded_bn += plan.bn_name is not None
        chosen = None
        if plan.pruned:
            chosen, decision = _decide(plan, mode, backends, shapes.get(id(plan.conv)), config)
            report.layers.append(decision)
        if chosen is not None:
            new: nn.Module = SparseConv2d.from_weight(plan.weight, plan.bias, plan.geometry, plan.fused_act,
                                                      plan.pattern, chosen, config.dtype).to(config.device)
            if plan.block is not None and plan.act_kind is not None:
                plan.block.act = nn.Identity()
            sparse_modules.append((plan.name, new))
        elif isinstance(plan.conv, SparseConv2d):  # repack a sparse layer no sparse backend takes here: dense
            new = SparseConv2d.from_weight(plan.weight, plan.bias, plan.geometry, plan.fused_act, plan.pattern,
                                           "dense", config.dtype)
            sparse_modules.append((plan.name, new.to(config.device)))
        elif plan.bn_name is not None:
            set_module(model, plan.name, plan.dense_conv())
        if plan.bn_name:
            set_module(model, plan.bn_name, nn.Identity())
    # The rest of the model goes to the device/dtype before the packed layers go in (their buffers have their
    # own dtypes: int32 metadata, float32 bias).
    model.to(device=config.device, dtype=config.dtype)
    for name, new in sparse_modules:
        set_module(model, name, new)
    model.sparsify_report = report
    report.layout = _sparse_layout(model)
    if whole_model_check and report.sparse_layers:
        model = _whole_model_check(model, original, example.to(config.device, config.dtype), config, report)
    LOGGER.info("sparsify: %d/%d pruned convs sparse, %d BatchNorms folded", len(report.sparse_layers),
                len(report.layers), report.folded_bn)
    return model


def _sparse_layout(model: nn.Module) -> str:
    """"channels_last" when most sparse (non-dense) SparseConv2d layers of ``model`` read channels-last."""
    formats = [m.backend.memory_format for m in model.modules()
               if isinstance(m, SparseConv2d) and m.backend.name != "dense"]
    cl = sum(f == torch.channels_last for f in formats)
    return "channels_last" if formats and 2 * cl >= len(formats) else "contiguous"


def _same_output(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same_output, a, b))
    return True


def _whole_model_check(sparse_model: nn.Module, original: nn.Module, x: torch.Tensor, config: SparsifyConfig,
                       report: SparsifyReport) -> nn.Module:
    """Per-layer wins do not add up to a faster model when dense oneDNN runs faster in channels-last (the CSR
    kernel takes NCHW) or when layout changes between layers cost more than a layer saves. So "auto" times the
    whole model three ways on ``example_input`` (its per-layer choices; all dense; all dense with channels-last
    weights) and returns the fastest: ``sparsify`` never returns a model slower than the dense one it measured.
    """
    dense = sparsify(original, backend="dense", inplace=True, device=config.device, dtype=config.dtype)
    candidates: dict[str, nn.Module] = {"sparse": sparse_model, "dense": dense}
    x = x.contiguous()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    # each candidate gets the layout it reads without a copy, as a user following the report would feed it
    inputs = {"sparse": x.contiguous(memory_format=report.memory_format), "dense": x}
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
        times = timing.interleaved_median_ms({k: (lambda m=m, k=k: m(inputs[k])) for k, m in candidates.items()},
                                             config.device, config.reps)
    report.model_ms = times
    report.chosen = min(times, key=times.get)
    if report.chosen == "sparse":
        return sparse_model
    report.layout = "channels_last" if report.chosen == "dense_channels_last" else "contiguous"
    why = f"whole model: {report.chosen} {times[report.chosen]:.1f} ms < sparse {times['sparse']:.1f} ms"
    for d in report.layers:
        if d.backend == "sparse":
            d.backend, d.backend_name, d.reason = "dense", "dense", why
    LOGGER.info("sparsify: %s; returning the %s model%s", why, report.chosen.replace("_", " "),
                " (feed it x.contiguous(memory_format=torch.channels_last))"
                if report.chosen == "dense_channels_last" else "")
    chosen = candidates[report.chosen]
    chosen.sparsify_report = report
    return chosen


__all__ = ["BACKENDS", "DEFAULT_SPARSE", "SparsifyConfig", "sparsify"]
