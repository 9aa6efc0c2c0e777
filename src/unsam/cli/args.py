"""Generate argparse flags from config dataclasses, so defaults and help live in one place."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

__all__ = ["add_config_arguments", "config_from_args", "given_fields"]


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_cls: type,
    *,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    recurse: bool = False,
    config_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add one flag per field of ``config_cls`` (a dataclass built with :func:`unsam.config.param`),
    except the fields named in ``skip`` (set some other way, e.g. by a positional argument).
    With ``recurse``, a nested config field ``crf`` of prefix ``refine_`` gets its own flags
    ``--refine-crf-*`` (:func:`config_from_args` builds it back from them).

    Flags default to None (argparse.SUPPRESS), so only what the user sets overrides the config's
    own defaults; each flag's action keeps that default as ``action.config_default`` (what the
    help shows). ``config_defaults`` (model config name -> field -> value, e.g. a trainer's
    ``CONFIG_DEFAULTS``) makes the help of every field it names list each model config's default,
    e.g. "(default: r50: 200000, tiny: 300)". Types: bool → ``--flag/--no-flag``; Literal →
    choices; tuple[float, ...] → comma-separated list; ``X | None`` → X (write "none" to pass
    None).
    """
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if not f.init or f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            if recurse:
                add_config_arguments(
                    parser, hints[f.name], prefix=f"{prefix}{f.name}_", recurse=True
                )
            continue  # without recurse: nested stage configs get their own group (see the callers)
        help_text = f.metadata.get("help")
        if not help_text:
            raise TypeError(
                f"{config_cls.__name__}.{f.name} has no help text; declare it with "
                "unsam.config.param"
            )
        tp, optional = _strip_optional(hints[f.name])
        default = f.default
        shown = default
        if config_defaults and any(f.name in table for table in config_defaults.values()):
            shown = ", ".join(
                f"{name}: {table.get(f.name, f.default)}" for name, table in config_defaults.items()
            )
        help_full = f"{help_text} (default: {shown})"
        kwargs: dict[str, Any] = {
            "dest": _dest(prefix, f.name),
            "default": argparse.SUPPRESS,
            "help": help_full,
        }
        if tp is bool:
            action = parser.add_argument(
                _flag(prefix, f.name), action=argparse.BooleanOptionalAction, **kwargs
            )
            action.config_default = default  # type: ignore[attr-defined]
            continue
        if get_origin(tp) is Literal:
            action = parser.add_argument(
                _flag(prefix, f.name), choices=[str(c) for c in get_args(tp)], **kwargs
            )
            action.config_default = default  # type: ignore[attr-defined]
            continue
        if get_origin(tp) is tuple:
            elem = get_args(tp)[0]

            def parse_tuple(text: str, elem: Any = elem) -> tuple[Any, ...]:
                return tuple(elem(v) for v in text.split(",") if v.strip())

            action = parser.add_argument(
                _flag(prefix, f.name), type=parse_tuple, metavar="V1,V2,...", **kwargs
            )
            action.config_default = default  # type: ignore[attr-defined]
            continue
        base = tp if tp in (int, float, str) else str

        def parse(text: str, base: Any = base, optional: bool = optional) -> Any:
            if optional and text.lower() == "none":
                return None
            return base(text)

        action = parser.add_argument(
            _flag(prefix, f.name), type=parse, metavar=base.__name__.upper(), **kwargs
        )
        action.config_default = default  # type: ignore[attr-defined]


def config_from_args(
    config_cls: type, args: argparse.Namespace, *, prefix: str = "", **overrides: Any
) -> Any:
    """Build ``config_cls`` from the flags the user set (plus ``overrides``); others keep defaults.

    Raises:
        ValueError: from the config's own validation, with its message.
    """
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        dest = _dest(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):  # nested config: from its own prefixed flags
            nested_prefix = f"{prefix}{f.name}_"
            if any(k.startswith(nested_prefix) for k in vars(args)):
                values[f.name] = config_from_args(hints[f.name], args, prefix=nested_prefix)
            continue
        if hasattr(args, dest):
            values[f.name] = getattr(args, dest)
    values.update(overrides)
    return config_cls(**values)


def given_fields(config_cls: type, args: argparse.Namespace, *, prefix: str = "") -> list[str]:
    """The fields of ``config_cls`` set on the command line (flags default to SUPPRESS, so a field
    is given iff its dest is in ``args``), nested ones dotted: ``["channel_order",
    "refine.cascadepsp_channel_order"]``."""
    out: list[str] = []
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if dataclasses.is_dataclass(hints[f.name]):
            nested = given_fields(hints[f.name], args, prefix=f"{prefix}{f.name}_")
            out += [f"{f.name}.{name}" for name in nested]
        elif hasattr(args, _dest(prefix, f.name)):
            out.append(f.name)
    return out
