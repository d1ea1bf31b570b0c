"""Local Airflow for recflow: one environment, the metadata DB, the Spark pool, and the UI processes by PID.

    python -m jobs.local_airflow ui        # api-server (UI), scheduler, dag-processor on 127.0.0.1; prints login
    python -m jobs.local_airflow ui-stop   # stops exactly the processes `ui` started (PID files)
    python -m jobs.local_airflow env       # the environment as shell exports (for a terminal of your own)

Everything lives in the checkout's ``airflow_home/`` (SQLite DB, logs, ``pids/``); the Spark connection defaults to
``local[*]``; the pseudonym key is generated once into ``.secrets/pseudonym_key`` (gitignored).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from schemas.settings import REPO_ROOT

LOCAL_SPARK_CONN = json.dumps({"conn_type": "spark", "host": "local[*]"})
UI_HOST, UI_PORT = "127.0.0.1", int(os.environ.get("RECFLOW_UI_PORT", "8080"))
UI_USER = "admin"
SPARK_POOL, SPARK_POOL_SLOTS = "spark", 1  # one Spark job at a time fits a 2-core machine
# (name, command); the triggerer is left out: no recflow task defers
UI_PROCESSES = (
    ("api-server", ["api-server", "-H", UI_HOST, "-p", str(UI_PORT)]),
    ("scheduler", ["scheduler", "--skip-serve-logs"]),
    ("dag-processor", ["dag-processor"]),
)


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
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://{UI_HOST}:{UI_PORT}/execution/")
    env.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", LOCAL_SPARK_CONN)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONUNBUFFERED", "1")
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
        print(f"Airflow metadata DB ready in {env['AIRFLOW_HOME']} ({time.monotonic() - started:.0f} s)",
              flush=True)


def ensure_spark_pool(env: dict[str, str]) -> None:
    subprocess.run([airflow_bin(), "pools", "set", SPARK_POOL, str(SPARK_POOL_SLOTS),
                    "recflow Spark jobs: one at a time on a small machine"],
                   env=env, check=True, stdout=subprocess.DEVNULL)


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


def wait_for_ui(timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    url = f"http://{UI_HOST}:{UI_PORT}/api/v2/monitor/health"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    return False


def start_ui(env: dict[str, str] | None = None, parallelism: int = 2) -> dict[str, int]:
    """Start the UI processes in the background (own process groups), PIDs in ``airflow_home/pids/``."""
    env = dict(env or airflow_env())
    env["AIRFLOW__CORE__PARALLELISM"] = str(parallelism)  # a 2-core machine: two task processes at most
    pids = _pid_dir(env)
    pids.mkdir(parents=True, exist_ok=True)
    running = {name: int(p.read_text()) for name, _ in UI_PROCESSES
               if (p := pids / f"{name}.pid").exists() and _alive_airflow(int(p.read_text()))}
    if running:
        raise SystemExit(f"already running: {running}; `make ui-stop` first")
    ensure_airflow_db(env)
    ensure_spark_pool(env)
    log_dir = Path(env["AIRFLOW_HOME"]) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = {}
    for name, args in UI_PROCESSES:
        with open(log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([airflow_bin(), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        (pids / f"{name}.pid").write_text(f"{proc.pid}\n")
        started[name] = proc.pid
    print(f"started {started}; logs in {log_dir}", flush=True)
    if not wait_for_ui():
        stop_ui(env)
        raise SystemExit(f"the API server did not answer on {UI_HOST}:{UI_PORT}: see {log_dir}/api-server.log")
    print(f"\nAirflow UI: http://{UI_HOST}:{UI_PORT}/")
    print(f"login:      {UI_USER} / {ui_password(env) or '(see ' + str(passwords_file(env)) + ')'}")
    print("stop with:  make ui-stop")
    return started


def stop_ui(env: dict[str, str] | None = None, timeout: float = 30.0) -> list[str]:
    """Stop exactly the processes whose PIDs `start_ui` recorded (each with its own children, by process group)."""
    env = env or airflow_env()
    stopped = []
    for name, _ in UI_PROCESSES:
        pid_file = _pid_dir(env) / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _alive_airflow(pid):
            os.killpg(pid, signal.SIGTERM)  # its session was started for it alone (start_new_session)
            deadline = time.monotonic() + timeout
            while _alive_airflow(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _alive_airflow(pid):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(f"{name} ({pid})")
        pid_file.unlink()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return stopped


def main(argv: list[str] | None = None) -> None:
    command = (argv if argv is not None else sys.argv[1:]) or ["ui"]
    if command[0] == "ui":
        start_ui()
    elif command[0] == "ui-stop":
        stop_ui()
    elif command[0] == "env":
        env = airflow_env()
        for key in sorted(k for k in env if k.startswith(("AIRFLOW", "PYSPARK", "SPARK_"))):
            print(f"export {key}={json.dumps(env[key])}")
        print("# the pseudonym key: export RECFLOW_PSEUDONYM_KEY=$(cat .secrets/pseudonym_key)")
    else:
        raise SystemExit(f"unknown command {command[0]!r}: ui | ui-stop | env")


if __name__ == "__main__":
    main()
