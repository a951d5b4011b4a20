"""Fetching official YOLOv5 release assets (:func:`attempt_download`)."""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from sparseyolo.checkpoint.common import CheckpointError
from sparseyolo.models import MODEL_NAMES

LOGGER = logging.getLogger(__name__)

#: Official YOLOv5 release assets that :func:`attempt_download` may fetch.
RELEASE_ASSETS: frozenset[str] = frozenset(f"{n}{s}.pt" for n in MODEL_NAMES for s in ("", "6"))
RELEASE_URL = "https://github.com/ultralytics/yolov5/releases/download/v7.0/{name}"


def attempt_download(weights: str | Path, dir: str | Path | None = None, timeout: float = 30.0) -> Path:
    """Return a local checkpoint path, downloading official YOLOv5 release assets when missing.

    Args:
        weights: a path; when it does not exist and its name is an official asset (``yolov5{n,s,m,l,x}{,6}.pt``)
            it is fetched from the YOLOv5 v7.0 GitHub release.
        dir: download folder (default: the folder of ``weights``, i.e. the current directory for bare names).
        timeout: network timeout in seconds.

    Returns:
        The path of the existing or downloaded file.

    Raises:
        CheckpointError: the file does not exist and is not an official asset, or the download failed.
    """
    path = Path(weights)  # as given: quotes and spaces are legal in file names
    if path.is_file():
        return path
    if path.name not in RELEASE_ASSETS:
        raise CheckpointError(f"{path}: no such checkpoint file (and not an official YOLOv5 release asset to download)")
    dest = Path(dir) / path.name if dir is not None else path
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = RELEASE_URL.format(name=path.name)
    LOGGER.info("downloading %s to %s", url, dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) if getattr(resp, "headers", None) else 0
            done, next_log = 0, 0.0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total and done / total >= next_log:
                    LOGGER.info("%s: %5.1f%% of %.1f MB", path.name, 100 * done / total, total / 1e6)
                    next_log += 0.25
        if total and done != total:
            raise CheckpointError(f"download of {url} incomplete ({done} of {total} bytes)")
        if done < 1_000_000:  # every official asset is several MB; an HTML error page is not
            raise CheckpointError(f"download of {url} gave only {done} bytes; not a checkpoint")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise CheckpointError(
            f"could not download {url} ({e}); this machine looks offline. Download it elsewhere and pass its local path"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    LOGGER.info("downloaded %s (%.1f MB)", dest, dest.stat().st_size / 1e6)
    return dest
