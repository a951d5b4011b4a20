"""COCO-format ground truth, predictions and pycocotools evaluation.

YOLO label files number classes ``0..nc-1``; COCO annotation files use their own category ids (1..90 with gaps
for COCO). :func:`coco_class_map` links the two. When a dataset has no instances json,
:func:`yolo_labels_to_coco` builds one from the YOLO labels so that COCOeval can always run.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseyolo.utils.boxes import xyxy2xywh

LOGGER = logging.getLogger(__name__)

#: Offset of the ids given to images whose file stem is not a number (above any realistic numeric stem).
_HASHED_ID_BASE = 1 << 48


def load_coco_json(path: str | os.PathLike) -> Any:
    """Read a COCO json (``.json`` or ``.json.gz``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid JSON (the message names it).
    """
    try:
        return _load_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: not a readable COCO json ({e})") from e


def _load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO json not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def coco_class_map(coco_json: dict | str | os.PathLike | None, nc: int) -> list[int]:
    """COCO category id of each YOLO class.

    Args:
        coco_json: an instances json (dict or path), or None.
        nc: number of YOLO classes.

    Returns:
        list[int] of length ``nc``: class ``i`` -> the ``i``-th smallest category id of the file (for COCO this
        is YOLOv5's ``coco80_to_coco91_class``); the identity ``0..nc-1`` without a json.

    Raises:
        ValueError: the file has fewer categories than ``nc``.
    """
    if coco_json is None:
        return list(range(nc))
    data = coco_json if isinstance(coco_json, dict) else _load_json(coco_json)
    ids = sorted({int(c["id"]) for c in data.get("categories", [])})
    if len(ids) < nc:
        raise ValueError(
            f"the COCO json has {len(ids)} categories but the model/dataset has nc={nc}; "
            "use the annotation file that matches this dataset, or none to evaluate against the YOLO labels"
        )
    return ids[:nc]


def image_id_for(path: str | os.PathLike) -> int:
    """COCO image id of an image file, used for both ground truth and predictions.

    ``int(stem)`` when the file stem is a decimal number (COCO's ``000000000009.jpg`` -> 9, as YOLOv5 does);
    otherwise a stable id derived from the stem (a 48-bit hash plus ``2**48``), so the same file always gets
    the same id without any shared state.
    """
    stem = Path(path).stem
    if stem.isdecimal():
        return int(stem)
    digest = hashlib.blake2b(stem.encode("utf-8"), digest_size=6).digest()
    return _HASHED_ID_BASE + int.from_bytes(digest, "big")


def match_coco_images(gt: dict, im_files: Sequence[str | os.PathLike], where: str = "the COCO json") -> list[int]:
    """COCO image id of each image file, looked up in the ground truth ``gt``.

    When every image entry of ``gt`` has a ``file_name``, images are matched by file name (the last path
    component, as COCO stores it); otherwise by :func:`image_id_for` (COCO's numeric stems), which must then be
    ids present in ``gt``. Matching by name matters: numeric names that happen to be ids of other entries
    would otherwise be scored against the wrong ground truth without any error.

    Args:
        gt: a COCO dataset dict (``images`` with ``id`` and optionally ``file_name``).
        im_files: the dataset's image paths.
        where: what to call ``gt`` in errors (its path).

    Returns:
        list[int] of ids, one per image.

    Raises:
        ValueError: an image matches no entry, two images match one entry, or a file name is ambiguous in ``gt``;
            the message names examples and what to do.
    """
    entries = gt.get("images") or []
    ids, unmatched = [], []
    if entries and all(isinstance(e.get("file_name"), str) for e in entries):
        by_name: dict[str, list[int]] = {}
        for e in entries:
            by_name.setdefault(Path(e["file_name"]).name, []).append(int(e["id"]))
        for f in im_files:
            found = by_name.get(Path(f).name)
            if not found:
                unmatched.append(str(f))
            elif len(found) > 1:
                raise ValueError(f"{where} has {len(found)} images named {Path(f).name} (ids {found}); cannot match {f}")
            else:
                ids.append(found[0])
        how = "by file name"
    else:
        known = {int(e["id"]) for e in entries}
        for f in im_files:
            img_id = image_id_for(f)
            if img_id in known:
                ids.append(img_id)
            else:
                unmatched.append(str(f))
        how = "by numeric file stem (its images have no file_name)"
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} of {len(im_files)} images cannot be matched {how} to {where}, e.g. "
            f"{', '.join(unmatched[:3])}; pass the annotation file of this image set (--coco-json), or none to "
            "evaluate against the YOLO labels"
        )
    seen: dict[int, str] = {}
    for f, img_id in zip(im_files, ids):
        if img_id in seen:
            raise ValueError(f"images {seen[img_id]} and {f} both match image id {img_id} of {where}")
        seen[img_id] = str(f)
    return ids


def yolo_labels_to_coco(
    im_files: Sequence[str],
    labels: Sequence[np.ndarray],
    shapes: np.ndarray | Sequence[Sequence[int]],
    names: Sequence[str],
) -> dict:
    """COCO-format ground truth from YOLO labels (e.g. a :class:`~sparseyolo.data.dataset.ValDataset`'s).

    Args:
        im_files: image paths (N).
        labels: N ndarray[n, 5] ``cls cx cy w h`` normalised to the original image.
        shapes: ndarray[N, 2] original ``(width, height)``.
        names: class names; category ``i`` is YOLO class ``i``.

    Returns:
        A COCO dataset dict (``info``, ``licenses``, ``images``, ``annotations``, ``categories``). Image ids come
        from :func:`image_id_for`; boxes are ``[x, y, w, h]`` pixels with ``area = w * h`` and ``iscrowd = 0``;
        ``category_id`` is the class index (use an identity class map for predictions).

    Raises:
        ValueError: two images map to the same id (e.g. ``a/1.jpg`` and ``b/1.jpg``), or lengths disagree.
    """
    if not (len(im_files) == len(labels) == len(shapes)):
        raise ValueError(f"im_files, labels and shapes differ in length: {len(im_files)}, {len(labels)}, {len(shapes)}")
    images, annotations, seen = [], [], {}
    for f, lb, (w, h) in zip(im_files, labels, shapes):
        img_id = image_id_for(f)
        if img_id in seen:
            raise ValueError(f"images {seen[img_id]} and {f} get the same COCO image id {img_id}; rename one of them")
        seen[img_id] = f
        w, h = int(w), int(h)
        images.append({"id": img_id, "file_name": Path(f).name, "width": w, "height": h})
        lb = np.asarray(lb, dtype=np.float64).reshape(-1, 5)
        for cls, cx, cy, bw, bh in lb:
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": int(cls),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": str(n), "supercategory": ""} for i, n in enumerate(names)]
    info = {"description": "generated by sparseyolo from YOLO labels"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def predictions_to_coco(
    predn: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    class_map: Sequence[int],
    image_id: int | None = None,
) -> list[dict]:
    """COCO result rows for one image's detections (YOLOv5's ``save_one_json`` format).

    Args:
        predn: Tensor|ndarray[n, 6] ``x1, y1, x2, y2, conf, cls`` in original-image pixels.
        path: the image path (its id comes from :func:`image_id_for`).
        class_map: YOLO class -> category id (:func:`coco_class_map`).
        image_id: the image's id in the ground truth (:func:`match_coco_images`); default :func:`image_id_for`.

    Returns:
        ``[{'image_id', 'category_id', 'bbox': [x, y, w, h] (3 decimals), 'score' (5 decimals)}, ...]``.
    """
    predn = torch.as_tensor(predn)
    if predn.numel() == 0:
        return []
    image_id = image_id_for(path) if image_id is None else int(image_id)
    box = xyxy2xywh(predn[:, :4])
    box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
    return [
        {
            "image_id": image_id,
            "category_id": class_map[int(p[5])],
            "bbox": [round(x, 3) for x in b],
            "score": round(p[4], 5),
        }
        for p, b in zip(predn.tolist(), box.tolist())
    ]


def _coco_from_dict(data: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def evaluate_coco(
    gt: dict | str | os.PathLike,
    predictions: list[dict] | str | os.PathLike,
    img_ids: Sequence[int] | None = None,
) -> list[float]:
    """Run pycocotools' bbox COCOeval; its standard 12-line summary is printed to stdout.

    Args:
        gt: COCO ground truth (dict, or path to a ``.json``/``.json.gz``).
        predictions: result rows (see :func:`predictions_to_coco`), or a path to them.
        img_ids: evaluate only these image ids (all ground-truth images when None).

    Returns:
        The 12 COCOeval stats (AP50-95, AP50, AP75, AP small/medium/large, AR1, AR10, AR100, AR small/medium/large).

    Caveats:
        With no predictions, COCOeval cannot run: a warning is logged and 12 zeros are returned. Predictions of
        images absent from the ground truth are dropped with a warning (pycocotools would refuse them).
        ``predictions`` is not modified (pycocotools adds fields to the rows it loads, so they are copied).
    """
    from pycocotools.cocoeval import COCOeval

    gt_data = gt if isinstance(gt, dict) else _load_json(gt)
    preds = copy.deepcopy(predictions) if isinstance(predictions, list) else _load_json(predictions)
    if not isinstance(preds, list):
        raise ValueError("predictions must be a list of COCO result rows")
    gt_ids = {img["id"] for img in gt_data.get("images", [])}
    kept = [p for p in preds if p["image_id"] in gt_ids]
    if len(kept) < len(preds):
        LOGGER.warning(f"{len(preds) - len(kept)} predictions are for images not in the COCO ground truth; dropped")
    if not kept:
        LOGGER.warning("no predictions to evaluate with pycocotools; COCO stats are all 0")
        return [0.0] * 12

    # pycocotools' progress chatter is silenced; its 12-line summary is what the user wants on stdout.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        coco_gt = _coco_from_dict(gt_data)
        coco_dt = coco_gt.loadRes(kept)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            evaluator.params.imgIds = [int(i) for i in img_ids]
        evaluator.evaluate()
        evaluator.accumulate()
    evaluator.summarize()
    return [float(x) for x in evaluator.stats]
