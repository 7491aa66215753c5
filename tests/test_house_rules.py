"""The habits that keep the code base easy to inherit, enforced in CI: ruff (lint and format), mypy on
curation/, curation/ free of Dagster and of import cycles, and dependencies that are declared exactly
when used."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

BIN = Path(sys.executable).parent
FIRST_PARTY = {
    "assets",
    "checks",
    "curation",
    "resources",
    "sensors",
    "demo",
    "benchmarks",
    "tests",
    "definitions",
    "distillery_cli",
}
# Imported only inside a function that says how to install it, never required by a default build.
OPTIONAL_IMPORTS = {"spacy"}


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def _python_files(*folders: str) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        path = REPO / folder
        files += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    return files


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Dotted names imported by a module (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_ruff_lint_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, f"ruff check . found problems (try `ruff check --fix .`):\n{result.stdout}"


def test_ruff_format_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, f"files need `ruff format .`:\n{result.stdout}"


@pytest.mark.slow
def test_mypy_is_clean_on_curation() -> None:
    result = _run(str(BIN / "mypy"))  # files and settings: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, f"mypy found type errors in curation/:\n{result.stdout}{result.stderr}"


def test_curation_never_imports_dagster() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(n for n in _imports(path) if n.split(".")[0] == "dagster")
        for path in _python_files("curation")
    }
    assert not {k: v for k, v in offenders.items() if v}, "curation/ is plain Python; Dagster belongs in assets/ etc."


def test_curation_has_no_import_cycles() -> None:
    """Module-level imports between curation modules form no cycle (lazy imports inside functions
    would hide one, so registration must not depend on them either)."""
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for path in _python_files("curation")
    }
    graph = {
        name: {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*path, name, target]
            if target not in state and (cycle := visit(target, [*path, name])):
                return cycle
        state[name] = 2
        return None

    for module in sorted(modules):
        if module not in state and (cycle := visit(module, [])):
            pytest.fail("import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]) :]))


@functools.cache
def _modules_by_distribution() -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for module, distributions in packages_distributions().items():
        for distribution in distributions:
            found.setdefault(_normalised(distribution), set()).add(module)
    return {name: frozenset(modules) for name, modules in found.items()}


def _normalised(distribution: str) -> str:
    return distribution.lower().replace("_", "-")


def _modules(spec: str) -> frozenset[str]:
    """The import names an installed requirement provides."""
    return _modules_by_distribution().get(_normalised(Requirement(spec).name), frozenset())


def _requirements() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"core": project["dependencies"], **project["optional-dependencies"]}


def _third_party(paths: list[Path]) -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    return {name.split(".")[0] for path in paths for name in _imports(path)} - stdlib - FIRST_PARTY


def test_every_import_is_declared_and_every_dependency_used() -> None:
    requirements = _requirements()
    declared = {group: set().union(*map(_modules, specs)) for group, specs in requirements.items()}
    runtime = _third_party(
        _python_files(
            "curation", "assets", "checks", "sensors", "resources", "definitions.py", "distillery_cli.py", "demo"
        )
    )
    undeclared = runtime - declared["core"] - declared["models"] - OPTIONAL_IMPORTS
    assert not undeclared, f"imported by the pipeline but not in [project] dependencies: {sorted(undeclared)}"
    everything = runtime | _third_party(_python_files("tests", "benchmarks"))
    test_only = everything - runtime - declared["core"] - declared["dev"] - declared["models"]
    assert not test_only, f"imported by tests or benchmarks but not declared in the dev extra: {sorted(test_only)}"
    unused = {Requirement(spec).name for spec in requirements["core"] if not _modules(spec) & everything}
    # The webserver is used as a program (`dagster dev`, `dagster-webserver`), never imported.
    assert unused <= {"dagster-webserver"}, f"declared in [project] dependencies but never imported: {sorted(unused)}"
