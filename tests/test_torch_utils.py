"""cuda_median_ms and time_round_robin: what they time, checked on the CPU with fake clocks.

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


class _Clock:
    """A host clock that only the timed functions advance."""

    def __init__(self):
        self.now = 0.0
        self.last = None

    def perf_counter(self):
        return self.now

    def variant(self, name, cold_s, warm_s):
        """A forward that takes ``cold_s`` right after another variant's and ``warm_s`` after its own."""
        def fn(_x):
            self.now += cold_s if self.last != name else warm_s
            self.last = name
        return fn


@pytest.mark.parametrize("burst, expect_a_ms", [(1, 30.0), (3, 10.0)])
def test_time_round_robin_bursts_time_the_calls_after_the_first(monkeypatch, burst, expect_a_ms):
    from sparseyolo.utils import timing

    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    calls = {"a": 0, "b": 0}

    def counted(name, fn):
        def run(x):
            calls[name] += 1
            fn(x)
        return run

    variants = {"a": (counted("a", clock.variant("a", 0.030, 0.010)), None),
                "b": (counted("b", clock.variant("b", 0.005, 0.005)), None)}
    ms = timing.time_round_robin(variants, reps=4, warmup=1, burst=burst)
    assert ms["a"] == pytest.approx(expect_a_ms) and ms["b"] == pytest.approx(5.0)
    assert calls == {"a": 1 + 4 * burst, "b": 1 + 4 * burst}
    with pytest.raises(ValueError, match="burst must be >= 1"):
        timing.time_round_robin(variants, reps=1, burst=0)
