"""cuda_median_ms: what it times, checked on the CPU with a fake device clock.

The fake clock advances only when the timed function runs (by the cost the test gives each input), and a fake
CUDA event reads that clock when it is recorded, so the result says exactly which calls fell between the events.
"""

from __future__ import annotations

import pytest
import torch

from sparseyolo.utils.torch_utils import cuda_median_ms


class _FakeDevice:
    def __init__(self, monkeypatch):
        self.clock = 0.0
        self.log: list[str] = []
        dev = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.t = None

            def record(self):
                self.t = dev.clock
                dev.log.append("record")

            def synchronize(self):
                dev.log.append("sync")

            def elapsed_time(self, other):
                return other.t - self.t

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: dev.log.append("sync"))

    def fn(self, cost):
        self.clock += cost
        self.log.append(f"call {cost}")


def test_times_back_to_back_calls_after_an_untimed_lead_call(monkeypatch):
    dev = _FakeDevice(monkeypatch)
    args = [(1.0,), (2.0,), (3.0,)]
    ms = cuda_median_ms(dev.fn, args, reps=2, warmup=1)
    # 4 timed calls per sample (at least 4): inputs 1, 2, 3, 1 -> 7 ms / 4; the lead call (input 3) is not counted.
    assert ms == pytest.approx(7.0 / 4)
    one_sample = ["call 3.0", "record", "call 1.0", "call 2.0", "call 3.0", "call 1.0", "record", "sync"]
    assert dev.log == ["call 1.0", "sync"] + one_sample * 2


def test_one_pass_over_many_inputs_and_the_median(monkeypatch):
    dev = _FakeDevice(monkeypatch)
    costs = iter([5.0] * 2 + [1.0] * 6 + [9.0] * 6 + [2.0] * 6)  # warm-up 2, then 3 samples of lead + 5 calls

    def fn(_):
        dev.fn(next(costs))

    ms = cuda_median_ms(fn, [(i,) for i in range(5)], reps=3, warmup=2)
    assert ms == pytest.approx(2.0)  # samples of 1, 9 and 2 ms per call (lead calls excluded): median 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="args_list is empty"):
        cuda_median_ms(lambda: None, [])
    with pytest.raises(ValueError, match=">= 1"):
        cuda_median_ms(lambda: None, [()], calls=0)
