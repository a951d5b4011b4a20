"""The dense runtimes a user could run a model on instead of sparseyolo's sparse kernels: the speed bar.

Every speed table compares a sparse model with the fastest of these, measured in the same run:

* ``pytorch fp32`` and ``pytorch fp32 channels-last``: the BN-folded model, ``F.conv2d`` (oneDNN);
* ``pytorch bf16 channels-last``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with a
  channels-last input (oneDNN's bf16 kernels: AVX-512 BF16, or AMX where the CPU has it);
* ``pytorch fp32 compiled`` and ``pytorch bf16 compiled``: the channels-last model, in fp32 or converted to bf16
  (``model.to(torch.bfloat16)``; the Detect head still decodes boxes in fp32), through ``torch.compile``
  (Inductor, freezing: :func:`sparseyolo.sparse.compile.compile_inference`): prepacked oneDNN convs, generated
  loops for the ops between them. On a Xeon with AMX the bf16 one was 1.1-1.2x faster than compiling the autocast
  model (no casts around each conv) and the fastest dense runtime on yolov5n; on a CPU whose bf16 convolutions run
  on AVX-512 BF16 alone (no AMX), oneDNN's bf16 convs were ~1.6x slower than its fp32 ones, so there the fp32 one
  is the bar. Compiled when the runtime is built (yolov5s: ~25 s each on 2 cores); a failure is a row that says
  why;
* ``onnxruntime fp32``: the model exported to ONNX, CPUExecutionProvider;
* ``openvino`` (its default precision on this CPU: bf16 where the CPU has bf16 support) and ``openvino f32``:
  the same ONNX file compiled by OpenVINO's CPU plugin.

onnxruntime and OpenVINO are optional (``pip install sparseyolo[bench]``): a missing one is a row that says why,
not a crash. All runtimes use the same thread count.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparseyolo.utils.openvino_core import openvino_core

LOGGER = logging.getLogger(__name__)

PYTORCH_FP32 = "pytorch fp32"
PYTORCH_FP32_CL = "pytorch fp32 channels-last"
PYTORCH_BF16_CL = "pytorch bf16 channels-last"
PYTORCH_FP32_COMPILED = "pytorch fp32 compiled"
PYTORCH_BF16_COMPILED = "pytorch bf16 compiled"
#: The rows that compile a model (seconds to a minute each): left out where a caller asks for no compiling.
COMPILED_RUNTIMES = (PYTORCH_FP32_COMPILED, PYTORCH_BF16_COMPILED)
ONNXRUNTIME = "onnxruntime fp32"
OPENVINO = "openvino"
OPENVINO_F32 = "openvino f32"
DENSE_RUNTIMES = (PYTORCH_FP32, PYTORCH_FP32_CL, PYTORCH_BF16_CL, PYTORCH_FP32_COMPILED, PYTORCH_BF16_COMPILED,
                  ONNXRUNTIME, OPENVINO, OPENVINO_F32)


@dataclass
class DenseRuntime:
    """One dense runtime ready to time: ``run()`` is one forward of the benchmark input; ``None`` when unavailable."""

    name: str
    run: Callable[[], object] | None
    note: str  # precision / provider, or why it is unavailable


def _first_tensor(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """ONNX of ``model`` at ``x``'s shape (opset 17, TorchScript exporter: offline and deterministic)."""
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["images"],
                      output_names=["output"])


def _onnxruntime(onnx_path: Path, x: torch.Tensor, threads: int) -> DenseRuntime:
    try:
        import onnxruntime as ort
    except ImportError:
        return DenseRuntime(ONNXRUNTIME, None, "not installed (pip install sparseyolo[bench])")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return DenseRuntime(ONNXRUNTIME, lambda: sess.run(None, feed), f"onnxruntime {ort.__version__}, CPU EP")


def _openvino(onnx_path: Path, x: torch.Tensor, threads: int, f32: bool) -> DenseRuntime:
    name = OPENVINO_F32 if f32 else OPENVINO
    try:
        import openvino as ov
    except ImportError:
        return DenseRuntime(name, None, "not installed (pip install sparseyolo[bench])")
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = openvino_core().compile_model(str(onnx_path), "CPU", config)
    request = compiled.create_infer_request()
    data = x.numpy()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)  # "bf16", "f32"
    version = ov.__version__.split("-")[0]
    return DenseRuntime(name, lambda: request.infer({0: data}), f"openvino {version}, {precision}")


def dense_runtimes(model: nn.Module, x: torch.Tensor, threads: int | None = None,
                   names: tuple[str, ...] = DENSE_RUNTIMES) -> dict[str, DenseRuntime]:
    """The dense runtimes of ``names`` for ``model`` (BN-folded, eval, float32, CPU) at the input ``x``.

    Args:
        model: the dense model (fold BatchNorms first: ``sparsify(model, backend="dense")``).
        x (Tensor[N, 3, H, W]): the benchmark input, float32.
        threads: intra-op threads of onnxruntime and OpenVINO (default: ``torch.get_num_threads()``).
        names: which of :data:`DENSE_RUNTIMES`.

    Returns:
        name -> :class:`DenseRuntime`; ``run`` is None (and ``note`` says why) for one that is not installed or
        failed to build.
    """
    threads = threads or torch.get_num_threads()
    model = model.eval()
    out: dict[str, DenseRuntime] = {}
    x_cl = x.contiguous(memory_format=torch.channels_last)
    if PYTORCH_FP32 in names:
        out[PYTORCH_FP32] = DenseRuntime(PYTORCH_FP32, _no_grad(lambda: model(x)), f"torch {torch.__version__}")
    if any(n in names for n in (PYTORCH_FP32_CL, PYTORCH_BF16_CL) + COMPILED_RUNTIMES):
        import copy

        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        if PYTORCH_FP32_CL in names:
            out[PYTORCH_FP32_CL] = DenseRuntime(PYTORCH_FP32_CL, _no_grad(lambda: model_cl(x_cl)),
                                                f"torch {torch.__version__}")
        if PYTORCH_BF16_CL in names:
            def bf16() -> object:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model_cl(x_cl)

            out[PYTORCH_BF16_CL] = DenseRuntime(PYTORCH_BF16_CL, _no_grad(bf16), "torch.autocast('cpu', bfloat16)")
        if PYTORCH_FP32_COMPILED in names:
            out[PYTORCH_FP32_COMPILED] = _compiled(PYTORCH_FP32_COMPILED, copy.deepcopy(model_cl), x_cl)
        if PYTORCH_BF16_COMPILED in names:
            out[PYTORCH_BF16_COMPILED] = _compiled(PYTORCH_BF16_COMPILED, copy.deepcopy(model_cl).to(torch.bfloat16),
                                                   x_cl.to(torch.bfloat16))
    wanted = [n for n in (ONNXRUNTIME, OPENVINO, OPENVINO_F32) if n in names]
    if wanted:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model.onnx"
            try:
                export_onnx(model, x, path)
            except Exception as e:  # noqa: BLE001 - a model that does not export gets rows that say so
                LOGGER.warning("dense runtimes: ONNX export failed (%s: %s)", type(e).__name__, e)
                for n in wanted:
                    out[n] = DenseRuntime(n, None, f"ONNX export failed: {type(e).__name__}")
                return out
            for n in wanted:
                try:
                    out[n] = (_onnxruntime(path, x, threads) if n == ONNXRUNTIME
                              else _openvino(path, x, threads, f32=n == OPENVINO_F32))
                except Exception as e:  # noqa: BLE001 - a runtime that fails to load the model is a row, not a crash
                    LOGGER.warning("dense runtimes: %s failed (%s: %s)", n, type(e).__name__, e)
                    out[n] = DenseRuntime(n, None, f"failed: {type(e).__name__}: {e}"[:120])
    return out


def _compiled(name: str, model: nn.Module, x: torch.Tensor) -> DenseRuntime:
    from sparseyolo.sparse.compile import compile_inference

    try:
        run = compile_inference(model)
        run(x)  # compiles
    except Exception as e:  # noqa: BLE001 - a model Inductor cannot compile is a row that says so, not a crash
        LOGGER.warning("dense runtimes: %s failed (%s: %s)", name, type(e).__name__, e)
        return DenseRuntime(name, None, f"torch.compile failed: {type(e).__name__}: {e}"[:120])
    tag = "bf16" if x.dtype == torch.bfloat16 else "fp32"
    return DenseRuntime(name, lambda: run(x), f"torch.compile (inductor, freezing), {tag} weights")


def _no_grad(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn()

    return run


def fastest(times_ms: dict[str, float]) -> tuple[str, float]:
    """The fastest finite entry of ``name -> ms`` (NaN entries are unavailable runtimes)."""
    finite = {k: v for k, v in times_ms.items() if v == v}
    if not finite:
        return "", float("nan")
    name = min(finite, key=finite.get)
    return name, finite[name]

