"""Shared fixtures: one local SparkSession for the whole test session, a fresh lake per test."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tests get their own Airflow metadata DB, never the demo's airflow_home (set before Airflow is imported)
import tempfile  # noqa: E402

os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="recflow-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# tests must not pick up a developer's RECFLOW_* settings
for _name in [n for n in os.environ if n.startswith("RECFLOW_") and n != "RECFLOW_SHARED_DATA"]:
    del os.environ[_name]
os.environ["RECFLOW_PSEUDONYM_KEY"] = "test-only-pseudonym-key"
# the DAG tests (tests/test_dags.py, tests/test_e2e_defect.py): the project's DAGs, Spark on two local cores
DAGS = Path(__file__).resolve().parents[1] / "dags"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
# OpenLineage events of every DAG run of the session (tests/test_lineage.py), to a file, never to a server
from tools.local_airflow import lineage_transport  # noqa: E402

LINEAGE_EVENTS = Path(os.environ["AIRFLOW_HOME"]) / "lineage" / "events.jsonl"
os.environ["AIRFLOW__OPENLINEAGE__TRANSPORT"] = lineage_transport(str(LINEAGE_EVENTS))
os.environ["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "recflow"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # an xdist worker's __main__ has neither __spec__ nor __file__, which pyspark.sql.connect takes for a doctest
    # run and sys.exit()s on import (Great Expectations imports it). Import it once as a plain process would;
    # where it cannot be imported (no zstandard here), later imports fail with ImportError, as they do there.
    _main = sys.modules["__main__"]
    _main.__file__ = __file__
    try:
        import pyspark.sql.connect  # noqa: F401
    except ImportError:
        sys.modules["pyspark.sql.connect"] = None  # type: ignore[assignment]
    finally:
        del _main.__file__

SHARED_DATA = Path(
    os.environ.get("RECFLOW_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from pyspark.sql import SparkSession

    from storage.spark_jvm import spark_jvm_options

    session = (
        SparkSession.builder.master("local[2]")
        .appName("recflow-tests")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        # the quick (C1) compiler alone: tests are many tiny queries, each compiling its own code, and finish sooner
        # without waiting for C2 (tests/test_clean.py + test_features.py: 91 s against 129 s). Not for the jobs:
        # features at 16M events took 201 s with it against 119 s without (CHANGELOG, 0.1.0)
        .config("spark.driver.extraJavaOptions", f"{spark_jvm_options()} -XX:TieredStopAtLevel=1")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture()
def tmp_lake(tmp_path: Path) -> str:
    root = tmp_path / "lake"
    root.mkdir()
    return str(root)


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """``../shared/data`` (or RECFLOW_SHARED_DATA); tests that need it skip with a clear message without it."""
    if not (SHARED_DATA / "ml-100k-split" / "train.tsv").exists():
        pytest.skip(
            f"MovieLens data not found at {SHARED_DATA} (set RECFLOW_SHARED_DATA); licence forbids shipping it"
        )
    return SHARED_DATA


# ---- Airflow: one metadata DB and one tiny end-to-end run for the whole session ----------------------------------
@pytest.fixture(scope="session")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)  # as Airflow parses a bundle


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite metadata DB in the tests' Airflow home (``dag.test`` needs one)."""
    home = os.environ["AIRFLOW_HOME"]
    Path(home).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    return home


# Tiny sizes and relaxed quality thresholds: the run must finish in minutes, not prove model quality.
TINY_NIGHTLY = {
    "users": 300,
    "items": 200,
    "events_per_day": 4000,
    "window_days": 3,
    "epochs": 2,
    "top_n": 10,
    "min_recall_at_k": 0.0,
    "min_ndcg_at_k": 0.0,
    "min_lift_over_popularity": -1.0,
    "max_cold_start_share": 1.0,
    "volume_band": 0.9,
}
TINY_RUN_DATE = "2026-01-08"


def run_nightly(dagbag: Any, lake_root: str, run_date: str, **conf: Any) -> Any:
    """``dag.test()`` of recflow_nightly for ``run_date`` on ``lake_root`` (TINY_NIGHTLY conf + ``conf``).

    The lake root reaches the run through RECFLOW_LAKE_ROOT (a setting, not a param), set only for the run.
    """
    overrides = {"RECFLOW_LAKE_ROOT": lake_root, "RECFLOW_SHUFFLE_PARTITIONS": "2"}
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        logical_date = dt.datetime.fromisoformat(run_date).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
        return dagbag.dags["recflow_nightly"].test(
            logical_date=logical_date, run_conf={**TINY_NIGHTLY, "run_date": run_date, **conf}
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_run(dagbag: Any, airflow_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``dag.test()`` of recflow_nightly with demo data on a tiny lake (about 2-4 minutes), shared by the
    end-to-end checks, the defect test (which runs the next day on the same lake) and the privacy scan."""
    lake_root = str(tmp_path_factory.mktemp("e2e") / "lake")
    dag_run = run_nightly(dagbag, lake_root, TINY_RUN_DATE, generate_demo_data=True)
    return {"dag_run": dag_run, "lake_root": lake_root, "run_date": TINY_RUN_DATE}


# ---- parallel runs (make test: pytest -n 2 --no-loadscope-reorder) ----------------------------------------------
# pytest-xdist hands each worker whole units of work: one per test module, so a module's fixtures are built once,
# and one for the modules sharing the session's tiny DAG run, so that run happens once. The two longest units
# (about 3 minutes each) are collected first, so that each worker starts with one and the rest fill in behind.
# (xdist's own loadgroup marks do not take with pytest 9, which no longer reads ``item._nodeid``.)
TINY_RUN_UNIT = "tiny_run"
TINY_RUN_MODULES = (
    "tests/test_dags.py",
    "tests/test_e2e_defect.py",
    "tests/test_privacy.py",
    "tests/test_lineage.py",
)
LONGEST_UNITS = (TINY_RUN_UNIT, "tests/test_cluster.py")


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def unit_of_work(nodeid: str) -> str:
    module = module_of(nodeid)
    return TINY_RUN_UNIT if module in TINY_RUN_MODULES else module


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: inert without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByUnitOfWork(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_work(nodeid)

    return ByUnitOfWork(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    users = {module_of(item.nodeid) for item in items if "tiny_run" in getattr(item, "fixturenames", ())}
    assert users <= set(TINY_RUN_MODULES), f"add {sorted(users - set(TINY_RUN_MODULES))} to TINY_RUN_MODULES"
    first = {unit: rank for rank, unit in enumerate(LONGEST_UNITS)}
    order = {item.nodeid: index for index, item in enumerate(items)}
    items.sort(key=lambda item: (first.get(unit_of_work(item.nodeid), len(first)), order[item.nodeid]))
