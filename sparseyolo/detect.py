"""``sparseyolo detect``: boxes on images, as Ultralytics' ``detect.py`` draws and saves them.

Each image is read with OpenCV (BGR), letterboxed to ``imgsz`` with minimum-rectangle padding (stride of the
model), run through the fused model, and its raw output goes through YOLOv5's NMS (``sparseyolo.ops.yolo_nms``:
single label per box, per-class NMS). Boxes are scaled back to the original image. On bus.jpg and zidane.jpg with
the official yolov5n this gives Ultralytics' detections (tests/test_detect.py checks it against its reference).

Written to ``out``:

* ``<image name>``: the image with its boxes and labels drawn;
* ``labels/<image stem>.txt``: one line per box, ``class xc yc w h conf`` normalised by the image's width and
  height (Ultralytics' ``--save-txt --save-conf``); an image without detections gets an empty file;
* ``detections.json``: every image's boxes in pixels (``xyxy``), scores and class names, the images skipped
  and why, and the settings.

A file that OpenCV cannot decode is reported and skipped; the other images are still processed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from sparseyolo.checkpoint import load_model
from sparseyolo.data.augment import letterbox
from sparseyolo.data.dataset import list_image_files
from sparseyolo.utils.boxes import scale_boxes, xyxy2xywh

LOGGER = logging.getLogger(__name__)

SPARSIFY_BACKENDS = ("auto", "sparse")


@dataclass
class Detection:
    """One box: ``xyxy`` in original-image pixels, ``conf`` = objectness x class score."""

    cls: int
    name: str
    conf: float
    xyxy: list[float]


@dataclass
class ImageDetections:
    """The detections of one image."""

    file: str
    width: int
    height: int
    detections: list[Detection] = field(default_factory=list)

    def as_array(self) -> np.ndarray:
        """``float[n, 6]`` rows ``(x1, y1, x2, y2, conf, cls)``."""
        return np.array([[*d.xyxy, d.conf, d.cls] for d in self.detections], dtype=np.float64).reshape(-1, 6)


@dataclass
class DetectResult:
    """What :func:`run_detect` found and wrote."""

    out: Path
    images: list[ImageDetections]
    skipped: list[dict[str, str]]  # {"file", "reason"}
    seconds: float

    def summary(self) -> str:
        """One line per image, then where the files are."""
        lines = []
        for im in self.images:
            counts: dict[str, int] = {}
            for d in im.detections:
                counts[d.name] = counts.get(d.name, 0) + 1
            found = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no detections"
            lines.append(f"{im.file}: {im.width}x{im.height}, {found}")
        for s in self.skipped:
            lines.append(f"{s['file']}: skipped ({s['reason']})")
        lines.append(f"{len(self.images)} images in {self.seconds:.1f} s; results in {self.out} (images, labels/*.txt, "
                     "detections.json)" + (f"; {len(self.skipped)} skipped" if self.skipped else ""))
        return "\n".join(lines)


def _colour(cls: int) -> tuple[int, int, int]:
    """A BGR colour per class, from the tab10 palette (the demo's detections image uses the same)."""
    tab10 = ("1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "7f7f7f", "bcbd22", "17becf")
    h = tab10[cls % len(tab10)]
    return int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)


def draw_detections(image_bgr: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """A copy of the image with each box and a ``name conf`` label drawn (line width as Ultralytics scales it)."""
    im = image_bgr.copy()
    lw = max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
    for d in detections:
        colour = _colour(d.cls)
        p1 = (int(d.xyxy[0]), int(d.xyxy[1]))
        p2 = (int(d.xyxy[2]), int(d.xyxy[3]))
        cv2.rectangle(im, p1, p2, colour, thickness=lw, lineType=cv2.LINE_AA)
        label = f"{d.name} {d.conf:.2f}"
        tf = max(lw - 1, 1)
        (w, h), _ = cv2.getTextSize(label, 0, fontScale=lw / 3, thickness=tf)
        outside = p1[1] - h >= 3  # label above the box if it fits, else inside it
        p3 = (p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3)
        cv2.rectangle(im, p1, p3, colour, -1, cv2.LINE_AA)
        cv2.putText(im, label, (p1[0], p1[1] - 2 if outside else p1[1] + h + 2), 0, lw / 3, (255, 255, 255),
                    thickness=tf, lineType=cv2.LINE_AA)
    return im


def txt_lines(image: ImageDetections) -> list[str]:
    """Ultralytics' ``--save-txt --save-conf`` lines: ``class xc yc w h conf``, box normalised by the image size."""
    gn = np.array([image.width, image.height, image.width, image.height], dtype=np.float64)
    lines = []
    for d in image.detections:
        xywh = xyxy2xywh(np.array(d.xyxy, dtype=np.float64)) / gn
        lines.append(("%g " * 6).rstrip() % (d.cls, *xywh, d.conf))
    return lines


def preprocess(image_bgr: np.ndarray, imgsz: int, stride: int) -> torch.Tensor:
    """YOLOv5 ``detect.py`` pre-processing: letterbox (minimum rectangle), BGR to RGB, CHW, 0..1, batch of one."""
    im = letterbox(image_bgr, imgsz, stride=stride, auto=True)[0]
    im = np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))
    return torch.from_numpy(im).float()[None] / 255.0


def _load(weights: str | Path, sparsify: str | None, imgsz: int) -> torch.nn.Module:
    if sparsify is None:
        return load_model(weights, fuse=True)
    if sparsify not in SPARSIFY_BACKENDS:
        raise ValueError(f"sparsify must be one of {', '.join(SPARSIFY_BACKENDS)} or None, got {sparsify!r}")
    from sparseyolo.sparse import sparsify as to_sparse

    model = load_model(weights, fuse=False)
    if not any("weight_mask" in m._buffers for m in model.modules()):
        LOGGER.warning("detect: %s has no pruned convs, so --sparsify only folds the BatchNorms; prune it first "
                       "with 'sparseyolo prune' to run the sparse kernels", weights)
    example = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    fast = to_sparse(model, backend=sparsify, example_input=example)
    fast.names, fast.stride = model.names, model.stride
    report = getattr(fast, "sparsify_report", None)
    if report is not None and report.layers:
        n_sparse = sum(1 for r in report.layers if getattr(r, "backend", "") == "sparse")
        chosen = f"; whole model: {report.chosen}" if getattr(report, "chosen", "") else ""
        LOGGER.info("detect: sparsify(%s): %d of %d pruned convs on the sparse kernel%s", sparsify, n_sparse,
                    len(report.layers), chosen)
    return fast.eval()


def _channels_last(model: torch.nn.Module) -> bool:
    """True when sparsify(auto) returned its channels-last dense model, which wants channels-last inputs."""
    report = getattr(model, "sparsify_report", None)
    return getattr(report, "chosen", "") == "dense_channels_last"


def run_detect(weights: str | Path, source: str | Path, imgsz: int = 640, conf_thres: float = 0.25,
               iou_thres: float = 0.45, max_det: int = 1000, sparsify: str | None = None,
               out: str | Path = "runs/detect/exp", save_images: bool = True, progress: bool = True) -> DetectResult:
    """Detect objects in an image or a folder of images and write the results.

    Args:
        weights: checkpoint (Ultralytics, sparseyolo dense or pruned, state_dict), or an official asset name.
        source: an image, a folder (searched recursively) or a ``.txt`` list of images.
        imgsz: inference size (the longer side, before minimum-rectangle padding).
        conf_thres: score threshold; iou_thres: NMS IoU threshold; max_det: boxes kept per image.
        sparsify: None (the fused model), or a :func:`sparseyolo.sparsify` backend (``"auto"`` or ``"sparse"``)
            applied to the loaded model first.
        out: output folder (created; files of the same name are overwritten).
        save_images: write the annotated images.
        progress: progress bar over the images.

    Returns:
        The :class:`DetectResult` (also written as ``out/detections.json``).

    Raises:
        FileNotFoundError: no images in ``source``.
        ValueError: a threshold outside [0, 1] or a bad size.
    """
    from sparseyolo.ops import yolo_nms

    for name, v in (("conf_thres", conf_thres), ("iou_thres", iou_thres)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if imgsz < 32 or max_det < 1:
        raise ValueError(f"--img must be >= 32 and --max-det >= 1, got {imgsz} and {max_det}")
    files = list_image_files(source)
    t0 = time.perf_counter()
    model = _load(weights, sparsify, imgsz)
    names = list(model.names)
    stride = int(max(int(torch.as_tensor(model.stride).max()), 32))
    channels_last = _channels_last(model)
    out = Path(out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    images: list[ImageDetections] = []
    skipped: list[dict[str, str]] = []
    for f in tqdm(files, desc="detect", disable=not progress, bar_format="{l_bar}{bar:20}{r_bar}"):
        im0 = cv2.imread(f)
        if im0 is None:
            reason = "OpenCV cannot decode it (corrupt or not an image)"
            LOGGER.warning("detect: %s: %s; skipped", f, reason)
            skipped.append({"file": f, "reason": reason})
            continue
        x = preprocess(im0, imgsz, stride)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            det = yolo_nms(model(x)[0], conf_thres, iou_thres, max_det=max_det)[0]
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], im0.shape[:2])
        result = ImageDetections(file=f, width=im0.shape[1], height=im0.shape[0], detections=[
            Detection(cls=int(c), name=names[int(c)], conf=float(s), xyxy=[float(v) for v in b])
            for *b, s, c in det.tolist()
        ])
        images.append(result)
        stem = Path(f).stem
        (out / "labels" / f"{stem}.txt").write_text("".join(line + "\n" for line in txt_lines(result)))
        if save_images:
            cv2.imwrite(str(out / Path(f).name), draw_detections(im0, result.detections))
    seconds = time.perf_counter() - t0
    record = {
        "weights": str(weights), "source": str(source), "imgsz": imgsz, "conf_thres": conf_thres,
        "iou_thres": iou_thres, "max_det": max_det, "sparsify": sparsify,
        "images": [asdict(im) for im in images], "skipped": skipped,
    }
    (out / "detections.json").write_text(json.dumps(record, indent=1))
    return DetectResult(out=out, images=images, skipped=skipped, seconds=seconds)
