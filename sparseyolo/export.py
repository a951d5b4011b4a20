"""``sparseyolo export``: a dense or pruned checkpoint to ONNX (and OpenVINO IR), checked against PyTorch.

The exported graph is what Ultralytics' ``export.py`` produces for YOLOv5: one input ``images``
(``float32[N, 3, H, W]``, RGB, 0..1) and one output ``output0`` (``float32[N, anchors, 5 + nc]``), the Detect
head's decoded rows ``(cx, cy, w, h, obj, cls_0 .. cls_{nc-1})`` with boxes in input pixels and scores after
the sigmoid. NMS is not part of the graph, so ``sparseyolo.ops.yolo_nms`` (or any YOLOv5 NMS) applies to it.

BatchNorms are folded into the convolutions first (:meth:`DetectionModel.fuse`, which keeps pruned weights
exactly zero), so every pruned conv reaches the file with its zeros at the same positions. TensorRT's
``--sparsity=enable`` uses 2:4 zeros that are already in the weights; sparseyolo's N:M groups run along input
channels, the axis TensorRT's structured sparsity needs.

After writing the file, :func:`run_export` checks it: every conv weight's zeros are those of the PyTorch model, and
onnxruntime's output on a fixed random input equals PyTorch's within ``rtol``/``atol`` (both outputs are
fp32; different kernels sum in different orders, which is why the check is not bit-exact).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sparseyolo.checkpoint import load_model
from sparseyolo.models import DetectionModel
from sparseyolo.utils.openvino_core import openvino_core

LOGGER = logging.getLogger(__name__)

#: ONNX opset of the export: 17 is read by onnxruntime >= 1.11, OpenVINO >= 2022.3 and TensorRT >= 8.6.
OPSET = 17
#: Default tolerance of the onnxruntime check: fp32 on both sides; boxes are up to ~imgsz pixels, so the
#: relative part dominates for them and the absolute part for the sigmoid scores in [0, 1]. On yolov5n at 640
#: the largest difference measured was 6.4e-4 px (relative 1.2e-6), far inside it.
RTOL, ATOL = 1e-4, 1e-4
FORMATS = ("onnx", "openvino")


class ExportError(RuntimeError):
    """The export could not be written, or the written file does not reproduce the PyTorch model."""


@dataclass
class ExportResult:
    """What :func:`run_export` wrote and checked.

    Attributes:
        onnx: the ONNX file.
        input_shape: the shape exported (the batch axis is named ``batch`` when ``dynamic``).
        dynamic: whether the batch axis is dynamic.
        convs: conv weights in the file; pruned_convs: those with exact zeros; zeros: zero weights in all convs.
        ort_max_abs_diff: largest ``|onnxruntime - PyTorch|`` over the checked inputs (None: not checked).
        openvino: the OpenVINO IR ``.xml`` (None: not asked for); openvino_max_abs_diff: its check.
        seconds: wall time of the whole export.
    """

    onnx: Path
    input_shape: tuple[int, int, int, int]
    dynamic: bool
    convs: int
    pruned_convs: int
    zeros: int
    ort_max_abs_diff: float | None
    openvino: Path | None = None
    openvino_max_abs_diff: float | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """A few lines for the terminal: files, sizes, the checks' results."""
        shape = ("batch",) + self.input_shape[1:] if self.dynamic else self.input_shape
        lines = [
            f"ONNX: {self.onnx} ({self.onnx.stat().st_size / 1e6:.2f} MB), input images{list(shape)}, "
            f"opset {OPSET}",
            f"  pruned zeros kept: {self.pruned_convs} of {self.convs} convs pruned, {self.zeros:,} zero weights, "
            "identical to the PyTorch model",
        ]
        if self.ort_max_abs_diff is None:
            lines.append("  onnxruntime check: skipped")
        else:
            lines.append(f"  onnxruntime == PyTorch: max abs diff {self.ort_max_abs_diff:.3g} "
                         f"(tolerance {ATOL:g} + {RTOL:g} * |PyTorch|)")
        if self.openvino is not None:
            diff = "not checked" if self.openvino_max_abs_diff is None else f"{self.openvino_max_abs_diff:.3g}"
            lines.append(f"OpenVINO IR: {self.openvino} (fp32), OpenVINO CPU == PyTorch: max abs diff {diff}")
        lines.append(f"{self.seconds:.1f} s")
        return "\n".join(lines)


class _DecodedOutput(nn.Module):
    """The detector with only the Detect head's decoded output, as Ultralytics exports it.

    The model's layer list is registered as ``model``, so the ONNX initializers keep the checkpoint's names
    (``model.0.conv.weight``...).
    """

    def __init__(self, detector: DetectionModel) -> None:
        super().__init__()
        self.model = detector.model
        object.__setattr__(self, "_detector", detector)  # not a submodule: that would prefix every name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._detector(x)[0]


def _require(module: str, purpose: str):
    try:
        return __import__(module)
    except ImportError:
        pip = {"onnx": "onnx onnxruntime", "onnxruntime": "onnxruntime", "openvino": "openvino"}[module]
        raise ExportError(f"{purpose} needs the '{module}' package: pip install {pip} "
                          f"(or pip install 'sparseyolo[bench]')") from None


def export_onnx(model: DetectionModel, path: str | Path, x: torch.Tensor, dynamic: bool = False) -> Path:
    """Write ``model``'s decoded output as ONNX, traced at ``x``'s shape.

    Args:
        model: a fused ``DetectionModel`` in eval mode (fp32, on CPU).
        path: the ``.onnx`` file to write (its folder is created).
        x (Tensor[N, 3, H, W]): example input; H and W are fixed in the graph.
        dynamic: name the batch axis ``batch`` instead of fixing it to N.

    Returns:
        The path written.
    """
    _require("onnx", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _DecodedOutput(model).eval()
    axes = {"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic else None
    with torch.no_grad():
        # The TorchScript exporter (dynamo=False): it needs nothing but torch and onnx, runs offline, and gives
        # the same graph as Ultralytics' export. Its deprecation warning is not for the user of this command.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (x,), str(path), opset_version=OPSET, dynamo=False, do_constant_folding=True,
                              input_names=["images"], output_names=["output0"], dynamic_axes=axes)
    return path


def check_zeros(model: DetectionModel, path: str | Path) -> tuple[int, int, int]:
    """Check that every conv weight in the ONNX file has exactly the zeros of the PyTorch model's weight.

    Args:
        model: the fused model that was exported.
        path: its ONNX file.

    Returns:
        ``(convs, pruned convs, zero weights)`` over all conv weights.

    Raises:
        ExportError: a conv weight is missing from the file, or its zeros are not the model's.
    """
    onnx = _require("onnx", "ONNX export")
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    convs = pruned = zeros = 0
    for name, m in model.model.named_modules(prefix="model"):
        if not isinstance(m, nn.Conv2d):
            continue
        key = f"{name}.weight"
        if key not in inits:
            raise ExportError(f"{path}: conv weight {key} is not an initializer of the ONNX graph")
        w_onnx = numpy_helper.to_array(inits[key])
        w = m.weight.detach().cpu().numpy()
        if w_onnx.shape != w.shape or not np.array_equal(w_onnx == 0, w == 0):
            raise ExportError(f"{path}: {key} has {int((w_onnx == 0).sum())} zeros in the file, the model "
                              f"{int((w == 0).sum())} (or at other positions)")
        mask = m._buffers.get("weight_mask")
        if mask is not None and np.any(w_onnx[~mask.cpu().numpy()] != 0):
            raise ExportError(f"{path}: {key} has nonzero weights where its pruning mask is False")
        convs += 1
        pruned += mask is not None
        zeros += int((w == 0).sum())
    return convs, pruned, zeros


def _compare(name: str, got: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> float:
    if got.shape != ref.shape:
        raise ExportError(f"{name} output has shape {list(got.shape)}, PyTorch {list(ref.shape)}")
    diff = float(np.abs(got - ref).max()) if ref.size else 0.0
    if not np.allclose(got, ref, rtol=rtol, atol=atol):
        worst = float((np.abs(got - ref) - rtol * np.abs(ref)).max())
        raise ExportError(f"{name} output differs from PyTorch's: max abs diff {diff:.3g}, exceeding the tolerance "
                          f"{atol:g} + {rtol:g} * |PyTorch| by {worst - atol:.3g}")
    return diff


def check_onnxruntime(model: DetectionModel, path: str | Path, inputs: list[torch.Tensor], rtol: float = RTOL,
                      atol: float = ATOL) -> float:
    """Run the ONNX file with onnxruntime (CPU) and compare with PyTorch on each input.

    Returns:
        The largest absolute difference over all inputs.

    Raises:
        ExportError: onnxruntime is missing, or an output is not within ``atol + rtol * |PyTorch|``.
    """
    ort = _require("onnxruntime", "the onnxruntime check (skip it with --no-check)")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(x)[0].numpy()
        got = sess.run(["output0"], {"images": x.numpy()})[0]
        diff = max(diff, _compare(f"onnxruntime (input {list(x.shape)})", got, ref, rtol, atol))
    return diff


def export_openvino(onnx_path: str | Path, model: DetectionModel | None = None,
                    inputs: list[torch.Tensor] | None = None, rtol: float = RTOL, atol: float = ATOL
                    ) -> tuple[Path, float | None]:
    """Convert the ONNX file to OpenVINO IR (fp32) in ``<stem>_openvino_model/``, as Ultralytics names it.

    With ``model`` and ``inputs``, the IR is also run on OpenVINO's CPU plugin (fp32 inference precision, so
    that a CPU with bf16 units does not round) and compared with PyTorch.

    Returns:
        ``(xml path, max abs diff or None)``.
    """
    ov = _require("openvino", "OpenVINO export")
    onnx_path = Path(onnx_path)
    folder = onnx_path.with_name(f"{onnx_path.stem}_openvino_model")
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{onnx_path.stem}.xml"
    # fp32 weights: the default fp16 compression would round the kept weights (the zeros would stay zero)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    if model is None or not inputs:
        return xml, None
    compiled = openvino_core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    diff = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(x)[0].numpy()
        got = compiled(x.numpy())[compiled.output(0)]
        diff = max(diff, _compare(f"OpenVINO (input {list(x.shape)})", got, ref, rtol, atol))
    return xml, diff


def default_output(weights: str | Path) -> Path:
    """``<weights stem>.onnx`` in the current folder (``yolov5n.pt`` -> ``yolov5n.onnx``)."""
    name = Path(weights).name
    for suffix in (".xz", ".pt", ".pth"):
        name = name.removesuffix(suffix)
    return Path(f"{name}.onnx")


def run_export(weights: str | Path, imgsz: int = 640, batch: int = 1, dynamic: bool = False, fmt: str = "onnx",
               out: str | Path | None = None, check: bool = True, rtol: float = RTOL, atol: float = ATOL,
               progress: bool = True) -> ExportResult:
    """Export a checkpoint to ONNX (and OpenVINO IR) and check the files against PyTorch.

    Args:
        weights: checkpoint (Ultralytics, sparseyolo dense or pruned, state_dict), or an official asset name.
        imgsz: square input size; a multiple of the model's largest stride.
        batch: batch size of the graph (with ``dynamic``, the example batch; any batch runs).
        dynamic: dynamic batch axis.
        fmt: ``"onnx"``, or ``"openvino"`` (ONNX, then OpenVINO IR beside it).
        out: the ONNX file (default :func:`default_output`).
        check: compare onnxruntime's (and OpenVINO's) output with PyTorch's; the zero check always runs.
        rtol, atol: tolerance of that comparison (``|ort - torch| <= atol + rtol * |torch|``).
        progress: show a progress bar over the steps.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ExportError: a missing package, or a file that does not reproduce the model.
        ValueError: bad arguments.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    _require("onnx", "ONNX export")  # fail before loading anything
    if check:
        _require("onnxruntime", "the onnxruntime check (skip it with --no-check)")
    if fmt == "openvino":
        _require("openvino", "OpenVINO export")
    t0 = time.perf_counter()
    steps = ["load"] + ["export onnx", "check zeros"] + (["onnxruntime check"] if check else [])
    steps += ["openvino"] if fmt == "openvino" else []
    bar = tqdm(total=len(steps), desc="export", disable=not progress, bar_format="{l_bar}{bar:20}{r_bar}")

    def step(name: str) -> None:
        bar.set_postfix_str(name)

    try:
        step("load")
        model = load_model(weights, fuse=True)  # fp32, eval, BN folded; pruned zeros exact
        stride = int(model.stride.max())
        if imgsz < stride or imgsz % stride:
            raise ValueError(f"--img must be a multiple of the model's stride {stride}, got {imgsz}")
        bar.update()
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, imgsz, imgsz, generator=gen)
        inputs = [x] + ([torch.rand(batch + 1, 3, imgsz, imgsz, generator=gen)] if dynamic else [])
        path = Path(out) if out is not None else default_output(weights)
        step("export onnx")
        export_onnx(model, path, x, dynamic=dynamic)
        bar.update()
        step("check zeros")
        convs, pruned, zeros = check_zeros(model, path)
        bar.update()
        ort_diff = None
        if check:
            step("onnxruntime check")
            ort_diff = check_onnxruntime(model, path, inputs, rtol, atol)
            bar.update()
        xml = ov_diff = None
        if fmt == "openvino":
            step("openvino")
            xml, ov_diff = export_openvino(path, model if check else None, inputs, rtol, atol)
            bar.update()
    finally:
        bar.close()
    result = ExportResult(onnx=path, input_shape=tuple(x.shape), dynamic=dynamic, convs=convs, pruned_convs=pruned,
                          zeros=zeros, ort_max_abs_diff=ort_diff, openvino=xml, openvino_max_abs_diff=ov_diff,
                          seconds=time.perf_counter() - t0)
    LOGGER.debug("export: %s", result)
    return result
