"""The settings: one field per flag, paper defaults, flagfiles that override only differences."""

import dataclasses
import os

import pytest
from absl import flags

from simsiam_keras import config
from tests.helpers import ROOT

CLASSES = (config.PretrainConfig, config.LinearConfig, config.KnnConfig)


def _flag_values(config_class):
    fv = flags.FlagValues()
    config.define_flags(config_class, flag_values=fv)
    return fv


def _parse(config_class, *argv):
    fv = _flag_values(config_class)
    fv(["prog", *argv])
    return config.from_flags(config_class, fv)


@pytest.mark.parametrize("config_class", CLASSES)
def test_one_flag_per_setting_with_its_default_and_help(config_class):
    fv = _flag_values(config_class)
    fields = dataclasses.fields(config_class)
    assert sorted(fv) == sorted(f.name for f in fields)
    for field in fields:
        assert fv[field.name].default == field.default and fv[field.name].help, field.name
    assert _parse(config_class) == config_class()  # no flag: the paper's settings


def test_bool_settings_take_the_no_prefix_and_choices_are_enforced():
    assert _parse(config.PretrainConfig, "--nostop_gradient").stop_gradient is False
    assert _parse(config.PretrainConfig, "--noblur").blur is False
    assert _parse(config.PretrainConfig).blur is None  # resolved by the image size
    with pytest.raises(flags.IllegalFlagValueError):
        _parse(config.PretrainConfig, "--backbone=vgg")


def _flagfile_names(path):
    names = []
    for line in open(path):
        line = line.strip()
        if line.startswith("--"):
            names.append(line[2:].split("=")[0])
    return names


def _config_class(name):
    if name.endswith("_linear.cfg"):
        return config.LinearConfig
    return config.KnnConfig if name.endswith("_knn.cfg") else config.PretrainConfig


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_flagfiles_override_only_what_differs_from_the_paper(name):
    path = os.path.join(ROOT, "configs", name)
    config_class = _config_class(name)
    parsed = _parse(config_class, f"--flagfile={path}")
    paper = config_class()
    for flag in _flagfile_names(path):
        field = flag[2:] if flag.startswith("no") and not hasattr(paper, flag) else flag
        assert getattr(parsed, field) != getattr(paper, field), (name, field)
    where = {"workdir": "w"} if config_class is config.PretrainConfig else {"pretrained": ROOT}
    config.validate(dataclasses.replace(parsed, **where))


def test_the_quickstart_evaluations_read_the_quickstart_run_with_its_k():
    def parsed(name):
        return _parse(_config_class(name), f"--flagfile={os.path.join(ROOT, 'configs', name)}")

    run, linear, knn = (parsed(f"quickstart{s}.cfg") for s in ("", "_linear", "_knn"))
    assert linear.pretrained == knn.pretrained == os.path.join("runs", "quickstart", "model.keras")
    assert linear.dataset == knn.dataset == run.dataset and knn.knn_k == run.knn_k


def test_help_shows_the_defaults_that_apply_whatever_the_command_line():
    # The defaults never depend on a flagfile being there: a flagfile only overrides.
    fv = _flag_values(config.PretrainConfig)
    fv(["prog", f"--flagfile={os.path.join(ROOT, 'configs', 'quickstart.cfg')}"])
    assert fv["dataset"].value == "digits" and fv["dataset"].default == "imagenet2012"
    assert fv["batch_size"].default == 512 and _parse(config.PretrainConfig).batch_size == 512


def test_the_paper_defaults():
    c = config.PretrainConfig()
    assert (c.backbone, c.image_size, c.batch_size, c.epochs, c.base_lr) == (
        "resnet50",
        224,
        512,
        100,
        0.05,
    )
    assert (c.weight_decay, c.dim, c.pred_dim, c.fix_pred_lr, c.stop_gradient) == (
        1e-4,
        2048,
        512,
        True,
        True,
    )
    lin = config.LinearConfig()
    assert (lin.batch_size, lin.epochs, lin.optimizer, lin.weight_decay, lin.protocol) == (
        4096,
        90,
        "lars",
        0.0,
        "official",
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "--batch_size must be a positive integer; got 0."),
        ({"batch_size": True}, "--batch_size must be a positive integer; got True."),
        ({"base_lr": 0.0}, "--base_lr must be positive; got 0.0."),
        ({"weight_decay": -1.0}, "--weight_decay must be >= 0; got -1.0."),
        ({"backbone": "vgg"}, "--backbone must be one of"),
        ({"train_dir": "/no/such/dir"}, "--train_dir: image folder not found: '/no/such/dir'"),
        ({"workdir": None}, "--workdir is required."),
        ({"val_dir": ROOT}, "--val_dir needs --train_dir (the kNN memory)."),
        ({"warmup_epochs": 5, "epochs": 5}, "--warmup_epochs (5) must be < --epochs (5)."),
    ],
)
def test_errors_name_the_setting(changes, message):
    bad = dataclasses.replace(config.PretrainConfig(workdir="w"), **changes)
    with pytest.raises(config.ConfigError) as caught:
        config.validate(bad)
    assert message in caught.value.render("--")
    assert message.replace("--", "") in str(caught.value)  # the library's words: no dashes


def test_evaluation_settings_are_checked():
    with pytest.raises(config.ConfigError, match="pretrained is required"):
        config.validate(config.KnnConfig())
    with pytest.raises(config.ConfigError, match="train_dir and val_dir go together"):
        config.validate(config.LinearConfig(pretrained=ROOT, train_dir=ROOT))
    with pytest.raises(config.ConfigError, match="temperature must be positive"):
        config.validate(config.KnnConfig(pretrained=ROOT, temperature=0.0))


def test_a_message_may_hold_braces():
    error = config.ConfigError("{} {'a': 1} and {}.", "x", "y")
    assert error.render("--") == "--x {'a': 1} and --y."


def test_the_backbone_choices_are_the_backbones():
    from simsiam_keras import backbones

    assert config.BACKBONES == tuple(sorted(backbones.BACKBONES))


def test_resumable_settings_are_where_and_what_is_reported():
    free = config.resumable(config.PretrainConfig)
    assert {"workdir", "epochs", "knn_every", "export"} <= set(free)
    assert not {"seed", "width", "batch_size", "base_lr", "train_dir"} & set(free)
