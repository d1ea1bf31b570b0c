"""A real browser against a real Airflow UI: log in, trigger recflow_nightly from the form with a non-default
top_n, wait for the run to succeed, and check the published table has that many rows per user.

Needs Debian's chromium and npm's playwright-core (``make browser-deps``); skips with a clear message without them.
The UI runs from a private Airflow home and lake (tiny demo sizes through RECFLOW_* variables, which become the
form's defaults) on a free port, started and stopped by PID through ``tools.local_airflow``. Screenshots go to
``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
PLAYWRIGHT_DIR = Path(os.environ.get("RECFLOW_PLAYWRIGHT_DIR", REPO / ".cache" / "playwright"))
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
TOP_N = 7  # the form's default is 100
TINY_ENV = {
    "RECFLOW_USERS": "300",
    "RECFLOW_ITEMS": "200",
    "RECFLOW_EVENTS_PER_DAY": "4000",
    "RECFLOW_WINDOW_DAYS": "3",
    "RECFLOW_EPOCHS": "2",
    "RECFLOW_MIN_RECALL_AT_K": "0",
    "RECFLOW_MIN_NDCG_AT_K": "0",
    "RECFLOW_MIN_LIFT_OVER_POPULARITY": "-1",
    "RECFLOW_MAX_COLD_START_SHARE": "1",
    "RECFLOW_VOLUME_BAND": "0.9",
}
RUN_TIMEOUT_S = 900

# ~12 min on a 2-core machine: outside `make test` (addopts deselects `browser`); `make test-browser` runs it
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.airflow]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"chromium not found at {CHROMIUM} (make browser-deps, or set CHROMIUM_PATH)"
    if shutil.which("node") is None:
        return "node not found (the Playwright driver script runs on Node.js)"
    if not (PLAYWRIGHT_DIR / "node_modules" / "playwright-core").exists():
        return f"playwright-core not installed under {PLAYWRIGHT_DIR} (make browser-deps)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api(base: str, token: str, path: str) -> dict:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _token(base: str, password: str) -> str:
    body = json.dumps({"username": "admin", "password": password}).encode()
    request = urllib.request.Request(
        base + "/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.load(response)["access_token"])


def _node(mode: str, env: dict[str, str]) -> None:
    out = subprocess.run(
        ["node", str(Path(__file__).with_name("ui_trigger.mjs")), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (
        f"browser step {mode} failed (screenshots in {ARTIFACTS}):\n{out.stdout}{out.stderr}"
    )


def test_trigger_from_the_ui_with_custom_top_n(tmp_path: Path) -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    lake_root = tmp_path / "lake"
    env = {
        **os.environ,
        **TINY_ENV,
        "AIRFLOW_HOME": str(tmp_path / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "RECFLOW_UI_PORT": str(port),
        "RECFLOW_LAKE_ROOT": str(lake_root),
        "RECFLOW_SHUFFLE_PARTITIONS": "2",
        # manual runs only: unpausing must not also start last night's scheduled run (catchup=False does)
        "RECFLOW_SCHEDULE": "none",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
    }
    ui = [sys.executable, "-m", "tools.local_airflow"]
    subprocess.run([*ui, "ui"], env=env, check=True, timeout=600, cwd=REPO)
    try:
        passwords = tmp_path / "airflow_home" / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        browser_env = {
            **env,
            "BASE_URL": base,
            "UI_USER": "admin",
            "UI_PASSWORD": password,
            "TOP_N": str(TOP_N),
            "ARTIFACTS": str(ARTIFACTS),
            "CHROMIUM": CHROMIUM,
            "PLAYWRIGHT_DIR": str(PLAYWRIGHT_DIR),
        }
        _node("trigger", browser_env)

        token = _token(base, password)
        runs = _api(base, token, "/api/v2/dags/recflow_nightly/dagRuns?order_by=-run_after&limit=5")[
            "dag_runs"
        ]
        assert len(runs) == 1, f"expected exactly the run the form triggered, got {runs}"
        run = runs[0]
        assert run["run_type"] == "manual" and run["conf"]["top_n"] == TOP_N, run["conf"]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while run["state"] not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(10)
            token = _token(base, password)
            run = _api(base, token, f"/api/v2/dags/recflow_nightly/dagRuns/{run['dag_run_id']}")
        _node("final", {**browser_env, "RUN_ID": run["dag_run_id"]})
        tasks = _api(base, token, f"/api/v2/dags/recflow_nightly/dagRuns/{run['dag_run_id']}/taskInstances")
        states = {t["task_id"]: t["state"] for t in tasks["task_instances"]}
        assert run["state"] == "success", f"run ended {run['state']}: {states}"
    finally:
        subprocess.run([*ui, "ui-stop"], env=env, check=False, timeout=120, cwd=REPO)

    import pyarrow.parquet as pq

    published = sorted((lake_root / "recommendations").glob("dt=*"))
    assert len(published) == 1, published  # no run_date in the form: the day before the run's interval end
    table = pq.read_table(published[0], columns=["user_id", "rank"])
    counts = table.group_by("user_id").aggregate([("rank", "count")]).column("rank_count").to_pylist()
    assert counts and set(counts) == {TOP_N}, f"rows per user: {sorted(set(counts))}"
