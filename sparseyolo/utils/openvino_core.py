"""One OpenVINO ``Core`` per process, shared by every caller (export checks, the dense runtimes of ``bench``).

Why not a ``Core`` per use: OpenVINO's CPU plugin (seen with 2026.4) installs an alternate signal stack
(``sigaltstack``) on the thread that creates a ``Core`` and, when that ``Core`` is destroyed, re-installs the one it
found. Two ``Core`` objects destroyed in the order they were made therefore leave the thread's alternate stack
pointing at freed memory, and the next signal delivered on it (Python installs its handlers with ``SA_ONSTACK``:
``signal.signal``, PyTorch's DataLoader SIGCHLD handler) kills the process with a SIGSEGV that no handler can
report. One long-lived ``Core`` never restores a stale stack.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """The process-wide ``openvino.Core()`` (imports OpenVINO; raises ImportError where it is not installed)."""
    import openvino as ov

    return ov.Core()
