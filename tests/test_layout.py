"""The import rule of docs/architecture.md, read from the source: schemas <- storage, scoring <- jobs, models <-
dags; demo, tools and benchmarks outside the runtime path; nothing imports tools or benchmarks but the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("schemas", "storage", "scoring", "jobs", "models", "demo", "dags", "tools", "benchmarks")
RUNTIME = ("schemas", "storage", "scoring", "jobs", "models", "demo")
# what each folder may import of ours (itself always)
ALLOWED = {
    "schemas": set(),
    "storage": {"schemas"},
    "scoring": {"schemas"},
    "jobs": {"schemas", "storage", "scoring"},
    "models": {"schemas", "storage", "scoring"},
    "demo": {"schemas", "storage", "scoring"},
    "dags": {"schemas", "storage", "scoring", "jobs", "models", "demo"},
    "tools": set(RUNTIME),
    "benchmarks": set(RUNTIME) | {"benchmarks"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of ours that a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in OURS}
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_the_layers_below_it(folder: str) -> None:
    broken = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) - ALLOWED[folder] - {folder})
        for path in sorted((REPO / folder).rglob("*.py"))
    }
    assert not {name: bad for name, bad in broken.items() if bad}


def test_jobs_hold_only_what_a_dag_task_runs() -> None:
    """Every module of jobs/ is a stage a DAG task runs (with a main), or a helper of exactly one stage."""
    stages = {"clean", "features", "score", "validate", "publish", "summary"}
    # clean's keyed user-id hash (the DAG renders its key for clean's spark-submit)
    helpers = {"pseudonymise"}
    modules = {p.stem for p in (REPO / "jobs").glob("*.py")} - {"__init__"}
    assert modules == stages | helpers
    for stage in stages:
        assert "def main(" in (REPO / "jobs" / f"{stage}.py").read_text(), f"jobs/{stage}.py has no main"
