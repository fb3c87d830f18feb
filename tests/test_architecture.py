"""The module graph: no import circle inside the project, no upward import (engine -> experiments/analysis).

Read statically (ast), so the test sees every import of every file, whether or not some test happens to
import it, including the lazy ones inside functions (the old config <-> methods <-> prompts circle ran
through those). `if TYPE_CHECKING:` and `if __name__ == "__main__":` blocks are not dependencies.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("drift", "baselines", "experiments", "analysis")


def _modules() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for root, _, names in os.walk(os.path.join(ROOT, pkg)):
            for n in names:
                if n.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, n), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, n)
    return out


def _skipped(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (annotations only) and `if __name__ == "__main__":` (entry-point glue) blocks."""
    if not isinstance(node, ast.If):
        return False
    test = ast.unparse(node.test)
    return "TYPE_CHECKING" in test or "__name__" in test


def _imports(path: str, name: str, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file: at load time or lazily inside functions
    (a lazy import is still a dependency; a circle through one is still a circle)."""
    tree = ast.parse(open(path).read(), path)
    base = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    skip = {id(n) for node in ast.walk(tree) if _skipped(node) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(p, m, known) for m, p in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d.startswith(m + "."):  # a package importing its own submodule is not a circle
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_checker_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_upward_import():
    """The engine and the methods never import the sweep or the analysis."""
    bad = {m: sorted(d for d in deps if d.split(".")[0] in ("experiments", "analysis"))
           for m, deps in _graph().items() if m.split(".")[0] in ("drift", "baselines")}
    assert not {m: d for m, d in bad.items() if d}


def test_run_directory_module_imports_no_engine():
    """drift/rundir.py is read by analysis/: it imports nothing of the engine (and no torch)."""
    assert _graph()["drift.rundir"] == set()
