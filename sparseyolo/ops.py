"""Typed Python entry points of sparseyolo's compiled ops (``torch.ops.sparseyolo``).

Importing this module does not load the compiled extension: each op loads it on its first call (as torchvision's
ops do), so pure-torch code that imports ``ops`` (pruning, masks) works where the extension is not built, and
only calling an op there raises :class:`~sparseyolo.extension.ExtensionNotBuiltError`. A new wrapper reaches its
op through :func:`_op`.
"""

from __future__ import annotations

import torch

from sparseyolo.extension import load_extension


def _op(name: str) -> torch._ops.OpOverload:
    """``torch.ops.sparseyolo.<name>.default``, loading the extension first (once; cached after).

    While ``torch.compile`` traces, the extension is not loaded here (Dynamo would trace the loader); compile through
    :func:`sparseyolo.sparse.compile.compile_inference`, which loads it before tracing.
    """
    if not torch.compiler.is_compiling():
        load_extension()
    return getattr(torch.ops.sparseyolo, name).default


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection-over-union of two sets of boxes.

    Args:
        boxes1 (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``.
        boxes2 (Tensor[M, 4]): same format, dtype and device as ``boxes1``.

    Returns:
        Tensor[N, M]: ``IoU(boxes1[i], boxes2[j])`` in the input dtype (computed in float32 for 16-bit
        inputs, float64 for float64).

    Caveats:
        A pair whose union is zero (two zero-area boxes) gets IoU 0, where torchvision returns NaN.
        Areas are not clamped, so inverted boxes give the same (meaningless) values as torchvision.
    """
    return _op("box_iou")(boxes1, boxes2)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with ``torchvision.ops.nms``'s semantics.

    Args:
        boxes (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``; float32, float16 or bfloat16.
        scores (Tensor[N]): one score per box, same dtype and device as ``boxes``.
        iou_threshold: a box is discarded when its IoU with a kept, higher-ranked box is ``> iou_threshold``.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score.

    Caveats:
        Ties: equal scores rank by ascending box index (torchvision's unstable sort leaves that open).
        NaN scores rank above ``+inf`` (as ``torch.sort`` puts them), so NaN-scored boxes are kept first.
        16-bit inputs are computed in float32 (torchvision has no CPU half kernel). A pair with zero union
        has IoU NaN and never suppresses. On CUDA the output size needs one device-to-host sync.
    """
    return _op("nms")(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per-category NMS with ``torchvision.ops.batched_nms``'s semantics: boxes of different ``idxs`` never
    suppress each other.

    Args:
        boxes (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``.
        scores (Tensor[N]): scores, same dtype and device.
        idxs (Tensor[N]): integer category of each box.
        iou_threshold: as in :func:`nms`.

    Returns:
        Tensor[K] (int64): kept indices, by decreasing score.

    Caveats:
        Categories are separated by shifting each box by ``idx * (max coordinate + 1)`` (in float32 for
        16-bit inputs, where the shifted coordinates would lose precision); the IoU of shifted boxes can
        differ from the unshifted one in the last bits. Ties and NaN as in :func:`nms`.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    work = boxes if boxes.dtype == torch.float32 else boxes.float()
    offsets = idxs.to(work) * (work.max() + 1)
    return nms(work + offsets[:, None], scores.to(work.dtype), iou_threshold)


def _classes_tensor(classes, device: torch.device) -> torch.Tensor | None:
    if classes is None or isinstance(classes, torch.Tensor) and classes.device == device:
        return classes
    return torch.as_tensor(list(classes) if not isinstance(classes, torch.Tensor) else classes, dtype=torch.int64,
                           device=device)


def yolo_nms_padded(
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes=None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`yolo_nms` without the per-image split: everything stays on the device, no host sync.

    Returns:
        ``(dets, counts)``: dets (Tensor[B, W, 6]) rows ``(x1, y1, x2, y2, conf, cls)`` zero-padded, with
        ``W = min(max_det, max_nms, N * (nc if multi_label else 1))``; counts (Tensor[B], int64): image ``b``'s
        detections are ``dets[b, :counts[b]]``.
    """
    if isinstance(pred, (list, tuple)):
        pred = pred[0]  # (inference output, raw per-level maps), as Detect returns in eval mode
    return _op("yolo_nms")(pred, conf_thres, iou_thres, _classes_tensor(classes, pred.device),
                                                 agnostic, multi_label, max_det, max_nms)


def yolo_nms(
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes=None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Raw YOLOv5 output to final detections in one op: YOLOv5's ``non_max_suppression``, fused.

    Per image: keep anchors with ``obj > conf_thres``; ``conf = obj * cls``; candidates are every class with
    ``conf > conf_thres`` (``multi_label``) or the best class if its ``conf > conf_thres``; keep ``classes``
    only; take the ``max_nms`` best; greedy NMS per class (all classes together if ``agnostic``); keep the
    first ``max_det``.

    Args:
        pred (Tensor[B, N, 5 + nc]): rows ``(cx, cy, w, h, obj, cls_0 .. cls_{nc-1})``, boxes in pixels, scores
            after the sigmoid; float32, float16 or bfloat16. A ``(pred, raw)`` tuple is accepted.
        conf_thres: score threshold in ``[0, 1]``.
        iou_thres: IoU threshold in ``[0, 1]``; a box is suppressed when its IoU with a kept box is above it.
        classes (Sequence[int] | Tensor[K] | None): keep only these class indices.
        agnostic: one NMS over all classes.
        multi_label: one candidate per passing (box, class) pair (YOLOv5 val); ignored when ``nc == 1``.
        max_det: detections kept per image (>= 1).
        max_nms: candidates per image that enter the NMS (>= 1).

    Returns:
        list[Tensor[n_b, 6]]: per image, rows ``(x1, y1, x2, y2, conf, cls)`` by decreasing ``conf``, on the
        device and in the dtype of ``pred``. Splitting needs one device-to-host sync; use
        :func:`yolo_nms_padded` to avoid it.

    Raises:
        RuntimeError: malformed ``pred`` (not 3D, ``nc < 1``, float64), thresholds outside ``[0, 1]``,
            ``max_det < 1`` or ``max_nms < 1``.

    Caveats:
        Ties: equal scores rank by ascending ``anchor * nc + class`` (the reference's stable order);
        torchvision's unstable sort may break such ties differently, the kept scores are the same.
        Non-finite scores: NaN never passes a threshold (a NaN objectness drops the anchor; a NaN class
        score drops that pair, and in single-label mode the whole anchor, as ``torch.max`` returns NaN);
        ``+inf`` passes and ranks first; ``inf * 0 = NaN`` drops the pair.
        Classes are independent; the reference's ``cls * 7680`` offset only differs for boxes wider than
        7680 px. 16-bit inputs are computed as if upcast to float32 and the outputs rounded once, which can
        differ near the thresholds from running the reference in half precision.
    """
    dets, counts = yolo_nms_padded(pred, conf_thres, iou_thres, classes, agnostic, multi_label, max_det, max_nms)
    return [d[:c] for d, c in zip(dets, counts.tolist())]


# ------------------------------------------------------------------------------------------- N:M sparsity


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask along input channels: keep the ``n`` largest ``|w|`` of every ``m`` consecutive channels.

    Args:
        weight (Tensor[Cout, Cin, *]): a conv weight ``[Cout, Cin, kh, kw]`` or linear weight ``[out, in]``;
            float32, float64, float16 or bfloat16. ``Cin % m == 0``.
        n, m: keep ``n`` of every ``m`` (``1 <= n < m <= 16``).

    Returns:
        Tensor[bool] of ``weight``'s shape: True where the weight is kept; exactly ``n`` per group, where a
        group is ``weight[o, g*m : g*m + m, i, j]`` for fixed ``(o, g, i, j)``.

    Caveats:
        Ties keep the lower channel: the kept pattern is the first, in ``itertools.combinations`` order, of
        the patterns with the largest kept ``sum |w|``. NaN ranks above every magnitude (kept).
    """
    return _op("nm_mask")(weight.detach(), n, m)


def nm_compress(
    weight: torch.Tensor, n: int, m: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress a tensor to the N:M format along its last axis.

    Format: the last axis ``K`` is cut into groups of ``m`` consecutive elements; each group keeps ``n``
    values in increasing position order, ``values[..., g*n + t]``, and their positions in the group,
    ``indices[..., g*n + t]`` in ``[0, m)``, strictly increasing. For 2:4 the positions packed two bits each
    by :func:`sparseyolo.prune.storage.pack_nm_indices` are the metadata of the sparse tensor-core
    instructions (``mma.sp``: 4 bits per group, first index in the low bits; 16 groups of K per int16 word
    pair) before any kernel-specific interleaving.

    Args:
        weight (Tensor[..., K]): float32, float64, float16 or bfloat16; ``K % m == 0``. For a conv weight
            pass ``w.permute(0, 2, 3, 1)`` (``[Cout, kh, kw, Cin]``) so that groups run along input channels.
        n, m: ``1 <= n < m <= 16``.
        mask (Tensor[..., K] bool, optional): positions to keep first (a pruning mask); without it, or for
            groups where it has fewer than ``n`` True, the largest ``|w|`` fill up as in :func:`nm_mask`.

    Returns:
        ``(values, indices)``: Tensor[..., K*n/m] in ``weight``'s dtype and Tensor[..., K*n/m] uint8.

    Caveats:
        Round trip ``nm_decompress(*nm_compress(w, n, m, mask), n, m)`` is bit-exact for every ``w`` with at
        most ``n`` nonzeros per group and the mask that holds them.
    """
    return _op("nm_compress")(weight.detach(), n, m, mask)


def nm_decompress(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Inverse of :func:`nm_compress`: Tensor[..., K*n/m] values + uint8 positions -> dense Tensor[..., K].

    Works for any dtype of 1, 2, 4 or 8 bytes (it moves bits), e.g. ``torch.ones_like(values, dtype=bool)``
    rebuilds the mask. Raises when a position is ``>= m`` or positions do not increase within a group (this
    check costs one device sync on CUDA).
    """
    return _op("nm_decompress")(values, indices, n, m)


def apply_masks_(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """In place, set ``tensors[i]`` to 0 wherever ``masks[i]`` is False, for every i, in one op call.

    Args:
        tensors: tensors of any dtype (1, 2, 4 or 8 bytes per element), all on one device.
        masks: bool tensors of the same shapes and devices.

    Caveats:
        A select, not a multiply: masked-out inf/NaN become 0 and every zero written is +0.0. On CUDA the
        whole list is done in one launch per ~36 tensors / 5M elements (one for a YOLOv5 model), never one
        per tensor; non-contiguous tensors go through a contiguous copy each. Not differentiable: call it
        under ``torch.no_grad()`` on parameters.
    """
    _op("apply_masks_")(list(tensors), list(masks))


# ------------------------------------------------------------------------------------ sparse convolution


def _pair(v: int | tuple[int, int] | list[int]) -> list[int]:
    """``k`` -> ``[k, k]``; a pair stays a pair (as a list, the schema's ``int[]``)."""
    return [v, v] if isinstance(v, int) else list(v)


def sparse_conv2d(
    input: torch.Tensor,
    values: torch.Tensor,
    columns: torch.Tensor,
    row_ptr: torch.Tensor,
    kernel_size: int | tuple[int, int],
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    activation: str = "identity",
    in_channels: int | None = None,
) -> torch.Tensor:
    """Direct sparse convolution ``act(conv2d(input, W, bias, stride, padding))``, groups = 1, on the CPU.

    Args:
        input (Tensor[N, Cin, H, W]): float32 (any memory format; NCHW is read without a copy).
        values (Tensor[nnz] float32), columns (Tensor[nnz] int32), row_ptr (Tensor[Cout + 1] int64): the
            weight ``[Cout, Cin, KH, KW]`` in CSR form over ``[Cout, Cin*KH*KW]``, column
            ``(cin*KH + kh)*KW + kw``, columns increasing within a row
            (:func:`sparseyolo.sparse.pack_conv_weight`, once per model).
        kernel_size: ``(KH, KW)``.
        bias (Tensor[Cout] float32, optional).
        stride, padding: as in ``F.conv2d`` (zero padding).
        activation: ``"identity"`` or ``"silu"`` (fused in the epilogue).
        in_channels: the packed weight's ``Cin``; an input with other channel counts is refused, as
            ``F.conv2d`` refuses it. None skips the check (the CSR form alone cannot tell a larger input apart).

    Returns:
        Tensor[N, Cout, H', W'] float32, NCHW.

    Caveats:
        No autograd. AVX2/FMA is used when the CPU has it (``SPARSEYOLO_CPU_ISA=portable`` forces the
        portable path). Sums run in a different order than ``F.conv2d``: results agree to ~1e-6 relative.
    """
    return _op("sparse_conv2d")(input, values, columns, row_ptr, _pair(kernel_size), bias,
                                                      _pair(stride), _pair(padding), activation,
                                                      -1 if in_channels is None else int(in_channels))


def sparse_conv2d_24(
    input: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    activation: str = "identity",
    kernel: str = "default",
    in_channels: int | None = None,
) -> torch.Tensor:
    """2:4 sparse convolution on the sparse tensor cores: ``act(conv2d(input, W, bias, stride, padding))``.

    Args:
        input (Tensor[N, Cin, H, W]): float16 or bfloat16, ``Cin % 8 == 0``; channels_last is read without a copy.
        values (Tensor[MT, KB, 32, 8]), meta (Tensor[MT, KB, 16] int32): the 2:4 weight ``[Cout, Cin, KH, KW]``
            (groups of 4 along Cin) in mma.sp fragment order (:func:`sparseyolo.sparse.pack_mma_sp_weight`, once
            per model; values in the input's dtype).
        out_channels: ``Cout``.
        kernel_size: ``(KH, KW)``.
        bias (Tensor[Cout] float32, optional).
        stride, padding: as in ``F.conv2d`` (zero padding, groups = 1, dilation = 1).
        activation: ``"identity"`` or ``"silu"`` (fused in the epilogue, in fp32).
        kernel: which CUDA kernel (``csrc/kernels/cuda/sparse_conv2d_24_device.cuh``), named by its tile (Cout x
            pixels): ``"tile64"`` (64 x 128, two stages; checked on an H200), ``"tile128"`` (128 x 128),
            ``"tile128x256"``, ``"tile256x128"`` (64-channel k-step, up to 4-stage cp.async pipeline), ``"wgmma"``
            (the 128 x 256 pipeline on Hopper's ``wgmma.mma_async.sp``; sm_90 only, built for sm_90a),
            ``"wgmma_overlap"`` (the same with one k-step of MMAs kept in flight), ``"wgmma64"`` (a 64 x 256 tile,
            one warpgroup, two blocks per SM; sm_90 only), or
            ``"default"`` (``"tile64"``). All but ``tile64`` have so far been checked only under the CPU SIMT
            emulator. All give the same results up to fp32 summation order. The CPU backend checks the name and
            ignores it.
        in_channels: the packed weight's ``Cin``; an input with other channel counts is refused, as
            ``F.conv2d`` refuses it. None skips the check (the packed shape only fixes ``Cin`` up to a multiple
            of 32). The CPU backend also refuses metadata codes that are not ascending position pairs.

    Returns:
        Tensor[N, Cout, H', W'] in the input's dtype, channels_last.

    Caveats:
        No autograd. CUDA (compute capability 8.0+) runs ``mma.sp`` with fp32 accumulation; the CPU backend is
        the slow reference (decode + float32 conv), for tests and tracing.
    """
    return _op("sparse_conv2d_24")(input, values, meta, out_channels, _pair(kernel_size), bias,
                                                         _pair(stride), _pair(padding), activation, kernel,
                                                         -1 if in_channels is None else int(in_channels))


def cusparselt_version() -> int:
    """The cuSPARSELt version sparseyolo was built with (``major * 1000 + minor * 100 + patch``), 0 without it."""
    return int(_op("cusparselt_version")())


def cusparselt_compress(weight: torch.Tensor) -> torch.Tensor:
    """Compress a 2:4 sparse weight for :func:`cusparselt_linear` (NVIDIA cuSPARSELt; once per layer).

    Args:
        weight (Tensor[out_features, in_features]): CUDA, float16 or bfloat16, 2:4 sparse along ``in_features``
            (checked: a weight that is not raises), both dimensions multiples of 16.

    Returns:
        Tensor[bytes] uint8: cuSPARSELt's compressed form (opaque; its size depends on the shape and dtype).
    """
    return _op("cusparselt_compress")(weight.detach())


def cusparselt_linear(compressed: torch.Tensor, input: torch.Tensor, out_features: int,
                      bias: torch.Tensor | None = None, alg_id: int = 0) -> torch.Tensor:
    """``input @ W^T + bias`` with the 2:4 weight ``W`` that :func:`cusparselt_compress` compressed (cuSPARSELt).

    cuSPARSELt's matmul plan is built at the first call for each (shape, dtype, bias tensor, ``alg_id``) and cached
    in the process, so later calls run only the matmul. A 1x1 convolution over a channels_last activation is this
    op on ``x.permute(0, 2, 3, 1).reshape(-1, Cin)``, without a copy (the ``"cusparselt"`` GPU backend).

    Args:
        compressed (Tensor uint8): from :func:`cusparselt_compress`, on the input's device.
        input (Tensor[P, in_features]): CUDA, float16 or bfloat16, in the compressed weight's dtype; any P (the
            last ``P % 8`` rows go through a small zero-padded copy).
        out_features: ``W``'s rows.
        bias (Tensor[out_features], optional): in the input's dtype.
        alg_id: cuSPARSELt's algorithm configuration (0, its default, unless a measurement says otherwise).

    Returns:
        Tensor[P, out_features] in the input's dtype (fp32 accumulation).
    """
    return _op("cusparselt_linear")(compressed, input, out_features, bias, alg_id)


def block_sparse_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    taps: torch.Tensor,
    block_ptr: torch.Tensor,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    activation: str = "identity",
    gather: str = "plain",
) -> torch.Tensor:
    """Block-sparse convolution ``act(conv2d(input, W, bias, stride, padding))`` on the CPU, channels-last.

    Args:
        input (Tensor[N, Cin, H, W]): float32 or bfloat16; channels_last is read without a copy.
        weight, taps, block_ptr: ``W [Cout, Cin, KH, KW]`` packed by
            :func:`sparseyolo.sparse.block_packing.pack_block_sparse` (once per model): ``weight`` is ``[U, 16]``
            float32 for a float32 input, ``[U, 16, 2]`` bfloat16 for a bfloat16 input.
        in_channels, out_channels: ``Cin`` and ``Cout`` of ``W``.
        kernel_size: ``(KH, KW)``.
        bias (Tensor[Cout] float32, optional).
        stride, padding: as in ``F.conv2d`` (zero padding, groups = 1, dilation = 1).
        activation: ``"identity"`` or ``"silu"`` (fused in the epilogue, in fp32).
        gather: the packing's ``gather`` (``"plain"``; ``"pairs24"`` for bf16 2:4 blocks; ``"tiles32"`` for bf16
            32-channel tiles, run on AMX where the CPU has it).

    Returns:
        Tensor[N, Cout, H', W'] in the input's dtype, channels_last.

    Caveats:
        No autograd. Accumulates in fp32; a bf16 output is rounded once, after the activation. The SIMD path is the
        CPU's best of AMX (tiles32 only), AVX-512 BF16, AVX-512, AVX2/FMA and portable C++;
        ``SPARSEYOLO_CPU_ISA=avx512_bf16|avx512|avx2|portable`` caps it (:func:`cpu_isa` says which runs). Without
        AVX-512 BF16, bf16 products are computed in fp32 FMAs.
    """
    return _op("block_sparse_conv2d")(
        input, weight, taps, block_ptr, in_channels, out_channels, _pair(kernel_size), bias, _pair(stride),
        _pair(padding), activation, gather)


def cpu_isa() -> str:
    """The SIMD path sparseyolo's CPU kernels take now: ``"amx"``, ``"avx512_bf16"``, ``"avx512"``, ``"avx2"`` or
    ``"portable"`` (the CPU's best, capped by the environment variable ``SPARSEYOLO_CPU_ISA``)."""
    return _op("cpu_isa")()
