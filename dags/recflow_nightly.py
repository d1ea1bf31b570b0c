"""
### recflow_nightly

The nightly batch recommender for day **D**:

`[generate demo data]` → validate raw → **clean** (Spark) → validate → **features** (Spark) → validate → **train** (TensorFlow +
baselines) → **evaluate** (next-day events) → validate metrics → **gate** (promote or keep production) →
**score** (Spark, always with the production model) → validate → **publish** (atomic; Assets
`recflow_recommendations`, `recflow_similar_items`) → **summary** (`reports/dt=D/summary.{json,md}`).

*D* is the `run_date` param when given, else the day before the run's data-interval end (for a scheduled run:
the day that just finished; for a manual run without a logical date: the day before it was triggered).

Spark stages run through `spark-submit` with the `spark_default` connection: `local[*]` by default
(`AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}'`); point it at
`spark://host:7077` (or YARN, Kubernetes) to run the same jobs on a cluster. Spark tasks share the `spark` pool
(create it with `airflow pools set spark 1 "Spark jobs"`; `make ui` and `make backfill` do) so a backfill never
runs two Spark jobs at once on a small machine.

With an OpenLineage transport configured (`[openlineage] transport`; the local runs write
`<lake>/lineage/events.jsonl`), every task reports the lake tables it reads and writes (`dags/_lineage.py`).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pendulum

# _lineage and _params live next to this file: Airflow puts the DAG bundle's folder on sys.path when it parses DAGs
from _lineage import report_lake_lineage
from _params import PUBLISHED_ASSETS, nightly_params
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import TriggerRule, dag, get_current_context, task

from jobs.pseudonymise import key_for_spark_job
from schemas.settings import Settings, unknown_names
from storage.spark_jvm import spark_jvm_options

SPARK_POOL = os.environ.get("RECFLOW_SPARK_POOL", "spark")
# "@daily" unless a deployment says otherwise (a cron string, or "none" for manual/asset-triggered runs only)
SCHEDULE = os.environ.get("RECFLOW_SCHEDULE", "@daily")
SPARK_CONN_ID = "spark_default"
# clean's pseudonymisation key reaches spark-submit through this env var, rendered in the worker from the Airflow
# connection (settings.pseudonym_conn_id) when it exists, else from the worker's own env var; masked in logs
PSEUDONYM_KEY_ENV = Settings.load().pseudonym_key_env


def _jobs_dir() -> Path:
    """Where the installed ``jobs`` package lives: spark-submit needs the scripts' absolute paths."""
    spec = importlib.util.find_spec("jobs")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the recflow package 'jobs' is not installed (pip install -e .)")
    return Path(list(spec.submodule_search_locations)[0])


def _spark_binary() -> str:
    """``spark-submit`` from PATH, else the one pip's pyspark installed next to this Python."""
    return shutil.which("spark-submit") or str(Path(sys.executable).parent / "spark-submit")


def resolve_run_date(
    params: dict[str, Any], data_interval_end: dt.datetime | None, run_after: dt.datetime | None
) -> dt.date:
    """The day a run processes: the ``run_date`` param, else the day before the interval end / trigger time."""
    if params.get("run_date"):
        return dt.date.fromisoformat(str(params["run_date"])[:10])
    anchor = data_interval_end or run_after
    if anchor is None:
        raise ValueError("run has neither a data interval nor a run_after time; pass the run_date param")
    return pendulum.instance(anchor).in_timezone("UTC").date() - dt.timedelta(days=1)


def _settings(resolved: dict[str, Any]) -> Settings:
    return Settings.load(resolved, env={})


def _raise_on_exit(func: Any, argv: list[str]) -> None:
    """Run a job's ``main(argv)``. A nonzero ``SystemExit`` is the job's own verdict (a failed suite, bad input):
    the task fails without retries, with the job's message. Other exceptions are retried."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        func(argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise AirflowFailException(f"{func.__module__}.main: {exit_.code}") from None


default_args = {
    "owner": "recflow",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=10),
    "execution_timeout": dt.timedelta(minutes=30),
}


@dag(
    dag_id="recflow_nightly",
    schedule=None if SCHEDULE.lower() == "none" else SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # backfills run in date order, one at a time: each day's vocabularies extend the last
    max_active_tasks=2,
    dagrun_timeout=dt.timedelta(hours=3),
    tags=["recflow", "nightly", "spark", "tensorflow"],
    doc_md=__doc__,
    default_args=default_args,
    params=nightly_params(),
    user_defined_macros={
        "recflow_pseudonym_key": key_for_spark_job,
        "recflow_spark_jvm_options": spark_jvm_options,
    },
)
def recflow_nightly() -> None:
    @task(multiple_outputs=True, retries=0, execution_timeout=dt.timedelta(minutes=2))
    def resolve_settings() -> dict[str, Any]:
        """Params + the run's date -> one validated Settings, and the spark-submit flags that reproduce it."""
        from airflow.sdk.exceptions import AirflowFailException

        ctx = get_current_context()
        dag_run = ctx["dag_run"]
        # Airflow validates only the params the DAG declares: an unknown key (a typo) would run on the default
        problem = unknown_names(getattr(dag_run, "conf", None) or {}, ctx["dag"].params)
        if problem:
            raise AirflowFailException(problem)
        params = dict(ctx["params"])
        run_date = resolve_run_date(params, ctx.get("data_interval_end"), getattr(dag_run, "run_after", None))
        settings = Settings.from_params({**params, "run_date": run_date})  # raises on inconsistent values
        print(
            f"recflow run for D={settings.ds} scenario={settings.scenario} lake={settings.lake_root} "
            f"top_n={settings.top_n} skip_training={settings.skip_training}"
        )
        return {
            "settings": settings.to_dict(),
            "cli": settings.to_cli(),
            "ds": settings.ds,
            "py_files": py_files_for(spark_master()),
            "started_at": pendulum.now("UTC").isoformat(),  # wall-clock, for the summary's run duration only
        }

    resolved: Any = resolve_settings()  # an XComArg: its keys are resolved when a task runs

    @task.run_if(lambda ctx: bool(ctx["params"].get("generate_demo_data")))
    @task(execution_timeout=dt.timedelta(minutes=20))
    def generate_demo_data(settings_dict: dict[str, Any]) -> dict[str, Any]:
        """Synthetic raw logs for D and its whole training window (demo and tests)."""
        from demo import generate

        settings = _settings(settings_dict)
        # the window is the window_days days before D, plus D itself (the validation day)
        days = max(settings.days, settings.window_days + 1)
        _raise_on_exit(generate.main, settings.replace(days=days).to_cli())
        return {"days": days, "ds": settings.ds}

    def spark_stage(stage: str) -> SparkSubmitOperator:
        return SparkSubmitOperator(
            task_id=stage,
            application=str(_jobs_dir() / f"{stage}.py"),
            application_args=resolved["cli"],
            py_files=resolved["py_files"],
            conn_id=SPARK_CONN_ID,
            spark_binary=_spark_binary(),
            name=f"recflow-{stage}",
            driver_memory=os.environ.get("RECFLOW_SPARK_DRIVER_MEMORY", "4g"),
            conf={
                "spark.log.level": os.environ.get("RECFLOW_SPARK_LOG_LEVEL", "WARN"),  # task logs: job output
                # the class archive of this Airflow worker's venv, when it has one: ~10 s less per JVM
                # (tools/class_archive.py); a JVM where it is missing or does not fit starts as before
                "spark.driver.extraJavaOptions": "{{ recflow_spark_jvm_options() }}",
                "spark.executor.extraJavaOptions": "{{ recflow_spark_jvm_options() }}",
            },
            # so the jobs' run manifests name the Airflow run that produced them
            env_vars={
                "AIRFLOW_CTX_DAG_ID": "{{ dag.dag_id }}",
                "AIRFLOW_CTX_DAG_RUN_ID": "{{ run_id }}",
                "AIRFLOW_CTX_TASK_ID": "{{ task.task_id }}",
                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),  # score loads TF
                **({PSEUDONYM_KEY_ENV: "{{ recflow_pseudonym_key() }}"} if stage == "clean" else {}),
            },
            pool=SPARK_POOL,
            execution_timeout=dt.timedelta(minutes=45),
        )

    def validate_stage(suite: str) -> Any:
        @task(task_id=f"validate_{suite}", execution_timeout=dt.timedelta(minutes=15))
        def validate(cli: list[str]) -> None:
            """Great Expectations suite on the stage's output; a failed expectation fails the run here."""
            from jobs import validate as validate_job

            _raise_on_exit(validate_job.main, ["--suite", suite, *cli])

        return validate(resolved["cli"])

    clean = spark_stage("clean")
    features = spark_stage("features")
    score = spark_stage("score")
    score.trigger_rule = (
        TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    )  # after either gate branch, or with skip_training

    @task.run_if(lambda ctx: not ctx["params"].get("skip_training"))
    @task(execution_timeout=dt.timedelta(minutes=60))
    def train(settings_dict: dict[str, Any]) -> list[str]:
        """Deep model + baselines from the features; returns the candidate model folders."""
        from models import train as train_module

        model_dirs = list(train_module.train(_settings(settings_dict)))
        print(f"trained {len(model_dirs)} candidates: {model_dirs}")
        return model_dirs

    @task(execution_timeout=dt.timedelta(minutes=30))
    def evaluate(settings_dict: dict[str, Any], model_dirs: list[str]) -> dict[str, Any]:
        """Candidates, baselines and production on D's held-out events -> metrics table + HTML report."""
        from models import evaluate as evaluate_module

        return evaluate_module.evaluate(_settings(settings_dict), model_dirs)

    @task.branch(execution_timeout=dt.timedelta(minutes=10))
    def gate(settings_dict: dict[str, Any], metrics: dict[str, Any]) -> str:
        """Promote the best candidate only if it beats production by the margin; either way scoring follows."""
        from models import gate as gate_module

        decision = gate_module.decide(_settings(settings_dict), metrics)
        print(f"gate decision: {decision}")
        get_current_context()["ti"].xcom_push(key="decision", value=decision)
        return (
            "promote" if decision.get("promote") or decision.get("action") == "promote" else "keep_production"
        )

    @task(execution_timeout=dt.timedelta(minutes=2))
    def promote() -> None:
        """Marker: the gate wrote the new production pointer."""

    @task(execution_timeout=dt.timedelta(minutes=2))
    def keep_production() -> None:
        """Marker: production stays; the gate's decision says why."""

    @task(outlets=list(PUBLISHED_ASSETS), execution_timeout=dt.timedelta(minutes=15))
    def publish(settings_dict: dict[str, Any]) -> dict[str, Any]:
        """Atomic swap staging -> recommendations/ and similar_items/; then the Assets get their events."""
        from jobs import publish as publish_job

        settings = _settings(settings_dict)
        _raise_on_exit(publish_job.main, settings.to_cli())
        extra: dict[str, Any] = {"dt": settings.ds, "lake_root": settings.lake_root}
        outlet_events = get_current_context()["outlet_events"]
        for asset in PUBLISHED_ASSETS:  # an embeddings table the model has none of holds only _SKIPPED.json
            outlet_events[asset].extra = extra
        return extra

    @task(trigger_rule="all_done", retries=0, execution_timeout=dt.timedelta(minutes=5))
    def summary(settings_dict: dict[str, Any]) -> dict[str, str]:
        """Run summary (rows per stage, metrics, gate decision, durations) as JSON + Markdown + HTML."""
        from jobs import summary as summary_job

        ctx = get_current_context()
        decision = ctx["ti"].xcom_pull(task_ids="gate", key="decision")
        started_at = ctx["ti"].xcom_pull(task_ids="resolve_settings", key="started_at")
        return summary_job.write(
            _settings(settings_dict),
            run_id=ctx["run_id"],
            gate_decision=decision,
            run_started_at=dt.datetime.fromisoformat(started_at) if started_at else None,
        )

    @task(trigger_rule="one_failed", retries=0, execution_timeout=dt.timedelta(minutes=1))
    def fail_if_any_stage_failed() -> None:
        """The summary runs even after a failure; this leaf keeps such a run marked failed."""
        raise RuntimeError("a recflow stage failed: see the failed task's log and reports/dt=D/summary.md")

    settings_dict: Any = resolved["settings"]
    generated = generate_demo_data(settings_dict)
    validated_raw = validate_stage("raw")
    validated_raw.operator.trigger_rule = (
        TriggerRule.NONE_FAILED
    )  # runs whether demo data was generated or skipped
    validated_clean = validate_stage("clean")
    validated_features = validate_stage("features")
    trained: Any = train(settings_dict)
    metrics: Any = evaluate(settings_dict, trained)
    validated_metrics = validate_stage("metrics")
    decided = gate(settings_dict, metrics)
    validated_recs = validate_stage("recommendations")
    validated_embeddings = validate_stage("embeddings")
    published = publish(settings_dict)
    summarized = summary(settings_dict)
    watcher = fail_if_any_stage_failed()

    generated >> validated_raw >> clean >> validated_clean >> features >> validated_features >> trained
    metrics >> validated_metrics >> decided >> [promote(), keep_production()] >> score
    validated_features >> score
    score >> [validated_recs, validated_embeddings] >> published >> summarized
    all_tasks = [
        resolved,
        generated,
        validated_raw,
        clean,
        validated_clean,
        features,
        validated_features,
        trained,
        metrics,
        validated_metrics,
        decided,
        score,
        validated_recs,
        validated_embeddings,
        published,
    ]
    all_tasks >> watcher
    # OpenLineage: each task's lake tables (schemas.lake.STAGE_TABLES) as its input and output datasets
    report_lake_lineage([*all_tasks, summarized])


def spark_master(conn_id: str = SPARK_CONN_ID) -> str:
    """The master URL the SparkSubmitOperator will use, read from the connection as the provider's hook reads it
    (a URI's scheme is the connection type; a UI connection may hold the whole URL in its host; yarn without
    a connection)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return "yarn"
    if conn.conn_type == "spark" and conn.host and ("://" in conn.host or not conn.port):
        master = conn.host
    else:
        master = f"{conn.conn_type}://{conn.host or ''}"
    return f"{master}:{conn.port}" if conn.port else master


def py_files_for(master: str, out_dir: Path | None = None) -> str | None:
    """A zip of the runtime packages for ``--py-files`` when Spark is not local (executors may lack the code)."""
    if master.startswith("local"):
        return None
    import zipfile

    package_root = _jobs_dir().parent
    out_dir = out_dir or Path(os.environ.get("AIRFLOW_HOME", package_root / "airflow_home")) / "py_files"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "recflow_code.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in ("schemas", "storage", "scoring", "jobs", "models", "demo"):
            for path in sorted((package_root / package).rglob("*.py")):
                archive.write(path, path.relative_to(package_root).as_posix())
    tmp.replace(target)
    return str(target)


recflow_nightly()
