"""The package import graph: layers import downward only, and no module cycle (issue 23.7).

Read from the source with ``ast`` (every ``import``, lazy ones inside functions included, since a lazy
upward import is still an upward dependency), so it runs in milliseconds and imports nothing. The
layers are STYLE.md's: math and components below the build step, the build step below the reports
and the loop, those below the commands, the commands below the CLI and the Python API. A module may import its own
package and any lower layer. tests/unit/test_build.py::test_config_imports_no_higher_layer checks the
same rule at run time for validation.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "advtrain"
#: Layer of each top-level unit of advtrain (a subpackage or a module); higher imports lower only.
LAYERS = {
    "__init__": 0, "errors": 0,
    "params": 1, "registry": 1, "coreset": 1,  # coreset: the record selectors return and checkpoints save
    "runtime": 2, "ui": 2,
    "attacks": 3, "data": 3, "models": 3, "optim": 3, "io": 3,
    "objectives": 4,
    "selection": 5, "eval": 5,  # selection scores with the objectives' last-layer gradients
    "config": 6,
    "build": 7,
    "reports": 8,
    "train": 9,  # the loop writes through the reports' loggers
    "commands": 10,
    "cli": 11, "api": 11,
    "__main__": 12,
}
#: The package root is a facade: ``advtrain.load`` resolves ``advtrain.api`` lazily (PEP 562
#: ``__getattr__``), while lower modules import the root only for ``__version__``. That one edge is
#: the public surface, not a dependency of the layers.
FACADE = {("advtrain", "advtrain.api")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, typing: bool = True) -> set[str]:
    """advtrain modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module);
    ``typing=False`` leaves out the imports under ``if TYPE_CHECKING:`` (annotations only)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = set()
    if not typing:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "advtrain" or m.startswith("advtrain.")}


def _graph(*, typing: bool = True) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path, typing=typing) if m in modules and m != name and (name, m) not in FACADE}
            for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    assert {_unit(m) for m in _graph()} == set(LAYERS)


def test_imports_go_down_the_layers_only():
    upward = sorted(f"{m} ({LAYERS[_unit(m)]}) imports {t} ({LAYERS[_unit(t)]})"
                    for m, targets in _graph().items() for t in targets
                    if _unit(t) != _unit(m) and LAYERS[_unit(t)] >= LAYERS[_unit(m)])
    assert not upward, "\n".join(upward)


def test_no_module_import_cycle():
    """Import-time cycles; an annotation-only import under ``TYPE_CHECKING`` does not run, so it is left out."""
    graph = _graph(typing=False)
    # A package's __init__ re-exports its modules: package → its own submodule is not a cycle edge.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The graph reader must catch what it is there to catch: a lazy upward import inside a function."""
    fake = tmp_path / "advtrain"
    (fake / "attacks").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text("")
    (fake / "attacks" / "__init__.py").write_text("from .pgd import x\n")
    (fake / "attacks" / "pgd.py").write_text("def f():\n    from advtrain import cli\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    assert "advtrain.cli" in _graph()["advtrain.attacks.pgd"]
    assert _graph()["advtrain.attacks"] == {"advtrain.attacks.pgd"}
