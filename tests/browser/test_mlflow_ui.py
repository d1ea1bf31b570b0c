"""A real browser against a real MLflow UI: a tracked nightly evaluation in a private lake, the UI started by
``tools.mlflow_ui`` on a free port, the run's page showing a metric's name and value, the server stopped by PID.

Needs Debian's chromium and npm's playwright-core (``make browser-deps``) and the UI's venv (``make mlflow-ui``
creates it, with ``mlflow`` of the client's version); skips with a clear message without chromium or
playwright-core. Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_ui_trigger import ARTIFACTS, CHROMIUM, PLAYWRIGHT_DIR, _free_port, _missing

from tools import mlflow_ui

REPO = Path(__file__).resolve().parents[2]
METRIC = "popularity.all.ndcg_at_3"  # a model metric; JavaScript prints a float as Python's repr does

pytestmark = [pytest.mark.browser, pytest.mark.tf]


def _tracked_night(lake_root: Path) -> dict:
    """The nightly evaluation of the popularity baseline on the tiny clustered lake of tests/test_baselines.py."""
    from test_baselines import write_feature_lake

    from models import baselines, evaluate

    settings = write_feature_lake(str(lake_root))
    return evaluate.evaluate(settings, baselines.train_baselines(settings, names=("popularity",)))


def test_the_mlflow_ui_shows_the_runs_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lake_root = tmp_path / "lake"
    lake_root.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RECFLOW_LAKE_ROOT", str(lake_root))
    result = _tracked_night(lake_root)
    run_id = result["tracking"]["run_id"]
    value = repr(result["models"][0]["metrics"]["all"]["ndcg_at_3"])
    port = _free_port()
    env = {**os.environ, "RECFLOW_LAKE_ROOT": str(lake_root), mlflow_ui.PORT_ENV: str(port)}
    tool = [sys.executable, "-m", "tools.mlflow_ui"]
    started = subprocess.run([*tool, "start"], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    pid_file = lake_root / "mlflow" / "ui.pid"
    pid = None
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}/" in started.stdout
        pid = int(pid_file.read_text())
        # a second start is refused while it runs, before touching the port
        again = subprocess.run(
            [*tool, "start"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert again.returncode != 0 and "already runs" in again.stderr
        browser = subprocess.run(
            ["node", str(Path(__file__).with_name("mlflow_ui.mjs"))],
            env={
                **env,
                "BASE_URL": f"http://127.0.0.1:{port}",
                "EXPERIMENT_ID": result["tracking"]["experiment_id"],
                "RUN_ID": run_id,
                "METRIC": METRIC,
                "VALUE": value,
                "ARTIFACTS": str(ARTIFACTS),
                "CHROMIUM": CHROMIUM,
                "PLAYWRIGHT_DIR": str(PLAYWRIGHT_DIR),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert browser.returncode == 0, f"screenshots in {ARTIFACTS}:\n{browser.stdout}{browser.stderr}"
        assert f"SHOWN {METRIC} {value}" in browser.stdout
    finally:
        stopped = subprocess.run(
            [*tool, "stop"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
    assert stopped.returncode == 0, stopped.stderr
    assert pid is not None and not pid_file.exists() and not mlflow_ui._alive_mlflow(pid)
    assert mlflow_ui.port_is_free(port), "the server's port is still bound after stop"
    # the UI wrote nothing into the checkout: no mlruns or mlartifacts beside the tool
    assert not (REPO / "mlruns").exists() and not (REPO / "mlartifacts").exists()
