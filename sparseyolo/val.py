"""Validation of a YOLOv5 detector on a labelled dataset, reproducing Ultralytics' ``val.py``.

Same pre-processing (letterbox, rectangular batches with pad 0.5), same NMS semantics (multi-label,
class-offset, max_nms 30000), same metrics (101-point AP, P/R at max F1), then COCOeval from pycocotools
on the same predictions. ``run`` logs the report through ``logging`` and returns a :class:`ValResults`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sparseyolo.checkpoint import load_model
from sparseyolo.data.dataset import create_val_dataloader, load_data_config
from sparseyolo.prune import prune_from_spec
from sparseyolo.utils.boxes import scale_boxes, xywh2xyxy
from sparseyolo.utils.coco import (
    coco_class_map,
    evaluate_coco,
    load_coco_json,
    match_coco_images,
    predictions_to_coco,
    yolo_labels_to_coco,
)
from sparseyolo.utils.metrics import ap_per_class, process_batch
from sparseyolo.utils.nms import non_max_suppression
from sparseyolo.utils.errors import ParameterError
from sparseyolo.utils.run_dirs import increment_dir
from sparseyolo.utils.torch_utils import Profile, environment_line, select_device

LOGGER = logging.getLogger(__name__)

TABLE_HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
TABLE_ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4
TQDM_BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"


@dataclass
class ValResults:
    """What ``run`` measured. Metrics are means over classes with labels, as YOLOv5 reports them."""

    precision: float = 0.0
    recall: float = 0.0
    map50: float = 0.0
    map: float = 0.0
    images: int = 0
    instances: int = 0
    per_class_map: dict[str, float] = field(default_factory=dict)
    coco_stats: list[float] = field(default_factory=list)  # the 12 COCOeval numbers (AP50-95, AP50, ...)
    speed_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # pre-process, inference, NMS per image
    predictions_json: Path | None = None


def _check_img_size(imgsz: int, stride: int) -> int:
    new = max(math.ceil(imgsz / stride) * stride, stride)
    if new != imgsz:
        LOGGER.warning("--img %d must be a multiple of the max stride %d, updating to %d", imgsz, stride, new)
    return new


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file; on failure nothing is left and the error names ``path``.

    Raises:
        OSError: the file could not be written (disk full, unwritable folder...).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"could not write {path}: {e.strerror or e} (the metrics above are complete)") from e


@torch.no_grad()
def run(
    weights: str | Path,
    data: str | Path | dict,
    imgsz: int = 640,
    batch_size: int = 32,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    task: str = "val",
    device: str = "",
    workers: int = 8,
    half: bool = False,
    dtype: str = "fp32",
    sparsify: str | None = None,
    verbose: bool = False,
    save_json: bool = False,
    coco_json: str | Path | None = None,
    cocoeval: bool = True,
    prune: float | str = 0.0,
    prune_method: str | None = None,
    project: str | Path = "runs/val",
    name: str = "exp",
    model: torch.nn.Module | None = None,
    nms: str = "fused",
) -> ValResults:
    """Evaluate ``weights`` on the ``task`` split of ``data`` and log the YOLOv5-style report.

    Args:
        weights: checkpoint path (Ultralytics ``*.pt``, sparseyolo checkpoint or state_dict).
        data: Ultralytics data yaml, or its dict.
        imgsz: inference size (long side), rounded up to a multiple of the model stride.
        batch_size: images per batch.
        conf_thres, iou_thres, max_det: NMS settings (val uses multi-label NMS).
        task: ``'val'``, ``'test'``, ``'train'`` (a split of ``data``) or ``'speed'`` (square batches, no
            padding, conf 0.25 / IoU 0.45, no COCOeval: for timing).
        device: ``''``, ``'cpu'``, ``'0'`` ...
        half: fp16 inference (CUDA only).
        dtype: ``"fp32"`` or ``"bf16"`` (CPU): the model runs in bfloat16 (BN folded, dense layers on oneDNN's bf16
            kernels, pruned convs on the sparse backend ``sparsify`` names; boxes are decoded in fp32).
        sparsify: run the model through :func:`sparseyolo.sparsify` first with this backend (``"auto"``,
            ``"sparse"`` or a registered backend name); None: as loaded (pruned convs run dense, zeros multiplied).
        verbose: per-class rows.
        save_json: write the predictions json (COCO results format) to the run folder.
        coco_json: COCO instances json of the split; default: found under the dataset root, else COCO-format
            ground truth is generated from the YOLO labels.
        cocoeval: run pycocotools COCOeval on the predictions.
        prune: prune the fused model first: an amount in (0, 1) (``l1`` by default: every Conv2d by this
            fraction, as YOLOv5's ``--prune``) or an N:M pattern such as ``"2:4"``. 0 / "" / None: no pruning.
        prune_method: ``"l1"``, ``"global"`` or ``"nm"`` (see :func:`sparseyolo.prune.prune`); default ``nm``
            for a pattern, ``l1`` for an amount. Pruning happens after BN fusion, as in YOLOv5, so magnitudes
            include the BN scale the deployed model applies.
        project, name: run folder ``project/name`` (incremented) for saved files.
            Nothing is written before the metrics (and COCO stats) are computed and logged; the json is written
            through a temporary file, so a failed write leaves no partial file.
        model: an already loaded model to evaluate instead of ``weights`` (used by training code).
        nms: ``"fused"`` (the compiled :func:`sparseyolo.ops.yolo_nms`, the default) or ``"reference"`` (the
            pure torch + torchvision implementation of YOLOv5's ``non_max_suppression``). Both keep the same
            boxes, so metrics do not change; only the Speed line's NMS figure does.

    Raises:
        ValueError: unusable settings, a data config that does not fit the model, or dataset images that cannot
            be matched to the COCO json's images (matched by ``file_name``; see
            :func:`sparseyolo.utils.coco.match_coco_images`), found before any inference.
        OSError: the predictions json could not be written (after the metrics were logged and computed).

    Caveats:
        Label lines with a class id outside ``[0, nc)`` make their image corrupt: it is skipped and reported at
        scan time with the label file and line, as YOLOv5 reports other corrupt labels.
    """
    if task == "speed":
        conf_thres, iou_thres, cocoeval, save_json = 0.25, 0.45, False, False
    if not 0.0 <= conf_thres <= 1.0 or not 0.0 <= iou_thres <= 1.0:
        raise ParameterError(f"conf_thres {conf_thres} and iou_thres {iou_thres} must be in [0, 1]", "conf_thres",
                             "iou_thres")
    if nms not in ("fused", "reference"):
        raise ParameterError(f"nms must be 'fused' or 'reference', got {nms!r}", "nms")
    if nms == "fused":
        from sparseyolo.ops import yolo_nms as nms_fn
    else:
        nms_fn = non_max_suppression
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}", "batch_size")

    dev = select_device(device)
    if half and dev.type != "cuda":
        LOGGER.warning("--half is supported on CUDA only; running fp32 on %s", dev)
        half = False
    LOGGER.info(environment_line(dev))

    if model is None:
        model = load_model(weights, device=dev, fuse=True)
    model.eval()
    stride = max(int(model.stride.max()), 32)
    imgsz = _check_img_size(imgsz, stride)
    if prune and str(prune) not in ("0", "0.0"):
        prune_from_spec(model, prune, prune_method)
    if half:
        model.half()
    if dtype not in ("fp32", "bf16"):
        raise ParameterError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}", "dtype")
    in_dtype = torch.half if half else torch.bfloat16 if dtype == "bf16" else torch.float
    if dtype == "bf16" and dev.type != "cpu":
        raise ParameterError("dtype 'bf16' runs the CPU kernels; use half on CUDA", "dtype", "half")
    if sparsify or dtype == "bf16":
        from sparseyolo.sparse import sparsify as to_sparse

        model = to_sparse(model, backend=sparsify or "dense", dtype=in_dtype, device=dev,
                          example_input=torch.zeros(1, 3, imgsz, imgsz, dtype=in_dtype))

    cfg = load_data_config(data)
    split = "val" if task == "speed" else task
    if not cfg.get(split):
        raise ParameterError(f"the data config has no '{split}' split; set task to one of its splits", "task")
    names: list[str] = list(cfg["names"])
    nc = len(names)
    model_nc = int(getattr(model, "nc", nc))
    if model_nc != nc:
        raise ParameterError(
            f"{weights} has {model_nc} classes but the data config {data} has {nc}; pass the matching data", "data"
        )

    pad, rect = (0.0, False) if task == "speed" else (0.5, True)
    dataloader, dataset = create_val_dataloader(
        cfg[split], imgsz, batch_size, stride, pad=pad, rect=rect, workers=workers, prefix=f"{task}: ", nc=nc
    )

    # Warm up so the first batch's timing is not the allocator's.
    model(torch.zeros(1, 3, imgsz, imgsz, device=dev, dtype=in_dtype))

    iouv = torch.linspace(0.5, 0.95, 10, device=dev)
    niou = iouv.numel()
    class_map = list(range(nc))
    gt_coco = None
    image_ids: dict[str, int] = {}
    if cocoeval or save_json:
        coco_json = coco_json or cfg.get("coco_json")
        if coco_json:
            gt_coco = load_coco_json(coco_json)
            class_map = coco_class_map(gt_coco, nc)
        else:
            gt_coco = yolo_labels_to_coco(dataset.im_files, dataset.labels, dataset.shapes, names)
        # Matched before inference: an image set that does not fit the json is refused, not scored wrongly.
        where = str(coco_json) if coco_json else "the ground truth built from the YOLO labels"
        image_ids = dict(zip(dataset.im_files, match_coco_images(gt_coco, dataset.im_files, where)))

    seen = 0
    dt = Profile(dev), Profile(dev), Profile(dev)
    stats: list[tuple[torch.Tensor, ...]] = []
    jdict: list[dict] = []
    pbar = tqdm(dataloader, desc=TABLE_HEADER, bar_format=TQDM_BAR_FORMAT)
    for im, targets, paths, shapes in pbar:
        with dt[0]:
            im = im.to(dev, non_blocking=True)
            targets = targets.to(dev)
            im = (im.float() / 255).to(in_dtype)
            nb, _, height, width = im.shape
        with dt[1]:
            preds = model(im)[0]
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=dev)
        with dt[2]:
            preds = nms_fn(preds, conf_thres, iou_thres, multi_label=True, max_det=max_det)

        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            nl, npr = labels.shape[0], pred.shape[0]
            shape = shapes[si][0]
            correct = torch.zeros(npr, niou, dtype=torch.bool, device=dev)
            seen += 1
            if npr == 0:
                if nl:
                    stats.append((correct, *torch.zeros((2, 0), device=dev), labels[:, 0]))
                continue
            predn = pred.clone()
            scale_boxes(im[si].shape[1:], predn[:, :4], shape, shapes[si][1])
            if nl:
                tbox = xywh2xyxy(labels[:, 1:5])
                scale_boxes(im[si].shape[1:], tbox, shape, shapes[si][1])
                correct = process_batch(predn, torch.cat((labels[:, 0:1], tbox), 1), iouv)
            stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
            if gt_coco is not None:
                jdict += predictions_to_coco(predn, paths[si], class_map, image_ids[paths[si]])

    # Metrics
    res = ValResults(images=seen)
    stats_np = [torch.cat(x, 0).cpu().numpy() for x in zip(*stats)]
    ap50 = ap = np.zeros(0)
    ap_class = np.zeros(0, dtype=int)
    p = r = np.zeros(0)
    if len(stats_np) and stats_np[0].any():
        _, _, p, r, _, ap, ap_class = ap_per_class(*stats_np)
        ap50, ap = ap[:, 0], ap.mean(1)
        res.precision, res.recall, res.map50, res.map = p.mean(), r.mean(), ap50.mean(), ap.mean()
    target_cls = stats_np[3].astype(int) if len(stats_np) else np.zeros(0, dtype=int)
    nt = np.bincount(target_cls, minlength=nc)
    res.instances = int(nt.sum())
    LOGGER.info(TABLE_ROW % ("all", seen, nt.sum(), res.precision, res.recall, res.map50, res.map))
    if nt.sum() == 0:
        LOGGER.warning("no labels found in the %s set, cannot compute metrics without labels", split)
    for i, c in enumerate(ap_class):
        res.per_class_map[names[c]] = float(ap[i])
        if verbose and nc > 1:
            LOGGER.info(TABLE_ROW % (names[c], seen, nt[c], p[i], r[i], ap50[i], ap[i]))

    res.speed_ms = tuple(x.t / max(seen, 1) * 1e3 for x in dt)
    shape = (batch_size, 3, imgsz, imgsz)
    LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s", *res.speed_ms, shape)

    if cocoeval and gt_coco is not None:
        LOGGER.info("Evaluating pycocotools mAP...")
        res.coco_stats = [float(s) for s in evaluate_coco(gt_coco, jdict, list(image_ids.values()))]
    if save_json:  # last: a write that fails cannot lose the metrics above
        try:
            save_dir = increment_dir(Path(project) / name)
        except OSError as e:
            raise OSError(e.errno, f"could not create {Path(project) / name}: {e.strerror or e}") from e
        res.predictions_json = save_dir / f"{Path(str(weights)).stem}_predictions.json"
        LOGGER.info("Saving %s...", res.predictions_json)
        _write_text_atomic(res.predictions_json, json.dumps(jdict))
    return res
