"""The ``sparseyolo`` command line (also ``python -m sparseyolo``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

LOGGER = logging.getLogger("sparseyolo")


class _UserError(Exception):
    """A mistake in the command's arguments or inputs: printed as one line, no traceback."""


def _setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("sparseyolo")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _add_val_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "val",
        help="evaluate a checkpoint on a labelled dataset (YOLOv5 val.py metrics + pycocotools)",
        description="Evaluate a YOLOv5 checkpoint: P, R, mAP50, mAP50-95 as YOLOv5's val.py, then COCOeval.",
    )
    p.add_argument("--weights", required=True, help="checkpoint: Ultralytics *.pt, sparseyolo *.pt or a state_dict")
    p.add_argument("--data", required=True, help="data yaml (path/train/val/names), as Ultralytics")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=32, help="batch size")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", choices=["train", "val", "test", "speed"], help="split, or speed")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA)")
    p.add_argument("--verbose", action="store_true", help="per-class table")
    p.add_argument("--save-json", action="store_true", help="save predictions json (COCO results format)")
    p.add_argument("--coco-json", default=None, help="COCO instances json of the split (default: found under the dataset root)")
    p.add_argument("--no-cocoeval", dest="cocoeval", action="store_false", help="skip pycocotools COCOeval")
    p.add_argument("--nms", choices=["fused", "reference"], default="fused",
                   help="fused: the compiled sparseyolo::yolo_nms op; reference: torch + torchvision (same boxes)")
    p.add_argument("--prune", type=float, default=0.0, help="L1-prune every Conv2d of the fused model by this fraction first")
    p.add_argument("--project", default="runs/val", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.set_defaults(func=_cmd_val)


def _cmd_val(args: argparse.Namespace) -> int:
    from sparseyolo import val

    kwargs = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    LOGGER.info("val: " + ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    val.run(**kwargs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseyolo", description="Prune YOLOv5 detectors; make sparsity fast.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_val_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    from sparseyolo.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (_UserError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"sparseyolo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
