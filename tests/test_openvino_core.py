"""OpenVINO leaves no dangling alternate signal stack behind (the CI segfault of 2026-12-03).

OpenVINO's CPU plugin installs a ``sigaltstack`` per ``Core`` and re-installs the previous one when the ``Core`` is
destroyed; two ``Core`` objects destroyed in creation order left the main thread's alternate stack on freed memory,
and the next Python signal handler (DataLoader's SIGCHLD) killed the test process. sparseyolo now shares one
``Core`` (``sparseyolo.utils.openvino_core``); this runs the sequence that crashed in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("openvino")

SCRIPT = textwrap.dedent(
    """
    import ctypes, gc, os, signal, sys, torch
    from torch import nn
    from sparseyolo.dense_runtimes import OPENVINO, OPENVINO_F32, dense_runtimes

    class stack_t(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    def alt_stack_is_sound():
        s = stack_t()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s)) == 0
        if not s.ss_sp or s.ss_flags & 2:  # none installed (SS_DISABLE)
            return True
        for line in open("/proc/self/maps"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= s.ss_sp and s.ss_sp + s.ss_size <= hi:
                return True
        return False

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    first = dense_runtimes(model, x, 1, (OPENVINO,))
    second = dense_runtimes(model, x, 1, (OPENVINO_F32,))
    assert first[OPENVINO].run is not None and second[OPENVINO_F32].run is not None, (first, second)
    first[OPENVINO].run(); second[OPENVINO_F32].run()
    del first; gc.collect()
    del second; gc.collect()
    if not alt_stack_is_sound():
        print("DANGLING alternate signal stack"); sys.exit(3)
    ran = []
    signal.signal(signal.SIGUSR1, lambda *a: ran.append(1))
    os.kill(os.getpid(), signal.SIGUSR1)
    print("survived", len(ran))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack and /proc/self/maps: Linux")
def test_two_openvino_runtimes_leave_a_sound_signal_stack():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "survived 1" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr[-2000:])
