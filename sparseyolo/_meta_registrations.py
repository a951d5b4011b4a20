"""Fake (meta) kernels of the compiled ops, so they trace under torch.compile and torch.export.

Each repeats the checks of the C++ op with ``torch._check`` and the same messages.
"""

from __future__ import annotations

import torch


@torch.library.register_fake("sparseyolo::box_iou")
def _box_iou_fake(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    torch._check(
        boxes1.dim() == 2 and boxes1.shape[1] == 4,
        lambda: f"sparseyolo::box_iou: boxes1 should be a [N, 4] tensor of (x1, y1, x2, y2), got shape {list(boxes1.shape)}",
    )
    torch._check(
        boxes2.dim() == 2 and boxes2.shape[1] == 4,
        lambda: f"sparseyolo::box_iou: boxes2 should be a [M, 4] tensor of (x1, y1, x2, y2), got shape {list(boxes2.shape)}",
    )
    torch._check(
        boxes1.dtype == boxes2.dtype,
        lambda: f"sparseyolo::box_iou: boxes1 and boxes2 should have the same dtype, got {boxes1.dtype} and {boxes2.dtype}",
    )
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


def _check_nms_float(dtype: torch.dtype, what: str, op: str) -> None:
    torch._check(
        dtype in (torch.float32, torch.float16, torch.bfloat16),
        lambda: f"sparseyolo::{op}: {what} should be float32, float16 or bfloat16, got {dtype}",
    )


@torch.library.register_fake("sparseyolo::nms")
def _nms_fake(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    torch._check(
        boxes.dim() == 2 and boxes.shape[1] == 4,
        lambda: f"sparseyolo::nms: boxes should be a [N, 4] tensor of (x1, y1, x2, y2), got shape {list(boxes.shape)}",
    )
    torch._check(scores.dim() == 1, lambda: f"sparseyolo::nms: scores should be a [N] tensor, got shape {list(scores.shape)}")
    torch._check(
        boxes.shape[0] == scores.shape[0],
        lambda: f"sparseyolo::nms: boxes and scores should have the same N, got {boxes.shape[0]} and {scores.shape[0]}",
    )
    torch._check(
        boxes.dtype == scores.dtype,
        lambda: f"sparseyolo::nms: boxes and scores should have the same dtype, got {boxes.dtype} and {scores.dtype}",
    )
    _check_nms_float(boxes.dtype, "boxes", "nms")
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


@torch.library.register_fake("sparseyolo::yolo_nms")
def _yolo_nms_fake(
    pred: torch.Tensor,
    conf_thres: float,
    iou_thres: float,
    classes: torch.Tensor | None,
    agnostic: bool,
    multi_label: bool,
    max_det: int,
    max_nms: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    torch._check(
        pred.dim() == 3,
        lambda: "sparseyolo::yolo_nms: pred should be a [B, N, 5 + nc] tensor of (cx, cy, w, h, obj, class scores), "
        f"got shape {list(pred.shape)}",
    )
    torch._check(
        pred.shape[2] >= 6,
        lambda: f"sparseyolo::yolo_nms: pred needs at least one class (nc >= 1), so pred.size(2) >= 6, got shape {list(pred.shape)}",
    )
    _check_nms_float(pred.dtype, "pred", "yolo_nms")
    torch._check(0.0 <= conf_thres <= 1.0, lambda: f"sparseyolo::yolo_nms: conf_thres should be in [0, 1], got {conf_thres}")
    torch._check(0.0 <= iou_thres <= 1.0, lambda: f"sparseyolo::yolo_nms: iou_thres should be in [0, 1], got {iou_thres}")
    torch._check(max_det >= 1, lambda: f"sparseyolo::yolo_nms: max_det should be >= 1, got {max_det}")
    torch._check(max_nms >= 1, lambda: f"sparseyolo::yolo_nms: max_nms should be >= 1, got {max_nms}")
    nc = pred.shape[2] - 5
    per_anchor = nc if multi_label and nc > 1 else 1
    width = min(max_det, max_nms, pred.shape[1] * per_anchor)
    dets = pred.new_empty((pred.shape[0], width, 6))
    counts = pred.new_empty((pred.shape[0],), dtype=torch.int64)
    return dets, counts


def _check_nm_pattern(n: int, m: int, op: str) -> None:
    torch._check(1 <= n < m <= 16, lambda: f"sparseyolo::{op}: need 1 <= n < m <= 16 (keep n of every m), got n={n}, m={m}")


def _check_nm_float(t: torch.Tensor, what: str, op: str) -> None:
    torch._check(
        t.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
        lambda: f"sparseyolo::{op}: {what} should be float32, float64, float16 or bfloat16, got {t.dtype}",
    )


@torch.library.register_fake("sparseyolo::nm_mask")
def _nm_mask_fake(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    _check_nm_pattern(n, m, "nm_mask")
    _check_nm_float(weight, "weight", "nm_mask")
    torch._check(weight.dim() >= 2, lambda: f"sparseyolo::nm_mask: weight should have at least 2 dims (groups run along dim 1), got {weight.dim()}D")
    torch._check(
        weight.shape[1] % m == 0,
        lambda: f"sparseyolo::nm_mask: weight.size(1) (input channels) = {weight.shape[1]} is not a multiple of m = {m}",
    )
    return torch.empty_like(weight, dtype=torch.bool, memory_format=torch.contiguous_format)


@torch.library.register_fake("sparseyolo::nm_compress")
def _nm_compress_fake(
    weight: torch.Tensor, n: int, m: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_nm_pattern(n, m, "nm_compress")
    _check_nm_float(weight, "weight", "nm_compress")
    torch._check(weight.dim() >= 1, lambda: "sparseyolo::nm_compress: weight should have at least 1 dim (groups run along the last), got 0D")
    torch._check(
        weight.shape[-1] % m == 0,
        lambda: f"sparseyolo::nm_compress: weight.size(-1) = {weight.shape[-1]} is not a multiple of m = {m}",
    )
    if mask is not None:
        torch._check(mask.dtype == torch.bool, lambda: f"sparseyolo::nm_compress: mask should be a bool tensor, got {mask.dtype}")
        torch._check(
            mask.shape == weight.shape,
            lambda: f"sparseyolo::nm_compress: mask should have the shape of weight {list(weight.shape)}, got {list(mask.shape)}",
        )
    shape = (*weight.shape[:-1], weight.shape[-1] // m * n)
    return weight.new_empty(shape), weight.new_empty(shape, dtype=torch.uint8)


@torch.library.register_fake("sparseyolo::nm_decompress")
def _nm_decompress_fake(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    _check_nm_pattern(n, m, "nm_decompress")
    torch._check(values.dim() >= 1, lambda: "sparseyolo::nm_decompress: values should have at least 1 dim, got 0D")
    torch._check(indices.dtype == torch.uint8, lambda: f"sparseyolo::nm_decompress: indices should be uint8, got {indices.dtype}")
    torch._check(
        indices.shape == values.shape,
        lambda: f"sparseyolo::nm_decompress: indices should have the shape of values {list(values.shape)}, got {list(indices.shape)}",
    )
    torch._check(
        values.shape[-1] % n == 0,
        lambda: f"sparseyolo::nm_decompress: values.size(-1) = {values.shape[-1]} is not a multiple of n = {n}",
    )
    return values.new_empty((*values.shape[:-1], values.shape[-1] // n * m))


@torch.library.register_fake("sparseyolo::apply_masks_")
def _apply_masks_fake(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    torch._check(
        len(tensors) == len(masks),
        lambda: f"sparseyolo::apply_masks_: got {len(tensors)} tensors but {len(masks)} masks",
    )
    for i, (t, mk) in enumerate(zip(tensors, masks)):
        torch._check(mk.dtype == torch.bool, lambda: f"sparseyolo::apply_masks_: masks[{i}] should be a bool tensor, got {mk.dtype}")
        torch._check(
            mk.shape == t.shape,
            lambda: f"sparseyolo::apply_masks_: masks[{i}] should have the shape of tensors[{i}] {list(t.shape)}, got {list(mk.shape)}",
        )
    return None


def _check_conv_args(op: str, kernel_size, stride, padding, activation: str) -> None:
    """The conv geometry checks both sparse convs share (csrc/ops/conv_checks.h on the C++ side)."""
    torch._check(len(kernel_size) == 2 and min(kernel_size) >= 1, lambda: f"{op}: kernel_size should be two positive ints, got {kernel_size}")
    torch._check(len(stride) == 2 and min(stride) >= 1, lambda: f"{op}: stride should be two positive ints, got {stride}")
    torch._check(len(padding) == 2 and min(padding) >= 0, lambda: f"{op}: padding should be two non-negative ints, got {padding}")
    torch._check(activation in ("identity", "silu"), lambda: f"{op}: activation should be 'identity' or 'silu', got '{activation}'")


def _conv_out_hw(op: str, input: torch.Tensor, kernel_size, stride, padding) -> tuple[int, int]:
    """Output height and width of a conv of ``input`` [N, C, H, W]; the padded input must cover the kernel."""
    hp, wp = input.shape[2] + 2 * padding[0], input.shape[3] + 2 * padding[1]
    torch._check(hp >= kernel_size[0] and wp >= kernel_size[1],
                 lambda: f"{op}: padded input {hp}x{wp} is smaller than the kernel {kernel_size[0]}x{kernel_size[1]}")
    return (hp - kernel_size[0]) // stride[0] + 1, (wp - kernel_size[1]) // stride[1] + 1


def _check_in_channels(op: str, input: torch.Tensor, in_channels: int) -> None:
    """The packed weight's Cin against the input's channels (csrc/ops/conv_checks.h, same messages)."""
    torch._check(in_channels >= -1,
                 lambda: f"{op}: in_channels should be the packed weight's Cin, or -1 (not checked), got {in_channels}")
    torch._check(in_channels < 0 or input.shape[1] == in_channels,
                 lambda: f"{op}: input has {input.shape[1]} channels but the packed weight expects in_channels = "
                         f"{in_channels} (was the weight packed for another layer?)")


@torch.library.register_fake("sparseyolo::sparse_conv2d")
def _sparse_conv2d_fake(
    input: torch.Tensor,
    values: torch.Tensor,
    columns: torch.Tensor,
    row_ptr: torch.Tensor,
    kernel_size: list[int],
    bias: torch.Tensor | None = None,
    stride: list[int] = (1, 1),
    padding: list[int] = (0, 0),
    activation: str = "identity",
    in_channels: int = -1,
) -> torch.Tensor:
    op = "sparseyolo::sparse_conv2d"
    torch._check(input.dim() == 4, lambda: f"{op}: input should be a 4D tensor [N, Cin, H, W], got {input.dim()}D")
    _check_in_channels(op, input, in_channels)
    torch._check(input.dtype == torch.float32, lambda: f"{op}: input should be float32, got {input.dtype}")
    torch._check(values.dim() == 1 and values.dtype == torch.float32,
                 lambda: f"{op}: values should be a 1D float32 tensor (the packed nonzeros), got {values.dim()}D {values.dtype}")
    torch._check(columns.dim() == 1 and columns.dtype == torch.int32,
                 lambda: f"{op}: columns should be a 1D int32 tensor, got {columns.dim()}D {columns.dtype}")
    torch._check(columns.numel() == values.numel(),
                 lambda: f"{op}: columns and values should have one entry per nonzero, got {columns.numel()} and {values.numel()}")
    torch._check(row_ptr.dim() == 1 and row_ptr.dtype == torch.int64 and row_ptr.numel() >= 2,
                 lambda: f"{op}: row_ptr should be a 1D int64 tensor of Cout + 1 >= 2 entries")
    _check_conv_args(op, kernel_size, stride, padding, activation)
    cout = row_ptr.shape[0] - 1
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == cout and bias.dtype == torch.float32,
                     lambda: f"{op}: bias should be a float32 tensor of Cout = {cout} entries")
    ho, wo = _conv_out_hw(op, input, kernel_size, stride, padding)
    return input.new_empty((input.shape[0], cout, ho, wo))


@torch.library.register_fake("sparseyolo::block_sparse_conv2d")
def _block_sparse_conv2d_fake(
    input: torch.Tensor,
    weight: torch.Tensor,
    taps: torch.Tensor,
    block_ptr: torch.Tensor,
    in_channels: int,
    out_channels: int,
    kernel_size: list[int],
    bias: torch.Tensor | None = None,
    stride: list[int] = (1, 1),
    padding: list[int] = (0, 0),
    activation: str = "identity",
    gather: str = "plain",
) -> torch.Tensor:
    op = "sparseyolo::block_sparse_conv2d"
    torch._check(input.dim() == 4, lambda: f"{op}: input should be a 4D tensor [N, Cin, H, W], got {input.dim()}D")
    bf16 = input.dtype == torch.bfloat16
    torch._check(bf16 or input.dtype == torch.float32,
                 lambda: f"{op}: input should be float32 or bfloat16, got {input.dtype}")
    torch._check(in_channels >= 1 and out_channels >= 1,
                 lambda: f"{op}: in_channels and out_channels should be positive, got {in_channels} and {out_channels}")
    torch._check(input.shape[1] == in_channels,
                 lambda: f"{op}: input has {input.shape[1]} channels, the packed weight expects {in_channels}")
    torch._check(gather in ("plain", "pairs24", "tiles32"),
                 lambda: f"{op}: gather should be 'plain', 'pairs24' or 'tiles32', got '{gather}'")
    torch._check(gather == "plain" or bf16, lambda: f"{op}: gather '{gather}' is for bfloat16 inputs, got {input.dtype}")
    _check_conv_args(op, kernel_size, stride, padding, activation)
    nb = (out_channels + 15) // 16
    torch._check(block_ptr.dim() == 1 and block_ptr.dtype == torch.int64 and block_ptr.shape[0] == nb + 1,
                 lambda: f"{op}: block_ptr should be a 1D int64 tensor of ceil(out_channels / 16) + 1 = {nb + 1} entries")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == out_channels and bias.dtype == torch.float32,
                     lambda: f"{op}: bias should be a float32 tensor of out_channels = {out_channels} entries")
    ho, wo = _conv_out_hw(op, input, kernel_size, stride, padding)
    return input.new_empty((input.shape[0], out_channels, ho, wo)).contiguous(memory_format=torch.channels_last)


SPARSE_CONV2D_24_KERNELS = ("default", "tile64", "tile128", "tile128x256", "tile256x128", "wgmma", "wgmma_overlap",
                            "wgmma64")


@torch.library.register_fake("sparseyolo::sparse_conv2d_24")
def _sparse_conv2d_24_fake(
    input: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    out_channels: int,
    kernel_size: list[int],
    bias: torch.Tensor | None = None,
    stride: list[int] = (1, 1),
    padding: list[int] = (0, 0),
    activation: str = "identity",
    kernel: str = "default",
    in_channels: int = -1,
) -> torch.Tensor:
    op = "sparseyolo::sparse_conv2d_24"
    torch._check(kernel in SPARSE_CONV2D_24_KERNELS,
                 lambda: f"{op}: kernel should be one of {', '.join(map(repr, SPARSE_CONV2D_24_KERNELS))}, "
                         f"got '{kernel}'")
    torch._check(input.dim() == 4, lambda: f"{op}: input should be a 4D tensor [N, Cin, H, W], got {input.dim()}D")
    _check_in_channels(op, input, in_channels)
    torch._check(input.dtype in (torch.float16, torch.bfloat16),
                 lambda: f"{op}: input should be float16 or bfloat16, got {input.dtype}")
    torch._check(input.shape[1] % 8 == 0,
                 lambda: f"{op}: input channels should be a multiple of 8, got {input.shape[1]} (run such a layer dense)")
    _check_conv_args(op, kernel_size, stride, padding, activation)
    torch._check(out_channels >= 1, lambda: f"{op}: out_channels should be positive, got {out_channels}")
    mt = (out_channels + 63) // 64 * 4
    kb = kernel_size[0] * kernel_size[1] * ((input.shape[1] + 31) // 32)
    torch._check(values.dim() == 4 and tuple(values.shape) == (mt, kb, 32, 8),
                 lambda: f"{op}: values should be [{mt}, {kb}, 32, 8], got {list(values.shape)}")
    torch._check(values.dtype == input.dtype, lambda: f"{op}: values should have the input's dtype {input.dtype}, got {values.dtype}")
    torch._check(meta.dim() == 3 and tuple(meta.shape) == (mt, kb, 16) and meta.dtype == torch.int32,
                 lambda: f"{op}: meta should be an int32 tensor [{mt}, {kb}, 16], got {list(meta.shape)} {meta.dtype}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == out_channels and bias.dtype == torch.float32,
                     lambda: f"{op}: bias should be a float32 tensor of Cout = {out_channels} entries")
    ho, wo = _conv_out_hw(op, input, kernel_size, stride, padding)
    return torch.empty((input.shape[0], out_channels, ho, wo), dtype=input.dtype, device=input.device,
                       memory_format=torch.channels_last)


def _check_cusparselt_half(op: str, t: torch.Tensor, name: str) -> None:
    torch._check(t.dtype in (torch.float16, torch.bfloat16),
                 lambda: f"{op}: {name} must be float16 or bfloat16 (cuSPARSELt's 2:4 tensor-core types), "
                         f"got {t.dtype}")


@torch.library.register_fake("sparseyolo::cusparselt_compress")
def _cusparselt_compress_fake(weight: torch.Tensor) -> torch.Tensor:
    op = "sparseyolo::cusparselt_compress"
    _check_cusparselt_half(op, weight, "weight")
    torch._check(weight.dim() == 2,
                 lambda: f"{op}: weight must be [out_features, in_features], got {list(weight.shape)}")
    size = torch.library.get_ctx().new_dynamic_size()  # cuSPARSELt decides it
    return weight.new_empty((size,), dtype=torch.uint8)


@torch.library.register_fake("sparseyolo::cusparselt_linear")
def _cusparselt_linear_fake(compressed: torch.Tensor, input: torch.Tensor, out_features: int,
                            bias: torch.Tensor | None = None, alg_id: int = 0) -> torch.Tensor:
    op = "sparseyolo::cusparselt_linear"
    _check_cusparselt_half(op, input, "input")
    torch._check(input.dim() == 2, lambda: f"{op}: input must be [P, in_features], got {list(input.shape)}")
    torch._check(compressed.dtype == torch.uint8 and compressed.dim() == 1,
                 lambda: f"{op}: compressed must be the uint8 CUDA tensor sparseyolo::cusparselt_compress returned")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == out_features and bias.dtype == input.dtype,
                     lambda: f"{op}: bias must be a [{out_features}] {input.dtype} tensor")
    return input.new_empty((input.shape[0], out_features))
