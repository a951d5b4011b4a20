"""Geometric image transforms used before the network (letterbox)."""

from __future__ import annotations

import cv2
import numpy as np


def letterbox(
    im: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = (114, 114, 114),
    auto: bool = True,
    scale_fill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize and pad an image to ``new_shape`` keeping its aspect ratio, as YOLOv5 does.

    Args:
        im: HWC uint8 image (BGR or RGB; untouched channel order).
        new_shape: target ``(h, w)``, or one int for a square.
        color: padding colour.
        auto: pad only up to the next multiple of ``stride`` (minimum rectangle) instead of to ``new_shape``.
        scale_fill: stretch to ``new_shape`` without padding.
        scaleup: allow enlarging; False only shrinks (val does this, for a better mAP).
        stride: the model's largest stride.

    Returns:
        ``(image, (ratio_w, ratio_h), (pad_w, pad_h))`` where the pads are per side (half of the total).

    Caveats:
        Resizing uses ``cv2.INTER_LINEAR`` and splits odd padding with the same rounding as YOLOv5
        (``round(p - 0.1)`` before, ``round(p + 0.1)`` after), so outputs are pixel-identical to it.
    """
    shape = im.shape[:2]  # current (h, w)
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)

    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)

    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scale_fill:
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]

    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (float(dw), float(dh))
