"""Fused ``sparseyolo.ops.yolo_nms`` vs the pure-torch/torchvision reference (YOLOv5's non_max_suppression).

YOLOv5s-shaped outputs [B, 25200, 85] (nc = 80, 640 x 640), at the val setting (conf 0.001, IoU 0.6,
multi-label) and the detect setting (conf 0.25, IoU 0.45, single-label), batch 1 and 32, in one run.

Score distributions come from a real model when possible: yolov5n (same output shape as yolov5s) on the
coco128 images letterboxed to 640 (``--source model``, the default when ../shared is present). Otherwise
(``--source synthetic``) a distribution that mimics it: objectness mostly tiny (u**8), a few high, class
scores skewed to 0 (u**4), boxes clustered around a few dozen objects.

Times are medians of torch.utils.benchmark ``blocked_autorange`` after a warm-up call; both methods return
the per-image list (the fused op's split costs one device-to-host sync, which is counted). A method that
fails records NaN. Results: JSON (``--json``) and a markdown table (``--markdown``, appended).

  python benchmarks/bench_nms.py --device cpu --json benchmarks/results_nms_cpu.json --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparseyolo import ops  # noqa: E402

LOGGER = logging.getLogger("bench_nms")
SHARED = Path(os.environ.get("SPARSEYOLO_SHARED", ROOT.parent / "shared"))
SETTINGS = {  # name: (conf_thres, iou_thres, multi_label) as in YOLOv5 val.py / detect.py
    "val": (0.001, 0.6, True),
    "detect": (0.25, 0.45, False),
}


def reference_nms():
    """YOLOv5's non_max_suppression: sparseyolo.utils.nms when present, else a local copy of the semantics."""
    try:
        from sparseyolo.utils.nms import non_max_suppression

        return non_max_suppression, "sparseyolo.utils.nms.non_max_suppression"
    except ImportError:
        import torchvision

        def non_max_suppression(pred, conf_thres, iou_thres, multi_label=False, max_det=300, max_nms=30000):
            out = []
            for x in pred:
                x = x[x[:, 4] > conf_thres]
                conf_all = x[:, 5:] * x[:, 4:5]
                box = torch.cat([x[:, :2] - x[:, 2:4] / 2, x[:, :2] + x[:, 2:4] / 2], 1)
                if multi_label:
                    i, j = (conf_all > conf_thres).nonzero(as_tuple=False).T
                    d = torch.cat([box[i], conf_all[i, j, None], j[:, None].to(x.dtype)], 1)
                else:
                    conf, j = conf_all.max(1, keepdim=True)
                    d = torch.cat([box, conf, j.to(x.dtype)], 1)[conf.view(-1) > conf_thres]
                d = d[d[:, 4].argsort(descending=True, stable=True)[:max_nms]]
                keep = torchvision.ops.nms(d[:, :4] + d[:, 5:6] * 7680, d[:, 4], iou_thres)[:max_det]
                out.append(d[keep])
            return out

        return non_max_suppression, "local pure-torch + torchvision reference"


def model_outputs(batch: int) -> torch.Tensor | None:
    """yolov5n on the first `batch` coco128 images (letterboxed to 640 x 640), or None when unavailable."""
    try:
        import numpy as np
        from PIL import Image

        from sparseyolo.checkpoint import load_model
        from sparseyolo.data.augment import letterbox
    except ImportError as e:
        LOGGER.warning("model outputs unavailable (%s)", e)
        return None
    weights = SHARED / "weights" / "yolov5n.pt"
    images = sorted((SHARED / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))
    if not weights.is_file() or not images:
        LOGGER.warning("model outputs unavailable: %s or coco128 images missing", weights)
        return None
    model = load_model(weights)
    ims = []
    for f in (images * math.ceil(batch / len(images)))[:batch]:
        im = np.asarray(Image.open(f).convert("RGB"))[..., ::-1]
        im = letterbox(im, 640, auto=False)[0][..., ::-1]
        ims.append(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float() / 255)
    with torch.no_grad():
        out = [model(torch.stack(ims[i : i + 8])) for i in range(0, batch, 8)]
    return torch.cat([o[0] if isinstance(o, (list, tuple)) else o for o in out])


def synthetic_outputs(batch: int, n: int = 25200, nc: int = 80, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(batch, 40, 2, generator=g) * 640
    pick = torch.randint(0, 40, (batch, n), generator=g)
    xy = torch.gather(centers, 1, pick[..., None].expand(batch, n, 2)) + torch.randn(batch, n, 2, generator=g) * 20
    wh = 8 + torch.rand(batch, n, 2, generator=g) * 200
    obj = torch.rand(batch, n, 1, generator=g) ** 8
    cls = torch.rand(batch, n, nc, generator=g) ** 4
    return torch.cat([xy, wh, obj, cls], 2)


def time_median(fn, min_run_time: float) -> float:
    try:
        fn()  # warm-up
        return tbench.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median
    except Exception as e:  # noqa: BLE001  (a failing method records NaN, the run goes on)
        LOGGER.error("method failed: %r", e)
        return float("nan")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--source", default="auto", choices=["auto", "model", "synthetic"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--min-run-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    reference, ref_name = reference_nms()

    pred_all, source = None, "synthetic"
    if args.source in ("auto", "model"):
        pred_all = model_outputs(max(args.batch))
        if pred_all is not None:
            source = "yolov5n on coco128 (letterboxed 640x640)"
        elif args.source == "model":
            sys.exit("--source model: model outputs unavailable")
    if pred_all is None:
        pred_all = synthetic_outputs(max(args.batch))
        source = "synthetic (obj ~ u^8, cls ~ u^4, clustered boxes)"
    pred_all = pred_all.to(device)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for setting in args.settings:
        conf, iou, ml = SETTINGS[setting]
        for b in args.batch:
            pred = pred_all[:b].contiguous()
            ref_fn = lambda: (reference(pred, conf, iou, multi_label=ml), sync())  # noqa: E731
            fused_fn = lambda: (ops.yolo_nms(pred, conf, iou, multi_label=ml), sync())  # noqa: E731
            cands = int(((pred[..., 4:5] > conf) & (pred[..., 5:] * pred[..., 4:5] > conf)).sum()) if ml else int(
                (pred[..., 4] > conf).sum())
            t_ref = time_median(ref_fn, args.min_run_time)
            t_fused = time_median(fused_fn, args.min_run_time)
            try:
                same = all(torch.equal(a, r) for a, r in zip(ops.yolo_nms(pred, conf, iou, multi_label=ml),
                                                             reference(pred, conf, iou, multi_label=ml)))
            except Exception:  # noqa: BLE001
                same = False
            row = dict(setting=setting, conf=conf, iou=iou, multi_label=ml, batch=b, candidates_per_image=cands / b,
                       reference_ms=t_ref * 1e3, fused_ms=t_fused * 1e3, reference_ms_per_image=t_ref * 1e3 / b,
                       fused_ms_per_image=t_fused * 1e3 / b, speedup=t_ref / t_fused, identical=same)
            rows.append(row)
            LOGGER.info("%-6s B=%-3d ref %9.2f ms  fused %8.2f ms  x%.1f  identical=%s", setting, b, row["reference_ms"],
                        row["fused_ms"], row["speedup"], same)

    meta = dict(
        command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        cpu=cpu_name(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        reference=ref_name,
        source=source,
        shape=list(pred_all.shape[1:]),
    )
    if args.json:
        args.json.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
    table = [
        f"### yolo_nms vs reference, {meta['device']} ({meta['cpu']}, {meta['threads']} threads), {meta['date']}",
        "",
        f"torch {meta['torch']} (CUDA {meta['cuda']}); reference: {ref_name}; inputs: {source}, [B, "
        f"{meta['shape'][0]}, {meta['shape'][1]}].",
        f"Command: `{meta['command']}`",
        "",
        "| setting | conf | IoU | multi-label | B | candidates/img | reference ms | fused ms | ms/img ref | ms/img fused | speedup | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['setting']} | {r['conf']} | {r['iou']} | {r['multi_label']} | {r['batch']} | "
            f"{r['candidates_per_image']:.0f} | {r['reference_ms']:.2f} | {r['fused_ms']:.2f} | "
            f"{r['reference_ms_per_image']:.2f} | {r['fused_ms_per_image']:.3f} | {r['speedup']:.1f}x | {r['identical']} |"
        )
    text = "\n".join(table) + "\n"
    print(text)
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
