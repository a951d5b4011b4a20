"""Image and label scanning with YOLOv5's rules: listing a source's images, their label files, and the checks
that find corrupt images and label files (:func:`verify_image_label`).

Label files hold one object per line, ``cls cx cy w h`` normalised to the image size (``xywhn``); a
line with more than 6 values is a polygon ``cls x1 y1 x2 y2 ...`` and is turned into its bounding box.
"""

from __future__ import annotations

import glob
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps

LOGGER = logging.getLogger(__name__)

#: Image suffixes accepted as dataset images (the same list as YOLOv5).
IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")

_EXIF_ORIENTATION = next(k for k, v in ExifTags.TAGS.items() if v == "Orientation")

PathLike = str | os.PathLike


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
