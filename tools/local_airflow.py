"""Local Airflow for recflow: one environment, the metadata DB, the Spark pool, and the UI processes by PID.

    python -m tools.local_airflow ui        # api-server (UI), scheduler, dag-processor on 127.0.0.1; prints login
    python -m tools.local_airflow ui-stop   # stops exactly the processes `ui` started (PID files)
    python -m tools.local_airflow backfill 2026-01-10 2026-01-14 [--conf JSON]  # days D in order, via a scheduler
    python -m tools.local_airflow env       # the environment as shell exports (for a terminal of your own)

Everything lives in the checkout's ``airflow_home/`` (SQLite DB, logs, ``pids/``); the Spark connection defaults to
``local[*]``; the pseudonym key is generated once into ``.secrets/pseudonym_key`` (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from schemas.settings import REPO_ROOT, Settings
from scoring.allocator import allocator_env

LOCAL_SPARK_CONN = json.dumps({"conn_type": "spark", "host": "local[*]"})
PORT_ENV = "RECFLOW_UI_PORT"
UI_HOST, UI_PORT = "127.0.0.1", int(os.environ.get(PORT_ENV) or "8080")
UI_USER = "admin"
SPARK_POOL, SPARK_POOL_SLOTS = "spark", 1  # one Spark job at a time fits a 2-core machine


def ui_processes(port: int) -> tuple[tuple[str, list[str]], ...]:
    """(name, command) of each process `ui` starts; the triggerer is left out: no recflow task defers."""
    return (
        ("api-server", ["api-server", "-H", UI_HOST, "-p", str(port)]),
        ("scheduler", ["scheduler", "--skip-serve-logs"]),
        ("dag-processor", ["dag-processor"]),
    )


UI_PROCESSES = ui_processes(UI_PORT)
LOG_TAIL_LINES = 15


def ui_port(env: dict[str, str]) -> int:
    """The api-server's port: ``RECFLOW_UI_PORT`` of ``env``, else 8080."""
    return int(env.get(PORT_ENV) or "8080")


# SQLite metadata DB: every local Airflow process waits up to 60 s for a write lock instead of sqlite3's 5 s (on a
# loaded 2-core machine the scheduler can hold one longer; `backfill create` then failed with "database is locked")
SQLITE_CONNECT_ARGS: dict[str, Any] = {"timeout": 60}


def lineage_transport(events_file: str) -> str:
    """``[openlineage] transport``: OpenLineage events appended to ``events_file``, one JSON line per event (its
    folder created on the first write); local file only, never a network endpoint."""
    return json.dumps(
        {
            "type": "file",
            "log_file_path": events_file,
            "append": True,
            "filesystem": "fsspec.implementations.local.LocalFileSystem",
            "fs_kwargs": {"auto_mkdir": True},
        }
    )


def lineage_events_file(env: dict[str, str]) -> str:
    """``<lake>/lineage/events.jsonl`` for a local lake; under the Airflow home for a lake on a remote store."""
    root = Settings.load(env=env).lake_root
    remote = "://" in root and not root.startswith("file://")
    folder = env["AIRFLOW_HOME"] if remote else str(Path(root.removeprefix("file://")).resolve())
    return f"{folder}/lineage/events.jsonl"


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def airflow_env(repo: Path = REPO_ROOT) -> dict[str, str]:
    """The environment every local Airflow command of recflow runs with (`make run`, `make ui`, the tests)."""
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(repo / "airflow_home"))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(repo / "dags"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    env.setdefault("AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG", "2")
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", f"{UI_USER}:admin")
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://{UI_HOST}:{ui_port(env)}/execution/")
    env.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", LOCAL_SPARK_CONN)
    # OpenLineage (apache-airflow-providers-openlineage): every task's lake inputs and outputs, to a local file
    env.setdefault("AIRFLOW__OPENLINEAGE__NAMESPACE", "recflow")
    env.setdefault("AIRFLOW__OPENLINEAGE__TRANSPORT", lineage_transport(lineage_events_file(env)))
    if env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite").startswith("sqlite"):
        env.setdefault(
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", "tools.local_airflow.SQLITE_CONNECT_ARGS"
        )
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONUNBUFFERED", "1")
    for name, value in allocator_env().items():  # TensorFlow tasks reuse freed memory (scoring/allocator.py)
        env.setdefault(name, value)
    # Airflow imports its SQLite connect args from this module, which runs from the checkout (not installed)
    python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(repo) not in python_path:
        env["PYTHONPATH"] = os.pathsep.join([str(repo), *python_path])
    if venv_bin not in env.get("PATH", "").split(os.pathsep):  # spark-submit and airflow of this venv
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["RECFLOW_PSEUDONYM_KEY"] = env.get("RECFLOW_PSEUDONYM_KEY") or ensure_pseudonym_key(repo)
    return env


def ensure_pseudonym_key(repo: Path = REPO_ROOT) -> str:
    """The local demo key: random, generated once, kept outside git (``.secrets/`` is gitignored), mode 600."""
    path = repo / ".secrets" / "pseudonym_key"
    if not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def ensure_airflow_db(env: dict[str, str], quiet: bool = False) -> None:
    """``airflow db migrate``: creates the SQLite DB inside the Airflow home, or upgrades it (idempotent, ~10 s)."""
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    if not quiet:
        print(
            f"Airflow metadata DB ready in {env['AIRFLOW_HOME']} ({time.monotonic() - started:.0f} s)",
            flush=True,
        )


# Run in the Airflow environment: the published tables' Assets as the DAGs declare them (their URI follows the lake
# root), and the active record of any same-named Asset at another URI deleted.
_RELEASE_MOVED_ASSETS = """
import sys
sys.path.insert(0, sys.argv[1])
from sqlalchemy import delete
from airflow.models.asset import AssetActive
from airflow.utils.session import create_session
import _params
with create_session() as session:
    for asset in _params.PUBLISHED_ASSETS:
        moved = delete(AssetActive).where(AssetActive.name == asset.name, AssetActive.uri != asset.uri)
        if session.execute(moved).rowcount:
            print(f"Asset {asset.name} now points at {asset.uri}")
"""


def release_moved_assets(env: dict[str, str]) -> None:
    """After the lake root moved, let the DAGs' Assets take their new URIs in a run without a scheduler.

    An Asset's URI is its table under the lake root, its name stays. Airflow keeps one active Asset per name: the
    old URI stays active until the scheduler's orphan check sees no DAG referring to it, so an ``airflow dags test``
    run (no scheduler) on the moved lake failed at publish with ``AirflowInactiveAssetInInletOrOutletException``.
    This does what that check would do for the two published tables, before the run.
    """
    done = subprocess.run(
        [sys.executable, "-c", _RELEASE_MOVED_ASSETS, env["AIRFLOW__CORE__DAGS_FOLDER"]],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    if done.stdout:
        print(done.stdout.strip(), flush=True)


def ensure_spark_pool(env: dict[str, str]) -> None:
    subprocess.run(
        [
            airflow_bin(),
            "pools",
            "set",
            SPARK_POOL,
            str(SPARK_POOL_SLOTS),
            "recflow Spark jobs: one at a time on a small machine",
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _pid_dir(env: dict[str, str]) -> Path:
    return Path(env["AIRFLOW_HOME"]) / "pids"


def _alive_airflow(pid: int) -> bool:
    """True when ``pid`` runs and is an Airflow process (a recycled PID of something else is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"airflow" in cmdline


def passwords_file(env: dict[str, str]) -> Path:
    return Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"


def ui_password(env: dict[str, str]) -> str | None:
    try:
        return json.loads(passwords_file(env).read_text()).get(UI_USER)
    except (OSError, ValueError):
        return None


def port_is_free(port: int, host: str = UI_HOST) -> bool:
    """Whether ``host:port`` can be bound now (as the api-server will bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a TIME_WAIT port is free
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_ui(
    port: int = UI_PORT,
    timeout: float = 180.0,
    watch: dict[str, subprocess.Popen[bytes]] | None = None,
    log_dir: Path | None = None,
) -> bool:
    """True once the api-server answers on ``port``, False after ``timeout``. A process of ``watch``
    (``{name: Popen}``) that exits meanwhile ends the wait at once with a SystemExit naming it, the port and
    its log's last lines (e.g. the api-server's "address already in use")."""
    deadline = time.monotonic() + timeout
    url = f"http://{UI_HOST}:{port}/api/v2/monitor/health"
    while time.monotonic() < deadline:
        for name, proc in (watch or {}).items():
            if proc.poll() is not None:
                log = (log_dir or Path(".")) / f"{name}.log"
                in_use = "address already in use" in log_tail(log, 200)
                hint = (
                    f"port {port} on {UI_HOST} is in use: stop what holds it, "
                    f"or set {PORT_ENV} to a free port"
                    if in_use
                    else f"see {log}"
                )
                raise SystemExit(
                    f"the Airflow {name} exited (code {proc.returncode}) while starting on {UI_HOST}:{port}: "
                    f"{hint}\nlast lines of {log}:\n{log_tail(log)}"
                )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    return False


def start_processes(env: dict[str, str], parallelism: int = 2) -> dict[str, int]:
    """Start api-server, scheduler and dag-processor in the background (own sessions) bound to 127.0.0.1, PIDs in
    ``airflow_home/pids/``; returns ``{name: pid}`` once the API server answers. Shared by ``ui`` and ``backfill``
    (the scheduler's task processes need the API server: Airflow 3 tasks talk to the Execution API)."""
    env = dict(env)
    env["AIRFLOW__CORE__PARALLELISM"] = str(parallelism)  # a 2-core machine: two task processes at most
    port = ui_port(env)
    pids = _pid_dir(env)
    pids.mkdir(parents=True, exist_ok=True)
    running = {
        name: int(p.read_text())
        for name, _ in UI_PROCESSES
        if (p := pids / f"{name}.pid").exists() and _alive_airflow(int(p.read_text()))
    }
    if running:
        raise SystemExit(f"already running: {running}; `make ui-stop` first")
    if not port_is_free(port):  # before the DB migration: the api-server would only die on it minutes later
        raise SystemExit(
            f"port {port} on {UI_HOST} is already in use (another Airflow UI or another program): stop it, "
            f"or choose another port with {PORT_ENV}=<port>"
        )
    ensure_airflow_db(env)
    ensure_spark_pool(env)
    log_dir = Path(env["AIRFLOW_HOME"]) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started: dict[str, int] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in ui_processes(port):
            with open(log_dir / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(
                    [airflow_bin(), *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            (pids / f"{name}.pid").write_text(f"{proc.pid}\n")
            started[name] = proc.pid
            procs[name] = proc
        print(f"started {started}; logs in {log_dir}", flush=True)
        if not wait_for_ui(port, watch=procs, log_dir=log_dir):
            raise SystemExit(
                f"the API server did not answer on {UI_HOST}:{port} ({PORT_ENV}): "
                f"see {log_dir}/api-server.log"
            )
    except BaseException:  # a failed start or Ctrl-C while waiting: nothing of ours is left running
        stop_processes(env, started)
        raise
    return started


def start_ui(env: dict[str, str] | None = None, parallelism: int = 2) -> dict[str, int]:
    """Start the UI processes (:func:`start_processes`) and print the URL and the login."""
    env = dict(env or airflow_env())
    started = start_processes(env, parallelism)
    print(f"\nAirflow UI: http://{UI_HOST}:{ui_port(env)}/")
    print(f"login:      {UI_USER} / {ui_password(env) or '(see ' + str(passwords_file(env)) + ')'}")
    print("stop with:  make ui-stop")
    return started


def stop_processes(
    env: dict[str, str], only: dict[str, int] | None = None, timeout: float = 30.0
) -> list[str]:
    """Stop the processes whose PIDs were recorded (each with its own children, by process group); with ``only``
    (``{name: pid}`` as :func:`start_processes` returned), exactly those PIDs and nothing else."""
    stopped = []
    for name, _ in UI_PROCESSES:
        pid_file = _pid_dir(env) / f"{name}.pid"
        recorded = int(pid_file.read_text()) if pid_file.exists() else None
        pid = recorded if only is None else only.get(name)
        if pid is None:
            continue
        if _alive_airflow(pid):
            os.killpg(pid, signal.SIGTERM)  # its session was started for it alone (start_new_session)
            deadline = time.monotonic() + timeout
            while _alive_airflow(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _alive_airflow(pid):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(f"{name} ({pid})")
        if recorded == pid:
            pid_file.unlink()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"), flush=True)
    return stopped


def stop_ui(env: dict[str, str] | None = None, timeout: float = 30.0) -> list[str]:
    """Stop exactly the processes whose PIDs `start_ui` recorded."""
    return stop_processes(env or airflow_env(), timeout=timeout)


# ---- backfill: a date range through a real scheduler ---------------------------------------------------------
DAG_ID = "recflow_nightly"
FINISHED = ("success", "failed")


def _airflow_json(env: dict[str, str], *args: str) -> Any:
    """An ``airflow ... --output json`` command's parsed output (log lines before the JSON are skipped)."""
    out = subprocess.run(
        [airflow_bin(), *args, "--output", "json"], env=env, check=True, capture_output=True, text=True
    ).stdout
    lines = out.splitlines()
    for number, line in enumerate(lines):
        if line.lstrip().startswith(("[", "{")):
            try:
                return json.loads("\n".join(lines[number:]))
            except ValueError:
                continue
    raise RuntimeError(f"no JSON in the output of airflow {' '.join(args)}: {out[-500:]!r}")


def wait_for_dag(env: dict[str, str], dag_id: str = DAG_ID, timeout: float = 300.0) -> bool:
    """Wait until the dag-processor has stored ``dag_id``; returns whether it is paused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            dags = {d["dag_id"]: d for d in _airflow_json(env, "dags", "list")}
        except (subprocess.CalledProcessError, ValueError, RuntimeError):
            dags = {}
        if dag_id in dags:
            return str(dags[dag_id].get("is_paused")).lower() in ("true", "1")
        if time.monotonic() > deadline:
            raise SystemExit(f"{dag_id} was not parsed within {timeout:.0f} s: see the dag-processor log")
        time.sleep(5)


def logical_date(day: dt.date) -> dt.date:
    """The scheduled run that processes day D: ``@daily`` is a CronTriggerTimetable (zero-length interval), so
    the run at D+1 00:00 has data_interval_end D+1 and processes D (dags/recflow_nightly.resolve_run_date)."""
    return day + dt.timedelta(days=1)


def backfill_runs(
    env: dict[str, str], first: dt.date, last: dt.date, dag_id: str = DAG_ID
) -> list[dict[str, Any]]:
    """The runs for days ``first``..``last``, in date order, each with its day D and duration in seconds."""
    runs = _airflow_json(
        env,
        "dags",
        "list-runs",
        dag_id,
        "--start-date",
        logical_date(first).isoformat(),
        "--end-date",
        logical_date(last).isoformat() + "T23:59:59+00:00",
    )
    out = []
    for run in runs:
        logical = dt.datetime.fromisoformat(run["logical_date"])
        start, end = run.get("start_date"), run.get("end_date")
        seconds = (
            (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()
            if start and end
            else None
        )
        out.append({"day": (logical.date() - dt.timedelta(days=1)).isoformat(), **run, "seconds": seconds})
    return sorted(out, key=lambda r: r["logical_date"])


def backfill(
    first: dt.date,
    last: dt.date,
    conf: dict[str, Any] | None = None,
    max_active_runs: int = 1,
    reprocess_behavior: str | None = None,
    env: dict[str, str] | None = None,
    poll: float = 15.0,
    timeout: float = 12 * 3600.0,
) -> list[dict[str, Any]]:
    """Run recflow_nightly for every day ``first``..``last`` (D, inclusive) the way production does: start the
    API server, scheduler and dag-processor (127.0.0.1), unpause the DAG, ``airflow backfill create`` (the runs
    start in date order, at most ``max_active_runs`` at once; 1 by default because each day's vocabularies extend
    the previous day's), wait for every run to finish, print each run's day, state and duration, then pause the
    DAG again if it was paused and stop exactly the processes started here (also on Ctrl-C, SIGTERM or failure).
    """
    if last < first:
        raise SystemExit(f"TO ({last}) is before FROM ({first})")
    env = dict(env or airflow_env())
    # this scheduler only runs queued runs (backfill, manual): unpausing must not also start last night's run
    env.setdefault("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", "False")
    days = (last - first).days + 1
    started: dict[str, int] = {}
    paused = False
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    wall = time.monotonic()
    try:
        started = start_processes(env)
        paused = wait_for_dag(env)
        subprocess.run(
            [airflow_bin(), "dags", "unpause", DAG_ID], env=env, check=True, stdout=subprocess.DEVNULL
        )
        create = [
            airflow_bin(),
            "backfill",
            "create",
            "--dag-id",
            DAG_ID,
            "--from-date",
            logical_date(first).isoformat(),
            "--to-date",
            logical_date(last).isoformat(),
            "--max-active-runs",
            str(max_active_runs),
        ]
        if conf:
            create += ["--dag-run-conf", json.dumps(conf)]
        if reprocess_behavior:
            create += ["--reprocess-behavior", reprocess_behavior]
        print(
            f"backfill {DAG_ID} for D = {first} .. {last} ({days} runs, logical dates "
            f"{logical_date(first)} .. {logical_date(last)}, max {max_active_runs} active)",
            flush=True,
        )
        subprocess.run(create, env=env, check=True)
        url = f"http://{UI_HOST}:{ui_port(env)}/dags/{DAG_ID}"
        print(f"watch it at {url} (login {UI_USER} / {ui_password(env)})", flush=True)
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while True:
            runs = backfill_runs(env, first, last)
            for run in runs:
                if seen.get(run["run_id"]) != run["state"]:
                    seen[run["run_id"]] = run["state"]
                    print(f"  {time.monotonic() - wall:7.0f} s  D={run['day']}  {run['state']}", flush=True)
            if len(runs) >= days and all(r["state"] in FINISHED for r in runs):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"backfill not finished after {timeout:.0f} s: {seen}")
            time.sleep(poll)
        print(f"\nbackfill of {DAG_ID} finished in {time.monotonic() - wall:.0f} s:")
        print(f"{'D':<12} {'logical date':<26} {'state':<8} {'seconds':>8}")
        for run in runs:
            seconds = "-" if run["seconds"] is None else f"{run['seconds']:.0f}"
            print(f"{run['day']:<12} {run['logical_date']:<26} {run['state']:<8} {seconds:>8}")
        return runs
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if started and paused:
            subprocess.run(
                [airflow_bin(), "dags", "pause", DAG_ID], env=env, check=False, stdout=subprocess.DEVNULL
            )
        stop_processes(env, started)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    command = (argv if argv is not None else sys.argv[1:]) or ["ui"]
    if command[0] == "ui":
        start_ui()
    elif command[0] == "ui-stop":
        stop_ui()
    elif command[0] == "backfill":
        parser = argparse.ArgumentParser(
            prog="python -m tools.local_airflow backfill", description=backfill.__doc__
        )
        parser.add_argument("first", type=dt.date.fromisoformat, help="first day D to process, YYYY-MM-DD")
        parser.add_argument("last", type=dt.date.fromisoformat, help="last day D to process, YYYY-MM-DD")
        parser.add_argument(
            "--conf", type=json.loads, default=None, help="JSON conf of every run (DAG params)"
        )
        parser.add_argument("--max-active-runs", type=int, default=1)
        parser.add_argument("--reprocess-behavior", choices=("none", "completed", "failed"), default=None)
        args = parser.parse_args(command[1:])
        try:
            runs = backfill(args.first, args.last, args.conf, args.max_active_runs, args.reprocess_behavior)
        except KeyboardInterrupt:
            raise SystemExit(
                "interrupted: the Airflow processes started for the backfill were stopped. The backfill "
                "stays open in the metadata DB (one per DAG): let it finish or cancel it in the UI "
                "(`make ui`) before creating another."
            ) from None
        if any(run["state"] != "success" for run in runs):
            raise SystemExit(1)
    elif command[0] == "env":
        env = airflow_env()
        for key in sorted(k for k in env if k.startswith(("AIRFLOW", "PYSPARK", "SPARK_"))):
            print(f"export {key}={json.dumps(env[key])}")
        print("# the pseudonym key: export RECFLOW_PSEUDONYM_KEY=$(cat .secrets/pseudonym_key)")
    else:
        raise SystemExit(f"unknown command {command[0]!r}: ui | ui-stop | backfill | env")


if __name__ == "__main__":
    main()
