"""Training-time image augmentations of YOLOv5: mosaic, random affine, HSV jitter, flips.

Every function takes an HWC uint8 BGR image and labels as ``ndarray[n, 5]`` ``cls x1 y1 x2 y2`` in pixels of
that image, and returns them transformed together. Random draws use Python's ``random`` module, which
PyTorch's DataLoader seeds differently in every worker.

The transforms and their default strengths are YOLOv5's ``hyp.scratch-low.yaml`` recipe
(:class:`AugmentConfig`); the box filter after a warp is its ``box_candidates`` rule.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["AugmentConfig", "augment_hsv", "random_affine", "box_candidates", "mosaic4", "PAD_VALUE"]

#: Grey used for padding and warped-in borders (YOLOv5's letterbox colour).
PAD_VALUE = 114


@dataclass
class AugmentConfig:
    """Augmentation strengths (YOLOv5 ``hyp.scratch-low.yaml`` defaults).

    Attributes:
        hsv_h, hsv_s, hsv_v: maximum relative hue, saturation and value jitter.
        degrees: rotation range (+/- degrees). translate: translation range (+/- fraction of the size).
        scale: zoom range (+/- gain). shear: shear range (+/- degrees). perspective: perspective range.
        flipud, fliplr: flip probabilities.
        mosaic: probability of a 4-image mosaic (0 disables).
    """

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    mosaic: float = 1.0


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> None:
    """Scale hue, saturation and value by random factors in ``1 +/- gain``, in place (BGR uint8 image).

    Hue wraps around OpenCV's 0..179 range; saturation and value saturate at 255.
    """
    if not (hgain or sgain or vgain):
        return
    r = [1 + random.uniform(-1, 1) * g for g in (hgain, sgain, vgain)]
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    wh_thr: float = 2.0,
    ar_thr: float = 100.0,
    area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Which warped boxes to keep: wider and taller than ``wh_thr`` pixels, aspect ratio below ``ar_thr``, and
    more than ``area_thr`` of the (scaled) original area left inside the image.

    Args:
        box1 (ndarray[4, n]): boxes before the warp, ``x1 y1 x2 y2`` rows, multiplied by the zoom gain.
        box2 (ndarray[4, n]): the same boxes after the warp and clipping.

    Returns:
        ndarray[n] bool.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_affine(
    im: np.ndarray,
    labels: np.ndarray,
    cfg: AugmentConfig,
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, zoom, shear, perspective and translation about the image centre.

    Args:
        im: HWC uint8 image.
        labels (ndarray[n, 5]): ``cls x1 y1 x2 y2`` pixels.
        cfg: strengths (``degrees, translate, scale, shear, perspective``).
        border: ``(y, x)`` pixels added to each side of the output (negative crops; mosaic uses ``-size/2`` to
            bring its ``2s x 2s`` canvas back to ``s x s``).

    Returns:
        ``(image, labels)``: the warped image of size ``(H + 2 border_y, W + 2 border_x)`` and the boxes of the
        labels' warped corners, clipped to it and filtered by :func:`box_candidates`.
    """
    height = im.shape[0] + border[0] * 2
    width = im.shape[1] + border[1] * 2
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -im.shape[1] / 2, -im.shape[0] / 2
    persp = np.eye(3)
    persp[2, 0] = random.uniform(-cfg.perspective, cfg.perspective)
    persp[2, 1] = random.uniform(-cfg.perspective, cfg.perspective)
    rot = np.eye(3)
    zoom = random.uniform(1 - cfg.scale, 1 + cfg.scale)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=random.uniform(-cfg.degrees, cfg.degrees), scale=zoom)
    shear = np.eye(3)
    shear[0, 1] = math.tan(math.radians(random.uniform(-cfg.shear, cfg.shear)))
    shear[1, 0] = math.tan(math.radians(random.uniform(-cfg.shear, cfg.shear)))
    move = np.eye(3)
    move[0, 2] = random.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * width
    move[1, 2] = random.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * height
    m = move @ shear @ rot @ persp @ centre  # right to left: centre first

    if border != (0, 0) or (m != np.eye(3)).any():
        fill = (PAD_VALUE,) * 3
        if cfg.perspective:
            im = cv2.warpPerspective(im, m, dsize=(width, height), borderValue=fill)
        else:
            im = cv2.warpAffine(im, m[:2], dsize=(width, height), borderValue=fill)

    n = len(labels)
    if n:
        corners = np.ones((n * 4, 3))
        corners[:, :2] = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1 x2y2 x1y2 x2y1
        corners = corners @ m.T
        xy = (corners[:, :2] / corners[:, 2:3] if cfg.perspective else corners[:, :2]).reshape(n, 8)
        xs, ys = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((xs.min(1), ys.min(1), xs.max(1), ys.max(1)), 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(labels[:, 1:5].T * zoom, new.T)
        labels = labels[keep]
        labels[:, 1:5] = new[keep]
    return im, labels


def mosaic4(
    images: list[np.ndarray], labels: list[np.ndarray], size: int, centre: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Tile four images around ``centre`` on a ``2 size x 2 size`` grey canvas.

    Args:
        images: four HWC uint8 images, each already resized so its long side is ``size``; placed top-left,
            top-right, bottom-left, bottom-right of the centre, cropped where they cross the canvas border.
        labels: matching ``ndarray[n, 5]`` ``cls cx cy w h`` normalised to each image.
        size: the training image size ``s``.
        centre: ``(xc, yc)`` mosaic centre on the canvas (YOLOv5 draws it uniformly in ``[s/2, 3s/2]``).

    Returns:
        ``(canvas uint8[2s, 2s, 3], labels ndarray[N, 5] cls x1 y1 x2 y2 in canvas pixels, clipped to it)``.
    """
    s2 = 2 * size
    xc, yc = centre
    canvas = np.full((s2, s2, images[0].shape[2]), PAD_VALUE, dtype=np.uint8)
    out = []
    for i, (im, lb) in enumerate(zip(images, labels, strict=True)):
        h, w = im.shape[:2]
        if i == 0:  # top left: the image's bottom-right corner sits on the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s2), min(s2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = im[y1b:y2b, x1b:x2b]
        padw, padh = x1a - x1b, y1a - y1b
        lb = lb.copy()
        if lb.size:
            cx, cy, bw, bh = lb[:, 1].copy(), lb[:, 2].copy(), lb[:, 3].copy(), lb[:, 4].copy()
            lb[:, 1] = w * (cx - bw / 2) + padw
            lb[:, 2] = h * (cy - bh / 2) + padh
            lb[:, 3] = w * (cx + bw / 2) + padw
            lb[:, 4] = h * (cy + bh / 2) + padh
        out.append(lb)
    boxes = np.concatenate(out, 0) if out else np.zeros((0, 5), dtype=np.float32)
    np.clip(boxes[:, 1:], 0, s2, out=boxes[:, 1:])
    return canvas, boxes
