"""Run folders (``runs/val/exp``, ``runs/val/exp2``, ...) as YOLOv5 names them, created atomically."""

from __future__ import annotations

from pathlib import Path

#: Suffixes tried after the bare name (``exp2`` .. ``exp9999``) before giving up.
MAX_RUNS = 10_000


def increment_dir(path: str | Path, exist_ok: bool = False) -> Path:
    """Create and return the run folder ``path``, or ``path2``, ``path3``, ... the first that does not exist yet.

    Each candidate is claimed with ``mkdir`` without ``exist_ok``, so two runs started at the same time never get
    the same folder: the loser of the race moves on to the next suffix.

    Args:
        path: the folder wanted, e.g. ``runs/finetune/exp``; its parents are created.
        exist_ok: reuse ``path`` itself when it exists (YOLOv5's ``--exist-ok``) instead of incrementing.

    Returns:
        The folder, which exists on return.

    Raises:
        FileExistsError: every name up to ``path9999`` is taken (clean the project folder).
    """
    path = Path(path)
    if exist_ok:
        path.mkdir(parents=True, exist_ok=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, MAX_RUNS):
        candidate = path if n == 1 else Path(f"{path}{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path} and {path}2 .. {path}{MAX_RUNS - 1} all exist; remove old runs from {path.parent}")
