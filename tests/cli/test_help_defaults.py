"""``--help`` shows the defaults the commands really use (issue 16 §4).

Regression: ``segment --help`` said ``--overlay-min-score`` defaults to 0.0 while ``segment`` used
0.5 (it sets its own default after the shared flag is declared). For every command and every flag
whose help names a one-word default ``(default: X)``, X must be the value the command gets when
the flag is not given: the parser's default, or for the flags generated from a config dataclass
(which default to "not given") the config field's default (``action.config_default``).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from unsam.cli.main import _available, build_parser

COMMANDS = list(_available())
#: "(default: X)" with X one token (a number, a word, a quoted string), then ")" / ";" / ",".
SHOWN = re.compile(r"\(default:\s*[\"']?([^\s;),\"']+)[\"']?\s*[;),]")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(_available(), name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _same(shown: str, value: Any) -> bool:
    if value is None:  # a description of what happens ("RAY_ADDRESS, else ..."), not a number
        return not re.fullmatch(r"-?[0-9.e+-]+", shown)
    if isinstance(value, str):  # "1,10,100,1000" is shown up to its first comma
        return shown == value or value.startswith(shown + ",")
    if isinstance(value, bool):
        return shown == str(value)
    if isinstance(value, (int, float)):
        try:
            return float(shown) == float(value)
        except ValueError:
            return False
    if isinstance(value, tuple):
        return shown.strip("(") == str(value).strip("(),").split(",")[0]
    return shown == str(value)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_defaults_are_the_real_ones(command: str) -> None:
    parser = _subparser(command)
    formatter = parser._get_formatter()
    wrong = []
    checked = 0
    for action in parser._actions:
        if not action.help or action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        text = formatter._expand_help(action)
        real = parser.get_default(action.dest)
        if real is argparse.SUPPRESS:  # a config flag: the config's default applies
            if not hasattr(action, "config_default"):
                continue
            real = action.config_default
        for match in SHOWN.finditer(text):
            checked += 1
            if not _same(match.group(1), real):
                wrong.append(
                    f"{action.option_strings[-1]}: help says {match.group(1)}, uses {real}"
                )
    assert not wrong, f"unsam {command} --help: " + "; ".join(wrong)
    if command in ("segment", "pseudo-label", "baseline", "eval-points", "demo"):
        assert checked > 0


def test_segment_overlay_min_score_help_and_value() -> None:
    parser = _subparser("segment")
    assert "at least S (default: 0.5)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["imgs", "--model", "m", "-o", "o.json"])
    assert args.overlay_min_score == 0.5
