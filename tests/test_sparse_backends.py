"""Sparse backends, their registry, SparseConv2d's save/load and device rules, the autotuner, SparsifyConfig.

The central check, "every backend equals the masked dense conv", is parametrised over the registry (and the
experimental backends, registered or not); backends of another device skip without it. The autotuner's choice
logic runs on the CPU with fake backends whose outputs and times the test sets.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo import ops
from sparseyolo.sparse import SparseConv2d, SparsifyConfig, sparsify
from sparseyolo.sparse import autotune
from sparseyolo.sparse.backends import (
    ConvGeometry,
    SparseBackend,
    available_backends,
    backend_names,
    get_backend,
    register_backend,
    unregister_backend,
)
from sparseyolo.sparse.backends.dense import DenseBackend
from sparseyolo.sparse.experimental import experimental_backends
from sparseyolo.utils import timing

ALL_BACKENDS = list({b.name: b for b in [*(get_backend(n) for n in backend_names()), *experimental_backends()]}.values())
GEOMS = [ConvGeometry(32, 48, (3, 3), (1, 1), (1, 1)), ConvGeometry(64, 32, (1, 1)), ConvGeometry(32, 40, (3, 3),
                                                                                                  (2, 2), (1, 1))]


def _weight_24(geometry: ConvGeometry, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(geometry.weight_shape, generator=g) / (geometry.in_channels * 9) ** 0.5
    w = w * ops.nm_mask(w, 2, 4)
    return w.half().float()  # exactly representable in every dtype a backend takes


def _reference(x, w, b, geometry, activation):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), geometry.stride, geometry.padding)
    return F.silu(y) if activation == "silu" else y


def _device(backend: SparseBackend) -> str:
    device = "cpu" if "cpu" in backend.devices else backend.devices[0]
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"backend {backend.name} needs a CUDA device")
    return device


def _params():
    """(backend, dtype) for every backend and each input dtype it declares (dense: its first, float32)."""
    out = []
    for b in ALL_BACKENDS:
        marks = [pytest.mark.cuda] if "cpu" not in b.devices else []
        if "wgmma" in b.name:  # a fault ends the CUDA context: device_check runs these in their own process
            marks.append(pytest.mark.wgmma)
        for dtype in b.dtypes[:1] if b.name == "dense" else b.dtypes:
            out.append(pytest.param(b, dtype, id=f"{b.name}-{str(dtype).replace('torch.', '')}", marks=marks))
    return out


@pytest.mark.parametrize("backend,dtype", _params())
@pytest.mark.parametrize("geometry", GEOMS, ids=["3x3", "1x1", "3x3s2"])
@pytest.mark.parametrize("activation", ["identity", "silu"])
def test_every_backend_equals_the_masked_dense_conv(backend, dtype, geometry, activation):
    device = _device(backend)
    w = _weight_24(geometry, seed=geometry.in_channels + geometry.out_channels)
    b = torch.randn(geometry.out_channels) * 0.1
    why = backend.why_not(w, geometry, activation, device, dtype)
    if why:
        pytest.skip(f"{backend.name} does not take this conv here: {why}")
    mod = SparseConv2d.from_weight(w, b, geometry, activation, "2:4", backend, dtype).to(device)
    x = torch.randn(2, geometry.in_channels, 11, 9)
    y = mod(x.to(device, dtype).contiguous(memory_format=backend.memory_format))
    ref = _reference(x.to(dtype), w, b, geometry, activation)
    rel = float((y.double().cpu() - ref).norm() / ref.norm())
    assert y.shape == ref.shape and rel < {torch.float32: 1e-5, torch.float16: 5e-3}.get(dtype, 2e-2), rel
    assert mod.nnz == int((w != 0).sum()) and abs(mod.sparsity - 0.5) < 0.05
    torch.testing.assert_close(mod.dense_weight().cpu(), w.to(dtype).float(), rtol=0, atol=0)


class TestRegistry:
    def test_defaults_and_lookup(self):
        assert {"dense", "cpu_csr", "cuda_mma_sp"} <= set(backend_names())
        assert get_backend("cuda_mma_sp").kernel == "tile64"
        assert [b.name for b in available_backends("cpu", torch.float32)][:2] == ["dense", "cpu_csr"]
        assert "cpu_csr" not in [b.name for b in available_backends("cuda", torch.float16)]
        assert "cuda_mma_sp" not in [b.name for b in available_backends("cpu", torch.float32)]
        with pytest.raises(ValueError, match="unknown sparse backend 'nope'; registered: dense, cpu_csr"):
            get_backend("nope")

    def test_experimental_not_registered_by_default(self, monkeypatch):
        import os

        if os.environ.get("SPARSEYOLO_EXPERIMENTAL_GPU") == "1":
            pytest.skip("this process opted in to the experimental backends")
        assert not any(get_backend(n).experimental for n in backend_names())
        assert {b.name for b in experimental_backends()} >= {"cuda_mma_sp_tile128", "cuda_wgmma", "cuda_cusparselt"}

    def test_register_rules(self):
        class Other(DenseBackend):
            name = "dense"

        with pytest.raises(ValueError, match="already registered"):
            register_backend(Other())
        with pytest.raises(TypeError, match="SparseBackend instance"):
            register_backend(DenseBackend)  # the class, not an instance


class TestSparseConv2dState:
    def _module(self, backend="cpu_csr"):
        geometry = GEOMS[2]
        w = _weight_24(geometry, seed=3)
        return SparseConv2d.from_weight(w, torch.randn(40), geometry, "silu", "2:4", backend), w

    def test_buffers_saved_and_round_trip(self):
        mod, _ = self._module()
        buf = io.BytesIO()
        torch.save(mod.state_dict(), buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
        assert set(state) == {"values", "columns", "row_ptr", "bias"}
        back = SparseConv2d.from_state_dict(state)
        assert back.backend.name == "cpu_csr" and back.geometry == mod.geometry and back.activation == "silu"
        assert back.pattern == "2:4" and back.nnz == mod.nnz
        x = torch.randn(1, 32, 10, 10)
        assert torch.equal(back(x), mod(x))

    def test_load_into_a_module_of_another_backend(self):
        mod, w = self._module()
        other = SparseConv2d.from_weight(torch.zeros(8, 8, 1, 1), None, ConvGeometry(8, 8, (1, 1)), backend="dense")
        other.load_state_dict(mod.state_dict())
        assert other.backend.name == "cpu_csr" and other.stride == (2, 2) and other.activation == "silu"
        x = torch.randn(1, 32, 10, 10)
        assert torch.equal(other(x), mod(x))
        torch.testing.assert_close(other.dense_weight(), w, rtol=0, atol=0)

    def test_plain_dict_without_metadata_is_refused_clearly(self):
        mod, _ = self._module()
        with pytest.raises(ValueError, match="no SparseConv2d metadata"):
            SparseConv2d.from_state_dict(dict(mod.state_dict()))

    def test_to_moves_buffers_and_other_devices_raise(self):
        mod, _ = self._module()
        meta = mod.to("meta")
        assert all(t.device.type == "meta" for t in meta.buffers())
        with pytest.raises(RuntimeError, match="runs on cpu inputs, got a meta input.*re-sparsify"):
            meta(torch.randn(1, 32, 10, 10, device="meta"))

    def test_sparsified_model_round_trip(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.Conv2d(32, 8, 1))
        from sparseyolo.prune import prune

        model.eval()
        prune(model, "nm", n=2, m=4)
        fast = sparsify(model, backend="sparse")
        buf = io.BytesIO()
        torch.save(fast.state_dict(), buf)
        buf.seek(0)
        target = sparsify(model, backend="sparse")
        for m in target.modules():  # spoil the target: the load must restore everything
            if isinstance(m, SparseConv2d):
                m.bias.zero_()
        target.load_state_dict(torch.load(buf, weights_only=True))
        x = torch.randn(2, 16, 9, 9)
        with torch.no_grad():
            assert torch.equal(target(x), fast(x))


class TestSparsifyConfig:
    def _model(self):
        from sparseyolo.prune import prune

        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 8, 1)).eval()
        prune(model, "nm", n=2, m=4)
        return model

    def test_config_equals_keyword_shortcut(self):
        model = self._model()
        x = torch.randn(1, 16, 12, 12)
        a = sparsify(model, backend="sparse")
        b = sparsify(model, SparsifyConfig(backends=("cpu_csr",)))
        c = sparsify(model, "sparse")
        with torch.no_grad():
            assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))
        assert [d.backend_name for d in a.sparsify_report.layers] == ["cpu_csr", "cpu_csr"]

    @pytest.mark.parametrize("backend", ["cpu_block", "cpu_block_tiles", "auto"])
    def test_bf16_on_cpu(self, backend):
        """A bf16 model: every layer in bf16 (the sparse ones on the block-sparse kernel, channels-last)."""
        model = self._model()
        x = torch.randn(1, 16, 12, 12)
        out = sparsify(model, SparsifyConfig(dtype=torch.bfloat16, backends=(backend,), example_input=x.bfloat16()))
        names = {m.backend.name for m in out.modules() if isinstance(m, SparseConv2d)}
        assert names == {backend} if backend != "auto" else names <= {"dense", "cpu_block", "cpu_block_tiles"}
        ref = sparsify(model, backend="dense")
        with torch.no_grad():
            y, r = out(x.bfloat16()), ref(x)
        assert y.dtype == torch.bfloat16
        assert ((y.float() - r).norm() / r.norm()).item() < 2e-2

    def test_float16_on_cpu_has_no_backend(self):
        with pytest.raises(ValueError, match="no registered sparse backend runs torch.float16 on cpu"):
            sparsify(self._model(), SparsifyConfig(dtype=torch.float16))

    def test_backend_of_another_device_is_refused(self):
        with pytest.raises(ValueError, match="backend 'cuda_mma_sp' runs on cuda only"):
            sparsify(self._model(), backend="cuda_mma_sp")

    def test_resparsify_a_sparsified_model(self):
        model = self._model()
        x = torch.randn(1, 16, 12, 12)
        fast = sparsify(model, backend="sparse")
        dense = sparsify(fast, backend="dense")  # the SparseConv2d layers repacked as dense ones
        again = sparsify(dense, backend="sparse")
        assert all(m.backend.name == "dense" for m in dense.modules() if isinstance(m, SparseConv2d))
        assert all(m.backend.name == "cpu_csr" for m in again.modules() if isinstance(m, SparseConv2d))
        with torch.no_grad():
            torch.testing.assert_close(dense(x), fast(x), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(again(x), fast(x), rtol=1e-5, atol=1e-6)


class _Fake(SparseBackend):
    """A CPU backend whose output is the dense conv's (or zeros when ``wrong``); its time is the test's."""

    devices = ("cpu",)
    dtypes = (torch.float32,)

    def __init__(self, name: str, ms: float, wrong: bool = False, in_auto: bool = True) -> None:
        self.name, self.ms, self.wrong, self.in_auto = name, ms, wrong, in_auto

    def pack(self, weight, bias, geometry, activation, dtype=torch.float32):
        return {"w": weight.clone(), "bias": None if bias is None else bias.clone()}

    def forward(self, module, x):
        y = F.conv2d(x, module.w, module.bias, module.stride, module.padding)
        return torch.zeros_like(y) if self.wrong else y

    def unpack(self, module):
        return module.w


class TestAutotuner:
    @pytest.fixture
    def fakes(self, monkeypatch):
        made = []
        timed: list[str] = []

        def add(*args, **kwargs):
            made.append(register_backend(_Fake(*args, **kwargs)))
            return made[-1]

        def fake_ms(fn, device, reps=5):  # the backend's own time; which module ran is read off the call
            fn()
            timed.append(fake_ms.last)
            return {b.name: b.ms for b in made}.get(fake_ms.last, 1.0)

        real_forward = SparseConv2d.forward

        def spy(self, x):
            fake_ms.last = self.backend.name
            return real_forward(self, x)

        monkeypatch.setattr(SparseConv2d, "forward", spy)
        monkeypatch.setattr(timing, "device_median_ms", fake_ms)
        monkeypatch.setattr(autotune, "_CACHE", {})
        yield add, timed
        for b in made:
            unregister_backend(b.name)

    def test_fastest_correct_backend_then_cached(self, fakes):
        add, timed = fakes
        slow, fast, wrong = add("fake_slow", 0.8), add("fake_fast", 0.5), add("fake_wrong", 0.1, wrong=True)
        geometry = GEOMS[0]
        w = _weight_24(geometry, seed=1)
        dense = get_backend("dense")
        t = autotune.tune_layer(w, None, geometry, "identity", (1, 32, 10, 10), [dense, slow, fast, wrong])
        assert t.best == "fake_fast" and t.times["fake_wrong"] == float("inf") and "differs" in t.rejected["fake_wrong"]
        assert "fake_wrong" not in timed
        n = len(timed)
        # the same layer shape again (an identical layer): the cache, no timing
        assert autotune.tune_layer(w, None, geometry, "identity", (1, 32, 10, 10), [dense, slow, fast, wrong]) is t
        assert len(timed) == n
        # another input shape: timed afresh
        autotune.tune_layer(w, None, geometry, "identity", (1, 32, 7, 9), [dense, slow, fast, wrong])
        assert len(timed) > n

    def test_sparsify_auto_uses_the_registry_and_skips_auto_opt_outs(self, fakes):
        add, timed = fakes
        add("fake_ok", 0.5)
        add("fake_unsafe", 0.01, in_auto=False)
        conv = nn.Conv2d(32, 48, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(_weight_24(GEOMS[0], seed=2))
        conv.register_buffer("weight_mask", (conv.weight != 0).float())
        model = nn.Sequential(conv)
        x = torch.randn(1, 32, 10, 10)
        fast = sparsify(model, SparsifyConfig(example_input=x, reps=1))
        d = fast.sparsify_report.layers[0]
        built_in = {b.name for b in available_backends("cpu", torch.float32) if b.in_auto} - {"fake_ok"}
        assert set(d.times) == built_in | {"fake_ok"} and "fake_unsafe" not in timed
        assert {"dense", "cpu_csr", "cpu_block"} <= built_in
        named = sparsify(model, SparsifyConfig(backends=("fake_unsafe",)))  # named: used
        assert named.sparsify_report.layers[0].backend_name == "fake_unsafe"
        with torch.no_grad():
            torch.testing.assert_close(named(x), model(x), rtol=1e-5, atol=1e-5)

    def test_dense_when_no_sparse_backend_applies(self, fakes):
        conv = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        conv.register_buffer("weight_mask", torch.ones_like(conv.weight))
        fast = sparsify(nn.Sequential(conv), SparsifyConfig(example_input=torch.randn(1, 8, 6, 6), reps=1))
        d = fast.sparsify_report.layers[0]
        assert d.backend == "dense" and d.reason == "groups != 1" and not fakes[1]


class TestTiming:
    def test_interleaved_round_robin_best_of_rounds(self, monkeypatch):
        calls: list[str] = []
        samples = {"a": iter([3.0, 1.0]), "b": iter([2.0, 4.0])}

        def fake(fn, device, reps=5):
            return next(samples[fn()])

        monkeypatch.setattr(timing, "device_median_ms", fake)
        times = timing.interleaved_median_ms({"a": lambda: calls.append("a") or "a",
                                              "b": lambda: calls.append("b") or "b"}, "cpu", reps=1, rounds=2)
        assert calls == ["a", "b", "a", "b"] and times == {"a": 1.0, "b": 2.0}
        with pytest.raises(ValueError, match="rounds must be >= 1"):
            timing.interleaved_median_ms({}, rounds=0)

    def test_median_ms_counts_calls(self):
        n = []
        assert timing.median_ms(lambda: n.append(1), reps=3, warmup=2) >= 0 and len(n) == 5
        with pytest.raises(ValueError, match="reps must be >= 1"):
            timing.median_ms(lambda: None, reps=0)


def test_load_takes_the_saved_geometry_even_with_equal_buffer_shapes():
    geometry = ConvGeometry(32, 40, (3, 3), (2, 2), (1, 1))
    w = _weight_24(geometry, seed=5)
    saved = SparseConv2d.from_weight(w, None, geometry, "silu")
    target = SparseConv2d.from_weight(w, None, ConvGeometry(32, 40, (3, 3)), "identity")  # stride 1, no padding
    target.load_state_dict(saved.state_dict())
    assert target.stride == (2, 2) and target.padding == (1, 1) and target.activation == "silu"
    x = torch.randn(1, 32, 9, 9)
    assert torch.equal(target(x), saved(x))
