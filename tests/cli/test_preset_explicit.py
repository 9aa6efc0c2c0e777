"""A preset sets defaults only: a flag given on the command line always wins (issue 16 §4).

Regression: ``--preset released --refine-cascadepsp-channel-order rgb`` ran with ``bgr``, because
the preset replaced every setting still equal to the spec default, given or not. For every setting
that a preset sets (``released``, and the ``classic`` features preset), the flag is given with a
value other than the preset's (the spec default where it differs) and must reach the run's
settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

import pytest

from unsam.cli.pseudo_label import add_arguments, pipeline_config_from_args
from unsam.pipeline import (
    CLASSIC_PRESET,
    RELEASED_PRESET,
    DicoProducer,
    PipelineConfig,
    config_with_overrides,
    resolve_preset,
)


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, value in values.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{name}.")
        else:
            out.append((prefix + name, value))
    return out


def _field(path: str) -> tuple[type, Any, Any]:
    """(type, spec default) of a dotted PipelineConfig field."""
    cls: Any = PipelineConfig
    *parents, name = path.split(".")
    for parent in parents:
        cls = typing.get_type_hints(cls)[parent]
    tp = typing.get_type_hints(cls)[name]
    return tp, getattr(cls(), name)


def _other(path: str, preset_value: Any) -> Any:
    """A valid value for the field other than the preset's: the spec default where it differs."""
    tp, default = _field(path)
    if default != preset_value:
        return default
    args = [a for a in get_args(tp) if a is not type(None)]
    if tp is bool:
        return not preset_value
    if get_origin(tp) is Literal:
        return next(c for c in args if c != preset_value)
    if get_origin(tp) is tuple:
        return (0.55, 0.25)
    if preset_value is None:
        return 7
    base = args[0] if args else tp
    if base is float:
        return preset_value / 2  # thresholds and fractions stay in range
    return base(preset_value * 2 if preset_value else 3)


def _argv(path: str, value: Any) -> list[str]:
    flag = "--" + path.replace(".", "-").replace("_", "-")
    if path == "divide":
        return ["--divide", str(value)]
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, tuple):
        return [flag, ",".join(str(v) for v in value)]
    return [flag, "none" if value is None else str(value)]


def _get(config: PipelineConfig, path: str) -> Any:
    obj: Any = config
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


CASES = [("released", p, v) for p, v in _flat(RELEASED_PRESET)] + [
    ("classic", p, v) for p, v in _flat(CLASSIC_PRESET)
]


@pytest.mark.parametrize("preset, path, preset_value", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_an_explicit_flag_beats_the_preset(preset: str, path: str, preset_value: Any) -> None:
    value = _other(path, preset_value)
    base = ["--features", "classic"] if preset == "classic" and path != "features" else []
    preset_args = ["--preset", "released"] if preset == "released" else []
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["imgs", "-o", "o.json", *base, *preset_args, *_argv(path, value)])
    config = pipeline_config_from_args(args)
    resolved = resolve_preset(config)
    assert _get(resolved, path) == value, f"{path}: the preset replaced the flag's {value!r}"
    # the run records what it runs with
    settings: Any = DicoProducer(config).settings()
    for name in path.split("."):
        settings = settings[name]
    expected = list(value) if isinstance(value, tuple) else value
    assert settings == expected
    # the settings no flag gave still follow the preset
    others = [
        (p, v) for p, v in (_flat(RELEASED_PRESET if preset == "released" else CLASSIC_PRESET))
    ]
    for other_path, other_value in others:
        if other_path != path and not (preset == "classic" and other_path == "features"):
            assert _get(resolved, other_path) == other_value, other_path


def test_the_issue_case_and_the_python_api() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["imgs", "-o", "o.json", "--preset", "released", "--refine-cascadepsp-channel-order", "rgb"]
    )
    assert resolve_preset(pipeline_config_from_args(args)).refine.cascadepsp_channel_order == "rgb"
    # keyword overrides (DivideAndConquer's) count as given
    config = config_with_overrides(
        PipelineConfig(), preset="released", channel_order="rgb", refine="cascadepsp:/w/model"
    )
    resolved = resolve_preset(config)
    assert resolved.channel_order == "rgb" and resolved.conquer.units == "patches"
    assert resolved.refine.cascadepsp_weights == "/w/model"
    assert resolved.refine.cascadepsp_channel_order == "bgr"  # not given: the preset's
    named = PipelineConfig(preset="released", explicit=("conquer.mask_resize",))
    assert resolve_preset(named).conquer.mask_resize == "half_max"
    assert resolve_preset(PipelineConfig(preset="released")).conquer.mask_resize == "unsam"
    assert dataclasses.replace(named, explicit=()) == PipelineConfig(preset="released")
