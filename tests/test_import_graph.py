"""The import graph of ``src/unsam``: no circle, no upward import, no long file without a reason.

Every module is parsed with ``ast`` (nothing is imported). An edge ``a -> b`` is any import of
``b`` in ``a``: ``import unsam.x``, ``from unsam.x import y`` (to ``unsam.x.y`` when that is a
module, else to ``unsam.x``) and relative imports, wherever they stand (module level, inside
functions, under ``TYPE_CHECKING``), plus the lazy-name tables (``_LAZY = {"name": "unsam.x"}``
or ``("unsam.x", "attr")``) of package ``__init__`` files, which import ``unsam.x`` on first use.
Function-level imports count like any other: a lazy import keeps ``import unsam`` fast, it does
not make a circle or an upward dependency acceptable.

Layers (:data:`LAYERS`), lowest first; a module may import its own layer or lower ones:

    0  records, config, runtime, hub, masks               values and helpers used everywhere
    1  io, crf, runner, datasets, baselines               files, folders, plain algorithms
    2  features                                           DINO / classic patch features
    3  divide, conquer, refine                            the pseudo-labelling stages
    4  models                                             the trained networks
    5  pipeline                                           chains the stages (and a divide model)
    6  training, evaluation, engines, demo                use models and the pipeline
    7  cli                                                the commands; nothing else imports it

The root package ``unsam`` is the public facade: its lazy names point at every layer, and any
module may import it (for ``unsam.__version__``); its eager imports are layer 0 only.
:data:`FORBIDDEN` adds rules inside packages (the training engine is below the model trainers,
the two model trainers and the two models do not import each other).

Long files: a module over :data:`MAX_LINES` lines must say why in its opening docstring, in a
paragraph starting with ``Length:`` (at least :data:`MIN_REASON` characters).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 600
MIN_REASON = 40

LAYERS: dict[str, int] = {
    "unsam.records": 0,
    "unsam.config": 0,
    "unsam.runtime": 0,
    "unsam.hub": 0,
    "unsam.masks": 0,
    "unsam.io": 1,
    "unsam.crf": 1,
    "unsam.runner": 1,
    "unsam.datasets": 1,
    "unsam.baselines": 1,
    "unsam.features": 2,
    "unsam.divide": 3,
    "unsam.conquer": 3,
    "unsam.refine": 3,
    "unsam.models": 4,
    "unsam.pipeline": 5,
    "unsam.training": 6,
    "unsam.evaluation": 6,
    "unsam.engines": 6,
    "unsam.demo": 6,
    "unsam.cli": 7,
}

#: (importer prefix, imported prefix): imports that the layers allow but the design does not.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("unsam.training.engine", "unsam.training.whole_image"),
    ("unsam.training.engine", "unsam.training.promptable"),
    ("unsam.training.data", "unsam.training.whole_image"),
    ("unsam.training.data", "unsam.training.promptable"),
    ("unsam.training.whole_image", "unsam.training.promptable"),
    ("unsam.training.promptable", "unsam.training.whole_image"),
    ("unsam.models.whole_image", "unsam.models.promptable"),
    ("unsam.models.promptable", "unsam.models.whole_image"),
)


def _modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``src/unsam``."""
    out = {}
    for path in sorted((src / "unsam").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or its nearest enclosing module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _lazy_targets(tree: ast.Module) -> Iterator[str]:
    """Module names in ``_LAZY`` tables (values ``"unsam.x"`` or ``("unsam.x", "attr")``)."""
    for node in tree.body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Dict):
            continue
        if not any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            continue
        for value in node.value.values:
            if isinstance(value, ast.Tuple) and value.elts:
                value = value.elts[0]
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value.value


def import_graph(src: Path = SRC) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(all edges, lazy-table edges): module -> the ``unsam`` modules it imports."""
    modules = _modules(src)
    edges: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str | None] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(
                    _target(a.name, modules) for a in node.names if a.name.split(".")[0] == "unsam"
                )
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "unsam":
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    found.add(sub if sub in modules else _target(source, modules))
        lazy[name] = {t for t in map(lambda m: _target(m, modules), _lazy_targets(tree)) if t}
        found.update(lazy[name])
        found.discard(None)
        found.discard(name)
        edges[name] = {m for m in found if m is not None}
    return edges, lazy


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def layer_of(module: str) -> int | None:
    """The layer of ``module`` (its longest prefix in :data:`LAYERS`), None for the root."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return None


def upward_imports(
    edges: dict[str, set[str]], lazy: dict[str, set[str]]
) -> list[tuple[str, str, str]]:
    """(importer, imported, why) for every import against :data:`LAYERS` or :data:`FORBIDDEN`."""
    bad = []
    for importer, targets in sorted(edges.items()):
        for target in sorted(targets):
            if importer == "unsam" and target in lazy.get("unsam", set()):
                continue  # the public facade's lazy names
            low, high = layer_of(target), layer_of(importer)
            if target != "unsam" and low is None:
                bad.append((importer, target, "module in no layer; add it to LAYERS"))
            elif importer != "unsam" and high is None:
                bad.append((importer, target, "module in no layer; add it to LAYERS"))
            elif low is not None and (high if high is not None else 0) < low:
                bad.append((importer, target, f"layer {high} imports layer {low}"))
            for a, b in FORBIDDEN:
                if (importer == a or importer.startswith(a + ".")) and (
                    target == b or target.startswith(b + ".")
                ):
                    bad.append((importer, target, f"{a} must not import {b}"))
    return bad


def long_files_without_reason(src: Path = SRC) -> list[tuple[str, int]]:
    """(path, lines) of the modules over :data:`MAX_LINES` lines without a ``Length:`` reason."""
    bad = []
    for path in _modules(src).values():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        reasons = [p for p in doc.split("\n\n") if p.lstrip().startswith("Length:")]
        if not reasons or len(reasons[0].strip()) < len("Length:") + MIN_REASON:
            bad.append((str(path.relative_to(src)), lines))
    return bad


# --- the checks -----------------------------------------------------------------------------------


def test_the_graph_is_read() -> None:
    """The parser sees the modules and their imports (guards against a silently empty graph)."""
    edges, lazy = import_graph()
    assert len(edges) > 100
    assert "unsam.records" in edges["unsam.io.coco"]
    assert "unsam.training.engine" in edges["unsam.training.whole_image.trainer"]
    assert "unsam.models.whole_image.segmenter" in lazy["unsam.models.whole_image"]


def test_no_import_cycle() -> None:
    edges, _ = import_graph()
    assert find_cycles(edges) == []


def test_no_upward_import() -> None:
    edges, lazy = import_graph()
    assert upward_imports(edges, lazy) == []


def test_nothing_outside_cli_imports_cli() -> None:
    edges, _ = import_graph()

    def in_cli(module: str) -> bool:
        return module == "unsam.cli" or module.startswith("unsam.cli.")

    pairs = [(a, b) for a, targets in edges.items() for b in targets]
    assert sorted((a, b) for a, b in pairs if in_cli(b) and not in_cli(a)) == []


def test_long_files_say_why() -> None:
    assert long_files_without_reason() == []


# --- the checks catch what they are for -----------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "src" / "unsam" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "src"


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        # a module-level circle
        (
            {"records.py": "from unsam import masks\n", "masks.py": "import unsam.records\n"},
            ["unsam.masks", "unsam.records"],
        ),
        # relative imports inside a function still count
        (
            {
                "io/__init__.py": "",
                "io/a.py": "def f():\n    from .b import x\n",
                "io/b.py": "from unsam.io.a import f\nx = 1\n",
            },
            ["unsam.io.a", "unsam.io.b"],
        ),
        # a package's lazy-name table is an import
        (
            {
                "refine/__init__.py": '_LAZY = {"R": "unsam.refine.r"}\n',
                "refine/r.py": "from unsam.refine import something\n",
            },
            ["unsam.refine", "unsam.refine.r"],
        ),
    ],
)
def test_cycles_are_found(tmp_path: Path, files: dict[str, str], cycle: list[str]) -> None:
    edges, _ = import_graph(_write(tmp_path, {"__init__.py": "", **files}))
    assert find_cycles(edges) == [cycle]


def test_upward_and_forbidden_imports_are_found(tmp_path: Path) -> None:
    src = _write(
        tmp_path,
        {
            "__init__.py": '_LAZY = {"train": ("unsam.training.t", "train")}\n',
            "records.py": "def f():\n    from unsam.models import m\n",
            "models/__init__.py": "",
            "models/m.py": "",
            "training/__init__.py": "",
            "training/t.py": "import unsam\n",
            "training/engine/__init__.py": "from unsam.training.promptable import p\n",
            "training/promptable/__init__.py": "",
            "training/promptable/p.py": "",
        },
    )
    edges, lazy = import_graph(src)
    assert upward_imports(edges, lazy) == [
        ("unsam.records", "unsam.models.m", "layer 0 imports layer 4"),
        (
            "unsam.training.engine",
            "unsam.training.promptable.p",
            "unsam.training.engine must not import unsam.training.promptable",
        ),
    ]


def test_long_file_needs_a_reason(tmp_path: Path) -> None:
    body = "x = 1\n" * MAX_LINES
    src = _write(
        tmp_path,
        {
            "__init__.py": "",
            "short.py": '"""Short."""\n',
            "silent.py": '"""A long file."""\n' + body,
            "vague.py": '"""A long file.\n\nLength: long.\n"""\n' + body,
            "told.py": '"""A long file.\n\nLength: one table of 600 rules, read in order by people.'
            + '\n"""\n'
            + body,
        },
    )
    assert sorted(p for p, _ in long_files_without_reason(src)) == [
        "unsam/silent.py",
        "unsam/vague.py",
    ]
