"""sparseyolo: prune YOLOv5 detectors and make the sparsity pay off as inference speed."""

from sparseyolo._version import __version__
from sparseyolo.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint  # noqa: E402
from sparseyolo.utils.memory import reuse_freed_memory  # noqa: E402

__all__ = ["CheckpointError", "load_checkpoint", "load_model", "reuse_freed_memory", "save_checkpoint", "sparsify",
           "__version__"]


def __getattr__(name: str):
    # sparsify needs the compiled ops: imported on first use so `import sparseyolo` works without them.
    if name == "sparsify":
        from sparseyolo.sparse import sparsify

        return sparsify
    raise AttributeError(f"module 'sparseyolo' has no attribute '{name}'")
