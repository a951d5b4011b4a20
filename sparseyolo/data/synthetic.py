"""A synthetic detection dataset: filled shapes on textured, noisy backgrounds, with YOLO labels.

Every image is drawn from its own random generator, seeded from ``(seed, split, index)``, so a dataset is a
pure function of its arguments: the same seed writes the same bytes, and any image can be re-rendered alone
(:func:`render_image`) to check its labels against the pixels.

Each image holds 0 to ``max_objects`` shapes (about 1 image in 12 has none) of varied size (from ~5% to
~35% of the image side), colour and rotation, on a background made of a smooth colour field, random thin
lines and per-pixel noise. Shapes may overlap a little: a new shape is placed only where its box overlaps
covers no more than ``MAX_OVERLAP`` of an earlier box (nor an earlier box of it), and a label is the tight box of the whole shape as drawn
(the part hidden by a later shape included), as in datasets labelled amodally.

Example:
    >>> from sparseyolo.data.synthetic import make_synthetic_dataset
    >>> yaml_path = make_synthetic_dataset("data/shapes", n_train=800, n_val=200, img_size=256, seed=0)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

__all__ = ["SHAPES", "SyntheticObject", "SyntheticImage", "make_synthetic_dataset", "render_image"]

#: Shapes the generator can draw, in the order their class ids default to.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
#: Largest fraction of either box covered by the other, for two shapes of one image ("some overlap", no
#: hidden or contained objects).
MAX_OVERLAP = 0.3
#: Fraction of images left empty (backgrounds only), so detectors also see negatives.
EMPTY_FRACTION = 1 / 12
#: Shape size range (outer diameter) as a fraction of the image side: small enough for the stride-8 level,
#: large enough for the stride-32 level of a YOLOv5 head.
SIZE_RANGE = (0.05, 0.35)
#: Smallest colour distance (Euclidean, 0-255 BGR) between a shape and the background under it; below it
#: the colour is drawn again, so shapes are visible to a person.
MIN_CONTRAST = 60.0
#: JPEG quality of the written images (deterministic for a given OpenCV build).
JPEG_QUALITY = 92


@dataclass
class SyntheticObject:
    """One drawn shape.

    Attributes:
        cls: class id (index into the dataset's class names).
        box: ``(x1, y1, x2, y2)`` in pixels, the tight box of the drawn shape, inside the image.
        colour: BGR fill colour (before the image noise).
        mask: ``bool[H, W]`` pixels the shape covers when drawn alone (before later shapes cover it).
    """

    cls: int
    box: tuple[float, float, float, float]
    colour: tuple[int, int, int]
    mask: np.ndarray


@dataclass
class SyntheticImage:
    """An image and its objects, as :func:`render_image` drew them."""

    image: np.ndarray  # uint8[H, W, 3] BGR
    objects: list[SyntheticObject]

    def yolo_labels(self) -> np.ndarray:
        """``float32[n, 5]`` rows ``cls cx cy w h`` normalised to [0, 1] (YOLO label format)."""
        h, w = self.image.shape[:2]
        rows = [
            (o.cls, (o.box[0] + o.box[2]) / 2 / w, (o.box[1] + o.box[3]) / 2 / h, (o.box[2] - o.box[0]) / w,
             (o.box[3] - o.box[1]) / h)
            for o in self.objects
        ]
        return np.array(rows, dtype=np.float32).reshape(-1, 5)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32 (not hash()) so the stream does not depend on PYTHONHASHSEED.
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour field + thin random lines + blotches: texture a detector must learn to ignore."""
    grid = rng.integers(0, 256, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
    img = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    fine = cv2.resize(rng.normal(0, 1, size=(size // 8, size // 8, 3)).astype(np.float32), (size, size),
                      interpolation=cv2.INTER_LINEAR)
    img += fine * rng.uniform(5, 25)  # mottled texture
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 8)):  # clutter: lines are not objects
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(img, p1, p2, colour, int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    return img


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray | None:
    """Vertices ``float[k, 2]`` of a polygonal shape of outer radius ``r``; None for a circle."""
    if kind == "square":
        t = angle + np.arange(4) * math.pi / 2 + math.pi / 4
        rad = np.full(4, r)
    elif kind == "triangle":
        t = angle + np.arange(3) * 2 * math.pi / 3
        rad = np.full(3, r)
    elif kind == "star":
        t = angle + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    elif kind == "cross":  # a plus sign of arm half-width r/3, rotated
        a = r / 3
        pts = np.array([(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r), (-a, -a), (-r, -a), (-r, a),
                        (-a, a), (-a, r)], dtype=np.float64) / math.sqrt(1 + 1 / 9)  # corners on radius r
        c, s = math.cos(angle), math.sin(angle)
        return np.stack([cx + pts[:, 0] * c - pts[:, 1] * s, cy + pts[:, 0] * s + pts[:, 1] * c], axis=1)
    elif kind == "circle":
        return None
    else:
        raise ValueError(f"unknown shape '{kind}'; available: {', '.join(SHAPES)}")
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)


# Drawing uses integer coordinates with SHIFT fractional bits, so sub-pixel positions are kept.
_SHIFT = 4


def _shape_mask(kind: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    poly = _polygon(kind, cx, cy, r, angle)
    if poly is None:
        centre = (int(round(cx * (1 << _SHIFT))), int(round(cy * (1 << _SHIFT))))
        cv2.circle(mask, centre, int(round(r * (1 << _SHIFT))), 1, thickness=-1, lineType=cv2.LINE_8, shift=_SHIFT)
    else:
        cv2.fillPoly(mask, [np.round(poly * (1 << _SHIFT)).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def _box_overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the area of the smaller of two ``(x1, y1, x2, y2)`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def render_image(
    seed: int,
    split: str,
    index: int,
    img_size: int = 256,
    classes: Sequence[str] = SHAPES[:3],
    max_objects: int = 8,
    size_range: tuple[float, float] = SIZE_RANGE,
) -> SyntheticImage:
    """Draw image ``index`` of ``split`` exactly as :func:`make_synthetic_dataset` writes it (before JPEG).

    Args:
        seed: dataset seed.
        split: ``"train"`` or ``"val"`` (any string; it selects an independent random stream).
        index: image number within the split.
        img_size: side of the square image, pixels (>= 32).
        classes: shape names (from :data:`SHAPES`); class id = position.
        max_objects: most shapes per image.
        size_range: shape diameter range as fractions of ``img_size``.

    Returns:
        The BGR image and its objects (boxes are tight boxes of the drawn pixels).
    """
    if img_size < 32:
        raise ValueError(f"img_size must be at least 32 pixels, got {img_size}")
    rng = _image_rng(seed, split, index)
    img = _background(rng, img_size)
    n = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, max_objects + 1))
    objects: list[SyntheticObject] = []
    for _ in range(n):
        for _attempt in range(20):  # find a place that overlaps earlier shapes only a little
            cls = int(rng.integers(len(classes)))
            r = rng.uniform(*size_range) * img_size / 2
            cx, cy = rng.uniform(0, img_size, 2)
            angle = rng.uniform(0, 2 * math.pi)
            mask = _shape_mask(classes[cls], cx, cy, r, angle, img_size)
            ys, xs = np.nonzero(mask)
            if len(xs) < 16:  # mostly outside the image
                continue
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            if (box[2] - box[0]) < 4 or (box[3] - box[1]) < 4:
                continue
            if all(_box_overlap(box, o.box) <= MAX_OVERLAP for o in objects):
                break
        else:
            continue
        under = img[mask].astype(np.float32).mean(0)
        for _c in range(10):
            colour = rng.integers(0, 256, 3)
            if np.linalg.norm(colour - under) >= MIN_CONTRAST:
                break
        colour_t = tuple(int(v) for v in colour)
        img[mask] = colour_t
        objects.append(SyntheticObject(cls, box, colour_t, mask))
    noise = rng.normal(0, rng.uniform(2, 10), img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return SyntheticImage(img, objects)


def make_synthetic_dataset(
    root: str | Path,
    n_train: int = 800,
    n_val: int = 200,
    img_size: int = 256,
    classes: Sequence[str] = SHAPES[:3],
    seed: int = 0,
    max_objects: int = 8,
    size_range: tuple[float, float] = SIZE_RANGE,
) -> Path:
    """Write a YOLO-format detection dataset of shapes and return its data yaml.

    Layout::

        root/images/{train,val}/000000.jpg    root/labels/{train,val}/000000.txt    root/shapes.yaml

    Label rows are ``cls cx cy w h`` normalised to [0, 1]; an image without shapes gets an empty label file.
    The yaml holds ``path`` (relative, "."), ``train``, ``val`` and ``names``, as Ultralytics data files do.

    Args:
        root: output folder (created; existing files of the same names are overwritten).
        n_train, n_val: images per split (``n_train`` may be 0; ``n_val`` at least 1).
        img_size: image side, pixels.
        classes: shape names from :data:`SHAPES` (default circle, square, triangle); 1 to 5 of them.
        seed: everything is a function of it: the same seed writes identical files.
        max_objects: most shapes per image.
        size_range: shape diameter range as fractions of ``img_size`` (default :data:`SIZE_RANGE`).

    Returns:
        Path of the data yaml.
    """
    classes = tuple(classes)
    if not classes or len(set(classes)) != len(classes) or any(c not in SHAPES for c in classes):
        raise ValueError(f"classes must be distinct names from {SHAPES}, got {classes}")
    if not 0 < size_range[0] <= size_range[1] <= 1:
        raise ValueError(f"size_range must be fractions 0 < lo <= hi <= 1 of the image side, got {size_range}")
    if n_train < 0 or n_val < 1:
        raise ValueError(f"need n_train >= 0 and n_val >= 1, got {n_train} and {n_val}")
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val)):
        img_dir, lbl_dir = root / "images" / split, root / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sample = render_image(seed, split, i, img_size, classes, max_objects, size_range)
            ok, buf = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode image {i} of {split}")
            (img_dir / f"{i:06d}.jpg").write_bytes(buf.tobytes())
            lines = "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in sample.yolo_labels())
            (lbl_dir / f"{i:06d}.txt").write_text(lines, encoding="utf-8")
    cfg = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "names": list(classes),
        "synthetic": {"seed": seed, "n_train": n_train, "n_val": n_val, "img_size": img_size,
                      "max_objects": max_objects, "size_range": [float(v) for v in size_range]},
    }
    yaml_path = root / "shapes.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return yaml_path
