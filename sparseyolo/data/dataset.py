"""Validation data: data yaml parsing and the val-mode YOLOv5 dataset (image/label scanning: :mod:`.scan`).

Everything here reproduces the behaviour of Ultralytics YOLOv5 (``LoadImagesAndLabels`` with
``augment=False``, ``check_dataset``, ``verify_image_label``) so that ``sparseyolo val`` sees the same
images, the same labels and the same pixels as ``val.py`` and therefore reports the same numbers.

Label files hold one object per line, ``cls cx cy w h`` normalised to the image size (``xywhn``); a
line with more than 6 values is a polygon ``cls x1 y1 x2 y2 ...`` and is turned into its bounding box.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from sparseyolo.data.augment import letterbox

# The scanning half of this module lives in scan.py; its names stay importable from here.
from sparseyolo.data.scan import (  # noqa: F401
    IMG_FORMATS,
    ImageLabel,
    PathLike,
    exif_size,
    img2label_paths,
    list_image_files,
    repaired_jpeg,
    verify_image_label,
)
from sparseyolo.utils.boxes import clip_boxes, xywhn2xyxy

LOGGER = logging.getLogger(__name__)

#: Threads used to verify images and labels (YOLOv5's NUM_THREADS rule).
NUM_THREADS = min(8, max(1, (os.cpu_count() or 1) - 1))


# ----------------------------------------------------------------------------------------------------------------------
# Data yaml
# ----------------------------------------------------------------------------------------------------------------------
def load_data_config(data: PathLike | dict) -> dict[str, Any]:
    """Read an Ultralytics data yaml (or an already-loaded dict) and normalise it.

    Keys read: ``path`` (dataset root, optional), ``train``, ``val``, ``test`` (a folder of images, a ``.txt``
    list of images, or a list of those; relative to the root), ``names`` (a list, or a ``{int: name}`` dict
    with keys ``0..nc-1``) and optionally ``nc``. Other keys are passed through unchanged.

    Args:
        data: path to the yaml file, or the dict it would load to.

    Returns:
        A new dict with ``path`` (absolute dataset root, str), ``train``/``val``/``test`` (absolute str, list of
        str, or None), ``names`` (list[str]), ``nc`` (int), ``coco_json`` (str path of a matching
        ``annotations/instances_<split>.json`` under the root, or None) and ``yaml_file`` (str or None).

    Raises:
        FileNotFoundError: the yaml file or the ``val`` images do not exist.
        ValueError: a required key (``val``, ``names``) is missing, ``names`` is malformed, or ``nc`` disagrees
            with ``names``.

    Caveats:
        A relative ``path`` is resolved against the yaml file's folder first, then the current directory (the
        first that exists wins; YOLOv5 resolves it against its own repository folder). Without a ``path`` key
        the root is the yaml's folder (the current directory for a dict). As in YOLOv5, a relative split that
        does not exist and starts with ``../`` is retried without that prefix. ``train`` is optional here
        because validation does not need it.
    """
    yaml_file: Path | None = None
    if isinstance(data, dict):
        cfg = dict(data)
    else:
        yaml_file = Path(data).expanduser()
        if not yaml_file.is_file():
            raise FileNotFoundError(f"data yaml not found: {yaml_file} (pass the path of a dataset .yaml file)")
        with open(yaml_file, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
        if not isinstance(cfg, dict):
            raise ValueError(f"{yaml_file}: expected a mapping with 'path', 'val' and 'names' keys, got {type(cfg)}")
        yaml_file = yaml_file.resolve()
    where = str(yaml_file) if yaml_file else "data dict"

    for key in ("val", "names"):
        if cfg.get(key) in (None, "", []):
            raise ValueError(f"{where}: the '{key}:' field is missing or empty; add it (see Ultralytics coco128.yaml)")
    cfg["names"] = _normalise_names(cfg["names"], where)
    if cfg.get("nc") is not None and int(cfg["nc"]) != len(cfg["names"]):
        raise ValueError(
            f"{where}: nc={cfg['nc']} but {len(cfg['names'])} names are given; fix 'nc' or 'names' so they agree"
        )
    cfg["nc"] = len(cfg["names"])

    root = _resolve_root(cfg.get("path"), yaml_file.parent if yaml_file else None)
    cfg["path"] = str(root)
    for key in ("train", "val", "test"):
        value = cfg.get(key)
        if not value:
            cfg[key] = None
        elif isinstance(value, (list, tuple)):
            cfg[key] = [_resolve_split(root, str(v)) for v in value]
        else:
            cfg[key] = _resolve_split(root, str(value))

    val = cfg["val"] if isinstance(cfg["val"], list) else [cfg["val"]]
    missing = [v for v in val if not Path(v).exists()]
    if missing:
        raise FileNotFoundError(
            f"{where}: val images not found: {missing} (dataset root resolved to {root}; "
            "fix 'path' or 'val', or download the dataset)"
        )
    cfg["coco_json"] = _find_coco_json(root, Path(val[0]))
    cfg["yaml_file"] = str(yaml_file) if yaml_file else None
    return cfg


def _normalise_names(names: Any, where: str) -> list[str]:
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    if isinstance(names, dict):
        if not all(isinstance(k, int) for k in names):
            raise ValueError(f"{where}: 'names' keys must be integers, e.g. '2: car'")
        if sorted(names) != list(range(len(names))):
            raise ValueError(f"{where}: 'names' keys must be 0..{len(names) - 1} without gaps, got {sorted(names)}")
        return [str(names[i]) for i in range(len(names))]
    raise ValueError(f"{where}: 'names' must be a list or an {{int: name}} dict, got {type(names).__name__}")


def _resolve_root(path: Any, yaml_dir: Path | None) -> Path:
    p = Path(str(path)).expanduser() if path else Path(".")
    if p.is_absolute():
        return p.resolve()
    candidates = ([yaml_dir / p] if yaml_dir is not None else []) + [Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    return candidates[0].resolve()


def _resolve_split(root: Path, value: str) -> str:
    x = (root / Path(value).expanduser()).resolve()
    if not x.exists() and value.startswith("../"):
        x = (root / value[3:]).resolve()
    return str(x)


def _find_coco_json(root: Path, val: Path) -> str | None:
    """``annotations/instances_<split>.json`` under the root, else the only ``instances_*.json`` there."""
    for folder in (root / "annotations", root):
        exact = folder / f"instances_{val.stem}.json"
        if exact.is_file():
            return str(exact)
    found = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    return str(found[0]) if len(found) == 1 else None


# ----------------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------------
def _xyxy2xywhn_clipped(x: np.ndarray, w: int, h: int, eps: float) -> np.ndarray:
    """Pixel ``xyxy`` (ndarray[n, 4], clipped in place to ``(h - eps, w - eps)``) -> normalised ``xywh``."""
    clip_boxes(x, (h - eps, w - eps))
    y = np.empty_like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


Shapes = tuple[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]]


class ValDataset(Dataset):
    """Validation images and labels, pre-processed exactly as YOLOv5's ``LoadImagesAndLabels(augment=False)``.

    Each item is ``(img, labels, im_file, shapes)``:
        * ``img`` (uint8 Tensor[3, H, W]): RGB, letterboxed to the batch shape (rect) or to ``img_size``.
        * ``labels`` (float32 Tensor[n, 6]): ``0, cls, cx, cy, w, h`` normalised to the letterboxed image
          (column 0 is filled with the batch index by :meth:`collate_fn`).
        * ``im_file`` (str).
        * ``shapes``: ``((h0, w0), ((h / h0, w / w0), (pad_w, pad_h)))`` where ``(h, w)`` is the resized size
          before padding; this is the ``ratio_pad`` that ``scale_boxes`` needs to map boxes back.

    Attributes:
        im_files, label_files: paths in dataset order (sorted by aspect ratio when ``rect``).
        labels: list of ndarray[n, 5] float32 ``cls cx cy w h`` normalised to the ORIGINAL image.
        shapes: ndarray[N, 2] int of original ``(width, height)``.
        batch: ndarray[N] batch index of each image; batch_shapes: ndarray[nb, 2] ``(h, w)`` letterbox shapes.
        n_found, n_missing, n_empty, n_corrupt: scan counters (found = label files found); scan_message: the
            YOLOv5-style scan summary line; messages: every warning of the scan.
        nc: number of classes labels are checked against (None: not checked); a label file with a class id
            outside ``[0, nc)`` makes its image corrupt (skipped, reported with the file and line).
        repair_jpeg: JPEGs without a proper end marker, repaired in memory when loaded (never on disk).

    Caveats:
        Images are resized so the long side is ``img_size`` with ``cv2.INTER_AREA`` when shrinking and
        ``cv2.INTER_LINEAR`` when enlarging, to ``ceil`` of the scaled size, then letterboxed without scale-up;
        the order of images follows ``np.argsort`` of the aspect ratio (not a stable sort), both as in YOLOv5,
        because either choice changes the reported mAP. No label cache file is written.
    """

    def __init__(
        self,
        path: PathLike | Sequence[PathLike],
        img_size: int = 640,
        batch_size: int = 32,
        stride: int = 32,
        pad: float = 0.5,
        rect: bool = True,
        single_cls: bool = False,
        prefix: str = "",
        nc: int | None = None,
    ) -> None:
        self.img_size = int(img_size)
        self.nc = nc
        self.stride = int(stride)
        self.rect = bool(rect)
        self.path = path
        self.prefix = prefix

        im_files = list_image_files(path)
        label_files = img2label_paths(im_files)
        self._scan(im_files, label_files, path)

        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0

        n = len(self.shapes)
        bi = np.floor(np.arange(n) / batch_size).astype(int)
        nb = int(bi[-1]) + 1
        self.batch = bi
        self.n = n
        self.indices = np.arange(n)

        if self.rect:
            s = self.shapes
            ar = s[:, 1] / s[:, 0]  # h / w
            irect = ar.argsort()
            self.im_files = [self.im_files[i] for i in irect]
            self.label_files = [self.label_files[i] for i in irect]
            self.labels = [self.labels[i] for i in irect]
            self.segments = [self.segments[i] for i in irect]
            self.shapes = s[irect]
            ar = ar[irect]
            shapes = [[1, 1]] * nb
            for i in range(nb):
                ari = ar[bi == i]
                mini, maxi = ari.min(), ari.max()
                if maxi < 1:
                    shapes[i] = [maxi, 1]
                elif mini > 1:
                    shapes[i] = [1, 1 / mini]
            self.batch_shapes = np.ceil(np.array(shapes) * self.img_size / self.stride + pad).astype(int) * self.stride
        else:
            self.batch_shapes = np.full((nb, 2), self.img_size, dtype=int)

    def _scan(self, im_files: list[str], label_files: list[str], path: Any) -> None:
        last = Path(path[-1] if isinstance(path, (list, tuple)) else path)
        cache_path = (last if last.is_file() else Path(label_files[0]).parent).with_suffix(".cache")
        nf = nm = ne = nc = 0
        self.im_files, self.labels, self.segments, self.messages = [], [], [], []
        self.repair_jpeg: set[str] = set()
        shapes = []
        with ThreadPool(NUM_THREADS) as pool:
            check = lambda a: verify_image_label(*a, prefix=self.prefix, nc=self.nc)  # noqa: E731
            for r in pool.imap(check, zip(im_files, label_files)):
                nf += r.found
                nm += r.missing
                ne += r.empty
                nc += r.corrupt
                if r.message:
                    self.messages.append(r.message)
                if not r.corrupt:
                    if r.repair_jpeg:
                        self.repair_jpeg.add(r.im_file)
                    self.im_files.append(r.im_file)
                    self.labels.append(r.labels)
                    self.segments.append(r.segments)
                    shapes.append(r.shape)
        self.n_found, self.n_missing, self.n_empty, self.n_corrupt = nf, nm, ne, nc
        self.scan_message = (
            f"{self.prefix}Scanning {cache_path.parent / cache_path.stem}... "
            f"{nf} images, {nm + ne} backgrounds, {nc} corrupt"
        )
        LOGGER.info(self.scan_message)
        if nf == 0:
            LOGGER.warning(f"{self.prefix}No labels found in {cache_path.parent / cache_path.stem}")
        if not self.im_files:
            raise RuntimeError(f"{self.prefix}all {len(im_files)} images in {path} are corrupt; see the warnings above")
        self.label_files = img2label_paths(self.im_files)
        self.shapes = np.array(shapes)

    def __len__(self) -> int:
        return len(self.im_files)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Read image ``i`` (BGR, 3 channels) resized so its long side is ``img_size``.

        Returns:
            ``(image ndarray[h, w, 3] uint8 BGR, (h0, w0) original, (h, w) resized)``.
        """
        f = self.im_files[i]
        # BGR; grayscale and 4-channel images come back as 3-channel BGR
        im = repaired_jpeg(f) if f in self.repair_jpeg else cv2.imread(f)
        if im is None:
            raise FileNotFoundError(f"cv2 could not read image {f} (it passed the PIL check; is the format supported?)")
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, Shapes]:
        index = int(self.indices[index])
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=False)
        shapes = (h0, w0), ((h / h0, w / w0), pad)

        labels = self.labels[index].copy()
        if labels.size:
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        nl = len(labels)
        if nl:
            labels[:, 1:5] = _xyxy2xywhn_clipped(labels[:, 1:5], w=img.shape[1], h=img.shape[0], eps=1e-3)
        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(labels)

        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes

    @staticmethod
    def collate_fn(
        batch: list[tuple[torch.Tensor, torch.Tensor, str, Shapes]],
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[Shapes, ...]]:
        """Stack images (uint8 Tensor[B, 3, H, W]) and concatenate labels (Tensor[n, 6], column 0 = image index)."""
        im, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(im, 0), torch.cat(label, 0), path, shapes


def create_val_dataloader(
    path: PathLike | Sequence[PathLike],
    img_size: int,
    batch_size: int,
    stride: int,
    pad: float = 0.5,
    rect: bool = True,
    workers: int = 8,
    single_cls: bool = False,
    prefix: str = "",
    nc: int | None = None,
) -> tuple[DataLoader, ValDataset]:
    """Build the val :class:`ValDataset` and an unshuffled DataLoader over it, with YOLOv5's worker count.

    ``nc``, when given, is the number of classes labels are checked against (see :class:`ValDataset`).

    Returns:
        ``(loader, dataset)``; batches are ``(img uint8 Tensor[B, 3, H, W], labels Tensor[n, 6], paths, shapes)``.
    """
    dataset = ValDataset(
        path, img_size, batch_size, stride, pad=pad, rect=rect, single_cls=single_cls, prefix=prefix, nc=nc
    )
    batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min((os.cpu_count() or 1) // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=nw,
        pin_memory=torch.cuda.is_available(),
        collate_fn=ValDataset.collate_fn,
    )
    return loader, dataset
