"""Cluster mode: the pipeline's Spark stages on a real Spark standalone cluster, by switching ``spark_default``.

A master and one worker are started from pip's pyspark (``spark-class``) on 127.0.0.1 with free ports; the jobs are
submitted through the same Airflow hook the DAG's SparkSubmitOperator uses, with the ``spark_default`` connection
pointed at ``spark://127.0.0.1:<port>`` and the code shipped as a ``--py-files`` zip (as on a real cluster). Both
daemons are stopped by PID at the end. The fault test adds a second worker and SIGKILLs it mid-job.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

pytestmark = [pytest.mark.slow, pytest.mark.spark]

TINY = {
    "users": 200,
    "items": 150,
    "events_per_day": 2500,
    "window_days": 2,
    "days": 3,
    "epochs": 1,
    "top_n": 5,
    "run_date": "2026-01-06",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, even by SIGKILL or a `timeout`, where no finally runs
    (an orphaned master and worker were seen after a killed session). spark-class execs the JVM, which keeps it."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(BIN / "spark-class"), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one daemon we started, by its PID's process group (spark-class execs the JVM in that group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _json(url: str) -> Any:
    """A Spark web UI's JSON (master, worker, or a driver's REST API); None while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def _alive_workers(web_port: int) -> int:
    state = _json(f"http://127.0.0.1:{web_port}/json/") or {}
    return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")


def _worker_args(master: str, web_port: int, work_dir: Path) -> list[str]:
    return [
        "org.apache.spark.deploy.worker.Worker",
        master,
        "--host",
        "127.0.0.1",
        "--cores",
        "1",
        "--memory",
        "2g",
        "--webui-port",
        str(web_port),
        "--work-dir",
        str(work_dir),
    ]


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("java") is None:
        pytest.skip("no java on PATH")
    work = tmp_path_factory.mktemp("spark-cluster")
    port, web_port, worker_web_port = _free_port(), _free_port(), _free_port()
    import pyspark

    # spark-class finds pip's Spark through PYSPARK_DRIVER_PYTHON, else a bare `python3`: name it outright
    env = {
        **os.environ,
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_WORKER_DIR": str(work / "worker"),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    master = _start(
        [
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(web_port),
        ],
        work / "master.log",
        env,
    )
    worker = _start(
        _worker_args(f"spark://127.0.0.1:{port}", worker_web_port, work / "worker"), work / "worker.log", env
    )
    try:
        deadline = time.monotonic() + 120
        while _alive_workers(web_port) < 1:
            if time.monotonic() > deadline or master.poll() is not None or worker.poll() is not None:
                logs = "\n".join(p.read_text()[-2000:] for p in (work / "master.log", work / "worker.log"))
                pytest.fail(f"the standalone cluster did not come up:\n{logs}")
            time.sleep(1)
        yield {
            "master": f"spark://127.0.0.1:{port}",
            "port": port,
            "web_port": web_port,
            "work": work,
            "env": env,
        }
    finally:
        _stop(worker)
        _stop(master)


def _hook(
    stage: str,
    settings: Any,
    cluster: dict[str, Any],
    py_files: str,
    cores: int = 1,
    conf: dict[str, str] | None = None,
    name: str = "cluster-test",
) -> Any:
    """The provider's hook for ``jobs/<stage>.py``, configured as the DAG's operator configures it."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    from storage.spark_jvm import spark_jvm_options

    jvm_options = spark_jvm_options()
    hook = SparkSubmitHook(
        conn_id="spark_default",
        application_args=settings.to_cli(),
        py_files=py_files,
        name=f"recflow-{stage}-{name}",
        spark_binary=str(BIN / "spark-submit"),
        total_executor_cores=cores,
        executor_memory="1g",
        driver_memory="1g",
        conf={
            "spark.log.level": "WARN",
            "spark.driver.extraJavaOptions": jvm_options,
            "spark.executor.extraJavaOptions": jvm_options,
            **(conf or {}),
        },
    )
    assert hook._connection["master"] == cluster["master"], "the connection must select the cluster"
    return hook


def _submit(stage: str, settings: Any, cluster: dict[str, Any], py_files: str) -> float:
    """spark-submit ``jobs/<stage>.py`` through the provider's hook, exactly as the DAG's operator does."""
    hook = _hook(stage, settings, cluster, py_files)
    started = time.monotonic()
    hook.submit(str(REPO / "jobs" / f"{stage}.py"))
    return time.monotonic() - started


def _point_airflow_at(spark_cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The cluster's Spark for this test's processes and the spark_default connection at its master; the tiny
    lake's settings."""
    from schemas.settings import Settings

    for key in ("SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        monkeypatch.setenv(key, spark_cluster["env"][key])
    host, port = spark_cluster["master"].rsplit(":", 1)
    # the switch: only the connection changes (URI form also works: spark://127.0.0.1:7077)
    monkeypatch.setenv(
        "AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": host, "port": int(port)})
    )
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    return Settings.load({**TINY, "lake_root": str(tmp_path / "lake")}, env={})


def test_spark_stages_run_on_standalone_cluster(
    spark_cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for stage in ("clean", "features", "score"):
        if not (REPO / "jobs" / f"{stage}.py").exists():
            pytest.fail(f"jobs/{stage}.py does not exist yet")
    import pyarrow.parquet as pq

    from schemas import lake

    settings = _point_airflow_at(spark_cluster, tmp_path, monkeypatch)

    from recflow_nightly import py_files_for, spark_master

    assert spark_master() == spark_cluster["master"]
    py_files = py_files_for(spark_master(), tmp_path / "py_files")
    assert py_files and Path(py_files).exists(), "a non-local master must get the code as a zip"

    from demo import generate

    generate.main(settings.to_cli())
    seconds = {"clean": _submit("clean", settings, spark_cluster, py_files)}
    assert Path(lake.partition(settings.lake_root, lake.CLEAN_EVENTS, settings.ds)).exists()
    seconds["features"] = _submit("features", settings, spark_cluster, py_files)
    assert Path(lake.partition(settings.lake_root, lake.USER_HISTORIES, settings.ds)).exists()

    # the model: trained in this process (on a cluster: where the GPU is), promoted by the gate
    from models import evaluate, gate, train

    model_dirs = train.train(settings)
    decision = gate.decide(settings, evaluate.evaluate(settings, model_dirs))
    assert Path(lake.production_pointer(settings.lake_root)).exists(), decision

    seconds["score"] = _submit("score", settings, spark_cluster, py_files)
    staged = sorted(
        Path(lake.table(settings.lake_root, lake.STAGING)).glob(f"{lake.RECOMMENDATIONS}/dt=*/run=*")
    )
    assert staged, "score must have written recommendations into staging"
    recs = pq.read_table(staged[-1])
    assert recs.num_rows > 0
    per_user = recs.group_by("user_id").aggregate([("rank", "count")]).column("rank_count").to_pylist()
    assert max(per_user) == settings.top_n

    # the applications really ran on the cluster (a job that silently fell back to local[*] would not show)
    with urllib.request.urlopen(
        f"http://127.0.0.1:{spark_cluster['web_port']}/json/", timeout=10
    ) as response:
        state = json.load(response)
    names = [app["name"] for app in state.get("completedapps", []) + state.get("activeapps", [])]
    for stage in ("clean", "features", "score"):
        assert {f"recflow-{stage}", f"recflow-{stage}-cluster-test"} & set(names), (
            f"{stage} did not run on the cluster: {names}"
        )
    print(f"cluster stage seconds: {seconds}")


def _group_gone(pgid: int, timeout: float = 15.0) -> bool:
    """Whether no process of group ``pgid`` is left (waits up to ``timeout`` for orphans to be reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _raw_lines(root: str, ds: str) -> int:
    from schemas import lake

    return sum(len(p.read_bytes().splitlines()) for p in Path(lake.raw_events(root, ds)).glob("part-*.jsonl"))


def test_a_worker_killed_mid_job_does_not_fail_the_job(
    spark_cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second worker joins, clean runs with an executor on each, and the second worker (with the executor it
    launched: its whole process group, as when a machine goes) is SIGKILLed while that executor runs a task,
    after it finished one. Spark redoes the lost work on the surviving executor; the job exits 0 and
    reconciles."""
    from recflow_nightly import py_files_for, spark_master

    from demo import generate
    from schemas import lake
    from storage import lake_io

    settings = _point_airflow_at(spark_cluster, tmp_path, monkeypatch)
    generate.main(settings.to_cli())
    py_files = py_files_for(spark_master(), tmp_path / "py_files")
    assert py_files

    web = spark_cluster["web_port"]
    second_web_port = _free_port()
    second = _start(
        _worker_args(spark_cluster["master"], second_web_port, tmp_path / "worker2"),
        tmp_path / "worker2.log",
        spark_cluster["env"],
    )
    driver: subprocess.Popen[bytes] | None = None
    driver_log = tmp_path / "driver.log"
    killed: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while _alive_workers(web) < 2:
            assert second.poll() is None, (tmp_path / "worker2.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the second worker did not register with the master"
            time.sleep(1)

        hook = _hook("clean", settings, spark_cluster, py_files, cores=2, name="fault-test")
        command = hook._build_spark_submit_command(str(REPO / "jobs" / "clean.py"))
        started = time.monotonic()
        with open(driver_log, "wb") as out:
            driver = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        # the second worker's executor logs each task it starts and finishes (executors log at INFO whatever
        # the driver's level). Once it has finished one (its shuffle output lives there) and is running
        # another, kill that worker: both must be redone elsewhere
        deadline = time.monotonic() + 240
        while not killed:
            if driver.poll() is not None:
                pytest.fail(
                    f"clean ended before the worker could be killed:\n{driver_log.read_text()[-3000:]}"
                )
            assert time.monotonic() < deadline, "the second worker's executor never ran a task"
            for stderr in (tmp_path / "worker2").glob("app-*/*/stderr"):
                text = stderr.read_text(errors="replace")
                started_tids = set(re.findall(r"Running task .* \(TID (\d+)\)", text))
                finished_tids = set(re.findall(r"Finished task .* \(TID (\d+)\)", text))
                if finished_tids and started_tids - finished_tids:
                    os.killpg(second.pid, signal.SIGKILL)  # the worker and the executor it launched
                    killed = {
                        "after": time.monotonic() - started,
                        "finished": len(finished_tids),
                        "running": sorted(started_tids - finished_tids, key=int),
                    }
                    break
            time.sleep(0.1)
        assert driver.poll() is None, "the job must still be running when its worker dies"
        returncode = driver.wait(timeout=300)
        seconds = time.monotonic() - started
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        _stop(second)
    log = driver_log.read_text(errors="replace")
    assert returncode == 0, f"clean failed after losing a worker:\n{log[-4000:]}"
    assert _group_gone(second.pid), "the killed worker's executor outlived it"
    assert "Lost executor" in log, "the driver never noticed the lost executor"
    print(
        f"killed the second worker {killed['after']:.1f} s into clean, its executor had finished "
        f"{killed['finished']} tasks and was running TIDs {killed['running']}; "
        f"clean finished in {seconds:.0f} s"
    )

    # every cleaned day reconciles: raw lines = clean + quarantined + duplicates dropped, read from the lake
    days = [d.isoformat() for d in (*settings.window_dates(), settings.run_date)]
    for ds in days:
        manifest = json.loads(Path(lake.run_manifest(settings.lake_root, "clean", ds)).read_text())
        counts = manifest["counts"]
        assert counts["raw_events"] == _raw_lines(settings.lake_root, ds) > 0, ds
        assert counts["clean_events"] == lake_io.count_rows(
            lake.partition(settings.lake_root, lake.CLEAN_EVENTS, ds)
        )
        assert counts["raw_events"] == (
            counts["clean_events"] + counts["quarantined_events"] + counts["duplicates_dropped"]
        ), counts
        assert manifest["reconciliation"]["ok"] is True
