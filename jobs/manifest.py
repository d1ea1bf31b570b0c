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
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import lake
from schemas.outputs import RUN

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
            f"{what}: {rows_in} rows in but {listed} = {total} out (difference {rows_in - total})")


# ---- files: local or through Spark's Hadoop FileSystem --------------------------------------------------------
def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file:")


def _local(path: str) -> Path:
    return Path(path.removeprefix("file://").removeprefix("file:"))


def _hadoop(spark: Any, path: str) -> tuple[Any, Any]:
    if spark is None:
        raise ValueError(f"{path} is not a local path: pass the job's SparkSession to reach it")
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def exists(path: str, spark: Any = None) -> bool:
    if _is_local(path) and spark is None:
        return _local(path).exists()
    fs, hpath = _hadoop(spark, path)
    return bool(fs.exists(hpath))


def write_bytes(path: str, data: bytes, spark: Any = None) -> None:
    """Write via a temporary sibling then rename, so readers see the old file or the new one, never half."""
    if _is_local(path) and spark is None:
        target = _local(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return
    if spark is None:  # a stage without a SparkSession (publish) on a remote lake: pyarrow's filesystems
        from models.lake_io import write_bytes_atomic

        write_bytes_atomic(path, data)
        return
    fs, hpath = _hadoop(spark, path)
    jvm = spark.sparkContext._jvm
    tmp = jvm.org.apache.hadoop.fs.Path(hpath.getParent(), f".{hpath.getName()}.{uuid.uuid4().hex}.tmp")
    out = fs.create(tmp, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()
    if fs.exists(hpath):
        fs.delete(hpath, False)
    if not fs.rename(tmp, hpath):
        raise OSError(f"could not rename {tmp} to {path}")


def read_bytes(path: str, spark: Any = None) -> bytes:
    if _is_local(path) and spark is None:
        return _local(path).read_bytes()
    fs, hpath = _hadoop(spark, path)
    stream = fs.open(hpath)
    try:
        chunks = []
        buffer = bytearray(1 << 16)
        while True:
            n = stream.read(buffer)
            if n <= 0:
                break
            chunks.append(bytes(buffer[:n]))
        return b"".join(chunks)
    finally:
        stream.close()


# ---- manifests -------------------------------------------------------------------------------------------------
def manifest_exists(root: str, stage: str, date: lake.DateLike, spark: Any = None) -> bool:
    return exists(lake.run_manifest(root, stage, date), spark)


def read_manifest(root: str, stage: str, date: lake.DateLike, spark: Any = None) -> dict[str, Any] | None:
    path = lake.run_manifest(root, stage, date)
    if not exists(path, spark):
        return None
    loaded: dict[str, Any] = json.loads(read_bytes(path, spark))
    return loaded


def write_manifest(root: str, stage: str, date: lake.DateLike, manifest: Mapping[str, Any],
                   spark: Any = None) -> str:
    path = lake.run_manifest(root, stage, date)
    write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode(), spark)
    return path


def record_stage(root: str, stage: str, date: lake.DateLike, counts: Mapping[str, Any], seconds: float,
                 spark: Any = None, **extra: Any) -> dict[str, Any]:
    """The manifest of a stage that reports counts only (features, score, publish): ``counts`` holds ``rows_in``,
    ``rows_out`` and what else the stage counts (users, items, rows per table). Written with
    :func:`write_manifest` and :func:`record_run` like clean's; returns it."""
    ds = date if isinstance(date, str) else date.isoformat()
    finished_at = utc_now()
    manifest = {"stage": stage, "dt": ds, "run_id": new_run_id(stage),
                "started_at": (finished_at - dt.timedelta(seconds=seconds)).isoformat(),
                "finished_at": finished_at.isoformat(), "seconds": round(seconds, 2), "counts": dict(counts), **extra}
    write_manifest(root, stage, date, manifest, spark)
    record_run(root, stage, date, manifest, spark)
    return manifest


def record_run(root: str, stage: str, date: lake.DateLike, manifest: Mapping[str, Any],
               spark: Any = None) -> str:
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
    write_bytes(path, buffer.getvalue(), spark)
    return path


def read_runs(root: str) -> pa.Table:
    """The whole local ``runs/table`` (stage and dt from the partition folders)."""
    import pyarrow.dataset as ds

    return ds.dataset(str(_local(lake.table(root, RUNS_TABLE))), format="parquet", partitioning="hive").to_table()


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
