"""A class-data-sharing archive of the classes a Spark driver loads, so each Spark JVM starts in about half the time.

Every stage is its own spark-submit, and each JVM spent ~15 s loading and verifying Spark's classes before its
first result (9 s to a session, 6 s more for the first job), whatever the data size. An AppCDS archive (JDK 13+:
``-XX:ArchiveClassesAtExit`` once, ``-XX:SharedArchiveFile`` after) maps them in ready-made: 4–13 s less per JVM
(docs/benchmarks.md, "Spark start-up").

``make install`` builds it once per venv (``python -m tools.class_archive``). It belongs to one JDK and one Spark
classpath: ``spark_jvm_options()`` offers it only while the stamp beside it matches both, and the JVM itself
falls back to loading classes normally if it does not fit (``-Xshare:auto``, its warning silenced), so a stale
or missing archive costs start-up time, never a failure.

    python -m tools.class_archive [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from storage.spark_jvm import ARCHIVE, QUIET, STAMP, archive_is_current, fingerprint, java_binary

# What a stage's driver does in local mode, in miniature, so the archive holds those classes: JSON read with a
# schema, window, join, aggregation, Parquet write and read, and an Arrow exchange with a Python worker.
_WORKLOAD = """
import sys, tempfile
from pyspark.sql import SparkSession, Window, functions as F
spark = (SparkSession.builder.master("local[2]").appName("recflow-class-archive")
         .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
         .config("spark.sql.execution.arrow.pyspark.enabled", "true")
         .config("spark.driver.extraJavaOptions", sys.argv[1]).getOrCreate())
work = tempfile.mkdtemp()
with open(f"{work}/e.json", "w") as out:
    out.writelines(f'{{"u": {i % 17}, "i": {i % 29}, "t": "2026-01-0{1 + i % 9}T00:00:00Z"}}\\n' for i in range(2000))
events = spark.read.schema("u long, i long, t timestamp, x string").json(f"{work}/e.json")
ranked = events.withColumn("r", F.row_number().over(Window.partitionBy("u").orderBy(F.desc("t"), "i")))
joined = ranked.join(events.groupBy("i").agg(F.count("*").alias("n")), "i").withColumn("d", F.to_date("t"))
joined.write.mode("overwrite").partitionBy("d").parquet(f"{work}/p")
back = spark.read.parquet(f"{work}/p")
back.groupBy("u").agg(F.collect_list("i").alias("h"), F.max("n")).collect()
back.mapInArrow(lambda batches: batches, back.schema).count()
back.toArrow()
spark.stop()
"""


def build(force: bool = False) -> bool:
    """(Re)build the archive unless it is current; True if one is usable afterwards."""
    if not force and archive_is_current():
        return True
    if java_binary() is None:
        print("class archive: no java (JAVA_HOME or PATH), skipped (Spark JVMs start without it)")
        return False
    ARCHIVE.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        target = (
            Path(work) / "classes.jsa"
        )  # dumped aside, then moved in: a reader never maps a partial archive
        env = {
            **os.environ,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
        }
        done = subprocess.run(
            [sys.executable, "-c", _WORKLOAD, f"-XX:ArchiveClassesAtExit={target} {QUIET}"],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not target.is_file():
            print(f"class archive: not built (Spark JVMs start without it): {done.stderr.strip()[-600:]}")
            return False
        shutil.move(str(target), ARCHIVE)
    STAMP.write_text(json.dumps(fingerprint()))
    print(
        f"class archive: {ARCHIVE} ({ARCHIVE.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.0f} s"
    )
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the archive is current")
    build(parser.parse_args(argv).force)


if __name__ == "__main__":
    main()
