"""Run manifests and the ``runs/table`` bookkeeping table, shared by every stage.

Each stage run for a date writes ``runs/<stage>/dt=D/manifest.json`` (what went in, where every row went, schema
drift, notes) and one row in the Parquet table ``runs/table/stage=<stage>/dt=D/`` (schema ``schemas.outputs.RUN``).
Both are replaced on a rerun of the date, so the table holds exactly one row per (stage, dt).

Timestamps and run ids of the run live here and only here: data tables carry nothing run-time dependent, so two
runs of a date produce identical data.

Paths may be local or any Hadoop-compatible URI; for the latter pass the job's SparkSession (its Hadoop FileSystem
does the IO). Non-Spark stages (train, evaluate) use local paths without a session.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import lake
from schemas.outputs import RUN
from storage import lake_io

RUNS_TABLE = f"{lake.RUNS}/table"


class ReconciliationError(RuntimeError):
    """Rows in != rows out: something was lost or invented between input and output."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_run_id(stage: str) -> str:
    """Airflow's run id when running under Airflow (so manifests link to the run), else a fresh unique id."""
    airflow_run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    suffix = uuid.uuid4().hex[:8]
    return f"{stage}-{airflow_run}-{suffix}" if airflow_run else f"{stage}-{suffix}"


def reconcile(what: str, rows_in: int, parts: Mapping[str, int]) -> None:
    """Raise naming every number unless ``rows_in == sum(parts)`` exactly."""
    total = sum(parts.values())
    if total != rows_in:
        listed = " + ".join(f"{name} {count}" for name, count in parts.items())
        raise ReconciliationError(
            f"{what}: {rows_in} rows in but {listed} = {total} out (difference {rows_in - total})"
        )


# ---- files: through the job's SparkSession (its Hadoop FileSystem) when given, else pyarrow ------------------
def _exists(path: str, spark: Any) -> bool:
    if spark is None:
        return lake_io.exists(path)
    from storage.spark import path_exists

    return path_exists(spark, path)


def _write_bytes(path: str, data: bytes, spark: Any) -> None:
    """Readers see the old file or the new one, never half."""
    if spark is None:
        lake_io.write_bytes_atomic(path, data)
        return
    from storage.spark import write_bytes

    write_bytes(spark, path, data)


def _read_bytes(path: str, spark: Any) -> bytes:
    if spark is None:
        return lake_io.read_bytes(path)
    from storage.spark import read_bytes

    return read_bytes(spark, path)


# ---- manifests -------------------------------------------------------------------------------------------------
def manifest_exists(root: str, stage: str, date: lake.DateLike, spark: Any = None) -> bool:
    return _exists(lake.run_manifest(root, stage, date), spark)


def read_manifest(root: str, stage: str, date: lake.DateLike, spark: Any = None) -> dict[str, Any] | None:
    path = lake.run_manifest(root, stage, date)
    if not _exists(path, spark):
        return None
    loaded: dict[str, Any] = json.loads(_read_bytes(path, spark))
    return loaded


def write_manifest(
    root: str, stage: str, date: lake.DateLike, manifest: Mapping[str, Any], spark: Any = None
) -> str:
    path = lake.run_manifest(root, stage, date)
    _write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode(), spark)
    return path


def record_stage(
    root: str,
    stage: str,
    date: lake.DateLike,
    counts: Mapping[str, Any],
    seconds: float,
    spark: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest of a stage that reports counts only (features, score, publish): ``counts`` holds ``rows_in``,
    ``rows_out`` and what else the stage counts (users, items, rows per table). Written with
    :func:`write_manifest` and :func:`record_run` like clean's; returns it."""
    ds = date if isinstance(date, str) else date.isoformat()
    finished_at = utc_now()
    manifest = {
        "stage": stage,
        "dt": ds,
        "run_id": new_run_id(stage),
        "started_at": (finished_at - dt.timedelta(seconds=seconds)).isoformat(),
        "finished_at": finished_at.isoformat(),
        "seconds": round(seconds, 2),
        "counts": dict(counts),
        **extra,
    }
    write_manifest(root, stage, date, manifest, spark)
    record_run(root, stage, date, manifest, spark)
    return manifest


def record_run(
    root: str, stage: str, date: lake.DateLike, manifest: Mapping[str, Any], spark: Any = None
) -> str:
    """Replace the (stage, dt) row of ``runs/table`` with this run's ids, times and counts."""
    ds = date if isinstance(date, str) else date.isoformat()
    row = {
        "run_id": [str(manifest["run_id"])],
        "started_at": [_timestamp(manifest["started_at"])],
        "finished_at": [_timestamp(manifest["finished_at"])],
        "counts_json": [json.dumps(manifest.get("counts", {}), sort_keys=True)],
    }
    # ``stage`` and ``dt`` are the partition folders, as Spark writes them; the files hold the other columns
    file_schema = pa.schema([f for f in RUN if f.name != "stage"])
    buffer = io.BytesIO()
    pq.write_table(pa.table(row, schema=file_schema), buffer)
    path = f"{lake.table(root, RUNS_TABLE)}/stage={stage}/dt={ds}/part-0.parquet"
    _write_bytes(path, buffer.getvalue(), spark)
    return path


def read_runs(root: str) -> pa.Table:
    """The whole ``runs/table`` (stage and dt from the partition folders)."""
    import pyarrow.dataset as ds

    fs, path = lake_io.filesystem(lake.table(root, RUNS_TABLE))
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
