"""PruneConfig: the one pruning configuration of the CLI, fine-tuning, val --prune and the checkpoint."""

from __future__ import annotations

import pytest
import torch

from sparseyolo import cli
from sparseyolo.checkpoint import load_checkpoint, save_checkpoint
from sparseyolo.models import DetectionModel
from sparseyolo.prune import PruneConfig
from sparseyolo.train import PruneRecipe, TrainConfig
from sparseyolo.utils.errors import ParameterError

#: What `sparseyolo prune` recorded in meta["pruning"] before PruneConfig (a calibrated N:M run).
OLD_CLI_RECIPE = {"method": "nm", "n": 2, "m": 4, "block": 1, "calibrate": "coco8.yaml", "calib_images": 2,
                  "calib_img": 160, "blocksize": 128, "damp": 0.01, "bn_recalib": "none", "calib_target": "dense",
                  "refit": False, "calib_steps": 1, "include": None, "exclude": ["model.24*"], "fused": False,
                  "source": "yolov5n.pt"}
#: What training recorded (train_args["prune"] and meta["pruning"]): the former PruneRecipe's fields.
OLD_TRAIN_RECIPE = {"method": "l1", "amount": 0.5, "n": 2, "m": 4, "gradual": True, "start": 0, "end": 2,
                    "initial": 0.0, "freq": 0, "include": None, "exclude": None}


def test_training_recipe_is_the_config():
    assert PruneRecipe is PruneConfig


def test_round_trip():
    cfg = PruneConfig(method="l1", amount=0.3, include=["model.2*"], fused=True, source="a.pt").validate()
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("old", [OLD_CLI_RECIPE, OLD_TRAIN_RECIPE])
def test_old_checkpoint_dicts_load(tmp_path, old):
    model = DetectionModel("yolov5n.yaml", nc=3)
    path = save_checkpoint(model, tmp_path / "old.pt", pruning=old, train_args={"epochs": 3, "prune": old})
    ck = load_checkpoint(path)
    cfg = PruneConfig.from_dict(ck.meta["pruning"]).validate(epochs=3 if "gradual" in old else None)
    assert all(getattr(cfg, k) == v for k, v in old.items())
    train_cfg = TrainConfig.from_dict(ck.meta["train_args"])
    assert train_cfg.prune == PruneConfig.from_dict(old)


def test_unknown_keys_are_dropped_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        cfg = PruneConfig.from_dict({"method": "nm", "n": 1, "m": 4, "from_the_future": 1})
    assert cfg.n == 1 and "from_the_future" in caplog.text


@pytest.mark.parametrize(
    "fields,epochs,match",
    [
        ({"method": "magnitude"}, None, "method must be one of l1, global, nm, tile"),
        ({"method": "nm", "amount": 0.5}, None, "method nm takes n:m, not amount"),
        ({"method": "nm", "n": 4, "m": 2}, None, "1 <= n < m <= 16"),
        ({"method": "l1"}, None, r"method l1 needs amount, a fraction in \[0, 1\)"),
        ({"method": "l1", "amount": 0.0}, 3, r"amount must be in \(0, 1\)"),
        ({"method": "global", "amount": 1.0}, None, r"amount must be in \[0, 1\)"),
        ({"method": "l1", "amount": 0.3, "block": 4}, None, "block is for methods nm and tile"),
        ({"method": "tile", "amount": 0.3, "block": 8}, None, "16 or 32"),
        ({"method": "tile", "target_speedup": 1.2, "calibrate": "d.yaml", "block": 32}, None, "drop block"),
        ({"method": "global", "amount": 0.3, "calibrate": "d.yaml"}, None, "calibrate works with method l1"),
        ({"method": "nm", "calibrate": "d.yaml", "calib_steps": 0}, None, "calib_steps must be at least 1"),
        ({"method": "nm", "gradual": True, "start": 2, "end": 2}, 3, "0 <= start < end <= epochs"),
        ({"method": "nm", "gradual": True}, None, "during training"),
    ],
)
def test_validate_names_the_field(fields, epochs, match):
    with pytest.raises(ParameterError, match=match):
        PruneConfig(**fields).validate(epochs)


def test_steps_default_by_pattern():
    assert PruneConfig(method="nm").steps == 1 and PruneConfig(method="l1", amount=0.5).steps == 3
    recorded = PruneConfig(method="nm", calibrate="d.yaml").to_dict()
    assert recorded["calib_steps"] == 1


def test_from_spec():
    assert PruneConfig.from_spec("2:4") == PruneConfig(method="nm", n=2, m=4)
    assert PruneConfig.from_spec(0.3) == PruneConfig(method="l1", amount=0.3)
    with pytest.raises(ParameterError, match=r"prune must be in \[0, 1\)") as e:
        PruneConfig.from_spec("1.5", "global")
    assert "prune" in e.value.params


def test_errors_speak_flags_on_the_command_line():
    err = ParameterError("method nm takes n:m, not amount", "method", "n:m", "amount")
    parser = cli.build_parser()
    assert err.rename(cli._flag_names(parser, "prune")) == "--method nm takes --nm N:M, not --amount"
    assert err.rename(cli._flag_names(parser, "finetune")) == "--prune-method nm takes --nm N:M, not --amount"
    assert str(err) == "method nm takes n:m, not amount"  # the API caller's words


def test_from_cli_args_finetune():
    parser = cli.build_parser()
    args = parser.parse_args(["finetune", "--weights", "w.pt", "--data", "d.yaml", "--epochs", "4",
                              "--prune-method", "l1", "--amount", "0.5", "--gradual", "--prune-start", "1"])
    cfg = PruneConfig.from_cli_args(args, epochs=args.epochs)
    assert (cfg.method, cfg.amount, cfg.gradual, cfg.start, cfg.end) == ("l1", 0.5, True, 1, 2)
    none = parser.parse_args(["finetune", "--weights", "w.pt", "--data", "d.yaml"])
    assert PruneConfig.from_cli_args(none, epochs=none.epochs) is None
    blocks = parser.parse_args(["finetune", "--weights", "w.pt", "--data", "d.yaml", "--epochs", "4",
                                "--prune-method", "nm", "--block", "32", "--gradual"])
    cfg = PruneConfig.from_cli_args(blocks, epochs=blocks.epochs)
    assert (cfg.method, cfg.n, cfg.m, cfg.block, cfg.prune_kwargs()["block"]) == ("nm", 2, 4, 32, 32)
    lone = parser.parse_args(["finetune", "--weights", "w.pt", "--data", "d.yaml", "--block", "32"])
    with pytest.raises(ParameterError, match="block needs method"):
        PruneConfig.from_cli_args(lone, epochs=lone.epochs)


def test_from_cli_args_prune():
    args = cli.build_parser().parse_args(["prune", "--weights", "w.pt", "--out", "o.pt", "--nm", "1:4",
                                          "--exclude", "model.0*"])
    cfg = PruneConfig.from_cli_args(args)
    assert (cfg.method, cfg.n, cfg.m, cfg.exclude, cfg.source) == ("nm", 1, 4, ["model.0*"], "w.pt")
    assert cfg.calibrate is None


def test_val_error_is_in_api_terms(tmp_path):
    from sparseyolo import val

    with pytest.raises(ParameterError, match=r"^conf_thres 1.5 and iou_thres 0.6 must be in \[0, 1\]$"):
        val.run(weights="", data={}, conf_thres=1.5, model=torch.nn.Identity())


def test_cli_reports_a_val_error_with_its_flags(capsys):
    assert cli.main(["val", "--weights", "w.pt", "--data", "d.yaml", "--conf-thres", "1.5"]) == 2
    assert "--conf-thres 1.5 and --iou-thres 0.6 must be in [0, 1]" in capsys.readouterr().err


def test_finetune_cli_error_uses_its_flags(capsys):
    argv = ["finetune", "--weights", "w.pt", "--data", "d.yaml", "--epochs", "2", "--prune-method", "nm",
            "--gradual", "--prune-start", "3"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--prune-start 3 / --prune-end 1 must satisfy" in err, err



def test_finetune_cli_passes_the_recovery_options(monkeypatch, capsys):
    import sparseyolo.train as train_pkg

    seen = []
    monkeypatch.setattr(train_pkg, "train", lambda cfg: seen.append(cfg) or cfg.check())
    argv = ["finetune", "--weights", "w.pt", "--data", "d.yaml", "--feature-distill", "0.5", "--freeze-bn",
            "--optimizer", "AdamW"]
    assert cli.main(argv) == 0
    assert (seen[0].feature_distill, seen[0].freeze_bn, seen[0].optimizer) == (0.5, True, "AdamW")
    assert cli.main(["finetune", "--weights", "w.pt", "--data", "d.yaml"]) == 0
    assert (seen[1].feature_distill, seen[1].freeze_bn, seen[1].optimizer) == (0.0, False, "SGD")
    assert cli.main(argv[:5] + ["--feature-distill", "-1"]) == 2
    assert "--feature-distill must be >= 0" in capsys.readouterr().err
