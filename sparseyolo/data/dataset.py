"""Validation data: data yaml parsing, image/label scanning and the val-mode YOLOv5 dataset.

Everything here reproduces the behaviour of Ultralytics YOLOv5 (``LoadImagesAndLabels`` with
``augment=False``, ``check_dataset``, ``verify_image_label``) so that ``sparseyolo val`` sees the same
images, the same labels and the same pixels as ``val.py`` and therefore reports the same numbers.

Label files hold one object per line, ``cls cx cy w h`` normalised to the image size (``xywhn``); a
line with more than 6 values is a polygon ``cls x1 y1 x2 y2 ...`` and is turned into its bounding box.
"""

from __future__ import annotations

import glob
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from sparseyolo.data.augment import letterbox
from sparseyolo.utils.boxes import clip_boxes, xywhn2xyxy

LOGGER = logging.getLogger(__name__)

#: Image suffixes accepted as dataset images (the same list as YOLOv5).
IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")

#: Threads used to verify images and labels (YOLOv5's NUM_THREADS rule).
NUM_THREADS = min(8, max(1, (os.cpu_count() or 1) - 1))

_EXIF_ORIENTATION = next(k for k, v in ExifTags.TAGS.items() if v == "Orientation")

PathLike = str | os.PathLike


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
# Files
# ----------------------------------------------------------------------------------------------------------------------
def _is_image(path: str) -> bool:
    return path.split(".")[-1].lower() in IMG_FORMATS


def list_image_files(source: PathLike | Sequence[PathLike]) -> list[str]:
    """List the images of a source the way YOLOv5 does.

    Args:
        source: a folder (searched recursively), a ``.txt`` file with one image path per line, a single image,
            or a list of those.

    Returns:
        Sorted image paths (str, with the OS separator), filtered by suffix against :data:`IMG_FORMATS`.

    Raises:
        FileNotFoundError: a source does not exist, or no images were found.

    Caveats:
        In a list file, lines starting with ``./`` are relative to the list's folder (YOLOv5's rule); other
        relative lines are taken relative to the current directory as YOLOv5 does, falling back to the list's
        folder when they do not exist there. Duplicates are kept, as in YOLOv5.
    """
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    files: list[str] = []
    for s in sources:
        p = Path(s).expanduser()
        if p.is_dir():
            files += glob.glob(str(p / "**" / "*.*"), recursive=True)
        elif p.is_file() and _is_image(str(p)):
            files.append(str(p))
        elif p.is_file():
            parent = str(p.parent) + os.sep
            with open(p, encoding="utf-8") as f:
                lines = [x.strip() for x in f.read().strip().splitlines() if x.strip()]
            for x in lines:
                if x.startswith("./"):
                    x = x.replace("./", parent, 1)
                elif not os.path.isabs(x) and not os.path.exists(x) and os.path.exists(parent + x):
                    x = parent + x
                files.append(x)
        else:
            raise FileNotFoundError(f"image source {p} does not exist (give a folder, a .txt list or an image)")
    images = sorted(x.replace("/", os.sep) for x in files if _is_image(x))
    if not images:
        raise FileNotFoundError(f"no images found in {[str(s) for s in sources]} (supported: {', '.join(IMG_FORMATS)})")
    return images


def img2label_paths(img_paths: Sequence[str]) -> list[str]:
    """Label file of each image: the last ``/images/`` becomes ``/labels/`` and the suffix becomes ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(str(x).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


# ----------------------------------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ImageLabel:
    """Outcome of checking one image and its label file.

    Attributes:
        im_file: the image path.
        labels: ndarray[n, 5] float32 ``cls cx cy w h`` (normalised), or None when corrupt.
        shape: ``(width, height)`` of the image after EXIF rotation, or None when corrupt.
        segments: polygons (ndarray[k, 2] normalised xy) when the label file holds segments, else empty.
        found, missing, empty, corrupt: scan counters of this pair (YOLOv5 semantics: a corrupt label file
            also counts as found).
        message: the warning for this pair ('' when none).
        repair_jpeg: the JPEG lacks a proper end marker; read it with :func:`repaired_jpeg` (the file is left as
            it is).
    """

    im_file: str
    labels: np.ndarray | None
    shape: tuple[int, int] | None
    segments: list[np.ndarray] = field(default_factory=list)
    found: bool = False
    missing: bool = False
    empty: bool = False
    corrupt: bool = False
    message: str = ""
    repair_jpeg: bool = False


def exif_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of a PIL image, swapped when its EXIF orientation is a 90/270 degree rotation."""
    s = img.size
    try:
        rotation = dict(img._getexif().items())[_EXIF_ORIENTATION]  # type: ignore[attr-defined]
        if rotation in (6, 8):
            s = (s[1], s[0])
    except Exception:  # no EXIF, or a format without _getexif: YOLOv5 ignores it the same way
        pass
    return s


def _segments_to_boxes(segments: list[np.ndarray]) -> np.ndarray:
    """Polygons (list of ndarray[k, 2] xy) -> ndarray[n, 4] ``xywh`` of their bounding boxes."""
    boxes = np.array([[s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()] for s in segments])
    out = boxes.copy()
    out[:, 0], out[:, 1] = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    out[:, 2], out[:, 3] = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return out


def _jpeg_needs_repair(im_file: str) -> bool:
    """True when a JPEG does not end with its end-of-image marker (truncated, or stray bytes after it)."""
    with open(im_file, "rb") as f:
        f.seek(-2, 2)
        return f.read() != b"\xff\xd9"


def repaired_jpeg(im_file: str) -> np.ndarray:
    """Decode a JPEG without a proper end marker the way YOLOv5 repairs it, in memory; the file is not touched.

    YOLOv5 re-encodes such a file in place (EXIF-transposed, quality 100, no chroma subsampling) and then reads
    it with OpenCV; this does the same re-encoding into a buffer, so the pixels are YOLOv5's without modifying
    the user's dataset.

    Returns:
        ndarray[h, w, 3] uint8 BGR.
    """
    buf = io.BytesIO()
    with Image.open(im_file) as im:
        ImageOps.exif_transpose(im).convert("RGB").save(buf, "JPEG", subsampling=0, quality=100)
    return cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)


def _label_rows(lb_file: str) -> list[tuple[int, list[str]]]:
    """Non-empty rows of a label file with their 1-based line numbers (rows as YOLOv5 splits them)."""
    with open(lb_file, encoding="utf-8") as f:
        text = f.read()
    first = text[: len(text) - len(text.lstrip())].count("\n") + 1  # line of the first non-blank character
    return [(first + i, x.split()) for i, x in enumerate(text.strip().splitlines()) if len(x)]


def verify_image_label(
    im_file: str, lb_file: str, prefix: str = "", coord_tol: float = 0.0, nc: int | None = None
) -> ImageLabel:
    """Check one image and its label file with YOLOv5's rules.

    The image must open and verify with PIL, have both sides >= 10 px (EXIF-corrected size) and a format in
    :data:`IMG_FORMATS`. Label rows need 5 columns (polygons of more than 6 values are converted to boxes),
    no negative values, coordinates <= 1 (+ ``coord_tol``) and, when ``nc`` is given, integer class ids below
    ``nc`` (an out-of-range id names the label file and line). Duplicate rows are removed with a warning. A
    missing label file marks a background image; an empty one too.

    Args:
        im_file: image path.
        lb_file: its label path (see :func:`img2label_paths`).
        prefix: prepended to warnings.
        coord_tol: tolerance above 1 for normalised coordinates; 0 reproduces YOLOv5 exactly.
        nc: number of classes of the model/dataset; None skips the class-id check.

    Returns:
        An :class:`ImageLabel`; ``corrupt=True`` (labels and shape None) when the image or the label file is
        unusable, with the reason in ``message``. Warnings are logged with ``logging.warning``.

    Caveats:
        A JPEG missing its end-of-image marker is flagged (``repair_jpeg``) and repaired in memory when loaded, as
        YOLOv5 repairs it on disk; the file itself is never modified. The image
        check uses PIL (with the EXIF-corrected size); loading later uses ``cv2.imread``, which also applies the
        EXIF orientation. Removing duplicates reorders rows (sorted), as ``np.unique`` does in YOLOv5.
    """
    found = missing = empty = repair = False
    segments: list[np.ndarray] = []
    message = ""
    try:
        im = Image.open(im_file)
        im.verify()
        shape = exif_size(im)
        if not (shape[0] > 9 and shape[1] > 9):
            raise ValueError(f"image size {shape} <10 pixels")
        fmt = (im.format or "").lower()
        if fmt not in IMG_FORMATS:
            raise ValueError(f"invalid image format {im.format}")
        if fmt in ("jpg", "jpeg") and _jpeg_needs_repair(im_file):
            repaired_jpeg(im_file)  # a JPEG that cannot be decoded is corrupt, exactly as in YOLOv5
            repair = True
            message = f"{im_file}: corrupt JPEG (no end marker at the end of the file) repaired in memory; file left unchanged"

        if os.path.isfile(lb_file):
            found = True
            numbered = _label_rows(lb_file)
            rows = [r for _, r in numbered]
            if any(len(x) > 6 for x in rows):  # polygons: cls x1 y1 x2 y2 ...
                classes = np.array([x[0] for x in rows], dtype=np.float32)
                segments = [np.array(x[1:], dtype=np.float32).reshape(-1, 2) for x in rows]
                lb = np.concatenate((classes.reshape(-1, 1), _segments_to_boxes(segments)), 1).astype(np.float32)
            else:
                if len({len(x) for x in rows}) > 1:
                    raise ValueError(f"labels require 5 columns, rows have {sorted({len(x) for x in rows})} columns")
                lb = np.array(rows, dtype=np.float32)
            nl = len(lb)
            if nl:
                if lb.ndim != 2 or lb.shape[1] != 5:
                    raise ValueError(f"labels require 5 columns, {lb.shape[-1]} columns detected")
                if not (lb >= 0).all():
                    raise ValueError(f"negative label values {lb[lb < 0]}")
                if not (lb[:, 1:] <= 1 + coord_tol).all():
                    bad = lb[:, 1:][lb[:, 1:] > 1 + coord_tol]
                    raise ValueError(f"non-normalized or out of bounds coordinates {bad}")
                if nc is not None:
                    cls = lb[:, 0]
                    bad_rows = np.flatnonzero((cls != np.floor(cls)) | (cls >= nc))
                    if len(bad_rows):
                        j = int(bad_rows[0])
                        raise ValueError(
                            f"{lb_file}:{numbered[j][0]}: class id {numbered[j][1][0]} is not an integer in "
                            f"[0, {nc}) (nc={nc}); {len(bad_rows)} such line(s)"
                        )
                _, i = np.unique(lb, axis=0, return_index=True)
                if len(i) < nl:
                    lb = lb[i]
                    if segments:
                        segments = [segments[x] for x in i]
                    message = f"{im_file}: {nl - len(i)} duplicate labels removed"
            else:
                empty = True
                lb = np.zeros((0, 5), dtype=np.float32)
        else:
            missing = True
            lb = np.zeros((0, 5), dtype=np.float32)
    except Exception as e:
        message = f"{prefix}{im_file}: ignoring corrupt image/label: {e}"
        LOGGER.warning(message)
        return ImageLabel(im_file, None, None, [], found, missing, empty, True, message)
    if message:
        message = f"{prefix}{message}"
        LOGGER.warning(message)
    return ImageLabel(
        im_file, lb, (int(shape[0]), int(shape[1])), segments, found, missing, empty, False, message, repair
    )


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
