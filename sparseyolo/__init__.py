"""sparseyolo: prune YOLOv5 detectors and make the sparsity pay off as inference speed."""

__version__ = "0.1.0"
