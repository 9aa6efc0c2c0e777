"""TrainConfig: defaults from spec §6.3-6.4, validation messages, generated CLI flags."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from unsam.cli.args import add_config_arguments, config_from_args
from unsam.training.whole_image.config import LR_STEP_FRACTIONS, TrainConfig


def test_defaults_are_the_papers() -> None:
    c = TrainConfig()
    assert c.config == "r50"
    assert (c.lr, c.batch_size) == (5e-5, 16)  # checkpoint names lr5e-5 / bs16 (spec §6.4)
    assert c.backbone_lr_mult == 0.1
    assert (c.weight_decay, c.weight_decay_norm, c.weight_decay_embed) == (0.05, 0.0, 0.0)
    assert c.grad_clip == 0.01
    assert c.max_steps == 200_000
    assert c.lr_milestones() == (177_776, 192_592)
    assert c.lr_gamma == 0.1
    assert (c.warmup_steps, c.warmup_factor) == (10, 1.0)
    assert c.resolved_crop_size == 1024
    assert TrainConfig(config="tiny").resolved_crop_size < 1024
    assert c.max_masks_per_image == 500
    assert c.hflip and not c.scale_jitter and c.dtype == "float32"
    assert c.device == "cpu"
    assert LR_STEP_FRACTIONS == (0.88888, 0.96296)


def test_milestones_scale_with_max_steps() -> None:
    assert TrainConfig(max_steps=1000).lr_milestones() == (889, 963)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_steps": 0}, "max_steps=0 must be > 0"),
        ({"lr": -1.0}, "lr=-1.0 must be > 0"),
        ({"crop_size": 100}, "multiple of 32"),
        ({"grad_clip": -0.1}, "grad_clip=-0.1 must be >= 0"),
        ({"lr_steps": (0.9, 0.5)}, "ascending fractions"),
        ({"min_scale": 2.0, "max_scale": 1.0}, "need 0 < min <= max"),
        ({"warmup_factor": 0.0}, "warmup_factor"),
    ],
)
def test_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_every_field_is_a_flag_with_help() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)  # raises when a field has no help text
    args = parser.parse_args(
        ["--config", "tiny", "--max-steps", "7", "--no-hflip", "--lr-steps", "0.5,0.75"]
    )
    c = config_from_args(TrainConfig, args)
    assert (c.config, c.max_steps, c.hflip, c.lr_steps) == ("tiny", 7, False, (0.5, 0.75))
    assert c.batch_size == TrainConfig().batch_size  # unset flags keep the dataclass default
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name


def test_each_model_config_carries_its_own_training_defaults() -> None:
    """Issue 11.5: tiny no longer trains at r50's batch 16 / 1024 crop; what the user sets wins."""
    from unsam.training.whole_image.config import TrainConfig

    r50, tiny = TrainConfig.for_model("r50"), TrainConfig.for_model("tiny")
    assert (r50.batch_size, r50.resolved_crop_size, r50.lr, r50.max_steps) == (
        16,
        1024,
        5e-5,
        200_000,
    )
    assert (tiny.batch_size, tiny.resolved_crop_size, tiny.max_masks_per_image, tiny.max_steps) == (
        2,
        192,
        50,
        300,
    )
    assert tiny.scale_jitter and tiny.min_scale == tiny.max_scale == 1.0
    assert TrainConfig.for_model("tiny", batch_size=4, scale_jitter=False).batch_size == 4
    with pytest.raises(ValueError, match="expected one of"):
        TrainConfig.for_model("r101")


def test_the_model_remembers_the_scale_it_was_trained_at() -> None:
    from unsam.training.whole_image.config import TrainConfig
    from unsam.training.whole_image.trainer import training_test_size

    sizes = [(480, 640), (300, 500), (640, 427), (1000, 1500)]
    # without jitter: the images' own size (median shorter side, largest longer side)
    assert training_test_size(TrainConfig(config="tiny"), sizes) == (480, 1500)
    # with jitter: fit into crop * mean scale
    assert training_test_size(TrainConfig.for_model("tiny"), sizes) == (192, 192)
    jitter = TrainConfig(config="r50", scale_jitter=True, min_scale=0.1, max_scale=2.0)
    assert training_test_size(jitter, sizes) == (1075, 1075)


@pytest.mark.parametrize(
    ("command", "flag", "expected"),
    [
        ("train", "--max-steps", "r50: 200000, tiny: 300"),
        ("train", "--batch-size", "r50: 16, tiny: 2"),
        ("train", "--lr", "r50: 5e-05, tiny: 0.001"),
        ("train-promptable", "--batch-size", "swin_t: 4, tiny: 1"),
        ("train-promptable", "--lr", "swin_t: 0.0001, tiny: 0.001"),
        ("train-promptable", "--num-points", "swin_t: 12544, tiny: 256"),
    ],
)
def test_help_shows_each_model_configs_default(command: str, flag: str, expected: str) -> None:
    """Issue 16: ``train --help`` showed r50's 200k steps and batch 16 even for ``--config tiny``;
    the help of every field a model config changes lists each config's default."""
    from unsam.cli.main import _available, build_parser

    parser = build_parser(_available(), command)
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)  # noqa: SLF001
    action = sub.choices[command]._option_string_actions[flag]  # noqa: SLF001
    assert f"(default: {expected})" in action.help


def test_help_defaults_are_the_configs_real_defaults() -> None:
    """Every per-config default in the help is what ``for_model`` builds."""
    from unsam.training.promptable.config import CONFIG_DEFAULTS as PROMPT_DEFAULTS
    from unsam.training.promptable.config import PromptableTrainConfig
    from unsam.training.whole_image.config import CONFIG_DEFAULTS

    for cls, table in ((TrainConfig, CONFIG_DEFAULTS), (PromptableTrainConfig, PROMPT_DEFAULTS)):
        for name, values in table.items():
            built = cls.for_model(name)
            for key, value in values.items():
                assert getattr(built, key) == value, (cls.__name__, name, key)
