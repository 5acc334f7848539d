"""The shape of `pipeline/`, read from its source with `ast` (nothing is imported): no import
cycles between its modules (imports inside functions count: a cycle hidden in a function is
still two modules that cannot be understood apart), no `sys.path` edits (the project is
installed, `pip install -e .`), and `trm/` imports nothing of `pipeline/`.

    python tests/test_imports.py          # print module -> the pipeline modules it imports
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules that the file at `path` imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import mod`
    return {m for m in found if m in modules} - {module_name(path)}


def graph(package: str = "pipeline") -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {module_name(p) for p in files} | {
        module_name(p) for p in sorted((ROOT / "trm").rglob("*.py"))
    }
    return {module_name(p): imports(p, modules) for p in files}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first walk (each reported once, as a path)."""
    found, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for n in sorted(g.get(m, ())):
            if state.get(n) == "open":
                found.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_pipeline_has_no_import_cycles():
    g = graph()
    assert "pipeline.sweeping.trial" in g  # the walk sees the package
    assert cycles(g) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_sys_path_edits_in_pipeline():
    edits = [
        f"{p.relative_to(ROOT)}:{node.lineno}"
        for p in sorted((ROOT / "pipeline").rglob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ]
    assert edits == []


def test_trm_imports_nothing_of_pipeline():
    for p in sorted((ROOT / "trm").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in getattr(node, "names", [])]
                assert not any(n.split(".")[0] == "pipeline" for n in names), p


if __name__ == "__main__":
    g = graph()
    for m, deps in sorted(g.items()):
        print(f"{m} -> {', '.join(sorted(deps)) or '-'}")
    print("cycles:", cycles(g) or "none")
