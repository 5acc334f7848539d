"""The shape the codebase keeps: no function over 80 lines in the libraries, no module over 500
lines in pipeline/, no pointer to documents that live outside the repository (what a reader
needs is written in docs/), and `ruff check .` clean."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 80
MAX_MODULE_LINES = 500

# The names of the out-of-tree documents, assembled so that a grep over the repository for
# them finds nothing, this file included.
OUTSIDE_DOCS = (
    "../" + "shared",
    "STYLE" + ".md",
    "TRM-" + "SEMANTICS",
    "DATASETS" + ".md",
    "RAY" + ".md",
    "INFRA" + ".md",
)
SCANNED = ("trm", "pipeline", "tests", "benchmarks", "infra", "sweeps", "configs", "docs", ".ci")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".tf", ".txt", ".json", ".sh", ""}


def _functions(path: Path) -> dict[str, int]:
    """Qualified name -> length in lines (from `def` to the last line of the body)."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out[name] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return out


def _function_lengths() -> dict[str, int]:
    """`path::qualified name` -> length, for every function in trm/ and pipeline/."""
    found = {}
    for package in ("trm", "pipeline"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for name, n in _functions(path).items():
                found[f"{rel}::{name}"] = n
    return found


def test_no_function_over_80_lines_in_trm_and_pipeline():
    lengths = _function_lengths()
    assert len(lengths) > 300  # the scan reached both packages
    long = {k: n for k, n in lengths.items() if n > MAX_LINES}
    assert not long, f"functions over {MAX_LINES} lines (split them): {long}"


def test_the_length_check_sees_nested_and_methods(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    src = f"class A:\n    def long(self):\n{body}\n\n\ndef short():\n    return 1\n"
    (tmp_path / "m.py").write_text(src)
    assert _functions(tmp_path / "m.py") == {"A.long": MAX_LINES + 1, "short": 2}


def _long_modules(root: Path) -> dict[str, int]:
    """Python files under `root` (recursively) over MAX_MODULE_LINES lines -> their length."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            found[path.relative_to(root).as_posix()] = n
    return found


def test_no_module_over_500_lines_in_pipeline():
    assert len(list((ROOT / "pipeline").rglob("*.py"))) > 20  # the scan reached the package
    long = _long_modules(ROOT / "pipeline")
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_the_module_check_sees_nested_packages(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    assert _long_modules(tmp_path) == {"sub/long.py": MAX_MODULE_LINES + 1}


def _text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if (
                path.is_file()
                and path.suffix in TEXT_SUFFIXES
                and "__pycache__" not in path.parts
                and path.stat().st_size < 2_000_000
            ):
                files.append(path)
    return files


def test_no_reference_to_documents_outside_the_repository():
    hits = []
    for path in _text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for name in OUTSIDE_DOCS:
                if name in line:
                    hits.append(f"{path.relative_to(ROOT)}:{lineno}: {name}")
    assert len(_text_files()) > 100  # the scan reached the tree
    assert not hits, "point into docs/ instead:\n" + "\n".join(hits)


def test_ruff_check_is_clean():
    """`ruff check .` (the project's lint settings in pyproject.toml) as part of the test run."""
    import subprocess
    import sys

    ruff = Path(sys.executable).with_name("ruff")
    r = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
