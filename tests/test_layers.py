"""The harness's layer picture holds: arrows point down, no import cycle, no side effects on
import, and ``reproduce`` does each of its steps once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import isolate_harness

from tests import fakes

REPO = Path(__file__).resolve().parent.parent
ABOVE_EXECUTION = ("benchmarks.reporting", "benchmarks.regression", "benchmarks.perf", "benchmarks.recipes",
                   "benchmarks.cli")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of benchmarks/ and egmf_core/."""
    out = {}
    for package in ("benchmarks", "egmf_core"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (in functions too): ``from p
    import m`` counts as importing module ``p.m`` when that is a module, else ``p``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, each as the path that closes it."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_graph_parser_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "egmf_core.data.dataset" in graph["egmf_core.data"]  # from .dataset import ...
    assert "benchmarks.reporting.report" in graph["benchmarks.recipes"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_execution_never_imports_the_layers_above_it():
    graph = import_graph()
    up = sorted((name, dep) for name, deps in graph.items() if name.startswith("benchmarks.execution")
                for dep in deps if dep.startswith(ABOVE_EXECUTION))
    assert up == []


def test_results_and_reporting_never_import_the_runner_or_launchers():
    graph = import_graph()
    up = sorted((name, dep) for name, deps in graph.items()
                if name.startswith(("benchmarks.results", "benchmarks.reporting"))
                for dep in deps if dep.startswith(("benchmarks.execution.runner", "benchmarks.execution.launchers",
                                                   "benchmarks.recipes", "benchmarks.cli")))
    assert up == []


def test_no_import_cycle_among_benchmarks_and_egmf_core():
    assert cycles(import_graph()) == []


def test_importing_benchmarks_leaves_the_environment_unchanged():
    code = ("import os; before = dict(os.environ); import benchmarks, benchmarks.cli, benchmarks.recipes; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"


def test_reproduce_tabulates_each_touched_table_once_and_reads_the_runs_folder_once(tmp_path, monkeypatch):
    from benchmarks.execution import grid as grid_module
    from benchmarks.results import store, tabulate

    isolate_harness(tmp_path, monkeypatch)
    tabulated, folder_reads, expansions = [], [], []
    write_csv, load_runs, expand = tabulate.write_table_csv, store.load_runs, grid_module.expand

    def counting_write(spec, *args, **kwargs):
        tabulated.append(spec.name)
        return write_csv(spec, *args, **kwargs)

    def counting_load(directory, **kwargs):
        folder_reads.append(Path(directory))
        return load_runs(directory, **kwargs)

    def counting_expand(spec, *args, **kwargs):
        expansions.append(spec.name)
        return expand(spec, *args, **kwargs)

    monkeypatch.setattr(tabulate, "write_table_csv", counting_write)
    monkeypatch.setattr(store, "load_runs", counting_load)
    monkeypatch.setattr("benchmarks.execution.runner.expand", counting_expand)
    monkeypatch.setattr(grid_module, "expand", counting_expand)
    summary = fakes.reproduce("main_msa", seeds=[1111], run_fn=fakes.hashed_run, results_root=tmp_path / "results",
                              reports_root=tmp_path / "reports")
    assert summary.ok and summary.trained == summary.runs > 0
    assert tabulated == ["main_msa"]
    assert folder_reads == [tmp_path / "results" / "smoke" / "runs"]
    assert expansions == ["main_msa"]
    assert summary.csv == tmp_path / "results" / "smoke" / "main_msa.csv"
    assert summary.report == tmp_path / "reports" / "smoke" / "main_msa.md" and summary.report.is_file()
