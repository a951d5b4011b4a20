"""sparseyolo: prune YOLOv5 detectors and make the sparsity pay off as inference speed."""

__version__ = "0.1.0"

from sparseyolo.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint  # noqa: E402

__all__ = ["CheckpointError", "load_checkpoint", "load_model", "save_checkpoint", "__version__"]
