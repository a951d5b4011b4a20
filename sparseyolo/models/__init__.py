"""YOLOv5 model definitions and builders.

Example:
    >>> from sparseyolo.models import build_model
    >>> model = build_model("yolov5n", nc=80)
"""

from __future__ import annotations

from pathlib import Path

from sparseyolo.models.common import C3, SPPF, Bottleneck, Concat, Conv, autopad
from sparseyolo.models.yolo import CONFIG_DIR, Detect, DetectionModel, fuse_conv_and_bn, parse_model

__all__ = [
    "MODEL_NAMES",
    "CONFIG_DIR",
    "build_model",
    "yolov5n",
    "yolov5s",
    "yolov5m",
    "yolov5l",
    "yolov5x",
    "autopad",
    "Conv",
    "Bottleneck",
    "C3",
    "SPPF",
    "Concat",
    "Detect",
    "DetectionModel",
    "parse_model",
    "fuse_conv_and_bn",
]

#: Built-in configs, smallest first (configs/<name>.yaml).
MODEL_NAMES: tuple[str, ...] = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")


def build_model(name_or_cfg: str | Path | dict, nc: int | None = None) -> DetectionModel:
    """Build a freshly initialised detector.

    Args:
        name_or_cfg: a built-in name (``"yolov5n"`` ... ``"yolov5x"``, with or without ``.yaml``),
            a path to a yaml config, or a config dict.
        nc: number of classes; overrides the config's ``nc`` when given.

    Returns:
        A ``DetectionModel`` in training mode.

    Raises:
        FileNotFoundError: the name is neither a built-in nor an existing file.
    """
    if isinstance(name_or_cfg, str) and Path(name_or_cfg).stem in MODEL_NAMES and not Path(name_or_cfg).is_file():
        name_or_cfg = CONFIG_DIR / f"{Path(name_or_cfg).stem}.yaml"
    return DetectionModel(name_or_cfg, nc=nc)


def yolov5n(nc: int = 80) -> DetectionModel:
    """YOLOv5n (depth 0.33, width 0.25)."""
    return build_model("yolov5n", nc=nc)


def yolov5s(nc: int = 80) -> DetectionModel:
    """YOLOv5s (depth 0.33, width 0.50)."""
    return build_model("yolov5s", nc=nc)


def yolov5m(nc: int = 80) -> DetectionModel:
    """YOLOv5m (depth 0.67, width 0.75)."""
    return build_model("yolov5m", nc=nc)


def yolov5l(nc: int = 80) -> DetectionModel:
    """YOLOv5l (depth 1.0, width 1.0)."""
    return build_model("yolov5l", nc=nc)


def yolov5x(nc: int = 80) -> DetectionModel:
    """YOLOv5x (depth 1.33, width 1.25)."""
    return build_model("yolov5x", nc=nc)
