"""MLflow tracking and model registry: every MLflow call of recflow is in this module.

Where: the tracking URI is ``settings.mlflow_tracking_uri``, else the environment's ``MLFLOW_TRACKING_URI`` (a
tracking server on a cluster), else a SQLite store in the lake, ``sqlite:///<lake_root>/mlflow/mlflow.db``; the
registry uses the same URI. The experiment (``settings.mlflow_experiment``) is created with its artifacts under
``settings.mlflow_artifact_root``, else ``<lake_root>/mlflow/artifacts``. Only ``MlflowClient`` objects built
with that URI are used (never MLflow's process-wide fluent state), so nothing lands in a ``./mlruns`` of
whatever the working directory is. A tracking server that does not answer fails the task at once, naming the
URI: a configured server that is down is a configuration error, not something to skip silently.

One MLflow run per nightly run date (tag ``recflow.run_date``), written by :func:`log_evaluation`:
- params: each trained model's registry params (``<model>.<param>``), its recflow version (``<model>.version``)
  and the run's evaluation settings (``run.<name>``);
- metrics: every model's metrics for the segments all, cold and warm (``<model>.<segment>.<metric>``; the
  production model evaluated beside them as ``production.<segment>.<metric>``) and each candidate's lead over
  production (``<model>.vs_production.lead``/``ci_low``/``ci_high``);
- artifacts: the evaluation report (``report/index.html`` and its PNG plots) and the folder of each non-baseline
  model (``models/<model>/``: SavedModel + ``metadata.json``), registered as a version of its registered model
  (the deep model's: ``settings.mlflow_registered_model``), tagged with its recflow version and the run date.

A rerun of the same date reuses that date's run when it evaluates the same model versions with the same params
(metrics are logged again, the latest value is the one shown; the report is overwritten). Otherwise the earlier
run(s) of the date are deleted and a new run replaces them, tagged with the ids it replaced. Either way one
active run per date; the run's tags record the latest Airflow run id and the earlier ones. Registered versions
are one to one with recflow versions (a hash of name, params and data window): a rerun never registers the same
model twice; a version keeps the run that first registered it. Deleting is MLflow's soft delete, which keeps the
artifacts: ``mlflow gc`` would purge them, also under a version registered from that run.

The gate (:func:`record_gate`) sets the alias ``production`` on the promoted model's version, before
``production.json`` is written: the alias is the registry's record, ``production.json`` (read by
``jobs/score.py``) the pointer derived from it, with the registered model and version in its ``mlflow`` key. A
promoted baseline is registered then, under ``recflow_<name>`` (baselines are not registered every night: EASE's
item-item matrix alone is ~100 MB at the default size). Exactly one of recflow's registered models carries the
alias: promoting one removes it from the others. The decision (action, reason, numbers) goes to the run's tags
and ``gate/decision.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from models import registry
from schemas import lake
from schemas.settings import Settings
from storage import lake_io

log = logging.getLogger(__name__)

MLFLOW_DIR = "mlflow"  # under the lake root: mlflow.db (the SQLite store) and artifacts/
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
PRODUCTION_ALIAS = "production"
BASELINE_MODEL_PREFIX = "recflow_"
# run tags
TAG_RUN_DATE = "recflow.run_date"
TAG_AIRFLOW_RUN = "recflow.airflow_run_id"
TAG_EARLIER_AIRFLOW_RUNS = "recflow.earlier_airflow_run_ids"
TAG_REPLACED = "recflow.replaced_runs"
TAG_CODE_VERSION = "recflow.code_version"
TAG_GATE_ACTION = "recflow.gate.action"
TAG_GATE_REASON = "recflow.gate.reason"
# registered model and model version tags
TAG_MANAGED = "recflow.managed"  # on every registered model recflow creates (where the alias is looked for)
TAG_MODEL = "recflow.model"
TAG_VERSION = "recflow.version"
REPORT_FILES = ("index.html", "metrics_per_model.png", "metrics_across_runs.png", "popularity_bias.png")
REACH_TIMEOUT_S = 10.0
MAX_PARAM_CHARS, MAX_TAG_CHARS = 6000, 8000  # MLflow's limits
BATCH = 100  # params per log_batch call (MLflow's limit; metrics allow 1000)


class TrackingConfigError(RuntimeError):
    """The tracking configuration cannot work: an unreachable server, or no local place for the default store."""


# ---- where ----------------------------------------------------------------------------------------------------
def mlflow_root(settings: Settings) -> str:
    return lake.table(settings.lake_root, MLFLOW_DIR)


def tracking_uri(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The setting, else ``MLFLOW_TRACKING_URI``, else the SQLite store in a local lake."""
    env = os.environ if env is None else env
    if settings.mlflow_tracking_uri or env.get(TRACKING_URI_ENV):
        return settings.mlflow_tracking_uri or env[TRACKING_URI_ENV]
    path = _local_path(mlflow_root(settings))
    if path is None:
        raise TrackingConfigError(
            f"the lake root {settings.lake_root} is not a local path, so the default SQLite tracking store cannot "
            f"live in it: set {TRACKING_URI_ENV} (or RECFLOW_MLFLOW_TRACKING_URI) to a tracking server"
        )
    return f"sqlite:///{path}/mlflow.db"


def artifact_root(settings: Settings) -> str:
    """Where the experiment keeps its artifacts: the setting, else ``<lake_root>/mlflow/artifacts``."""
    if settings.mlflow_artifact_root:
        return settings.mlflow_artifact_root
    root = f"{mlflow_root(settings)}/artifacts"
    path = _local_path(root)
    return root if path is None else "file://" + path


def _local_path(uri: str) -> str | None:
    """The absolute local path of a lake path (plain or ``file://``), None for a remote URI."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    return os.path.abspath(uri.removeprefix("file://"))


def registered_name(settings: Settings, name: str) -> str:
    """The registered model of a recflow model: the deep model's setting, ``recflow_<name>`` for the others."""
    from models.features import MODEL_NAME

    return settings.mlflow_registered_model if name == MODEL_NAME else BASELINE_MODEL_PREFIX + name


def metric_key(*parts: str) -> str:
    """An MLflow-valid metric or param name: ``@`` becomes ``_at_``, other characters outside MLflow's set ``_``."""
    text = ".".join(parts).replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """For an http(s) tracking URI, fail at once when the server does not answer (MLflow's client would retry
    for minutes first). Any HTTP answer, even an error status, counts as reachable."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        raise TrackingConfigError(
            f"the MLflow tracking server {uri} does not answer ({err}): the nightly records every evaluation "
            f"there. Start it, or correct {TRACKING_URI_ENV} / RECFLOW_MLFLOW_TRACKING_URI; unset both to use the "
            "SQLite store in the lake"
        ) from err


def client(settings: Settings) -> Any:
    """An ``MlflowClient`` on the tracking URI (tracking and registry), after checking it can work."""
    _quiet_mlflow()
    from mlflow import MlflowClient

    uri = tracking_uri(settings)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")), exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _quiet_mlflow() -> None:
    """MLflow's SQLite store logs every schema migration of a new database at INFO (alembic): only warnings."""
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def experiment_id(mlflow_client: Any, settings: Settings) -> str:
    """The experiment's id, created (with its artifact location under the lake) or restored when needed."""
    experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return str(
            mlflow_client.create_experiment(
                settings.mlflow_experiment, artifact_location=artifact_root(settings)
            )
        )
    if experiment.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(experiment.experiment_id)
    return str(experiment.experiment_id)


# ---- what -----------------------------------------------------------------------------------------------------
def _trained(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The models this run trained (the production model of an earlier night, evaluated beside them, is not)."""
    return [m for m in result["models"] if m["role"] != "production"]


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_CHARS]


def run_params(settings: Settings, result: Mapping[str, Any]) -> dict[str, str]:
    """The run's params: evaluation settings and the data window, then each trained model's version and params."""
    window = registry.data_window(settings)
    params = {
        "run.scenario": settings.scenario,
        "run.eval_k": str(result["k"]),
        "run.gate_metric": settings.gate_metric,
        "run.gate_margin": str(settings.gate_margin),
        "run.window_start": window["start"],
        "run.window_end": window["end"],
    }
    for entry in _trained(result):
        meta = registry.read_metadata(entry["path"])
        params[metric_key(entry["name"], "version")] = entry["version"]
        params[metric_key(entry["name"], "kind")] = entry["kind"]
        for name, value in sorted((meta.get("params") or {}).items()):
            params[metric_key(entry["name"], str(name))] = _value(value)
    return params


def run_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Every model's metrics per segment, each candidate's lead over production, the validation users."""
    out = {
        "validation_users": float(result["validation_users"]),
        "cold_users": float(result["cold_users"]),
    }
    for entry in result["models"]:
        prefix = "production" if entry["role"] == "production" else entry["name"]
        for segment, values in entry["metrics"].items():
            for metric, value in values.items():
                out[metric_key(prefix, segment, metric)] = float(value)
        lead = entry.get("vs_production")
        if lead:
            for part in ("lead", "ci_low", "ci_high"):
                out[metric_key(prefix, "vs_production", part)] = float(lead[part])
    return out


# ---- the evaluation's run -------------------------------------------------------------------------------------
def log_evaluation(settings: Settings, result: Mapping[str, Any]) -> dict[str, Any]:
    """The run of ``settings.ds`` (reused or replacing the date's earlier run, see the module docstring) with the
    params, metrics, report and registered non-baseline models of ``models.evaluate.evaluate``'s ``result``.

    Returns what the gate needs: ``{"run_id", "experiment_id", "registered": {"<model>/<version>": {"name",
    "version"}}}``."""
    from mlflow.entities import Metric, Param, RunTag

    mlflow_client = client(settings)
    experiment = experiment_id(mlflow_client, settings)
    params = run_params(settings, result)
    airflow_run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    run, fresh = _run_of_date(mlflow_client, settings, experiment, params)
    run_id = run.info.run_id
    earlier = [r for r in run.data.tags.get(TAG_EARLIER_AIRFLOW_RUNS, "").split(",") if r]
    previous = run.data.tags.get(TAG_AIRFLOW_RUN)
    if not fresh and previous and previous != airflow_run:
        earlier.append(previous)
    tags = {
        TAG_AIRFLOW_RUN: airflow_run,
        TAG_EARLIER_AIRFLOW_RUNS: ",".join(earlier)[-MAX_TAG_CHARS:],
        TAG_CODE_VERSION: registry.code_version(),
        "recflow.report": str(result.get("report", "")),
    }
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    try:
        if not fresh:
            mlflow_client.update_run(run_id, status="RUNNING")
        mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if fresh:
            items = sorted(params.items())
            for start in range(0, len(items), BATCH):
                chunk = items[start : start + BATCH]
                mlflow_client.log_batch(run_id, params=[Param(k, v) for k, v in chunk])
        metrics = [Metric(k, v, now, 0) for k, v in sorted(run_metrics(result).items())]
        for start in range(0, len(metrics), 1000):
            mlflow_client.log_batch(run_id, metrics=metrics[start : start + 1000])
        _log_report(mlflow_client, run_id, result)
        registered = {
            registry_label(entry): register(mlflow_client, settings, run_id, entry)
            for entry in _trained(result)
            if entry["kind"] != "baseline"
        }
    except BaseException:
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise
    mlflow_client.set_terminated(run_id, status="FINISHED")
    log.info(
        "MLflow run %s of %s (%s, experiment %s): %d params, %d metrics, registered %s",
        run_id,
        settings.ds,
        "new" if fresh else "reused",
        settings.mlflow_experiment,
        len(params),
        len(metrics),
        registered,
    )
    return {"run_id": run_id, "experiment_id": experiment, "registered": registered}


def registry_label(entry: Mapping[str, Any]) -> str:
    return f"{entry['name']}/{entry['version']}"


def runs_of_date(mlflow_client: Any, experiment: str, ds: str) -> list[Any]:
    """The active runs of the experiment tagged with run date ``ds`` (one, after :func:`log_evaluation`)."""
    return list(
        mlflow_client.search_runs(
            [experiment], filter_string=f"tags.`{TAG_RUN_DATE}` = '{ds}'", max_results=100
        )
    )


def _run_of_date(
    mlflow_client: Any, settings: Settings, experiment: str, params: Mapping[str, str]
) -> tuple[Any, bool]:
    """The date's run to reuse (same params), else a new one replacing (deleting) the date's earlier runs; and
    whether it is new."""
    existing = runs_of_date(mlflow_client, experiment, settings.ds)
    same = next((r for r in existing if r.data.params == dict(params)), None)
    for other in existing:
        if other is not same:
            mlflow_client.delete_run(other.info.run_id)
    if same is not None:
        return same, False
    tags = {TAG_RUN_DATE: settings.ds, "recflow.scenario": settings.scenario}
    if existing:
        tags[TAG_REPLACED] = ",".join(r.info.run_id for r in existing)[:MAX_TAG_CHARS]
    run = mlflow_client.create_run(experiment, tags=tags, run_name=f"nightly {settings.ds}")
    return run, True


def _log_report(mlflow_client: Any, run_id: str, result: Mapping[str, Any]) -> None:
    """The evaluation report and its plots under ``report/``."""
    report = result.get("report")
    if not report:
        return
    folder = report.rsplit("/", 1)[0]
    with _local(folder) as local:
        for name in REPORT_FILES:
            if os.path.exists(os.path.join(local, name)):
                mlflow_client.log_artifact(run_id, os.path.join(local, name), "report")


@contextlib.contextmanager
def _local(folder: str) -> Iterator[str]:
    """A local path of a lake folder: itself on a local lake, else a temporary copy."""
    fs, path = lake_io.filesystem(folder)
    if lake_io.is_local(fs):
        yield path
        return
    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory(prefix="recflow-mlflow-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp


def register(mlflow_client: Any, settings: Settings, run_id: str, entry: Mapping[str, Any]) -> dict[str, str]:
    """The model version of ``entry``'s folder (``{"name", "version"}``): the one already registered for its
    recflow version (by this run or an earlier run of the date), else its folder logged under ``models/<name>/``
    and registered from there. A recflow version is a hash of name, params and data window, so the registered
    versions of a model are one to one with its recflow versions."""
    name = registered_name(settings, entry["name"])
    _ensure_registered_model(mlflow_client, name)
    known = mlflow_client.search_model_versions(
        f"name = '{name}' and tags.`{TAG_VERSION}` = '{entry['version']}'"
    )
    if known:
        return {"name": name, "version": str(min(int(v.version) for v in known))}
    artifact_path = f"models/{entry['name']}"
    with _local(entry["path"]) as local:
        mlflow_client.log_artifacts(run_id, local, artifact_path)
    source = f"{mlflow_client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = mlflow_client.create_model_version(
        name,
        source,
        run_id=run_id,
        tags={
            TAG_MODEL: entry["name"],
            TAG_VERSION: entry["version"],
            TAG_RUN_DATE: settings.ds,
            TAG_CODE_VERSION: registry.code_version(),
        },
        description=f"recflow {entry['name']} {entry['version']}, trained for {settings.ds}",
    )
    return {"name": name, "version": str(version.version)}


def _ensure_registered_model(mlflow_client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(
            name, tags={TAG_MANAGED: "true"}, description="recflow model, versions registered by the nightly"
        )


# ---- the gate ---------------------------------------------------------------------------------------------------
def record_gate(
    settings: Settings,
    tracked: Mapping[str, Any] | None,
    decision: Mapping[str, Any],
    chosen: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record the gate's decision on the evaluation's run; on a promotion (``chosen``: the model entry) point the
    alias ``production`` at its version (registering it first if the evaluation did not) and remove the alias
    from recflow's other registered models. Returns ``{"mlflow": {...}}`` for ``production.json``, or ``{}``
    when the evaluation was not tracked (``tracked`` None: a gate fed by hand, e.g. in tests)."""
    if not tracked:
        log.info("gate: the evaluation was not tracked in MLflow: nothing recorded there")
        return {}
    mlflow_client = client(settings)
    run_id = tracked["run_id"]
    mlflow_client.set_tag(run_id, TAG_GATE_ACTION, str(decision["action"]))
    mlflow_client.set_tag(run_id, TAG_GATE_REASON, str(decision.get("reason", ""))[:MAX_TAG_CHARS])
    mlflow_client.log_dict(run_id, json.loads(json.dumps(decision, default=str)), "gate/decision.json")
    if decision["action"] != "promote" or chosen is None:
        return {}
    label = registry_label(chosen)
    known = (tracked.get("registered") or {}).get(label)
    target = known or register(mlflow_client, settings, run_id, chosen)
    for model in _managed_models(mlflow_client):
        if model.name != target["name"] and PRODUCTION_ALIAS in (model.aliases or {}):
            mlflow_client.delete_registered_model_alias(model.name, PRODUCTION_ALIAS)
    mlflow_client.set_registered_model_alias(target["name"], PRODUCTION_ALIAS, target["version"])
    log.info("MLflow: %s@%s is version %s (%s)", target["name"], PRODUCTION_ALIAS, target["version"], label)
    return {
        "mlflow": {
            "registered_model": target["name"],
            "version": target["version"],
            "alias": PRODUCTION_ALIAS,
            "run_id": run_id,
        }
    }


def _managed_models(mlflow_client: Any) -> Sequence[Any]:
    return list(mlflow_client.search_registered_models(filter_string=f"tags.`{TAG_MANAGED}` = 'true'"))


def production_version(settings: Settings) -> dict[str, str] | None:
    """``{"name", "version"}`` of the model version carrying the alias ``production``, or None."""
    for model in _managed_models(client(settings)):
        if PRODUCTION_ALIAS in (model.aliases or {}):
            return {"name": model.name, "version": str(model.aliases[PRODUCTION_ALIAS])}
    return None
