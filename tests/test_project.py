"""Project-level rules: heat/ stays pure PyTorch, tokenizers/ never shadows HuggingFace's
`tokenizers`, CI runs the README's test command, and the CLI's first command works."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("ray", "deepspeed", "mlflow", "datasets")


def test_heat_source_imports_no_orchestration_library():
    offenders = []
    for path in (ROOT / "heat").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ORCHESTRATION]
    assert offenders == []


def test_importing_heat_loads_no_orchestration_library():
    code = (
        "import sys, heat, heat.attention, heat.layers, heat.models, heat.decoding\n"
        f"print(sorted(m for m in {ORCHESTRATION!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def test_tokenizers_folder_is_not_a_package():
    assert (ROOT / "tokenizers").is_dir()
    assert not list((ROOT / "tokenizers").rglob("*.py"))


def test_import_tokenizers_resolves_to_huggingface_not_the_repo():
    pytest.importorskip("tokenizers", reason="HuggingFace tokenizers is in the dev extra")
    code = "import tokenizers; print(tokenizers.__file__); print(tokenizers.Tokenizer)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)  # the repo root is first on sys.path here
    location = Path(result.stdout.splitlines()[0]).resolve()
    assert (ROOT / "tokenizers").resolve() not in location.parents, location
    assert "site-packages" in location.parts, location


def readme_command(title: str) -> str:
    """The one-line shell command in the README's fenced block after a heading containing title."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"^#+ [^\n]*{title}[^\n]*\n(?:[^\n]*\n)*?```(?:bash|sh)\n(.+?)\n```",
                      readme, re.MULTILINE)
    assert match, f"no command block under a heading with {title!r}"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command():
    command = readme_command("Run the tests")
    assert "pytest" in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_main_command_installs_the_cpu_torch_build():
    command = readme_command("Quick start")
    assert "torch==2.13.0" in command and "heat-pipeline" in command


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_demo_attention_prints_every_variant_with_real_errors():
    from heat.attention import variant_names

    result = run_cli("demo-attention", "--length", "96", "--heads", "2", "--head-dim", "16")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    shown = {row[0] for row in rows if row}
    approximations = set(variant_names()) - {"softmax", "hadamard"}
    assert approximations <= shown
    heat_svd_8 = [row for row in rows if row[:3] == ["heat", "rank=8,", "basis=svd"]]
    assert len(heat_svd_8) == 1 and float(heat_svd_8[0][-1]) < 1e-3


def test_demo_attention_causal_lists_only_causal_variants():
    result = run_cli("demo-attention", "--length", "48", "--causal")
    assert result.returncode == 0, result.stderr
    assert "heat" in result.stdout and "taylor" in result.stdout
    assert "linformer" not in result.stdout.split("----")[-1]


def test_cli_rejects_bad_arguments_with_exit_code_2():
    result = run_cli("demo-attention", "--length", "0")
    assert result.returncode == 2
    assert "--length: must be a positive integer, got 0" in result.stderr


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, anywhere in its source (module
    level, inside functions, under `if TYPE_CHECKING:`): an import moved into a function still
    counts. The package's `__init__` is the node `package`."""
    modules = {path.stem: path for path in package_dir.glob("*.py")}

    def node(name: str) -> str:
        return package if name == "__init__" else f"{package}.{name}"

    def target(module: str) -> str | None:
        if module == package:
            return package
        if module.startswith(package + "."):
            return f"{package}.{module[len(package) + 1:].split('.')[0]}"
        return None

    graph: dict[str, set[str]] = {}
    for stem, path in modules.items():
        edges = graph.setdefault(node(stem), set())
        for item in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(item, ast.Import):
                found = [target(alias.name) for alias in item.names]
            elif isinstance(item, ast.ImportFrom):
                base = item.module or ""
                if item.level:  # relative: from the package itself (flat package)
                    base = package + ("." + base if base else "")
                found = [target(base)]
                if base == package:  # `from package import submodule`
                    found = [f"{package}.{a.name}" if a.name in modules else package
                             for a in item.names]
            else:
                continue
            edges.update(name for name in found if name and name != node(stem))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        stack.append(name)
        for other in sorted(graph.get(name, ())):
            if state.get(other) == "open":
                return stack[stack.index(other):] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_heat_attention_modules_import_each_other_without_a_cycle():
    graph = import_graph(ROOT / "heat" / "attention", "heat.attention")
    assert "heat.attention.registry" in graph["heat.attention.base"]  # the graph is not empty
    assert find_cycle(graph) is None


def test_the_cycle_check_sees_an_import_hidden_in_a_function(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from pkg.b import helper\n")
    (tmp_path / "b.py").write_text("def helper():\n    from pkg import a\n    return a\n")
    (tmp_path / "c.py").write_text("from . import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
