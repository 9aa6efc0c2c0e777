"""Issue 11.5: the README works as written.

* every ``unsam`` command line in a bash block names a real subcommand and only flags it has;
* the blocks marked ``# runs from a fresh clone``, the set-up command (minus the install) and the
  Python snippet run as written, in a scratch folder that holds the repository's ``examples/``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from unsam.cli.main import _available, build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
FRESH = "# runs from a fresh clone"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _unsam_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for part in block.replace("\\\n", " ").splitlines():
            for cmd in part.split("&&"):
                cmd = cmd.strip()
                cmd = re.sub(r"^\.venv/bin/", "", cmd)
                if cmd.startswith("unsam "):
                    lines.append(cmd)
    return lines


def test_the_readme_documents_commands() -> None:
    assert len(_unsam_lines()) >= 20 and any(b.startswith(FRESH) for b in _blocks("bash"))


@pytest.mark.parametrize("line", _unsam_lines())
def test_every_documented_flag_exists(line: str) -> None:
    tokens = shlex.split(line, comments=True)
    commands = _available()
    sub = tokens[1]
    assert sub in commands, f"README uses an unknown command: unsam {sub}"
    parser = build_parser(commands, sub)
    subparser = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)  # noqa: SLF001
    known = set(subparser.choices[sub]._option_string_actions)  # noqa: SLF001
    for tok in tokens[2:]:
        if tok.startswith("--"):
            assert tok.split("=")[0] in known, f"unsam {sub} has no flag {tok} (README: {line})"


def _scratch(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.slow
def test_fresh_clone_blocks_run_as_written(tmp_path: Path) -> None:
    env = _scratch(tmp_path)
    blocks = [b for b in _blocks("bash") if b.startswith(FRESH)]
    setup = _blocks("bash")[0]  # the first set-up command, without creating the venv / installing
    steps = [s.strip() for s in setup.split("&&") if "venv " not in s and "pip install" not in s]
    blocks.insert(0, " && ".join(s.replace(".venv/bin/", "") for s in steps))
    for block in blocks:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (
            f"README block failed:\n{block}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    assert (tmp_path / "out" / "pseudo.json").is_file() and (
        tmp_path / "out" / "dico.png"
    ).is_file()
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 5


def test_python_snippet_runs_as_written(tmp_path: Path) -> None:
    env = _scratch(tmp_path)
    (snippet,) = _blocks("python")
    proc = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "1.0"
