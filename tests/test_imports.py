"""The package's imports form a ladder: no module imports, however indirectly, one that imports it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's files sit in the repository (pyproject's package-dir).
PACKAGES = {"enstune": ROOT / "enstune", "enstune.cli": ROOT / "cli", "enstune.storage": ROOT / "storage"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            if not name.startswith("enstune.cli.") or package == "enstune.cli":
                found[name] = path
    return found


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The project's modules ``module`` imports anywhere in its file (functions included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in known else base)
    return {m for m in out if m in known and m != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_reader_sees_the_imports_it_must():
    graph = _graph()
    assert "enstune.config" in graph["enstune.study"]
    assert "enstune.study" in graph["enstune.cli"]  # `from enstune import study as st`, inside a function
    assert "enstune.data._registry" in graph["enstune.data.demo"]


def test_a_planted_cycle_is_found():
    graph = _graph()
    graph["enstune.errors"] = graph["enstune.errors"] | {"enstune.study"}
    assert any("enstune.errors" in c and "enstune.study" in c for c in _cycles(graph))


def test_no_module_imports_one_that_imports_it():
    assert _cycles(_graph()) == []


def test_low_modules_import_nothing_above_them():
    graph = _graph()
    assert graph["enstune.errors"] == set()
    assert graph["enstune.recipe"] <= {"enstune.errors"}
    assert graph["enstune.spec"] <= {"enstune.errors", "enstune.recipe"}
    assert graph["enstune.spec_rules"] <= {"enstune.errors", "enstune.recipe", "enstune.spec"}
    assert graph["enstune.config"] <= {"enstune.errors", "enstune.recipe", "enstune.spec", "enstune.spec_rules"}
