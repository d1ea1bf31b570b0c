"""The model registry: versioned model folders under ``<lake>/models/<name>/<version>/`` and the production pointer.

- A version is ``<run date>-<hash of name, params and data window>`` (the deep model's: ``D<hash>``, see
  ``models.train.model_version``): a rerun of the same night with the same parameters gets the same version and
  overwrites its folder (idempotent), a changed parameter a new one.
- Each folder holds the exported model (``scoring.contract``) and ``metadata.json`` (:func:`metadata`): name,
  version, kind, params, data window, scenario, metrics (replaced by evaluation), code version, created_at.
- ``production.json`` names the production model; the gate rewrites it atomically (temporary file + rename) and
  appends every decision to ``production_history.jsonl`` beside it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import subprocess
from typing import Any

from schemas import lake
from schemas.settings import REPO_ROOT, Settings
from storage import lake_io

HISTORY = "production_history.jsonl"


def data_window(settings: Settings) -> dict[str, str]:
    """The training window of the run: its first and last day, and the validation day."""
    dates = settings.window_dates()
    return {"start": dates[0].isoformat(), "end": dates[-1].isoformat(), "validation": settings.ds}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout (``+dirty`` with local changes), or ``unknown`` outside git."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD", check=True)
        dirty = _git("status", "--porcelain", "--untracked-files=no", check=False)
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _git(*args: str, check: bool) -> str:
    """The stripped output of a git command run in the checkout."""
    done = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=check
    )
    return done.stdout.strip()


def new_version(settings: Settings, name: str, params: dict[str, Any]) -> str:
    """Deterministic for the same run date, scenario, data window and params (idempotent reruns)."""
    key = json.dumps(
        {"name": name, "params": params, "window": data_window(settings), "scenario": settings.scenario},
        sort_keys=True,
        default=str,
    )
    return f"{settings.ds}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def model_dir(settings: Settings, name: str, version: str) -> str:
    return lake.model_dir(settings.lake_root, name, version)


def metadata(
    settings: Settings,
    name: str,
    version: str,
    kind: str,
    params: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata every model folder carries, the one place its keys are written.

    ``metrics``: known at training (e.g. validation recall); evaluation replaces them (:func:`record_metrics`).
    ``extra``: what one kind of model adds, e.g. ``train_seconds`` or the training summary."""
    return {
        "name": name,
        "version": version,
        "kind": kind,
        "params": params,
        "data_window": data_window(settings),
        "scenario": settings.scenario,
        "metrics": metrics or {},
        "code_version": code_version(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def register(
    settings: Settings,
    module: Any,
    name: str,
    params: dict[str, Any],
    kind: str,
    version: str | None = None,
    **extra: Any,
) -> str:
    """Export ``module`` (a ``scoring.contract.ScoringModule``) with its metadata into its versioned folder.

    ``version``: default :func:`new_version`; a model with its own version scheme passes it."""
    from scoring import contract  # TensorFlow only when a model is actually saved

    version = version or new_version(settings, name, params)
    folder = model_dir(settings, name, version)
    return contract.save(module, folder, metadata(settings, name, version, kind, params, **extra))


def read_metadata(folder: str) -> dict[str, Any]:
    meta = lake_io.read_json(f"{folder}/metadata.json")
    if meta is None:
        raise FileNotFoundError(f"{folder}/metadata.json not found: not a model folder")
    return meta


def record_metrics(folder: str, metrics: dict[str, Any]) -> None:
    """Store evaluation results in the model's metadata (so the registry shows how each version did)."""
    meta = read_metadata(folder)
    meta["metrics"] = metrics
    lake_io.write_text_atomic(
        f"{folder}/metadata.json", json.dumps(meta, indent=2, sort_keys=True, default=str)
    )


def list_models(settings: Settings, name: str | None = None) -> list[dict[str, Any]]:
    """Metadata of every registered model (or of one name), with ``path``; oldest version first."""
    import pyarrow.fs as pafs

    fs, base = lake_io.filesystem(lake.table(settings.lake_root, lake.MODELS))
    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=False)):
        if info.type != pafs.FileType.Directory or (name is not None and info.base_name != name):
            continue
        for version in fs.get_file_info(pafs.FileSelector(info.path, recursive=False)):
            folder = lake.model_dir(settings.lake_root, info.base_name, version.base_name)
            meta = lake_io.read_json(f"{folder}/metadata.json")
            if version.type == pafs.FileType.Directory and meta is not None:
                out.append({**meta, "path": folder})
    return sorted(out, key=lambda m: (m["name"], m["version"]))


def production(settings: Settings) -> dict[str, Any] | None:
    """The production pointer ``{"name", "version", "path", "reason", "promoted_at", ...}`` or None."""
    return lake_io.read_json(lake.production_pointer(settings.lake_root))


def promote(settings: Settings, name: str, version: str, reason: str, **details: Any) -> dict[str, Any]:
    """Point production at ``name/version`` (atomically) and log the decision in the history."""
    folder = model_dir(settings, name, version)
    if not lake_io.exists(f"{folder}/metadata.json"):
        raise FileNotFoundError(f"cannot promote {name}/{version}: {folder} holds no model")
    pointer = {
        "name": name,
        "version": version,
        "path": folder,
        "reason": reason,
        "run_date": settings.ds,
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **details,
    }
    text = json.dumps(pointer, indent=2, sort_keys=True, default=str)
    lake_io.write_text_atomic(lake.production_pointer(settings.lake_root), text)
    log_decision(settings, {"action": "promote", **pointer})
    return pointer


def log_decision(settings: Settings, decision: dict[str, Any]) -> None:
    """Append one gate decision (promote or keep) to the production history log."""
    history = f"{lake.table(settings.lake_root, lake.MODELS)}/{HISTORY}"
    lake_io.append_text(history, json.dumps(decision, sort_keys=True, default=str))


def history(settings: Settings) -> list[dict[str, Any]]:
    text = lake_io.read_text(f"{lake.table(settings.lake_root, lake.MODELS)}/{HISTORY}") or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
