"""The references under tests/reference/ must not use the code they check (no ``unsam`` import).

A reference that calls unsam (e.g. to resize masks) agrees with a broken unsam by construction.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parent / "reference"
FILES = sorted(REFERENCE.glob("*.py"))


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.append(str(node.args[0].value))
    return names


def test_there_are_references() -> None:
    names = {p.name for p in FILES}
    assert {
        "coco_reference.py",
        "conquer_naive.py",
        "merge_naive.py",
        "resize_naive.py",
        "resnet_keys.py",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_reference_does_not_import_unsam(path: Path) -> None:
    for name in _imported_modules(path):
        assert name.split(".")[0] != "unsam", f"{path.name} imports {name}"
        if name.startswith(
            ("tests.", ".")
        ):  # other test code may import unsam: only references allowed
            assert name.startswith(("tests.reference.", ".")), f"{path.name} imports {name}"


def test_the_check_sees_every_import_form(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import unsam.masks\nfrom unsam import records\ndef f():\n    from unsam.masks import x\n"
        "import importlib\nm = importlib.import_module('unsam.records')\n"
    )
    assert [n for n in _imported_modules(bad) if n.startswith("unsam")] == [
        "unsam.masks",
        "unsam",
        "unsam.masks",
        "unsam.records",
    ]
