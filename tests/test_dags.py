"""The DAGs: import cleanly, carry the operational settings, reject bad params; one end-to-end run on a tiny lake."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_NIGHTLY, TINY_RUN_DATE

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"

# Airflow reads its configuration when first imported: point it at a private home (SQLite) before that happens.
# (`make test` exports AIRFLOW_HOME for the demo; the tests must not share the demo's metadata DB.)
if "airflow" not in sys.modules:
    os.environ["AIRFLOW_HOME"] = os.environ.get(
        "RECFLOW_TEST_AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / f"recflow-test-airflow-{os.getpid()}")
    )
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# the DAGs folder, the spark_default connection and the shared fixtures (dagbag, airflow_db, tiny_run): conftest.py

pytestmark = pytest.mark.airflow

HEAVY = ("pyspark", "tensorflow", "pandas", "great_expectations", "keras")


@pytest.fixture(scope="module")
def nightly(dagbag: Any) -> Any:
    return dagbag.dags["recflow_nightly"]


def test_dags_import_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert {"recflow_nightly", "recflow_consumer_example"} <= set(dagbag.dag_ids)


def test_consumer_is_scheduled_on_the_published_asset(dagbag: Any) -> None:
    consumer = dagbag.dags["recflow_consumer_example"]
    producer_outlets = {a.uri for a in dagbag.dags["recflow_nightly"].get_task("publish").outlets}
    scheduled_on = {a.uri for a in consumer.timetable.asset_condition.objects}
    assert scheduled_on and scheduled_on <= producer_outlets


def test_dag_files_import_nothing_heavy() -> None:
    """Parsing must stay cheap: the scheduler re-parses DAG files all the time."""
    code = (
        "import sys; from pathlib import Path; from airflow.dag_processing.dagbag import BundleDagBag; "
        f"b = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path=Path({str(DAGS)!r})); "
        "assert not b.import_errors, b.import_errors; "
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True
    )
    heavy = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], f"heavy modules imported while parsing the DAGs: {heavy}"


def test_nightly_schedule_and_operations(nightly: Any) -> None:
    assert {"recflow", "nightly"} <= set(nightly.tags)
    assert nightly.catchup is False
    assert nightly.max_active_runs == 1
    assert nightly.start_date == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert "0 0 * * *" in str(nightly.timetable)  # @daily
    assert nightly.doc_md and "recflow_nightly" in nightly.doc_md
    for task in nightly.tasks:
        assert task.execution_timeout is not None, f"{task.task_id} has no execution timeout"
        assert task.execution_timeout <= dt.timedelta(hours=1)
    work = [
        t
        for t in nightly.tasks
        if t.task_id not in ("resolve_settings", "summary", "fail_if_any_stage_failed")
    ]
    for task in work:
        assert task.retries >= 1, f"{task.task_id} has no retries"
        assert task.retry_exponential_backoff, f"{task.task_id} retries without backoff"


def test_nightly_stage_order_and_spark_submit(nightly: Any) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    def upstream(task_id: str) -> set[str]:
        return set(nightly.get_task(task_id).upstream_task_ids)

    assert "validate_clean" in upstream("features")
    assert "validate_features" in upstream("train")
    assert {"promote", "keep_production"} <= upstream("score")
    assert {"validate_recommendations", "validate_embeddings"} <= upstream("publish")
    assert "publish" in upstream("summary")
    for stage in ("clean", "features", "score"):
        task = nightly.get_task(stage)
        assert isinstance(task, SparkSubmitOperator)
        assert task.pool == "spark"
        assert task._conn_id == "spark_default"
        assert Path(task.application).is_absolute() and Path(task.application).name == f"{stage}.py"
        assert Path(task.application).exists()
    outlets = {a.name for a in nightly.get_task("publish").outlets}
    assert outlets == {
        "recflow_recommendations",
        "recflow_similar_items",
        "recflow_user_embeddings",
        "recflow_item_embeddings",
    }


def test_clean_gets_the_pseudonym_key_from_the_airflow_connection_masked(nightly: Any, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Under spark-submit the clean job runs outside Airflow: the task renders the key into the job's environment
    from the connection when it exists (else the worker's env var), and the logged command line never shows it."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
    from airflow.sdk.log import redact

    template = nightly.get_task("clean").env_vars["RECFLOW_PSEUDONYM_KEY"]
    assert "RECFLOW_PSEUDONYM_KEY" not in nightly.get_task("features").env_vars  # only clean needs it

    def render() -> str:
        return str(nightly.get_template_env().from_string(template).render())

    monkeypatch.setenv("RECFLOW_PSEUDONYM_KEY", "key-from-the-worker-env")
    monkeypatch.delenv("AIRFLOW_CONN_RECFLOW_PSEUDONYM_KEY", raising=False)
    assert render() == "key-from-the-worker-env"  # no connection: as before
    monkeypatch.setenv(
        "AIRFLOW_CONN_RECFLOW_PSEUDONYM_KEY",
        json.dumps({"conn_type": "generic", "password": "key-from-the-connection"}),
    )
    key = render()
    assert key == "key-from-the-connection"
    # on YARN env vars travel as --conf on the command line: the command as the task log writes it is masked
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_YARN_TEST", json.dumps({"conn_type": "spark", "host": "yarn"}))
    hook = SparkSubmitHook(conn_id="spark_yarn_test", env_vars={"RECFLOW_PSEUDONYM_KEY": key})
    command = hook._build_spark_submit_command("clean.py")
    assert f"spark.yarn.appMasterEnv.RECFLOW_PSEUDONYM_KEY={key}" in command
    logged = str(redact(hook._mask_cmd(command)))
    assert key not in logged and "RECFLOW_PSEUDONYM_KEY=***" in logged
    # locally (the default) the key is only in the child's environment, never on the command line
    local = SparkSubmitHook(conn_id="spark_default", env_vars={"RECFLOW_PSEUDONYM_KEY": key})
    assert key not in " ".join(local._build_spark_submit_command("clean.py"))


@pytest.mark.parametrize(
    "bad",
    [
        {"top_n": 0},
        {"top_n": "ten"},
        {"scenario": "movies"},
        {"run_date": "2026-13-40"},
        {"run_date": "yesterday"},
        {"epochs": 0},
        {"encoder": "rnn"},
        {"window_days": 400},
        {"max_cold_start_share": 1.5},
        {"generate_demo_data": "maybe"},
    ],
)
def test_params_reject_bad_values(nightly: Any, bad: dict[str, Any]) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    params = copy.deepcopy(nightly.params)
    with pytest.raises(ParamValidationError):
        params.update(bad)
        params.validate()


def test_params_accept_good_values_and_map_onto_settings(nightly: Any) -> None:
    from schemas.settings import STEERING_PARAMS, Settings

    params = copy.deepcopy(nightly.params)
    params.update({"top_n": 7, "scenario": "news", "run_date": "2026-01-10", "encoder": "lstm"})
    resolved = params.validate()
    settings = Settings.from_params(resolved)
    assert (settings.top_n, settings.scenario, settings.ds, settings.encoder) == (
        7,
        "news",
        "2026-01-10",
        "lstm",
    )
    names = {f for f in Settings.__dataclass_fields__}
    assert set(resolved) - names == {"generate_demo_data"} == set(STEERING_PARAMS), (
        "every other param must be a Settings field"
    )


def test_params_cover_the_trainers_encoders() -> None:
    from _params import ENCODERS

    from models.features import ENCODERS as MODEL_ENCODERS

    assert tuple(ENCODERS) == tuple(MODEL_ENCODERS)


def test_run_date_resolution() -> None:
    from recflow_nightly import resolve_run_date

    end = dt.datetime(2026, 1, 15, 0, 0, tzinfo=dt.UTC)
    assert resolve_run_date({"run_date": "2026-01-03"}, end, None) == dt.date(2026, 1, 3)
    # a scheduled run at midnight processes the day that just finished
    assert resolve_run_date({"run_date": None}, end, None) == dt.date(2026, 1, 14)
    # a manual run without a logical date (no data interval): the day before it was triggered
    assert resolve_run_date({}, None, dt.datetime(2026, 2, 1, 13, 5, tzinfo=dt.UTC)) == dt.date(2026, 1, 31)
    with pytest.raises(ValueError):
        resolve_run_date({}, None, None)


def test_bad_run_conf_fails_before_any_task(
    nightly: Any, airflow_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    monkeypatch.setenv("RECFLOW_LAKE_ROOT", str(tmp_path / "lake"))
    with pytest.raises(ParamValidationError):
        nightly.test(logical_date=dt.datetime(2026, 1, 5, tzinfo=dt.UTC), run_conf={"top_n": -3})
    assert not (tmp_path / "lake").exists(), "a rejected run must not have written anything"


def test_settings_from_params_refuses_unknown_keys_naming_the_valid_ones() -> None:
    from schemas.settings import Settings

    with pytest.raises(ValueError, match="top_nn") as refused:
        Settings.from_params({"top_nn": 5, "users": 10})
    assert "did you mean 'top_n'" in str(refused.value) and "window_days" in str(refused.value)
    # the DAG's steering-only params are no settings, and are not refused
    settings = Settings.from_params({"top_n": 5, "generate_demo_data": True, "run_date": "2026-01-10"})
    assert (settings.top_n, settings.ds) == (5, "2026-01-10")


@pytest.mark.parametrize("how", ["dag.test", "cli"])
def test_an_unknown_param_fails_the_run_at_once_naming_the_valid_ones(
    nightly: Any,
    airflow_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    how: str,
) -> None:
    """Airflow validates only the params a DAG declares, so a typo would run the night on the default."""
    lake_root = tmp_path / "lake"
    monkeypatch.setenv("RECFLOW_LAKE_ROOT", str(lake_root))
    conf = {"top_nn": 5, "epochs": 1}
    if how == "dag.test":
        dag_run = nightly.test(logical_date=dt.datetime(2026, 1, 5, tzinfo=dt.UTC), run_conf=conf)
        states = _states(dag_run)
        assert states["resolve_settings"] == "failed", states
        assert states["validate_raw"] == "upstream_failed" and states["clean"] == "upstream_failed"
        assert str(dag_run.state) == "failed"
        ti = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "resolve_settings")
        assert ti.try_number == 1, "refused at once, not retried"
        output = "".join(capfd.readouterr())
    else:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "dags", "test", "-c", json.dumps(conf)]
            + ["recflow_nightly", "2026-01-06"],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            timeout=300,
        )
        output = done.stdout + done.stderr
    assert "unknown param 'top_nn' (did you mean 'top_n'?)" in output, output[-3000:]
    assert "valid params:" in output and "generate_demo_data" in output and "window_days" in output
    assert not (lake_root / "clean").exists(), "no stage may have run"


def test_a_missing_raw_day_fails_the_run_at_once_naming_the_path(
    nightly: Any,
    airflow_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A missing input is not transient: no retry can find it, so the first try fails the run, with the path."""
    lake_root = tmp_path / "lake"
    monkeypatch.setenv("RECFLOW_LAKE_ROOT", str(lake_root))
    dag_run = nightly.test(
        logical_date=dt.datetime(2026, 1, 5, tzinfo=dt.UTC), run_conf={"generate_demo_data": False}
    )
    states = _states(dag_run)
    assert states["validate_raw"] == "failed" and states["clean"] == "upstream_failed", states
    assert str(dag_run.state) == "failed"
    ti = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "validate_raw")
    assert ti.try_number == 1, "failed at once, not retried"
    output = "".join(capfd.readouterr())
    assert "missing input for suite 'raw'" in output and "raw/events/dt=2026-01-04" in output, output[-3000:]


# ---- end to end ------------------------------------------------------------------------------------------

# tiny_run (conftest.py): one dag.test() of recflow_nightly on a tiny generated lake, shared with other test files
TINY, RUN_DATE = TINY_NIGHTLY, TINY_RUN_DATE


def _states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.tf
def test_end_to_end_published_table(tiny_run: dict[str, Any]) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from schemas import lake
    from schemas.outputs import RECOMMENDATION

    dag_run, root = tiny_run["dag_run"], tiny_run["lake_root"]
    states = _states(dag_run)
    assert str(dag_run.state) == "success", f"run failed: {states}"
    assert states["publish"] == "success" and states["summary"] == "success"

    recs = pq.read_table(lake.partition(root, lake.RECOMMENDATIONS, RUN_DATE))
    for field in RECOMMENDATION:  # schema as declared (the partition column dt is not in the files)
        assert recs.schema.field(field.name).type == field.type, field.name
    top_n = TINY["top_n"]

    # what each user had seen through D, and what is unavailable on D (later days of the shared lake excluded)
    clean = pq.read_table(
        lake.table(root, lake.CLEAN_EVENTS), columns=["user_id", "item_id"], filters=[("dt", "<=", RUN_DATE)]
    )
    seen: dict[str, set[str]] = {}
    for user, item in zip(
        clean.column("user_id").to_pylist(), clean.column("item_id").to_pylist(), strict=True
    ):
        seen.setdefault(user, set()).add(item)
    items = pq.read_table(lake.partition(root, lake.CLEAN_ITEMS, RUN_DATE), columns=["item_id", "available"])
    unavailable = set(items.filter(pc.invert(items.column("available"))).column("item_id").to_pylist())
    catalogue = set(items.column("item_id").to_pylist())

    by_user: dict[str, list[dict[str, Any]]] = {}
    for row in recs.to_pylist():
        by_user.setdefault(row["user_id"], []).append(row)
    with_history = [u for u in by_user if u in seen]
    assert len(with_history) >= 50, "the tiny lake should give dozens of users with history"
    for user in with_history:
        rows = sorted(by_user[user], key=lambda r: r["rank"])
        ids = [r["item_id"] for r in rows]
        assert [r["rank"] for r in rows] == list(range(1, top_n + 1)), user
        assert len(set(ids)) == top_n, f"duplicate items for {user}"
        assert not set(ids) & seen[user], f"already-seen items recommended to {user}"
        assert not set(ids) & unavailable, f"unavailable items recommended to {user}"
        assert set(ids) <= catalogue
        scores = [r["score"] for r in rows]
        assert all(a >= b for a, b in zip(scores, scores[1:], strict=False)), f"scores not ordered for {user}"
    assert len({r["model_version"] for r in recs.to_pylist()}) == 1


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.tf
def test_end_to_end_summary_and_assets(tiny_run: dict[str, Any]) -> None:
    from schemas import lake

    root = tiny_run["lake_root"]
    report = Path(lake.report_dir(root, RUN_DATE))
    summary = json.loads((report / "summary.json").read_text())
    assert summary["run_date"] == RUN_DATE
    assert summary["metrics"], "the summary must carry the evaluation metrics"
    assert summary["outputs"]["recommendations"]["rows"] > 0
    assert (report / "summary.md").read_text().startswith("# recflow run summary")
    states = _states(tiny_run["dag_run"])
    assert states["fail_if_any_stage_failed"] == "skipped"
    assert sum(states[t] == "success" for t in ("promote", "keep_production")) == 1


SEED_OLD_ASSETS = """
from airflow.models.asset import AssetActive, AssetModel
from airflow.utils.session import create_session
with create_session() as session:
    for name, uri in [("recflow_recommendations", "file:///old/lake/recommendations"),
                      ("recflow_similar_items", "file:///old/lake/similar_items"),
                      ("someone_elses", "file:///old/lake/theirs")]:
        asset = AssetModel(name=name, uri=uri, group="recflow")
        session.add(asset)
        session.flush()
        session.add(AssetActive.for_asset(asset))
"""


def test_a_moved_lake_root_releases_the_old_asset_uris_for_a_run_without_scheduler(tmp_path: Path) -> None:
    """make run on a new lake root with an old Airflow DB: the old URIs of the published tables' Assets (same
    names) stop being active, so the run's publish can activate the new ones; other Assets are left alone."""
    import sqlite3

    from tools.local_airflow import airflow_env, ensure_airflow_db, release_moved_assets

    home, new_lake = tmp_path / "airflow_home", tmp_path / "lake"
    env = {
        **airflow_env(),
        "AIRFLOW_HOME": str(home),
        "RECFLOW_LAKE_ROOT": str(new_lake),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
    }
    ensure_airflow_db(env, quiet=True)
    subprocess.run([sys.executable, "-c", SEED_OLD_ASSETS], env=env, check=True)
    release_moved_assets(env)
    release_moved_assets(env)  # idempotent: nothing left to release
    with sqlite3.connect(home / "airflow.db") as db:
        active = sorted(db.execute("SELECT name, uri FROM asset_active").fetchall())
    assert active == [("someone_elses", "file:///old/lake/theirs")]


# ---- the local UI harness --------------------------------------------------------------------------------
def _busy_port() -> Any:
    import socket

    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    return busy


def test_make_ui_on_a_busy_port_fails_at_once_naming_the_port(tmp_path: Path) -> None:
    import time

    from tools.local_airflow import airflow_env, stop_processes

    env = {**airflow_env(), "AIRFLOW_HOME": str(tmp_path / "airflow_home")}
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        env["RECFLOW_UI_PORT"] = str(port)
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "tools.local_airflow", "ui"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            stop_processes(env)  # whatever a start that got further left behind, by its recorded PIDs
        seconds = time.monotonic() - started
    assert done.returncode != 0
    assert seconds < 15, f"took {seconds:.0f} s to give up"
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr and "RECFLOW_UI_PORT" in done.stderr


def test_an_api_server_that_dies_on_start_ends_the_wait_at_once(airflow_db: str, tmp_path: Path) -> None:
    """The port was free when checked and taken before the api-server bound it: its exit, not a 3-minute
    timeout, ends the wait, with the port and the log's last lines."""
    import time

    from tools.local_airflow import airflow_bin, airflow_env, ui_processes, wait_for_ui

    env = airflow_env()
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        command = dict(ui_processes(port))["api-server"]
        with open(tmp_path / "api-server.log", "wb") as log:
            server = subprocess.Popen(
                [airflow_bin(), *command],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.monotonic()
        try:
            with pytest.raises(SystemExit) as failed:
                wait_for_ui(port, timeout=150, watch={"api-server": server}, log_dir=tmp_path)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, 9)
            server.wait(timeout=30)
        seconds = time.monotonic() - started
    message = str(failed.value)
    assert f"port {port} on 127.0.0.1 is in use" in message and "RECFLOW_UI_PORT" in message
    assert "address already in use" in message  # the log's last lines
    assert seconds < 100, f"took {seconds:.0f} s to notice"
