"""MLflow tracking and registry on a tiny night: the run of the date with every model's params and metrics, the
report, the deep model's registered version, the `production` alias the gate sets (and production.json derived
from it), reruns without duplicates, and nothing written outside the lake. Real MLflow, SQLite store in the lake."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from models import gate, registry, tracking
from schemas import features as fs
from schemas import lake
from schemas.settings import Settings
from storage import lake_io

pytestmark = pytest.mark.tf
SEGMENTS = ("all", "cold", "warm")
REPO = Path(__file__).resolve().parents[1]


def write_train_examples(settings: Settings) -> None:
    """``features/train_examples`` of the tiny clustered world of test_baselines (each window item once, after
    the items before it), so that the deep model trains on the same lake the baselines and evaluation read."""
    from test_baselines import N_USERS, clustered_interactions

    window, _ = clustered_interactions()
    start = dt.datetime(2026, 1, 12, tzinfo=dt.UTC)
    rows = [
        {
            "user_idx": user,
            "history": window[user][:step],
            "item_idx": item,
            "weight": 1.0,
            "event_time": start + dt.timedelta(minutes=user * 10 + step),
        }
        for user in range(1, N_USERS + 1)
        for step, item in enumerate(window[user])
    ]
    table = pa.Table.from_pylist(rows, schema=fs.TRAIN_EXAMPLE)
    lake_io.write_partition(table, settings.lake_root, lake.TRAIN_EXAMPLES, settings.ds, fs.TRAIN_EXAMPLE)


@pytest.fixture()
def night(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A tiny lake with a trained deep model and two baselines; the process runs in an empty working directory
    (so a stray ./mlruns would show) and without a developer's MLFLOW_TRACKING_URI."""
    from test_baselines import write_feature_lake

    from models import baselines
    from models.train import train_two_tower

    monkeypatch.delenv(tracking.TRACKING_URI_ENV, raising=False)
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__first")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    lake_root = tmp_path / "lake"
    lake_root.mkdir()
    settings = write_feature_lake(str(lake_root)).replace(
        gate_metric="ndcg_at_3", encoder="mean", embedding_dim=8, epochs=1, batch_size=64, history_length=4
    )
    write_train_examples(settings)
    deep = train_two_tower(settings)
    dirs = [deep, *baselines.train_baselines(settings, names=("popularity", "ease"))]
    return {"settings": settings, "dirs": dirs, "lake": lake_root, "cwd": cwd, "tmp": tmp_path}


def test_the_nightly_run_its_registered_model_and_the_production_alias(night: dict[str, Any]) -> None:
    from mlflow.entities import ViewType

    from models import evaluate

    settings: Settings = night["settings"]
    result = evaluate.evaluate(settings, night["dirs"])
    tracked = result["tracking"]
    client = tracking.client(settings)
    assert client.tracking_uri == f"sqlite:///{night['lake']}/mlflow/mlflow.db"
    experiment = client.get_experiment_by_name("recflow_nightly")
    assert experiment.artifact_location == f"file://{night['lake']}/mlflow/artifacts"

    # one run for the date, tagged with it and the Airflow run
    runs = tracking.runs_of_date(client, experiment.experiment_id, settings.ds)
    assert [r.info.run_id for r in runs] == [tracked["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_RUN_DATE] == settings.ds
    assert run.data.tags[tracking.TAG_AIRFLOW_RUN] == "manual__first"

    # params of every trained model, from its registry metadata
    names = {m["name"] for m in result["models"]}
    assert names == {"two_tower", "popularity", "ease"}
    params = run.data.params
    for entry in result["models"]:
        meta = registry.read_metadata(entry["path"])
        assert params[f"{entry['name']}.version"] == entry["version"]
        for key, value in meta["params"].items():
            assert params[f"{entry['name']}.{key}"] == (
                value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            ), key
    assert params["ease.lam"] == "400.0" and params["two_tower.encoder"] == "mean"
    assert params["run.gate_metric"] == "ndcg_at_3"

    # metrics of every model for all, cold and warm users, as evaluation computed them
    metrics = run.data.metrics
    for entry in result["models"]:
        for segment in SEGMENTS:
            for metric, value in entry["metrics"][segment].items():
                assert metrics[f"{entry['name']}.{segment}.{metric}"] == pytest.approx(value)
    assert metrics["ease.cold.users"] == 6 and metrics["validation_users"] == result["validation_users"]

    # the report and its plots are artifacts of the run
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {f"report/{n}" for n in tracking.REPORT_FILES} <= artifacts
    downloaded = night["tmp"] / "downloaded"
    downloaded.mkdir()
    report = Path(client.download_artifacts(run.info.run_id, "report/index.html", str(downloaded)))
    assert report.read_text() == Path(result["report"]).read_text()

    # the deep model (not the baselines) is a registered model version, its folder logged from the lake
    deep = next(m for m in result["models"] if m["name"] == "two_tower")
    registered = tracked["registered"]
    assert set(registered) == {f"two_tower/{deep['version']}"}
    version = client.get_model_version(
        "recflow_two_tower", registered[f"two_tower/{deep['version']}"]["version"]
    )
    assert version.run_id == run.info.run_id
    assert version.tags[tracking.TAG_VERSION] == deep["version"]
    assert version.tags[tracking.TAG_RUN_DATE] == settings.ds
    assert version.source == f"{run.info.artifact_uri}/models/two_tower"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "models/two_tower")}
    assert {"models/two_tower/metadata.json", "models/two_tower/saved_model"} <= logged

    # the gate promotes the deep model (the only candidate, no production yet): alias first, pointer derived
    only_deep = {**result, "models": [deep]}
    decision = gate.decide(settings, only_deep)
    assert decision["action"] == "promote" and decision["promoted"]["name"] == "two_tower"
    aliased = client.get_model_version_by_alias("recflow_two_tower", "production")
    assert str(aliased.version) == str(version.version)
    pointer = registry.production(settings)
    assert (pointer["name"], pointer["version"]) == ("two_tower", deep["version"])
    assert pointer["mlflow"] == {
        "registered_model": "recflow_two_tower",
        "version": str(version.version),
        "alias": "production",
        "run_id": run.info.run_id,
    }
    assert tracking.production_version(settings) == {
        "name": "recflow_two_tower",
        "version": str(version.version),
    }
    tags = client.get_run(run.info.run_id).data.tags
    assert (
        tags[tracking.TAG_GATE_ACTION] == "promote" and tags[tracking.TAG_GATE_REASON] == decision["reason"]
    )

    # a baseline promoted later is registered under its own name and takes the alias: exactly one holds it
    popularity = next(m for m in result["models"] if m["name"] == "popularity")
    fallback = gate.decide(settings, {**result, "models": [popularity]})
    assert fallback["action"] == "promote" and fallback["promoted"]["name"] == "popularity"
    assert tracking.production_version(settings) == {"name": "recflow_popularity", "version": "1"}
    assert "production" not in client.get_registered_model("recflow_two_tower").aliases
    assert registry.production(settings)["mlflow"]["registered_model"] == "recflow_popularity"

    # a rerun of the date with the same models reuses the run and the model version; no duplicates
    os.environ["AIRFLOW_CTX_DAG_RUN_ID"] = "manual__second"
    again = evaluate.evaluate(settings, night["dirs"])
    assert again["tracking"]["run_id"] == run.info.run_id
    assert again["tracking"]["registered"] == registered
    assert len(client.search_model_versions("name = 'recflow_two_tower'")) == 1
    rerun = client.get_run(run.info.run_id)
    assert rerun.info.status == "FINISHED"
    assert rerun.data.tags[tracking.TAG_AIRFLOW_RUN] == "manual__second"
    assert rerun.data.tags[tracking.TAG_EARLIER_AIRFLOW_RUNS] == "manual__first"
    assert len(tracking.runs_of_date(client, experiment.experiment_id, settings.ds)) == 1

    # a rerun with other models replaces the run: still one run for the date, naming the one it replaced
    changed = evaluate.evaluate(settings, night["dirs"][:2])
    runs = tracking.runs_of_date(client, experiment.experiment_id, settings.ds)
    assert [r.info.run_id for r in runs] == [changed["tracking"]["run_id"]] != [run.info.run_id]
    assert runs[0].data.tags[tracking.TAG_REPLACED] == run.info.run_id
    assert "ease.version" not in runs[0].data.params
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    assert changed["tracking"]["registered"] == registered  # the same deep model: its version, not a new one
    assert len(client.search_model_versions("name = 'recflow_two_tower'")) == 1

    # nothing outside the lake: not in the working directory, not in the checkout, every artifact in the lake
    assert not list(night["cwd"].iterdir())
    assert sorted(p.name for p in night["tmp"].iterdir()) == ["cwd", "downloaded", "lake"]
    assert not (REPO / "mlruns").exists() and not (REPO / "mlartifacts").exists()
    for each in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL):
        assert each.info.artifact_uri.startswith(f"file://{night['lake']}/mlflow/artifacts/")
    for each in client.search_model_versions():
        assert each.source.startswith(f"file://{night['lake']}/mlflow/artifacts/")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_where_tracking_goes_and_an_unreachable_server_fails_clearly(tmp_lake: str) -> None:
    settings = Settings.load({"lake_root": tmp_lake}, env={})
    assert tracking.tracking_uri(settings, env={}) == f"sqlite:///{tmp_lake}/mlflow/mlflow.db"
    assert tracking.artifact_root(settings) == f"file://{tmp_lake}/mlflow/artifacts"
    # a cluster's MLFLOW_TRACKING_URI wins over the lake's default; an explicit setting over both
    server = {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    assert tracking.tracking_uri(settings, env=server) == "http://mlflow.example:5000"
    explicit = settings.replace(mlflow_tracking_uri="sqlite:////srv/mlflow.db")
    assert tracking.tracking_uri(explicit, env=server) == "sqlite:////srv/mlflow.db"
    env = {"RECFLOW_MLFLOW_TRACKING_URI": "http://tracking:5000", "RECFLOW_MLFLOW_EXPERIMENT": "x"}
    assert (Settings.load(env=env).mlflow_tracking_uri, Settings.load(env=env).mlflow_experiment) == (
        "http://tracking:5000",
        "x",
    )
    # the default store cannot live in a remote lake: say what to set
    with pytest.raises(tracking.TrackingConfigError, match="MLFLOW_TRACKING_URI"):
        tracking.tracking_uri(settings.replace(lake_root="s3a://bucket/lake"), env={})
    # a configured server that does not answer fails at once, naming it
    down = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(tracking.TrackingConfigError, match=f"{down} does not answer"):
        tracking.client(settings.replace(mlflow_tracking_uri=down))
    # MLflow-valid names
    assert tracking.metric_key("two_tower", "all", "ndcg@10") == "two_tower.all.ndcg_at_10"
    assert tracking.metric_key("a+b", "recall(k)") == "a_b.recall_k_"


def test_an_untracked_gate_input_records_nothing_in_mlflow(tmp_lake: str) -> None:
    settings = Settings.load({"lake_root": tmp_lake}, env={})
    assert tracking.record_gate(settings, None, {"action": "promote", "reason": "x"}, {"name": "a"}) == {}
    assert not Path(tmp_lake, "mlflow").exists()
