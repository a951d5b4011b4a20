"""2:4 sparse convolution on the GPU: cuDNN dense vs cuSPARSELt vs our mma.sp kernel, and end to end.

1. Device ceilings, measured in the same run: device-to-device copy bandwidth (bytes read + written) and a
   dense fp16 8192^3 GEMM (TFLOP/s on random data).
2. Per unique conv shape of yolov5x at ``--batch`` x 640 x 640 (default 32, fp16, channels_last), 2:4 weights
   along Cin, fused bias + SiLU in every method: cuDNN ``F.conv2d`` + SiLU (dense), cuSPARSELt (1x1, stride 1
   only: one GEMM over NHWC, weight compressed once, default algorithm), ``sparseyolo::sparse_conv2d_24`` with
   its kernels, named by their backend (``cuda_mma_sp``: tile64, the hardware-proven one; experimental:
   ``cuda_mma_sp_tile128``: tile128, ..., ``cuda_wgmma``: wgmma, ...), each also checked against the fp32 dense
   conv on the timed shape (``rel err``). The summary gives the median speedup over cuDNN on all layers and on the
   large ones (Cin, Cout >= 256).
   TFLOP/s count the dense-equivalent 2*N*Ho*Wo*Cout*Cin*KH*KW, so sparse and dense rates compare directly.
3. End to end yolov5s and yolov5x (random weights, 2:4 pruned, BatchNorms folded) at ``--batch`` fp16:
   inference and NMS (``sparseyolo.ops.yolo_nms``, val setting conf 0.001 IoU 0.6 multi-label) timed
   separately, dense (cuDNN) vs 2:4 (``sparsify(model, SparsifyConfig(device="cuda", backends=--backends))``:
   each layer's backend is chosen by the autotuner at conversion, before the timed runs).

Timing (``sparseyolo.utils.timing.cuda_median_ms``): warm-up first, then ``--reps`` samples, each one
untimed lead call and then at least 4 back-to-back calls between two CUDA events; the median per-call time. So
the host's dispatch overlaps device work, as in a forward pass (the first H200 run, 2026-11-30 01:05, timed one
call per event pair, which adds the dispatch of every call). Inputs rotate among enough buffers that they exceed
3x the L2 cache. A failing method records NaN.

  python benchmarks/bench_sparse_conv_cuda.py --out benchmarks/results   # writes .json and .md
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparseyolo import ops  # noqa: E402
from sparseyolo.sparse import SparsifyConfig, pack_mma_sp_weight, sparsify  # noqa: E402
from sparseyolo.sparse.backends.cuda_mma_sp import CUDA_MMA_SP  # noqa: E402
from sparseyolo.sparse.experimental import (  # noqa: E402
    EXPERIMENTAL_KERNELS,
    CusparseLtConv1x1,
    cusparselt_status,
)
from sparseyolo.utils.timing import cuda_median_ms  # noqa: E402

LOGGER = logging.getLogger("bench_sparse_conv_cuda")
NAN = float("nan")
# method (the backend's name) -> sparse_conv2d_24's kernel=: the proven kernel, then the experimental ones (which
# fail, recorded as NaN, in an extension built without SPARSEYOLO_EXPERIMENTAL_GPU=1).
MMA_SP_METHODS = {CUDA_MMA_SP.name: CUDA_MMA_SP.kernel, **EXPERIMENTAL_KERNELS}
METHODS = ("dense", "cusparselt", *MMA_SP_METHODS)


def time_ms(fn, args_list: list, reps: int, warmup: int = 3) -> float:
    """Median device ms per call of ``fn(*args)``, rotating through ``args_list`` (``cuda_median_ms``: samples of
    back-to-back calls after a lead call); NaN if it fails."""
    try:
        return cuda_median_ms(fn, args_list, reps=reps, warmup=warmup)
    except Exception as e:  # noqa: BLE001 - a failing method is recorded as NaN
        LOGGER.warning("method failed: %s: %s", type(e).__name__, e)
        torch.cuda.synchronize()
        return NAN


def stem_im2col(x: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """A conv with few input channels as im2col + one GEMM: ``w2`` is the weight as [Cin*K*K, Cout] in
    ``F.unfold``'s (c, kh, kw) row order; bias + SiLU; returns NCHW-shaped channels_last output."""
    n, _, h, w = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = F.unfold(x.contiguous(), k, padding=pad, stride=stride)  # [N, Cin*K*K, L]
    y = torch.addmm(bias, cols.transpose(1, 2).reshape(n * ho * wo, -1), w2)  # [N*L, Cout]
    return F.silu(y, inplace=True).view(n, ho, wo, -1).permute(0, 3, 1, 2)


def rotations(bytes_one: int, l2: int, cap: int = 8) -> int:
    return max(1, min(cap, math.ceil(3 * l2 / max(bytes_one, 1))))


@functools.cache
def _reread_kernel():
    """Triton kernel: each program sums its chunk of ``x`` PASSES times with .cg loads (L2, not L1)."""
    import triton
    import triton.language as tl

    @triton.jit
    def reread(x_ptr, out_ptr, n_per_prog, PASSES: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * n_per_prog
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for _ in range(PASSES):
            for off in range(0, n_per_prog, BLOCK):
                acc += tl.load(x_ptr + base + off + tl.arange(0, BLOCK), cache_modifier=".cg")
        tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)

    return reread


def l2_read_GBps(l2: int, reps: int, passes: int = 16, block: int = 1024) -> float:
    """L2-resident read bandwidth, a lower bound: float32 data of half the L2 re-read ``passes`` times by 4 programs
    per SM (the first pass comes from DRAM and is counted as if from L2). Checked against torch's sum."""
    programs = 4 * torch.cuda.get_device_properties(0).multi_processor_count
    n_per_prog = max(block, l2 // 2 // 4 // programs // block * block)
    x = torch.randn(programs * n_per_prog, device="cuda")
    out = torch.empty(programs * block, device="cuda")
    kernel = _reread_kernel()

    def run():
        kernel[(programs,)](x, out, n_per_prog, PASSES=passes, BLOCK=block, num_warps=8)

    run()
    ref = passes * x.view(programs, n_per_prog // block, block).sum(1).reshape(-1)
    if not torch.allclose(out, ref, rtol=1e-3, atol=1e-2):
        raise RuntimeError("the L2 re-read kernel summed wrong")
    ms = time_ms(run, [()], reps)
    return passes * x.numel() * 4 / (ms * 1e-3) / 1e9


def ceilings(reps: int, l2: int) -> dict:
    out = {}
    n = 1 << 30  # 1 GiB per buffer
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), [()], reps)
    out["copy_GBps"] = 2 * n / (ms * 1e-3) / 1e9
    del a, b
    m = 8192
    x = torch.randn(m, m, device="cuda", dtype=torch.float16)
    y = torch.randn(m, m, device="cuda", dtype=torch.float16)
    ms = time_ms(lambda: x @ y, [()], reps)
    out["gemm_fp16_TFLOPs"] = 2 * m**3 / (ms * 1e-3) / 1e12
    del x, y
    try:  # what feeds the sparse kernels' cp.async stages: their tiles come mostly from L2
        out["l2_read_GBps"] = l2_read_GBps(l2, reps)
    except Exception as e:  # noqa: BLE001 - no Triton: no L2 figure
        LOGGER.warning("L2 read bandwidth: %s: %s", type(e).__name__, e)
    return out


def conv_shapes(model_name: str, size: int) -> list[dict]:
    """Unique (Cin, Cout, k, stride, pad, H, W) of the model's convs at batch 1, with their counts."""
    from sparseyolo import models

    dev, dt = ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)
    model = getattr(models, model_name)().eval().to(dev, dt)
    seen: dict[tuple, dict] = {}

    def hook(mod, args):
        x = args[0]
        key = (mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0], x.shape[2],
               x.shape[3])
        seen.setdefault(key, {"count": 0})["count"] += 1

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=dev, dtype=dt))
    for h in hooks:
        h.remove()
    return [dict(cin=k[0], cout=k[1], k=k[2], stride=k[3], pad=k[4], h=k[5], w=k[6], count=v["count"])
            for k, v in seen.items()]


def bench_layer(s: dict, batch: int, dtype: torch.dtype, l2: int, reps: int,
                methods: tuple[str, ...] = METHODS, cslt_algs: int = 1) -> dict:
    cin, cout, k, st, pd, h, w = s["cin"], s["cout"], s["k"], s["stride"], s["pad"], s["h"], s["w"]
    ho, wo = (h + 2 * pd - k) // st + 1, (w + 2 * pd - k) // st + 1
    flops = 2.0 * batch * ho * wo * cout * cin * k * k
    row = dict(s, batch=batch, ho=ho, wo=wo, gflop=flops / 1e9)
    wt = torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k)
    if cin % 4 == 0:
        wt = wt * ops.nm_mask(wt, 2, 4)
    wd = wt.to("cuda", dtype).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(cout, device="cuda")
    bias_d = bias.to(dtype)
    n_rot = rotations(batch * cin * h * w * 2, l2)
    xs = [(torch.randn(batch, cin, h, w, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last),)
          for _ in range(n_rot)]
    row["rotations"] = n_rot

    def dense(x):
        return F.silu(F.conv2d(x, wd, bias_d, st, pd), inplace=True)

    row["dense_ms"] = time_ms(dense, xs, reps) if "dense" in methods else NAN
    row["dense_nchw_ms"] = NAN
    if "dense" in methods and cin < 8:  # the stem: cuDNN's channels_last path pads 3 channels; NCHW in, NHWC out
        wn = wd.contiguous()
        xn = [(x.contiguous(),) for (x,) in xs]
        def dense_nchw(x):
            y = F.silu(F.conv2d(x, wn, bias_d, st, pd), inplace=True)
            return y.contiguous(memory_format=torch.channels_last)

        row["dense_nchw_ms"] = time_ms(dense_nchw, xn, reps)
        del xn
        # The same conv as an explicit im2col GEMM: unfold (NCHW) -> [N*L, Cin*K*K] @ [Cin*K*K, Cout], NHWC out.
        w2 = wd.permute(1, 2, 3, 0).reshape(cin * k * k, cout).contiguous()  # rows in unfold's (c, kh, kw) order
        row["dense_im2col_ms"] = time_ms(lambda x: stem_im2col(x, w2, bias_d, k, st, pd), xs, reps)
        y = stem_im2col(xs[0][0][:1], w2, bias_d, k, st, pd).float()
        ref = F.silu(F.conv2d(xs[0][0][:1].float(), wd.float(), bias, st, pd))
        row["dense_im2col_rel_err"] = float((y - ref).norm() / ref.norm())
    row["cusparselt_ms"] = NAN
    row["cusparselt_first_call_ms"] = NAN
    cslt_ok = k == 1 and st == 1 and pd == 0 and cin % 16 == 0 and cout % 16 == 0
    if "cusparselt" in methods and cslt_ok and not cusparselt_status():
        try:
            cs = CusparseLtConv1x1(wd, bias)
            t0 = time.perf_counter()  # the first call builds and caches cuSPARSELt's plan for this shape
            cs(xs[0][0], "silu")
            torch.cuda.synchronize()
            row["cusparselt_first_call_ms"] = (time.perf_counter() - t0) * 1e3
            row["cusparselt_ms"] = time_ms(lambda x: cs(x, "silu"), xs, reps)
            y = cs(xs[0][0][:1], "silu").float()  # correctness on the timed shape (one image), vs fp32 cuDNN
            ref = F.silu(F.conv2d(xs[0][0][:1].float(), wd.float(), bias))
            row["cusparselt_rel_err"] = float((y - ref).norm() / ref.norm())
            # cuSPARSELt's other algorithm configurations (the backend uses 0): ms per alg_id, until one is refused.
            row["cusparselt_alg_ms"] = {0: row["cusparselt_ms"]}
            for alg in range(1, cslt_algs):
                try:
                    ca = CusparseLtConv1x1(wd, bias, alg_id=alg)
                    row["cusparselt_alg_ms"][alg] = time_ms(lambda x, ca=ca: ca(x, "silu"), xs, reps)
                except Exception as e:  # noqa: BLE001 - past cuSPARSELt's last configuration
                    LOGGER.info("cuSPARSELt alg_id %d %s: %s", alg, s, e)
                    break
        except Exception as e:  # noqa: BLE001
            LOGGER.warning("cuSPARSELt %s: %s", s, e)
    p = pack_mma_sp_weight(wt, dtype=dtype).to("cuda") if cin % 8 == 0 else None
    for m, kernel in MMA_SP_METHODS.items():
        row[f"{m}_ms"] = NAN
        if m not in methods or p is None:
            continue
        try:
            row[f"{m}_ms"] = time_ms(
                lambda x, kernel=kernel: ops.sparse_conv2d_24(x, p.values, p.meta, cout, k, bias, st, pd, "silu",
                                                              kernel=kernel), xs, reps)
            # correctness on the timed shape, against the dense masked conv (fp32 reference)
            y = ops.sparse_conv2d_24(xs[0][0][:1], p.values, p.meta, cout, k, bias, st, pd, "silu",
                                     kernel=kernel).float()
            ref = F.silu(F.conv2d(xs[0][0][:1].float(), wd.float(), bias, st, pd))
            row[f"{m}_rel_err"] = float((y - ref).norm() / ref.norm())
        except Exception as e:  # noqa: BLE001
            LOGGER.warning("%s %s: %s", m, s, e)
    for m in METHODS:
        t = row[f"{m}_ms"]
        row[f"{m}_TFLOPs"] = flops / (t * 1e-3) / 1e12 if t == t else NAN
    for m in ("cusparselt", *MMA_SP_METHODS):
        row[f"speedup_{m}"] = row["dense_ms"] / row[f"{m}_ms"] if row[f"{m}_ms"] == row[f"{m}_ms"] else NAN
    del xs
    torch.cuda.empty_cache()
    return row


def end_to_end(model_name: str, batch: int, size: int, dtype: torch.dtype, reps: int,
               backends: tuple[str, ...] = ("auto",)) -> dict:
    from sparseyolo import models
    from sparseyolo.prune import prune

    row = {"model": model_name, "batch": batch}
    torch.manual_seed(0)
    base = getattr(models, model_name)().eval()
    prune(base, "nm", n=2, m=4)
    xs = [(torch.rand(batch, 3, size, size, device="cuda", dtype=dtype).contiguous(
        memory_format=torch.channels_last),) for _ in range(2)]
    for variant, chosen in (("dense", ("dense",)), ("sparse24", backends)):
        try:
            t0 = time.perf_counter()
            config = SparsifyConfig(backends=chosen, device="cuda", dtype=dtype, example_input=xs[0][0])
            m = sparsify(base, config).to(memory_format=torch.channels_last).eval()  # the autotuner runs here
            torch.cuda.synchronize()
            row[f"{variant}_convert_s"] = time.perf_counter() - t0
            if variant == "sparse24":
                choices: dict[str, int] = {}
                for d in m.sparsify_report.layers:
                    choices[d.backend_name] = choices.get(d.backend_name, 0) + 1
                row["sparse24_layer_backends"] = choices
            with torch.no_grad():
                row[f"{variant}_infer_ms"] = time_ms(lambda x: m(x), xs, reps)
                pred = m(xs[0][0])
                pred = pred[0] if isinstance(pred, (tuple, list)) else pred
                row[f"{variant}_nms_ms"] = time_ms(
                    lambda p: ops.yolo_nms(p, 0.001, 0.6, multi_label=True), [(pred.float(),)], reps)
            del m
        except Exception as e:  # noqa: BLE001
            LOGGER.warning("end to end %s %s: %s: %s", model_name, variant, type(e).__name__, e)
            row.setdefault(f"{variant}_infer_ms", NAN)
            row.setdefault(f"{variant}_nms_ms", NAN)
        torch.cuda.empty_cache()
    d = row["dense_infer_ms"] + row["dense_nms_ms"]
    s = row["sparse24_infer_ms"] + row["sparse24_nms_ms"]
    row["speedup_infer"] = row["dense_infer_ms"] / row["sparse24_infer_ms"]
    row["speedup_total"] = d / s
    return row


def speedup_summary(layers: list[dict]) -> list[str]:
    """Median speedup over cuDNN of each kernel, on all measured layers and on the large ones (Cin, Cout >= 256)."""
    out = []
    algs = [r["cusparselt_alg_ms"] for r in layers if len(r.get("cusparselt_alg_ms", {})) > 1]
    if algs:  # JSON turns the alg ids into strings
        ratios = [min(a.values()) / next(v for k, v in a.items() if str(k) == "0") for a in algs]
        out.append(f"- cuSPARSELt: the best of its first {max(len(a) for a in algs)} algorithm configurations takes "
                   f"a median {statistics.median(ratios):.2f}x the time of configuration 0 (the one used) over "
                   f"{len(algs)} shapes")
    for m, kernel in {"cusparselt": "cuSPARSELt", **MMA_SP_METHODS}.items():
        for label, keep in (("all layers", lambda r: True), ("Cin, Cout >= 256", lambda r: min(r["cin"], r["cout"]) >= 256)):
            v = [r[f"speedup_{m}"] for r in layers if keep(r) and r.get(f"speedup_{m}", NAN) == r.get(f"speedup_{m}")]
            if v:
                out.append(f"- {kernel}, {label}: median speedup {statistics.median(v):.2f}x over {len(v)} shapes "
                           f"(range {min(v):.2f}x-{max(v):.2f}x)")
    out += projection(layers)
    return out


def projection(layers: list[dict]) -> list[str]:
    """The conv time of the whole model (each shape times its count) with cuDNN, and with the fastest correct
    method per shape: what a perfect per-layer `auto` could give, before the parts no conv method changes."""
    def ok(r, m):
        t, err = r.get(f"{m}_ms", NAN), r.get(f"{m}_rel_err", 0.0)
        return t == t and err == err and err < 1e-2  # measured, and matched the fp32 reference

    methods = [m for m in METHODS if m != "dense"]
    dense = best = 0.0
    wins: dict[str, float] = {}
    for r in layers:
        if r.get("dense_ms", NAN) != r.get("dense_ms"):
            return []
        cands = {m: r[f"{m}_ms"] for m in methods if ok(r, m)}
        m_best = min(cands, key=cands.get) if cands and min(cands.values()) < r["dense_ms"] else "dense"
        t_best = cands.get(m_best, r["dense_ms"])
        dense += r["count"] * r["dense_ms"]
        best += r["count"] * t_best
        if m_best != "dense":
            wins[m_best] = wins.get(m_best, 0.0) + r["count"] * (r["dense_ms"] - t_best)
    if dense == 0 or not wins:
        return []
    saved = ", ".join(f"{MMA_SP_METHODS.get(m, 'cuSPARSELt')} {v:.2f} ms" for m, v in sorted(wins.items()))
    return [f"- All convs of the model, each shape times its count: {dense:.2f} ms with cuDNN, {best:.2f} ms with "
            f"the fastest correct method per shape ({dense / best:.2f}x; saved: {saved})"]


def merged_projection(paths: list[Path]) -> list[str]:
    """`projection` over several runs' .json files (e.g. the mma.sp, wgmma and cuSPARSELt runs of device_check):
    per shape, every method any of them measured; cuDNN's time from the first file that has the shape."""
    merged: dict[tuple, dict] = {}
    for path in paths:
        if not path.is_file():
            continue
        for r in json.loads(path.read_text())["layers"]:
            key = (r["cin"], r["cout"], r["k"], r["stride"], r["h"], r["w"])
            row = merged.setdefault(key, dict(r))
            for m in METHODS:
                t = r.get(f"{m}_ms", NAN)
                if m != "dense" and t == t and not row.get(f"{m}_ms", NAN) == row.get(f"{m}_ms", NAN):
                    row[f"{m}_ms"], row[f"{m}_rel_err"] = t, r.get(f"{m}_rel_err", 0.0)
    lines = projection(list(merged.values()))
    return [f"Merged from {', '.join(p.name for p in paths if p.is_file())}:", *lines] if lines else []


def markdown(res: dict) -> str:
    env, c = res["environment"], res["ceilings"]
    lines = [f"## 2:4 sparse convolution on {env['gpu']} ({res['dtype']}, batch {res['batch']})", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, {env['date']}. Ceilings: copy "
             f"{c.get('copy_GBps', NAN):.0f} GB/s, dense fp16 GEMM {c.get('gemm_fp16_TFLOPs', NAN):.0f} TFLOP/s, "
             f"L2-resident read {c.get('l2_read_GBps', NAN):.0f} GB/s (a lower bound). "
             f"cuSPARSELt: {res.get('cusparselt_status', '?')}. "
             f"cudnn.benchmark: {res.get('cudnn_benchmark', 'off (not recorded)')}. "
             f"Timing: {res.get('timing', 'one call per event pair (includes host dispatch)')}.",
             ""]
    # One column group per mma.sp kernel that ran in this file.
    ran = [m for m in MMA_SP_METHODS if any(r.get(f"{m}_ms", NAN) == r.get(f"{m}_ms") for r in res["layers"])]
    names = [MMA_SP_METHODS[m] for m in ran]
    lines += ["| Cin | Cout | k | s | in HxW | n | dense ms | cuSPARSELt ms | "
              + "".join(f"{k} ms | " for k in names) + "dense TF/s | cuSPARSELt TF/s | "
              + "".join(f"{k} TF/s | " for k in names) + "".join(f"{k} speedup | " for k in names)
              + "rel err " + " / ".join(names) + " | cuSPARSELt speedup | cuSPARSELt rel err | "
              "cuSPARSELt first call ms |",
              "|" + "---|" * (14 + 3 * len(names))]
    for r in res["layers"]:
        lines.append(
            f"| {r['cin']} | {r['cout']} | {r['k']} | {r['stride']} | {r['h']}x{r['w']} | {r['count']} | "
            f"{r['dense_ms']:.3f} | {r['cusparselt_ms']:.3f} | "
            + "".join(f"{r.get(f'{m}_ms', NAN):.3f} | " for m in ran)
            + f"{r['dense_TFLOPs']:.0f} | {r['cusparselt_TFLOPs']:.0f} | "
            + "".join(f"{r.get(f'{m}_TFLOPs', NAN):.0f} | " for m in ran)
            + "".join(f"{r.get(f'speedup_{m}', NAN):.2f} | " for m in ran)
            + " / ".join(f"{r.get(f'{m}_rel_err', NAN):.1e}" for m in ran)
            + f" | {r.get('speedup_cusparselt', NAN):.2f} | {r.get('cusparselt_rel_err', NAN):.1e} | "
            f"{r.get('cusparselt_first_call_ms', NAN):.1f} |")
    lines += [""] + speedup_summary(res["layers"])
    for r in res["layers"]:
        if r.get("dense_nchw_ms", NAN) == r.get("dense_nchw_ms"):
            lines.append(f"- {r['cin']} -> {r['cout']} {r['k']}x{r['k']} s{r['stride']} (the stem) in cuDNN: "
                         f"{r['dense_ms']:.3f} ms channels_last, {r['dense_nchw_ms']:.3f} ms NCHW in and "
                         f"channels_last out, {r.get('dense_im2col_ms', NAN):.3f} ms as im2col + GEMM (rel err "
                         f"{r.get('dense_im2col_rel_err', NAN):.1e})")
    if res["end_to_end"]:
        lines += ["", "| model | dense infer ms | dense NMS ms | 2:4 infer ms | 2:4 NMS ms | infer speedup | "
                  "infer+NMS speedup | 2:4 layer backends |", "|" + "---|" * 8]
        for r in res["end_to_end"]:
            lines.append(f"| {r['model']} | {r['dense_infer_ms']:.2f} | {r['dense_nms_ms']:.2f} | "
                         f"{r['sparse24_infer_ms']:.2f} | {r['sparse24_nms_ms']:.2f} | {r['speedup_infer']:.2f} | "
                         f"{r['speedup_total']:.2f} | {r.get('sparse24_layer_backends', {})} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--layers-model", default="yolov5x")
    ap.add_argument("--models", nargs="*", default=["yolov5s", "yolov5x"], help="end-to-end models")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="per-layer methods")
    ap.add_argument("--layers", nargs="*", type=int, default=None,
                    help="indices of the layer shapes to run (default all); --layers with no index: none")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for .json and .md")
    ap.add_argument("--name", default="sparse_conv_cuda")
    ap.add_argument("--cslt-algs", type=int, default=4,
                    help="also time cuSPARSELt algorithm configurations 1..N-1 (the backend uses 0)")
    ap.add_argument("--cudnn-benchmark", type=int, default=1, choices=[0, 1],
                    help="torch.backends.cudnn.benchmark for the whole run (1: cuDNN times its algorithms on the "
                         "first call of each shape and keeps the fastest, the strongest dense baseline)")
    ap.add_argument("--backends", nargs="+", default=["auto"],
                    help="end to end: SparsifyConfig.backends of the 2:4 model (e.g. cuda_mma_sp cuda_wgmma64; "
                         "experimental names need SPARSEYOLO_EXPERIMENTAL_GPU=1)")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="no run: merge the layer tables of earlier runs' .json files and print their projection")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.merge:
        print("\n".join(merged_projection(args.merge)))
        return
    if not torch.cuda.is_available():
        sys.exit("bench_sparse_conv_cuda: needs a CUDA device")
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    res = {"batch": args.batch, "size": args.size, "dtype": args.dtype, "reps": args.reps,
           "timing": "cuda_median_ms: median of --reps samples, each a lead call + >= 4 back-to-back calls",
           "cudnn_benchmark": bool(args.cudnn_benchmark),
           "environment": {"gpu": props.name, "sms": props.multi_processor_count, "l2_bytes": l2,
                           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                           "date": time.strftime("%Y-%m-%d %H:%M")},
           "ceilings": {}, "layers": [], "end_to_end": []}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / f"{args.name}.json", args.out / f"{args.name}.md"

    def save():
        json_path.write_text(json.dumps(res, indent=1, default=str))
        md_path.write_text(markdown(res))

    res["cusparselt_status"] = cusparselt_status() or "ok"
    print("cuSPARSELt:", res["cusparselt_status"], flush=True)
    try:
        res["ceilings"] = ceilings(args.reps, l2)
    except Exception as e:  # noqa: BLE001
        LOGGER.warning("ceilings: %s", e)
    print(res["ceilings"], flush=True)
    shapes = conv_shapes(args.layers_model, args.size)
    if args.layers is not None:
        shapes = [shapes[i] for i in args.layers if i < len(shapes)]
    if "cusparselt" in args.methods and not set(MMA_SP_METHODS) & set(args.methods):  # cuSPARSELt only: 1x1 layers
        shapes = [s for s in shapes if s["k"] == 1 and s["stride"] == 1 and s["pad"] == 0]
    for s in shapes:
        r = bench_layer(s, args.batch, dtype, l2, args.reps, tuple(args.methods), args.cslt_algs)
        res["layers"].append(r)
        kernels = " ".join(f"{k} {r[f'{m}_ms']:.3f} ({r[f'speedup_{m}']:.2f}x, err {r.get(f'{m}_rel_err', NAN):.1e})"
                           for m, k in MMA_SP_METHODS.items() if m in args.methods)
        print(f"{s['cin']:>5} {s['cout']:>5} k{s['k']} s{s['stride']} {s['h']}x{s['w']}: dense {r['dense_ms']:.3f} "
              f"cslt {r['cusparselt_ms']:.3f} {kernels} ms", flush=True)
        save()
    for name in args.models:
        r = end_to_end(name, args.batch, args.size, dtype, args.reps, tuple(args.backends))
        res["end_to_end"].append(r)
        print(r, flush=True)
        save()
    save()
    print(markdown(res))


if __name__ == "__main__":
    main()
