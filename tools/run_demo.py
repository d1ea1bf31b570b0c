"""``make run``: the nightly DAG end to end on generated demo data, then what it produced.

    python -m tools.run_demo --date 2026-01-14 [--conf '{"users": 2000}'] [--skip-dag]

Uses an Airflow home inside the checkout (SQLite, created on first use), a pseudonym key generated once into
``.secrets/pseudonym_key`` (gitignored; an existing ``RECFLOW_PSEUDONYM_KEY`` wins), and
``airflow dags test`` (no scheduler or webserver left running). Spark runs ``local[*]`` through the
``spark_default`` connection unless ``AIRFLOW_CONN_SPARK_DEFAULT`` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from schemas import lake
from schemas.settings import Settings
from tools.local_airflow import airflow_bin, airflow_env, ensure_airflow_db, release_moved_assets

# `airflow dags test` output shown live (everything goes to the log file): the tasks' own prints, the jobs'
# prints relayed by the spark-submit hook (not Spark's log4j lines), the spark-submit commands, errors, the verdict
_TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[(\w+) *\] (.*)$")
_LOG4J = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d [A-Z]+ ")
# TensorFlow's C++ logging and other chatter, kept in the log file only
_NOISE = re.compile(
    r"^([IWE]\d{4} [\d:.]+ |WARNING: All log messages|Run `pip install graphviz`|You might need| \[py\.warnings\])"
)
_HOOK = "[airflow.task.hooks.airflow.providers.apache.spark.hooks.spark_submit.SparkSubmitHook]"


def progress_line(line: str) -> str | None:
    """The part of an `airflow dags test` output line worth showing live, or None."""
    line = line.rstrip()
    match = _TIMESTAMPED.match(line)
    if (
        not match
    ):  # a task's own print; indented lines and braces are the body of a JSON dump: kept in the log
        if not line or line[0].isspace() or line in ("{", "}") or _NOISE.match(line):
            return None
        return line
    level, message = match.groups()
    task = re.match(r"\[DAG TEST\] (starting|end) task task_id=(\w+)", message)
    if task:
        return f"{'>>' if task.group(1) == 'starting' else '<<'} {task.group(2)}"
    if message.startswith("Spark-Submit cmd:"):
        return "spark-submit " + message.split(" --name ", 1)[-1].split(" ", 1)[0]
    if _HOOK in message:
        text = message.split(" " + _HOOK, 1)[0].strip()
        if (_LOG4J.match(text) and " ERROR " not in text) or _NOISE.match(text):
            return None
        return None if text.startswith(("WARNING: Using incubator", "Using Spark's default")) else text
    if message.startswith("DagRun Finished"):
        state = re.search(r"state=(\w+)", message)
        return f"DagRun Finished: state={state.group(1) if state else '?'}"
    if level in ("error", "critical"):
        return message[:300]
    return None


def run_dag(run_date: dt.date, conf: dict[str, Any], env: dict[str, str]) -> tuple[int, Path, float]:
    """``airflow dags test`` for the date; progress lines to the terminal, everything to a log file."""
    log_dir = Path(env["AIRFLOW_HOME"]) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"run_demo_{run_date.isoformat()}.log"
    cmd = [airflow_bin(), "dags", "test", "recflow_nightly", run_date.isoformat(), "-c", json.dumps(conf)]
    print(f"running: {' '.join(cmd[1:4])} {run_date} -c '{json.dumps(conf)}'", flush=True)
    print(f"  full log: {log_path}", flush=True)
    started = time.monotonic()
    with (
        open(log_path, "w") as log,
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            shown = progress_line(line)
            if shown:
                print(f"  [{time.monotonic() - started:5.0f}s] {shown[:300]}", flush=True)
        code = proc.wait()
    return code, log_path, time.monotonic() - started


def _dag_run_failed(log_path: Path) -> bool:
    """The run's verdict from its "DagRun Finished: ... state=..." line (missing line: it did not finish)."""
    finished = [ln for ln in log_path.read_text(errors="replace").splitlines() if "DagRun Finished:" in ln]
    return not finished or "state=success" not in finished[-1]


# ---- what the run produced ---------------------------------------------------------------------------------


def show_results(settings: Settings, users_to_show: int = 3, items_per_user: int = 5) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from jobs import summary

    root = settings.lake_root
    recs_path = lake.partition(root, lake.RECOMMENDATIONS, settings.ds)
    print("\n=== recflow: what the run produced ===")
    print(f"lake root:            {root}")
    for name in (
        lake.CLEAN_EVENTS,
        lake.USER_HISTORIES,
        lake.RECOMMENDATIONS,
        lake.SIMILAR_ITEMS,
        lake.METRICS,
    ):
        print(f"  {name + '/':22s}{lake.partition(root, name, settings.ds)}")
    print(f"  {'models/':22s}{lake.table(root, lake.MODELS)}  (production: {lake.production_pointer(root)})")
    print(f"  {'reports/':22s}{lake.report_dir(root, settings.ds)}")

    if not Path(recs_path).exists():
        print(f"\nno published recommendations at {recs_path}")
        return
    recs = pq.read_table(recs_path)
    titles = _item_titles(settings)
    users = sorted(set(recs.column("user_id").to_pylist()))
    print(
        f"\nrecommendations for {settings.ds} (for {settings.run_date + dt.timedelta(days=1)}): "
        f"{recs.num_rows:,} rows, {len(users):,} users, model {recs.column('model_version')[0]}"
    )
    for user in users[:users_to_show]:
        rows = (
            recs.filter(pc.equal(recs.column("user_id"), user)).sort_by("rank").to_pylist()[:items_per_user]
        )
        print(f"  user {user[:16]}  ({rows[0].get('strategy', '')})")
        for row in rows:
            title = titles.get(row["item_id"], "")
            print(f"    {row['rank']:>3}. {row['item_id']:<12} {row['score']:8.4f}  {title[:60]}")

    rows = summary.metric_rows(settings)
    k = settings.eval_k
    print(f"\nheld-out next-day events of {settings.ds} (all users):")
    if not rows:
        print("  no metrics table for this date (training skipped?)")
    else:
        models = _models_for_display(rows)
        print(f"  {'model':28s} {'Recall@' + str(k):>10s} {'nDCG@' + str(k):>10s}")
        for model in models:
            recall = summary.metric_value(rows, model, "recall", k)
            ndcg = summary.metric_value(rows, model, "ndcg", k)
            print(f"  {model:28s} {_fmt(recall):>10s} {_fmt(ndcg):>10s}")
    pointer = Path(lake.production_pointer(root))
    report = Path(lake.report_dir(root, settings.ds)) / "summary.json"
    gate = json.loads(report.read_text()).get("gate") if report.exists() else None
    if gate:
        print(f"\ngate: {json.dumps(gate, default=str)}")
    if pointer.exists():
        print(f"production model: {pointer.read_text().strip()}")
    if report.exists():
        print(f"run summary: {report.with_suffix('.md')}")


def _models_for_display(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in sorted(rows, key=lambda r: (r.get("role") != "candidate", str(r["model"]))):
        if row.get("segment", "all") == "all" and row["model"] not in names:
            names.append(str(row["model"]))
    return names


def _item_titles(settings: Settings) -> dict[str, str]:
    """item_id -> title from the clean catalogue of D (or the newest clean catalogue partition)."""
    import pyarrow.parquet as pq

    table_dir = Path(lake.table(settings.lake_root, lake.CLEAN_ITEMS))
    path = Path(lake.partition(settings.lake_root, lake.CLEAN_ITEMS, settings.ds))
    if not path.exists():
        partitions = sorted(table_dir.glob("dt=*")) if table_dir.exists() else []
        if not partitions:
            return {}
        path = partitions[-1]
    table = pq.read_table(path, columns=["item_id", "title"])
    return {
        i: t or ""
        for i, t in zip(table.column("item_id").to_pylist(), table.column("title").to_pylist(), strict=True)
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--date", default=Settings.run_date.isoformat(), help="the run date D, YYYY-MM-DD")
    parser.add_argument("--conf", default="{}", help="extra DAG params as JSON, e.g. '{\"users\": 2000}'")
    parser.add_argument("--skip-dag", action="store_true", help="only print the results of an earlier run")
    args = parser.parse_args(argv)
    run_date = dt.date.fromisoformat(args.date)
    env = airflow_env()
    os.environ.update({k: env[k] for k in ("RECFLOW_PSEUDONYM_KEY", "AIRFLOW_HOME")})
    conf = {"generate_demo_data": True, **json.loads(args.conf), "run_date": run_date.isoformat()}
    settings = Settings.from_params(conf)

    if not args.skip_dag:
        ensure_airflow_db(env)
        release_moved_assets(env)
        code, log_path, seconds = run_dag(run_date, conf, env)
        print(f"\nDAG run finished in {seconds:.0f} s (exit code {code})")
        if code != 0 or _dag_run_failed(log_path):
            print(
                f"the DAG run failed: see {log_path} and {lake.report_dir(settings.lake_root, settings.ds)}",
                file=sys.stderr,
            )
            sys.exit(code or 1)
    show_results(settings)


if __name__ == "__main__":
    main()
