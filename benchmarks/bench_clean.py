"""Benchmark: Spark cleaning (+ features) against a plain Spark read -> write of the raw data and against DuckDB.

    make bench                                   # this script at its default sizes (BENCH_ARGS to change them)
    python -m benchmarks.bench_clean --events 1000000 4000000 [--work /tmp/recflow-bench-clean]

For each size the raw lake is generated once (``demo.generate``, 7 days, 1% corrupt rows), then each step runs in
its own process, timed from start to exit (JVM start included, as a nightly task pays it), while /proc is sampled
for the peak RSS of the process tree (the JVM and the Python driver):

* floor   Spark reads the raw JSON lines with the declared schema and writes them as Parquet, nothing else
* clean   ``python -m jobs.clean`` for the last day with the window covering all 7 days (one backfill run)
* +feat   ``python -m jobs.features`` on the cleaned lake, when that job exists and succeeds
* duckdb  the same cleaning rules in DuckDB SQL (same checks, dedupe, bot windows, catalogue join, HMAC pseudonyms,
          Parquet out), 2 threads

Spark steps get ``--driver-memory 2g`` (local[2]); DuckDB gets ``memory_limit=2GB``. Timings on a shared 2-core
machine are noisy: the table also gives the CPU seconds used by the step's processes, which are steadier, and the
part of them spent by the JVM's JIT compiler threads (each query's generated code is compiled anew, in every
task).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
RUN_DATE = dt.date(2026, 1, 14)
DAYS = 7
SPARK_ENV = {
    "PYSPARK_PYTHON": PY,
    "PYSPARK_DRIVER_PYTHON": PY,
    "SPARK_LOCAL_IP": "127.0.0.1",
    "PYSPARK_SUBMIT_ARGS": "--driver-memory 2g pyspark-shell",
    "RECFLOW_PSEUDONYM_KEY": os.environ.get("RECFLOW_PSEUDONYM_KEY", "benchmark-only-key"),
    "RECFLOW_SPARK_MASTER": "local[2]",
}

FLOOR_SCRIPT = """
import sys
from pyspark.sql import SparkSession
from schemas.raw import RAW_EVENT
from schemas.spark import to_spark
raw, out = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .config("spark.sql.session.timeZone", "UTC").config("spark.driver.host", "127.0.0.1").getOrCreate())
spark.read.schema(to_spark(RAW_EVENT)).json(raw + "/raw/events").write.mode("overwrite").parquet(out)
"""


# ---- measuring ---------------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = [pid]
    try:
        table = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        table[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        frontier = [pid]
        while frontier:
            parent = frontier.pop()
            kids = [p for p, pp in table.items() if pp == parent]
            found += kids
            frontier += kids
    except OSError:
        pass
    return found


def _stat_cpu(stat_path: str) -> float:
    """user+system CPU seconds from a /proc ``stat`` file (a process's or one of its threads')."""
    with open(stat_path) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_and_cpu(pid: int) -> tuple[int, float]:
    """(RSS bytes, user+system CPU seconds) of one process, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return rss, _stat_cpu(f"/proc/{pid}/stat")
    except (OSError, IndexError, ValueError):
        return 0, 0.0


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # HotSpot's compiler threads (names cut to 15 chars)


def _jit_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each JIT compiler thread of one process (none for a process that is not a JVM)."""
    found = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                    if not fh.read().startswith(JIT_THREADS):
                        continue
                found[int(tid)] = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        pass
    return found


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd``; wall seconds, peak RSS of its process tree (MB), CPU seconds of that tree and the part of them
    the JVM's JIT compiler threads used (sampled each second: the last second of a run may be missed)."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        peak, cpu_by_pid, jit_by_tid, samples = 0, {}, {}, 0
        while proc.poll() is None:
            total = 0
            for pid in _children(proc.pid):
                rss, cpu = _rss_and_cpu(pid)
                total += rss
                if cpu:
                    cpu_by_pid[pid] = cpu
                if samples % 5 == 0:
                    jit_by_tid.update(_jit_cpu(pid))
            peak = max(peak, total)
            samples += 1
            time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {
        "wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "cpu_s": sum(cpu_by_pid.values()),
        "jit_cpu_s": sum(jit_by_tid.values()),
    }


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


# ---- the DuckDB reference --------------------------------------------------------------------------------------------
def duckdb_clean(root: str, out: str, settings_json: str) -> None:
    """The cleaning rules of jobs/clean.py in DuckDB SQL (a single-machine user's alternative)."""
    import duckdb

    from jobs.pseudonymise import _pads
    from schemas.raw import RAW_EVENT, REQUIRED_EVENT_FIELDS, SCENARIO_EVENT_TYPES

    s = json.loads(settings_json)
    key = os.environ["RECFLOW_PSEUDONYM_KEY"].encode()
    inner, outer = (pad.hex() for pad in _pads(key))
    fields = RAW_EVENT.names
    paths = _sql_list(sorted(str(p) for p in Path(root, "raw/events").rglob("*.jsonl*")))
    item_paths = _sql_list(sorted(str(p) for p in Path(root, "raw/items").rglob("*.jsonl")))
    types = ", ".join(f"'{t}'" for t in SCENARIO_EVENT_TYPES[s["scenario"]])
    blank = " OR ".join(f"coalesce(trim({f}), '') = ''" for f in REQUIRED_EVENT_FIELDS if f != "user_id")
    structured = " OR ".join(
        f"left(ltrim({f}), 1) IN ('{{', '[')"
        for f in ("event_id", "user_id", "session_id", "event_type", "item_id")
    )
    longest = "greatest(" + ", ".join(f"coalesce(length({f}), 0)" for f in fields) + ")"
    mx = s["max_field_chars"]
    for table_dir in ("clean", "quarantine"):
        Path(out, table_dir).mkdir(parents=True, exist_ok=True)
    db = duckdb.connect()
    db.execute("SET threads TO 2; SET memory_limit = '2GB'; SET preserve_insertion_order = false;")
    db.execute(f"""
    CREATE TEMP TABLE items AS
      SELECT DISTINCT regexp_extract(filename, 'dt=([0-9-]+)', 1) AS dt, item_id
      FROM read_json({item_paths}, columns={{item_id: 'VARCHAR'}}, filename=true, format='newline_delimited')
      WHERE coalesce(trim(item_id), '') <> '';
    CREATE TEMP TABLE routed AS
    WITH lines AS (
      SELECT regexp_extract(filename, 'dt=([0-9-]+)', 1) AS dt, filename AS source_file, coalesce(line, '') AS line
      FROM read_csv({paths}, columns={{'line': 'VARCHAR'}}, header=false, delim=chr(1), quote='', escape='',
                    auto_detect=false, ignore_errors=true, store_rejects=true, filename=true)
    ), parsed AS (
      SELECT *, CASE WHEN json_valid(line) AND starts_with(ltrim(line), '{{') THEN json_keys(line) END AS keys,
             CASE WHEN json_valid(line) AND starts_with(ltrim(line), '{{')
                  THEN json_extract_string(line, {_sql_list(["$." + f for f in fields])}) END AS v
      FROM lines
    ), fields AS (
      SELECT dt, source_file, line, keys, {", ".join(f"v[{i + 1}] AS {f}" for i, f in enumerate(fields))} FROM parsed
    ), typed AS (
      SELECT *, CASE WHEN regexp_matches(event_time, '^\\d{{4}}-\\d{{2}}-\\d{{2}}[T ]\\d{{2}}:\\d{{2}}')
                     THEN try_cast(event_time AS TIMESTAMPTZ) END AS event_ts,
             try_cast(price AS DOUBLE) AS price_value
      FROM fields
    ), checked AS (
      SELECT *, CASE
        WHEN contains(line, chr(65533)) THEN 'invalid_utf8'
        WHEN keys IS NULL THEN 'malformed_json'
        WHEN length(line) > {mx} AND {longest} > {mx} THEN 'oversized_field'
        WHEN coalesce(trim(user_id), '') = '' THEN 'null_user'
        WHEN {blank} THEN 'missing_field'
        WHEN {structured} OR event_ts IS NULL OR (price IS NOT NULL AND price_value IS NULL) THEN 'wrong_type'
        WHEN event_type NOT IN ({types}) THEN 'unknown_event_type'
        WHEN price_value IS NOT NULL AND (isnan(price_value) OR price_value < 0 OR price_value > {s["max_price"]})
          THEN 'invalid_price'
        WHEN CAST(timezone('UTC', event_ts) AS DATE) <> CAST(dt AS DATE) THEN 'timestamp_out_of_day'
      END AS reason FROM typed
    ), dedup AS (
      SELECT *, CASE WHEN reason IS NULL AND row_number() OVER (
                  PARTITION BY dt, CASE WHEN reason IS NULL THEN event_id ELSE source_file || line END
                  ORDER BY event_ts, source_file, line) > 1 THEN 'duplicate_event_id' ELSE reason END AS reason2
      FROM checked
    ), minutes AS (
      SELECT *, count(*) OVER (PARTITION BY dt, CASE WHEN reason2 IS NULL THEN user_id END,
                               date_trunc('minute', event_ts)) AS per_minute FROM dedup
    ), bots AS (
      SELECT *, max(per_minute) OVER (PARTITION BY dt, CASE WHEN reason2 IS NULL THEN user_id END) AS worst
      FROM minutes
    ), routed AS (
      SELECT b.*, CASE WHEN reason2 IS NOT NULL THEN reason2
                       WHEN worst > {s["bot_events_per_minute"]} THEN 'bot_user'
                       WHEN i.item_id IS NULL THEN 'unknown_item' END AS final_reason
      FROM bots b LEFT JOIN items i ON b.dt = i.dt AND b.item_id = i.item_id
    )
    SELECT dt, final_reason AS reason, final_reason AS detail,
           CASE WHEN final_reason IS NOT NULL THEN line END AS raw_line,
           CASE WHEN final_reason IS NOT NULL THEN source_file END AS source_file,
           event_id, timezone('UTC', event_ts) AS event_time,
           CASE WHEN final_reason IS NULL THEN left(sha256(unhex('{outer}') ||
                unhex(sha256(unhex('{inner}') || encode(user_id)))), 32) END AS user_id,
           session_id, event_type, item_id, price_value AS price,
           list_filter(keys, lambda k: NOT list_contains({_sql_list(fields)}::VARCHAR[], k)) AS extra_keys
    FROM routed;
    INSERT INTO routed (dt, reason, detail, raw_line, source_file)
      SELECT regexp_extract(s.file_path, 'dt=([0-9-]+)', 1), 'invalid_utf8', e.error_message, e.csv_line, s.file_path
      FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id);
    COPY (SELECT dt, event_id, event_time, user_id, session_id, event_type, item_id, price FROM routed
          WHERE reason IS NULL ORDER BY dt, event_time, event_id)
      TO '{out}/clean/events' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE_OR_IGNORE);
    COPY (SELECT dt, raw_line, reason, detail, source_file FROM routed WHERE reason IS NOT NULL)
      TO '{out}/quarantine/events' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE_OR_IGNORE);
    """)
    counts = db.execute(
        "SELECT coalesce(reason, 'clean'), count(*) FROM routed GROUP BY 1 ORDER BY 1"
    ).fetchall()
    print(json.dumps(dict(counts)))


# ---- the benchmark ---------------------------------------------------------------------------------------------------
def generate(work: Path, events: int) -> Path:
    root = work / f"raw-{events}"
    marker = root / ".generated"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(
            [
                PY,
                "-m",
                "demo.generate",
                "--date",
                RUN_DATE.isoformat(),
                "--days",
                str(DAYS),
                "--events-per-day",
                str(events // DAYS),
                "--lake-root",
                str(root),
                "--corrupt-share",
                "0.01",
            ],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        marker.write_text("ok\n")
    return root


def raw_lines(raw: Path) -> int:
    """Lines in a generated lake's raw event files (what clean counts as raw events)."""
    return sum(1 for p in (raw / "raw/events").rglob("*.jsonl") for _ in p.open("rb"))


def bench_size(work: Path, events: int, with_features: bool = True) -> list[dict[str, Any]]:
    raw = generate(work, events)
    lines = raw_lines(raw)
    rows: list[dict[str, Any]] = []
    common = ["--date", RUN_DATE.isoformat(), "--window-days", str(DAYS - 1)]

    def step(name: str, cmd: list[str], lake: Path, env: dict[str, str] | None = None) -> None:
        os.sync()  # the last step's (or the generator's) writes are flushed before, not during, this one
        load_before = os.getloadavg()[0]
        result = measure(cmd, {**SPARK_ENV, **(env or {})}, work / f"{name}-{events}.log")
        result["load"] = max(
            load_before, os.getloadavg()[0]
        )  # 1-min load average, the higher of start and end
        rows.append({"events": lines, "step": name, **result})
        print(
            f"  {events:>9} {name:<14} {result['wall_s']:7.1f} s  {result['peak_rss_mb']:7.0f} MB  "
            f"{result['cpu_s']:7.1f} cpu-s ({result['jit_cpu_s']:.1f} JIT)  load {result['load']:.1f}",
            flush=True,
        )

    floor_out = work / f"floor-{events}"
    step("floor", [PY, "-c", FLOOR_SCRIPT, str(raw), str(floor_out)], raw)
    lake = work / f"lake-{events}"
    shutil.rmtree(lake, ignore_errors=True)
    shutil.copytree(raw / "raw", lake / "raw")
    step("clean", [PY, "-m", "jobs.clean", *common, "--lake-root", str(lake)], lake)
    if with_features:
        try:
            step("features", [PY, "-m", "jobs.features", *common, "--lake-root", str(lake)], lake)
        except RuntimeError as err:
            print(f"  features failed, left out: {err}")
    settings = json.dumps(
        {"scenario": "ecommerce", "max_field_chars": 2000, "max_price": 100000.0, "bot_events_per_minute": 30}
    )
    duck_out = work / f"duckdb-{events}"
    shutil.rmtree(duck_out, ignore_errors=True)
    step(
        "duckdb",
        [PY, "-m", "benchmarks.bench_clean", "--duckdb-clean", str(raw), str(duck_out), settings],
        raw,
    )
    shutil.rmtree(floor_out, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| events | step | wall s | events/s | peak RSS MB | CPU s | JIT CPU s | wall / floor | wall / duckdb | "
        "CPU / floor | CPU / duckdb | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_size: dict[Any, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_size.setdefault(row["events"], {})[str(row["step"])] = row
    for events, steps in by_size.items():
        floor = float(steps["floor"]["wall_s"])
        duck = float(steps["duckdb"]["wall_s"])
        floor_cpu = float(steps["floor"]["cpu_s"])
        duck_cpu = float(steps["duckdb"]["cpu_s"])
        if "clean" in steps and "features" in steps:
            steps["clean+features"] = {
                k: (
                    float(steps["clean"][k]) + float(steps["features"][k])
                    if k != "peak_rss_mb"
                    else max(float(steps["clean"][k]), float(steps["features"][k]))
                )
                for k in ("wall_s", "peak_rss_mb", "cpu_s", "jit_cpu_s")
            }
            steps["clean+features"]["load"] = max(
                float(steps["clean"]["load"]),
                float(steps["features"]["load"]),
            )
        for name, r in steps.items():
            wall = float(r["wall_s"])
            out.append(
                f"| {events:,} | {name} | {wall:.1f} | {int(events) / wall:,.0f} | "
                f"{float(r['peak_rss_mb']):.0f} | {float(r['cpu_s']):.1f} | "
                f"{float(r['jit_cpu_s']):.1f} | {wall / floor:.2f} | "
                f"{wall / duck:.2f} | {float(r['cpu_s']) / floor_cpu:.2f} | "
                f"{float(r['cpu_s']) / duck_cpu:.2f} | {float(r['load']):.1f} |"
            )
    return "\n".join(out)


def run(sizes: list[int], work: Path) -> str:
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for events in sizes:
        rows += bench_size(work, events)
    text = table(rows)
    print(text)
    (work / "bench_clean.md").write_text(text + "\n")
    return text


@pytest.mark.bench
def test_bench_clean(tmp_path_factory: pytest.TempPathFactory) -> None:
    sizes = [int(x) for x in os.environ.get("RECFLOW_BENCH_EVENTS", "1000000,4000000").split(",")]
    work = Path(os.environ.get("RECFLOW_BENCH_WORK", tmp_path_factory.mktemp("bench_clean")))
    assert "| floor |" in run(sizes, work)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--work", default="/tmp/recflow-bench-clean")
    parser.add_argument(
        "--duckdb-clean", nargs=3, metavar=("RAW_ROOT", "OUT", "SETTINGS_JSON"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.duckdb_clean:
        duckdb_clean(*args.duckdb_clean)
    else:
        run(args.events, Path(args.work))
