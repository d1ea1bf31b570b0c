"""Shared fixtures: one local SparkSession for the whole test session, a fresh lake per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

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

SHARED_DATA = Path(os.environ.get("RECFLOW_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from pyspark.sql import SparkSession

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
        pytest.skip(f"MovieLens data not found at {SHARED_DATA} (set RECFLOW_SHARED_DATA); licence forbids shipping it")
    return SHARED_DATA
