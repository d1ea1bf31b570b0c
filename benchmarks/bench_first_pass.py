"""Benchmark: where clean's first pass goes, piece by piece, against the floor's own JSON reader (warm JVM).

    python -m benchmarks.bench_first_pass [--events 1000000] [--rounds 3] [--work /tmp/recflow-bench-clean]

On one raw lake of ``bench_clean.py`` (the same generator and files), one Spark session (local[2], 2 GB driver)
runs each step below once to warm the JVM, then ``--rounds`` times in turn; the table gives the median seconds. The
steps without a write end in Spark's ``noop`` sink, which evaluates every column and writes nothing:

* text             the raw lines as text, no parse
* json reader      the floor's parse: Spark's JSON reader with the declared schema (the peer)
* from_json        clean's field parse (every declared field as text, on the line kept as text)
* json_object_keys clean's second parse: the top-level key names (schema drift)
* parse_events     both parses, as ``jobs.clean.parse_events`` does them
* flag_events      + the row rules, line hashes and row ids (``jobs.clean.flag_events``: what clean stages)
* floor            the json reader's rows written as Parquet (what ``bench_clean.py`` times as the floor)
* first pass       ``flag_events`` written as Parquet: clean's first pass, before any dedupe, routing or write
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from benchmarks.bench_clean import DAYS, RUN_DATE, SPARK_ENV, generate, raw_lines

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REPO = Path(__file__).resolve().parents[1]

Step = Callable[[], None]


def steps(spark: SparkSession, raw: Path, out: Path) -> dict[str, Step]:
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from jobs import clean
    from schemas.raw import RAW_EVENT
    from schemas.settings import Settings
    from schemas.spark import to_spark

    settings = Settings.load()
    as_text = T.StructType([T.StructField(name, T.StringType()) for name in clean.EVENT_FIELDS])
    dates = [(RUN_DATE - dt.timedelta(days=back)).isoformat() for back in range(DAYS - 1, -1, -1)]

    def lines() -> DataFrame:  # the lake's every day, read as clean reads them
        return clean.extract_events(spark, str(raw), dates)

    def noop(df: Callable[[], DataFrame]) -> Step:
        return lambda: df().write.format("noop").mode("overwrite").save()

    def parquet(df: Callable[[], DataFrame]) -> Step:
        return lambda: df().write.mode("overwrite").parquet(str(out))

    def json_reader() -> DataFrame:
        return spark.read.schema(to_spark(RAW_EVENT)).json(str(raw / "raw/events"))

    return {
        "text": noop(lines),
        "json reader": noop(json_reader),
        "from_json": noop(lambda: lines().select(F.from_json("value", as_text).alias("j")).select("j.*")),
        "json_object_keys": noop(lambda: lines().select(F.json_object_keys("value"))),
        "parse_events": noop(lambda: clean.parse_events(lines())),
        "flag_events": noop(lambda: clean.flag_events(lines(), settings)),
        "floor": parquet(json_reader),
        "first pass": parquet(lambda: clean.flag_events(lines(), settings)),
    }


def run(events: int, rounds: int, work: Path) -> str:
    import os

    from pyspark.sql import SparkSession

    os.environ.update({k: v for k, v in SPARK_ENV.items() if k != "PYSPARK_SUBMIT_ARGS"})
    raw = generate(work, events)
    lines = raw_lines(raw)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "2g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    todo = steps(spark, raw, work / "first-pass-out")
    seconds: dict[str, list[float]] = {name: [] for name in todo}
    for round_no in range(rounds + 1):  # round 0 warms the JVM (class loading, JIT) and is not counted
        for name, step in todo.items():
            started = time.perf_counter()
            step()
            if round_no:
                seconds[name].append(time.perf_counter() - started)
        print(f"  round {round_no} done", flush=True)
    spark.stop()
    median = {name: statistics.median(values) for name, values in seconds.items()}
    peer, floor = median["json reader"], median["floor"]
    out = [
        f"{lines:,} raw lines (bench_clean.py's {events:,}-event lake, {DAYS} days), median of {rounds} warm rounds",
        "",
        "| step | s | wall µs per line | × json reader | × floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, value in median.items():
        out.append(
            f"| {name} | {value:.2f} | {value / lines * 1e6:.2f} | {value / peer:.2f} | {value / floor:.2f} |"
        )
    text = "\n".join(out)
    print(text)
    (work / f"bench_first_pass-{events}.md").write_text(text + "\n")
    return text


@pytest.mark.bench
def test_bench_first_pass(tmp_path_factory: pytest.TempPathFactory) -> None:
    assert "| first pass |" in run(200_000, 1, tmp_path_factory.mktemp("bench_first_pass"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/recflow-bench-clean")
    args = parser.parse_args()
    run(args.events, args.rounds, Path(args.work))
