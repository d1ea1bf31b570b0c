"""The one way jobs get a SparkSession and read/write lake partitions."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
from pyspark import SparkConf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from schemas import lake
from schemas.settings import Settings
from schemas.spark import to_spark
from storage.spark_jvm import spark_jvm_options

CONCURRENT_JOBS = 4  # Spark jobs submitted at once by in_parallel


def spark_session(settings: Settings, app: str) -> SparkSession:
    """Session for a job. Under spark-submit the master comes from the submit; alone, from settings."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.appName(f"recflow-{app}")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.shuffle.partitions", os.environ.get("RECFLOW_SHUFFLE_PARTITIONS", "8"))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # the contracts say timestamp[us, UTC]; Spark's default INT96 reads back in pyarrow as naive ns
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
    )
    # spark-submit gives the master (--master) to the JVM that started this process; SparkConf() cannot see it
    # before a context exists, so spark-submit is recognised by the gateway it hands over. Plain python: settings.
    under_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if not under_spark_submit and not SparkConf().contains("spark.master"):
        builder = builder.master(settings.spark_master)
    if not under_spark_submit and (options := spark_jvm_options()):  # this process starts the JVM
        builder = builder.config("spark.driver.extraJavaOptions", options)
    return builder.getOrCreate()


def read_partition(
    spark: SparkSession, root: str, name: str, date: dt.date | str, schema: pa.Schema | None = None
) -> DataFrame:
    reader = spark.read
    if schema is not None:
        reader = reader.schema(to_spark(schema))
    return reader.parquet(lake.partition(root, name, date))


def read_partitions(
    spark: SparkSession, root: str, name: str, dates: list[dt.date], schema: pa.Schema | None = None
) -> DataFrame:
    """Several dates of one table, with a ``dt`` (date) column; dates without a partition are skipped."""
    paths = [lake.partition(root, name, d) for d in dates]
    existing = [p for p in paths if path_exists(spark, p)]
    if not existing:
        raise FileNotFoundError(f"no partitions of {lake.table(root, name)} for {dates[0]}..{dates[-1]}")
    reader = spark.read.option("basePath", lake.table(root, name))
    if schema is not None:
        reader = reader.schema(to_spark(schema).add("dt", "date"))
    return reader.parquet(*existing)


def write_partition(
    df: DataFrame, root: str, name: str, date: dt.date | str, schema: pa.Schema | None = None
) -> None:
    """Replace exactly ``dt=date`` of the table (dynamic partition overwrite), checking the contract first."""
    if schema is not None:
        check_schema(df, schema, name)
        df = df.select(*schema.names)
    ds = date if isinstance(date, str) else date.isoformat()
    (df.withColumn("dt", F.lit(ds)).write.mode("overwrite").partitionBy("dt").parquet(lake.table(root, name)))


def check_schema(df: DataFrame, schema: pa.Schema, name: str = "table") -> None:
    """Fail naming the columns if ``df`` does not carry the declared columns with the declared types."""
    expected = {f.name: f.dataType for f in to_spark(schema).fields}
    actual = {f.name: f.dataType for f in df.schema.fields}
    missing = sorted(set(expected) - set(actual))
    wrong = sorted(c for c in expected if c in actual and actual[c] != expected[c])
    if missing or wrong:
        details = [f"missing {missing}"] if missing else []
        details += [f"{c}: {actual[c].simpleString()} != {expected[c].simpleString()}" for c in wrong]
        raise ValueError(f"{name} does not match its schema: " + "; ".join(details))


def hadoop_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """(FileSystem, Path) of ``path`` through the session's Hadoop configuration (any lake URI)."""
    hpath = _jvm(spark).org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def _jvm(spark: SparkSession) -> Any:
    """The session's py4j JVM view (None only before a context exists, which a session rules out)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    return jvm


def path_exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = hadoop_path(spark, path)
    return bool(fs.exists(hpath))


def delete_path(spark: SparkSession, path: str) -> None:
    """Remove a file or folder (recursively) through the session's Hadoop FileSystem; nothing if absent."""
    fs, hpath = hadoop_path(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def write_bytes(spark: SparkSession, path: str, data: bytes) -> None:
    """Write a small file via a temporary sibling and a rename: readers see the old file or the new one."""
    fs, hpath = hadoop_path(spark, path)
    tmp = _jvm(spark).org.apache.hadoop.fs.Path(
        hpath.getParent(), f".{hpath.getName()}.{uuid.uuid4().hex}.tmp"
    )
    out = fs.create(tmp, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()
    if fs.exists(hpath):
        fs.delete(hpath, False)
    if not fs.rename(tmp, hpath):
        raise OSError(f"could not rename {tmp} to {path}")


def read_bytes(spark: SparkSession, path: str) -> bytes:
    fs, hpath = hadoop_path(spark, path)
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


def empty_parquet(schema: pa.Schema) -> bytes:
    """A valid Parquet file with ``schema`` and no rows (what Spark writes for an empty frame, without a job)."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    return bytes(sink.getvalue().to_pybytes())


def write_empty_partition(
    spark: SparkSession, root: str, name: str, date: dt.date | str, schema: pa.Schema
) -> None:
    """Replace the ``dt=date`` folder of the table by one empty Parquet file carrying the schema.

    Spark's dynamic overwrite never touches a partition the new data has no row for, so an empty day has to be
    written explicitly; writing the file directly (any Hadoop-compatible lake) costs no Spark job per day.
    """
    folder = lake.partition(root, name, date)
    delete_path(spark, folder)
    write_bytes(spark, f"{folder}/part-00000-empty.parquet", empty_parquet(schema))
    write_bytes(spark, f"{folder}/_SUCCESS", b"")


def run_staging(root: str, stage: str, run_id: str) -> str:
    """A run's private lake root for its outputs, ``staging/<stage>_outputs/<run id>``: a stage writes its tables
    there with the lake's layout, then :func:`replace_partitions` moves them into place. Safe to delete after a
    killed run."""
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)  # Airflow run ids hold ':' and '+'
    return lake.table(root, f"{lake.STAGING}/{stage}_outputs/{safe_id}")


def replace_partitions(spark: SparkSession, moves: Sequence[tuple[str, str]], aside: str) -> None:
    """Moves every staged folder ``src`` onto its published path ``dst`` (replacing what is there), by renames
    through the Hadoop FileSystem: all of them, or, when one fails, none (the done ones are moved back).

    Every source and every destination's parent folder is checked before the first rename, so the usual
    failures (a missing staged folder, a file where a table folder must be) change nothing. A replaced ``dst``
    is first renamed to ``aside/<n>`` (a Hadoop rename onto an existing folder would nest into it); the caller
    deletes ``aside`` with the rest of its staging. A process killed between the renames leaves some partitions
    replaced and others not, each whole: a rerun of the date replaces them all again.
    """
    jvm = _jvm(spark)
    planned = []
    for n, (src, dst) in enumerate(moves):
        fs, source = hadoop_path(spark, src)
        target = jvm.org.apache.hadoop.fs.Path(dst)
        if not fs.exists(source):
            raise FileNotFoundError(f"cannot publish {dst}: its staged copy {src} does not exist")
        parent = target.getParent()
        try:
            ready = bool(fs.mkdirs(parent)) and bool(fs.getFileStatus(parent).isDirectory())
        except Exception as err:  # py4j error of a Hadoop IOException, e.g. a file in the way
            raise OSError(f"cannot publish {dst}: {parent} is not a folder ({err})") from err
        if not ready:
            raise OSError(f"cannot publish {dst}: {parent} is not a folder")
        planned.append((fs, source, target, jvm.org.apache.hadoop.fs.Path(f"{aside}/{n}")))
    done: list[tuple[Any, Any, Any, Any, bool]] = []
    try:
        for fs, source, target, aside_n in planned:
            replaced = bool(fs.exists(target))
            if replaced:
                try:
                    fs.mkdirs(aside_n.getParent())
                except Exception as err:  # py4j error of a Hadoop IOException, e.g. a file in the way
                    raise OSError(f"cannot set {target} aside under {aside}: {err}") from err
                _rename(fs, target, aside_n)
            try:
                _rename(fs, source, target)
            except Exception:
                if replaced:
                    _rename(fs, aside_n, target)
                raise
            done.append((fs, source, target, aside_n, replaced))
    except Exception:
        for fs, source, target, aside_n, replaced in reversed(done):
            _rename(fs, target, source)
            if replaced:
                _rename(fs, aside_n, target)
        raise


def _rename(fs: Any, source: Any, target: Any) -> None:
    if not fs.rename(source, target):
        raise OSError(f"could not rename {source.toString()} to {target.toString()}")


def in_parallel(actions: Sequence[Callable[[], Any]], threads: int = CONCURRENT_JOBS) -> list[Any]:
    """Runs independent Spark actions (writes of different tables, counts) from a few driver threads; returns
    their results in order and re-raises the first error. Small jobs spend most of their time in the driver
    (planning, scheduling, the commit), so submitted together their tasks fill the cores the others leave idle.
    They must not write the same table (each write has its own staging folder per table)."""
    if len(actions) <= 1 or threads <= 1:
        return [action() for action in actions]
    with ThreadPoolExecutor(min(threads, len(actions)), thread_name_prefix="spark-action") as pool:
        futures = [pool.submit(action) for action in actions]
        return [future.result() for future in futures]
