"""The code's shape: no import cycles (function-local imports included), the config loads without
Ray, MLflow or DeepSpeed, and no file or function outgrows what a reader holds in mind."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("heat", "pipeline")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (imports for annotations only)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return inside


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its body (not only at the top)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from pipeline import storage` imports the submodule pipeline.storage
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                      for alias in node.names}
    return {module for module in found if module in known and module != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    tree = {"a": "import b\n", "b": "def f():\n    import c\n", "c": "from a import x\n"}
    known = set(tree)
    graph = {}
    for name, text in tree.items():
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        graph[name] = imported_modules(name, path, known)
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_no_import_cycles_in_heat_and_pipeline():
    modules = sources()
    graph = {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}
    assert find_cycle(graph) is None


def test_loading_a_config_imports_no_ray_mlflow_or_deepspeed():
    code = ("import sys; from pipeline.config import load_config, packaged_config; "
            "load_config(packaged_config('smoke')); "
            "print(sorted(m for m in ('ray', 'mlflow', 'deepspeed') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(sources()))
def test_files_and_functions_stay_readable(name):
    path = sources()[name]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path}: split it along its concepts"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name}: {length} lines"
