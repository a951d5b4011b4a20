"""Helpers of the training tests: a tiny labelled dataset drawn with OpenCV, and a state hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch import nn


def make_dataset(root: Path, n: int = 4, seed: int = 0, nc: int = 80) -> Path:
    """Write ``n`` images with 1-3 filled rectangles each and their YOLO labels; return the data yaml."""
    rng = np.random.default_rng(seed)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        h, w = (96, 128) if k % 2 else (128, 112)
        im = np.full((h, w, 3), 60, np.uint8)
        rows = []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(16, w // 2)), int(rng.integers(16, h // 2))
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cls = int(rng.integers(0, 3))
            color = [(0, 0, 255), (0, 255, 0), (255, 0, 0)][cls]
            cv2.rectangle(im, (x1, y1), (x1 + bw - 1, y1 + bh - 1), color, -1)
            rows.append(f"{cls} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(root / "images" / "train" / f"im{k}.jpg"), im)
        (root / "labels" / "train" / f"im{k}.txt").write_text("\n".join(rows) + "\n")
    cfg = {"path": str(root), "train": "images/train", "val": "images/train", "names": [f"c{i}" for i in range(nc)]}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def state_hash(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state_dict, in key order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
