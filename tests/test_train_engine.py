"""Masked fine-tuning engine: steps on a tiny drawn dataset, masks after every step (model and EMA), checkpoints,
resume, the gradual schedule, partial N:M masks, the training dataset's label consistency."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from sparseyolo.checkpoint import load_checkpoint
from sparseyolo.prune import is_nm_mask
from sparseyolo.prune.methods import nm_magnitude_mask
from sparseyolo.train import PruneRecipe, TrainConfig, cubic_sparsity, load_training_model, train
from sparseyolo.train.augment import AugmentConfig
from sparseyolo.train.augmented_dataset import TrainDataset
from sparseyolo.train.ema import ModelEMA
from sparseyolo.train.engine import build_optimizer, lr_lambda
from sparseyolo.train.gradual import GradualPruner, _partial_nm_mask
from sparseyolo.utils.errors import ParameterError
from tests._train_helpers import make_dataset


def _violations(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if hasattr(m, "weight_mask") and (m.weight[~m.weight_mask] != 0).any()]


def _cfg(shared, data, tmp_path, **kw) -> TrainConfig:
    base = dict(
        weights=str(shared / "weights" / "yolov5n.pt"),
        data=str(data),
        imgsz=128,
        batch_size=2,
        nbs=2,
        warmup_epochs=0,
        workers=0,
        project=str(tmp_path / "runs"),
        noval=True,
    )
    base.update(kw)
    return TrainConfig(**base)


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_masked_steps_checkpoint_and_resume(shared, tmp_path):
    """Epoch 0 (2 steps) then a crash in epoch 1; resume finishes epoch 1. Masks hold after every step."""
    data = make_dataset(tmp_path / "data", n=4)
    cfg = _cfg(shared, data, tmp_path, epochs=2, prune=PruneRecipe(method="nm", n=2, m=4))
    seen: list[tuple[int, list[str], list[str], int]] = []

    def check(model, ema, step):
        seen.append((step, _violations(model), _violations(ema.ema), len(ema.ema.state_dict())))
        if step == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, step_callback=check)
    assert [s[0] for s in seen] == [1, 2, 3]
    assert all(not v_model and not v_ema for _, v_model, v_ema, _ in seen)

    last = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    ck = load_checkpoint(last)
    assert ck.epoch == 0 and ck.meta["ema_updates"] == 2
    assert {"optimizer", "model_state", "train_args", "history"} <= set(ck.meta)
    assert math.isfinite(ck.meta["history"][0]["box_loss"]) and ck.meta["history"][0]["box_loss"] > 0
    saved = load_training_model(last)
    masks = {n: m.weight_mask for n, m in saved.named_modules() if hasattr(m, "weight_mask")}
    assert masks and all(is_nm_mask(m, 2, 4) for m in masks.values())
    assert not _violations(saved)

    seen.clear()
    def check_resumed(model, ema, step):
        seen.append((step, _violations(model), _violations(ema.ema), 0))

    result = train(TrainConfig(resume=str(last), workers=0), step_callback=check_resumed)
    assert [s[0] for s in seen] == [3, 4]  # EMA updates continue from the checkpoint
    assert all(not a and not b for _, a, b, _ in seen)
    assert result.epochs_run == 1 and [h["epoch"] for h in result.history] == [0, 1]
    final = load_checkpoint(result.last)
    assert final.meta.get("finished") and "optimizer" not in final.meta  # stripped like Ultralytics
    assert result.best.exists() and result.final is not None  # best.pt validated at the end
    with pytest.raises(ValueError, match="nothing to resume"):
        train(TrainConfig(resume=str(result.last), workers=0))


@pytest.mark.slow
def test_gradual_unstructured_reaches_final_sparsity(shared, tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    recipe = PruneRecipe(method="global", amount=0.6, gradual=True, start=0, end=1)
    sparsity: list[float] = []

    def check(model, ema, step):
        assert not _violations(model) and not _violations(ema.ema)
        masks = [m.weight_mask for m in model.modules() if hasattr(m, "weight_mask")]
        sparsity.append(sum(int((~m).sum()) for m in masks) / max(1, sum(m.numel() for m in masks)))

    result = train(_cfg(shared, data, tmp_path, epochs=1, prune=recipe, max_batches=2), step_callback=check)
    # t0 = 0, t1 = 1 batch: s(0) = s_i = 0 (no mask yet), s(1) = s_f.
    assert sparsity[0] == 0.0 and sparsity[-1] == pytest.approx(0.6, abs=1e-3)
    assert result.history[-1]["sparsity"] == pytest.approx(0.6, abs=1e-3)


class TestSchedule:
    def test_cubic_values(self):
        assert cubic_sparsity(0, 0, 100, 0.0, 0.5) == 0.0
        assert cubic_sparsity(100, 0, 100, 0.0, 0.5) == 0.5
        assert cubic_sparsity(250, 0, 100, 0.0, 0.5) == 0.5
        assert cubic_sparsity(-5, 0, 100, 0.1, 0.5) == 0.1
        # Halfway: s_f + (s_i - s_f) / 8.
        assert cubic_sparsity(50, 0, 100, 0.1, 0.5) == pytest.approx(0.5 - 0.4 / 8)
        vals = [cubic_sparsity(t, 10, 90, 0.0, 0.75) for t in range(0, 101)]
        assert all(b >= a for a, b in zip(vals, vals[1:], strict=False))
        # Front-loaded: a quarter into the window is already past half the final sparsity (1 - 0.75^3 = 0.58).
        assert cubic_sparsity(30, 10, 90, 0.0, 0.75) == pytest.approx(0.75 * (1 - 0.75**3))

    def test_pruner_window_in_batches(self):
        model = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3))
        recipe = PruneRecipe(method="l1", amount=0.5, gradual=True, start=1, end=3)
        p = GradualPruner(model, recipe, batches_per_epoch=10)
        assert (p.t0, p.t1, p.freq) == (10, 29, 2)
        assert p.target(10) == 0.0 and p.target(29) == 0.5
        assert not p.maybe_update(9)
        assert p.maybe_update(10) and not p.maybe_update(11) and p.maybe_update(12)
        assert p.maybe_update(29) and p.done and p.sparsity == 0.5
        w = model[0].weight
        assert (w[~model[0].weight_mask] == 0).all() and (~model[0].weight_mask).float().mean() == 0.5

    def test_lr_lambda(self):
        lin, cos = lr_lambda(10, 0.01, False), lr_lambda(10, 0.01, True)
        assert lin(0) == cos(0) == 1.0
        assert lin(10) == pytest.approx(0.01) and cos(10) == pytest.approx(0.01)
        assert lin(5) == pytest.approx(0.505) and cos(5) == pytest.approx(0.505)


class TestPartialNM:
    def test_fraction_of_groups_then_all(self):
        torch.manual_seed(0)
        w = torch.randn(6, 8, 3, 3)
        full = torch.zeros_like(w, dtype=torch.bool)
        g = w.abs().movedim(1, -1).reshape(-1, 4)
        full_g = torch.zeros_like(g, dtype=torch.bool).scatter_(1, g.topk(2, 1).indices, True)
        full = full_g.view(6, 3, 3, 8).movedim(-1, 1)
        half = _partial_nm_mask(w, full, None, 4, 0.5)
        groups = half.movedim(1, -1).reshape(-1, 4).sum(-1)
        assert set(groups.tolist()) <= {2, 4} and (groups == 2).sum() == groups.numel() // 2
        # The N:M groups chosen are those whose pruning removes the least magnitude.
        removed = (g * ~full_g).sum(-1)
        chosen = groups == 2
        assert removed[chosen].max() <= removed[~chosen].min()
        more = _partial_nm_mask(w * half, full, half, 4, 0.75)
        assert not (more & ~half).any()  # masks only grow
        assert torch.equal(_partial_nm_mask(w, full, None, 4, 1.0), full) and is_nm_mask(full, 2, 4)

    def test_block_groups_move_together(self):
        """With block 8 the unit is a block-group: 20 output channels make blocks of 8, 8 and 4."""
        torch.manual_seed(1)
        w = torch.randn(20, 8, 3, 3)
        full = nm_magnitude_mask(w, 2, 4, block=8)
        half = _partial_nm_mask(w, full, None, 4, 0.5, block=8)
        kept = half.movedim(1, -1).reshape(20, 3, 3, 2, 4).sum(-1)  # [Cout, kh, kw, groups]
        blocks = [kept[0:8], kept[8:16], kept[16:20]]
        for b in blocks:
            assert (b == b[0]).all()  # every row of a block-group holds the pattern, or none does
        groups = torch.stack([b[0] for b in blocks])  # [3 blocks, kh, kw, groups]: 2 (pattern) or 4 (dense)
        assert set(groups.unique().tolist()) <= {2, 4} and int((groups == 2).sum()) == math.ceil(0.5 * groups.numel())
        # The chosen block-groups remove the least magnitude summed over their rows.
        removed = (w.abs() * ~full).movedim(1, -1).reshape(20, 3, 3, 2, 4).sum(-1)
        removed = torch.stack([removed[0:8].sum(0), removed[8:16].sum(0), removed[16:20].sum(0)])
        assert removed[groups == 2].max() <= removed[groups == 4].min()
        more = _partial_nm_mask(w * half, full, half, 4, 0.75, block=8)
        assert not (more & ~half).any()


class TestGradualBlocks:
    """Gradual pruning of patterns shared by blocks of output channels (the CPU kernel's patterns)."""

    @staticmethod
    def _model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(16, 40, 3), torch.nn.Conv2d(40, 32, 1), torch.nn.Conv2d(3, 8, 1))

    @pytest.mark.parametrize("block", [1, 16])
    def test_nm_block_schedule_ends_in_shared_patterns(self, block):
        model = self._model()
        p = GradualPruner(model, PruneRecipe(method="nm", block=block, gradual=True, start=0, end=2),
                          batches_per_epoch=4)
        previous = {}
        for t in range(8):
            if p.maybe_update(t):
                for i in (0, 1):
                    mask = model[i].weight_mask
                    assert not (mask & ~previous.get(i, torch.ones_like(mask))).any()  # masks only grow
                    previous[i] = mask.clone()
        assert p.done and not hasattr(model[2], "weight_mask")  # 3 input channels: not a multiple of 4
        for conv in model[:2]:
            mask = conv.weight_mask
            assert is_nm_mask(mask, 2, 4) and (conv.weight[~mask] == 0).all()
            for start in range(0, mask.shape[0], block):  # one pattern per block of output channels
                assert (mask[start:start + block] == mask[start]).all()

    def test_tile_block_32(self):
        from sparseyolo.prune.tiles import is_tile_mask

        model = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3))
        p = GradualPruner(model, PruneRecipe(method="tile", amount=0.75, block=32, gradual=True, start=0, end=1),
                          batches_per_epoch=4)
        for t in range(4):
            p.maybe_update(t)
        mask = model[0].weight_mask
        assert p.done and is_tile_mask(mask, rows=32) and (~mask).float().mean() == 0.75


def test_block_pattern_needs_an_unpruned_start(shared, tmp_path):
    from sparseyolo.checkpoint import save_checkpoint
    from sparseyolo.prune import prune

    model = load_training_model(shared / "weights" / "yolov5n.pt")
    prune(model, "nm")
    save_checkpoint(model, tmp_path / "p.pt")
    data = make_dataset(tmp_path / "data", n=2)
    cfg = _cfg(shared, data, tmp_path, weights=str(tmp_path / "p.pt"), epochs=1,
               prune=PruneRecipe(method="nm", block=32, gradual=True, start=0, end=1), teacher="none")
    with pytest.raises(ParameterError, match="already has pruning masks.*start from the dense checkpoint"):
        train(cfg)


def test_optimizer_groups_and_ema_keep_masks():
    from sparseyolo.models import DetectionModel
    from sparseyolo.prune import prune

    model = DetectionModel("yolov5n.yaml")
    opt = build_optimizer(model, 0.01, 0.937, 5e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert all(p.dim() == 1 for p in opt.param_groups[0]["params"] + opt.param_groups[2]["params"])
    assert all(p.dim() == 4 for p in opt.param_groups[1]["params"])
    ema = ModelEMA(model, tau=1.0)
    assert ema.current_decay() == pytest.approx(0.9999 * (1 - math.exp(-1)))
    prune(model, "l1", amount=0.5)  # masks appear after the EMA was made (gradual pruning)
    ema.update(model)
    assert hasattr(ema.ema.model[0].conv, "weight_mask") and not _violations(ema.ema)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_keeps_the_groups_and_the_masks(name):
    from sparseyolo import cli
    from sparseyolo.models import DetectionModel
    from sparseyolo.prune import prune
    from sparseyolo.train.config import OPTIMIZERS
    from sparseyolo.prune.masks import enforce_masks

    assert tuple(cli._OPTIMIZERS) == OPTIMIZERS
    model = DetectionModel("yolov5n.yaml")
    prune(model, "nm", n=2, m=4)
    opt = build_optimizer(model, 0.01, 0.9, 5e-4, name)
    assert isinstance(opt, getattr(torch.optim, name)) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    enforcer = enforce_masks(model, opt)
    before = model.model[2].cv1.conv.weight.detach().clone()
    model(torch.rand(1, 3, 64, 64))[0].sum().backward()
    opt.step()
    enforcer.remove()
    assert not _violations(model) and not torch.equal(before, model.model[2].cv1.conv.weight)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(model, 0.01, 0.9, 5e-4, "RMSprop")
    with pytest.raises(ParameterError, match="optimizer"):
        TrainConfig(optimizer="sgd").check()


def test_train_dataset_labels_follow_pixels(tmp_path):
    """With colour jitter off, every augmented label box must cover a drawn rectangle (not the grey border)."""
    make_dataset(tmp_path / "d", n=6, seed=3)
    (tmp_path / "d" / "images" / "train" / "broken.jpg").write_bytes(b"not an image")
    aug = AugmentConfig(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, mosaic=1.0)
    ds = TrainDataset(str(tmp_path / "d" / "images" / "train"), img_size=128, aug=aug)
    assert ds.n_corrupt == 1 and len(ds) == 6
    import random

    random.seed(0)
    checked = 0
    for k in range(12):
        if k == 6:
            ds.aug.mosaic = 0.0  # letterbox + affine path
        img, labels, _, _ = ds[k % 6]
        assert img.shape == (3, 128, 128) and img.dtype == torch.uint8
        assert labels.shape[1] == 6 and (labels[:, 2:] >= 0).all() and (labels[:, 2:] <= 1).all()
        im = img.permute(1, 2, 0).numpy()
        for _, _, cx, cy, w, h in labels.tolist():
            x1, x2 = int(round((cx - w / 2) * 128)), int(round((cx + w / 2) * 128))
            y1, y2 = int(round((cy - h / 2) * 128)), int(round((cy + h / 2) * 128))
            inner = im[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].reshape(-1, 3).astype(int)
            if inner.size == 0:
                continue
            coloured = (inner.max(1) - inner.min(1)) > 60  # drawn rectangles are saturated, backgrounds grey
            assert coloured.mean() > 0.6, (k, coloured.mean())
            checked += 1
    assert checked > 10


def test_dataset_without_augmentation_is_letterbox(tmp_path):
    make_dataset(tmp_path / "d", n=2)
    ds = TrainDataset(str(tmp_path / "d" / "images" / "train"), img_size=128, augment=False)
    img, labels, f, shapes = ds[0]
    im0 = cv2.imread(f)
    assert shapes[0] == im0.shape[:2] and img.shape == (3, 128, 128)
    lb = np.loadtxt(f.replace("images", "labels").rsplit(".", 1)[0] + ".txt", ndmin=2)
    (h0, w0), ((rh, rw), (pw, ph)) = shapes
    # cx in the letterboxed image = (cx0 * w0 * ratio + pad) / 128
    expected = torch.tensor((lb[:, 1] * w0 * rw + pw) / 128, dtype=torch.float32)
    torch.testing.assert_close(labels[:, 2], expected, atol=1e-4, rtol=0)
