"""The package's import graph: no cycles, and the model depends on nothing above it (the kernels,
which it asks how to compute its ops, depend on nothing of the package).

Every `import` counts, function-local ones included, so a cycle cannot hide behind a lazy import.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names() -> dict[str, Path]:
    modules = {}
    for path in (SRC / "olmolab").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The olmolab modules `name` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {_owning_module(t, modules) for t in targets} - {None, name}


def _owning_module(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def imports_outside(package: str) -> dict[str, set[str]]:
    """For each module of `package`, the olmolab modules it imports from outside the package."""
    inside = lambda m: m == package or m.startswith(package + ".")  # noqa: E731
    return {name: {m for m in imports if not inside(m)} for name, imports in import_graph().items() if inside(name)}


def test_the_model_imports_only_the_config_loader_the_error_type_and_the_kernels():
    # The model says what it computes and asks olmolab.kernels how (the registry of fast paths),
    # so kernels sit below the model: they import torch only (next test), never the model.
    allowed = {"olmolab.configlib", "olmolab.errors", "olmolab.kernels"}
    for name, outside in imports_outside("olmolab.model").items():
        outside = {m for m in outside if not m.startswith("olmolab.kernels.")} - allowed
        assert not outside, f"{name} imports {sorted(outside)}"


def test_the_kernels_import_nothing_else_of_the_package():
    for name, outside in imports_outside("olmolab.kernels").items():
        assert not outside, f"{name} imports {sorted(outside)}"
