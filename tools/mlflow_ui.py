"""The MLflow UI on recflow's tracking store, from a venv of its own, started and stopped by PID.

    python -m tools.mlflow_ui start   # (make mlflow-ui) the UI of the lake's store on 127.0.0.1, prints the URL
    python -m tools.mlflow_ui stop    # stops exactly the server `start` started (its PID file)

The pipeline's venv has ``mlflow-skinny`` (client and stores): the full ``mlflow`` package, the only one shipping
the UI, caps pyarrow below the version recflow pins. So the UI runs from ``.venv-mlflow-ui/`` (gitignored;
``RECFLOW_MLFLOW_UI_VENV`` elsewhere), created on first use with ``mlflow`` of exactly the client's version (the
server must read the store's schema as the client wrote it). It serves the store and artifact root the nightly
writes to (``models.tracking``: ``<lake>/mlflow/mlflow.db``, ``<lake>/mlflow/artifacts``); its PID file and log
are ``<lake>/mlflow/ui.pid`` and ``ui.log``. The port is ``RECFLOW_MLFLOW_UI_PORT`` (default 5000); a port in use
is refused before anything starts.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from models import tracking
from schemas.settings import REPO_ROOT, Settings
from tools.local_airflow import UI_HOST, log_tail, port_is_free

PORT_ENV = "RECFLOW_MLFLOW_UI_PORT"
VENV_ENV = "RECFLOW_MLFLOW_UI_VENV"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 180.0


def ui_venv(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get(VENV_ENV) or REPO_ROOT / ".venv-mlflow-ui")


def ui_port(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    return int(env.get(PORT_ENV) or DEFAULT_PORT)


def mlflow_version() -> str:
    """The version of the pipeline's MLflow client: the UI server's must be the same."""
    return importlib.metadata.version("mlflow-skinny")


def _installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('mlflow'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(venv: Path) -> Path:
    """``venv`` with ``mlflow==<client version>``, created or updated when it lacks it; returns its mlflow."""
    wanted = mlflow_version()
    if _installed_version(venv) != wanted:
        print(f"installing mlflow=={wanted} (its UI) into {venv}: a few minutes, once", flush=True)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        log = venv / "pip-install.log"
        with open(log, "w") as out:
            done = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"mlflow=={wanted}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0 or _installed_version(venv) != wanted:
            raise SystemExit(f"could not install mlflow=={wanted} into {venv}:\n{log_tail(log)}")
    return venv / "bin" / "mlflow"


def _files(settings: Settings) -> tuple[Path, Path]:
    """The PID file and the log of the UI of this lake's store."""
    folder = Path(tracking.mlflow_root(settings).removeprefix("file://"))
    return folder / "ui.pid", folder / "ui.log"


def _alive_mlflow(pid: int) -> bool:
    """True when ``pid`` runs and is an MLflow process (a recycled PID of something else is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"mlflow" in cmdline


def _store(settings: Settings) -> tuple[str, str]:
    """The backend store URI and artifact root the server serves; refused for a tracking server's URI."""
    uri = tracking.tracking_uri(settings)
    if uri.startswith(("http://", "https://", "databricks")):
        raise SystemExit(f"the tracking URI is a server already, {uri}: open its UI there")
    return uri, tracking.artifact_root(settings)


def wait_for_ui(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT_S
) -> None:
    """Return once the server answers ``/health``; a SystemExit naming the port and the log's last lines if it
    exits first or does not answer within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            in_use = "address already in use" in log_tail(log, 200).lower()
            hint = (
                f"port {port} on {UI_HOST} is in use: set {PORT_ENV} to a free port"
                if in_use
                else f"see {log}"
            )
            raise SystemExit(
                f"the MLflow server exited (code {proc.returncode}) while starting on {UI_HOST}:{port}: {hint}\n"
                f"last lines of {log}:\n{log_tail(log)}"
            )
        try:
            with urllib.request.urlopen(f"http://{UI_HOST}:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise SystemExit(
        f"the MLflow server did not answer on {UI_HOST}:{port} within {timeout:.0f} s: see {log}"
    )


def start(settings: Settings | None = None, env: dict[str, str] | None = None) -> int:
    """Start ``mlflow server`` on the lake's store, bound to 127.0.0.1, in its own session; returns its PID once
    it answers."""
    env = dict(os.environ) if env is None else env
    settings = settings or Settings.load(env=env)
    port = ui_port(env)
    pid_file, log = _files(settings)
    if pid_file.exists() and _alive_mlflow(int(pid_file.read_text())):
        raise SystemExit(f"the MLflow UI already runs (PID {pid_file.read_text().strip()}): stop it first")
    if not port_is_free(port, UI_HOST):
        raise SystemExit(
            f"port {port} on {UI_HOST} is already in use (another MLflow UI or another program): stop it, "
            f"or choose another port with {PORT_ENV}=<port>"
        )
    store, artifacts = _store(settings)
    mlflow = ensure_venv(ui_venv(env))
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(mlflow),
        "server",
        "--host",
        UI_HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        store,
        "--registry-store-uri",
        store,
        "--default-artifact-root",
        artifacts,
        "--artifacts-destination",
        artifacts,
    ]
    server_env = {k: v for k, v in env.items() if k != tracking.TRACKING_URI_ENV}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            env=server_env,
            cwd=pid_file.parent,  # nothing of the server lands in the caller's working directory
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    try:
        wait_for_ui(port, proc, log)
    except BaseException:  # a failed start or Ctrl-C while waiting: nothing of ours is left running
        stop(settings)
        raise
    print(f"MLflow UI: http://{UI_HOST}:{port}/ (store {store}, artifacts {artifacts}, PID {proc.pid})")
    print("stop with: .venv/bin/python -m tools.mlflow_ui stop")
    return proc.pid


def stop(settings: Settings | None = None, timeout: float = 30.0) -> int | None:
    """Stop exactly the server whose PID ``start`` recorded (its process group); returns that PID, or None."""
    settings = settings or Settings.load()
    pid_file, _ = _files(settings)
    if not pid_file.exists():
        print("stopped: nothing was running")
        return None
    pid = int(pid_file.read_text())
    if _alive_mlflow(pid):
        os.killpg(pid, signal.SIGTERM)  # its session was started for it alone (start_new_session)
        deadline = time.monotonic() + timeout
        while _alive_mlflow(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive_mlflow(pid):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink()
    print(f"stopped: MLflow UI ({pid})")
    return pid


def main(argv: list[str] | None = None) -> None:
    command = (argv if argv is not None else sys.argv[1:]) or ["start"]
    if command[0] == "start":
        start()
    elif command[0] == "stop":
        stop()
    else:
        raise SystemExit(f"unknown command {command[0]!r}: start | stop")


if __name__ == "__main__":
    main()
