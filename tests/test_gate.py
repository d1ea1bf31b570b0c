"""Registry and promotion gate: production changes only for a measurably better model, and the run says why."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import gate, registry
from schemas import lake
from schemas.outputs import METRIC
from schemas.settings import Settings


def _entry(name: str, value: float, production: bool = False, path: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "version": "v1",
        "path": path or f"/nowhere/{name}",
        "role": "candidate",
        "is_production": production,
        "metrics": {"all": {"ndcg_at_10": value}},
    }


def _settings(root: str, **extra: Any) -> Settings:
    return Settings.load({"lake_root": root, "run_date": "2026-01-14", **extra})


def test_keeps_production_when_candidate_is_not_better_by_the_margin(tmp_lake: str) -> None:
    settings = _settings(tmp_lake, gate_margin=0.01)
    metrics = {"models": [_entry("two_tower", 0.305), _entry("ease", 0.30, production=True)]}
    decision = gate.decide(settings, metrics, apply=False)
    assert decision["action"] == "keep"
    assert "0.3050" in decision["reason"] and "0.3000" in decision["reason"] and "0.01" in decision["reason"]
    better = {"models": [_entry("two_tower", 0.32), _entry("ease", 0.30, production=True)]}
    promoted = gate.decide(settings, better, apply=False)
    assert promoted["action"] == "promote" and promoted["promoted"]["name"] == "two_tower"


def test_without_production_the_best_must_beat_popularity(tmp_lake: str) -> None:
    settings = _settings(tmp_lake)
    beats = gate.decide(settings, {"models": [_entry("popularity", 0.1), _entry("ease", 0.2)]}, apply=False)
    assert beats["promoted"]["name"] == "ease" and "beats popularity" in beats["reason"]
    loses = gate.decide(
        settings, {"models": [_entry("popularity", 0.2), _entry("two_tower", 0.1)]}, apply=False
    )
    assert loses["promoted"]["name"] == "popularity" and "fallback" in loses["reason"]


def test_new_version_is_deterministic_and_promote_is_atomic(tmp_lake: str) -> None:
    settings = _settings(tmp_lake)
    version = registry.new_version(settings, "ease", {"lam": 400.0})
    assert version == registry.new_version(settings, "ease", {"lam": 400.0})
    assert version != registry.new_version(settings, "ease", {"lam": 300.0})
    assert version != registry.new_version(settings.replace(run_date="2026-01-15"), "ease", {"lam": 400.0})
    with pytest.raises(FileNotFoundError):
        registry.promote(settings, "ease", version, "no such model")
    folder = Path(registry.model_dir(settings, "ease", version))
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(
        json.dumps(registry.metadata(settings, "ease", version, "baseline", {}))
    )
    registry.promote(settings, "ease", version, "test")
    pointer = Path(lake.production_pointer(tmp_lake))
    assert json.loads(pointer.read_text())["version"] == version
    assert registry.production(settings)["path"] == str(folder)
    assert [p.name for p in pointer.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left
    assert [m["name"] for m in registry.list_models(settings)] == ["ease"]
    assert registry.history(settings)[-1]["action"] == "promote"


@pytest.mark.tf
def test_gate_keeps_production_against_a_model_trained_on_shuffled_interactions(tmp_lake: str) -> None:
    from test_baselines import N_ITEMS, N_USERS, tiny_matrix, write_feature_lake

    from models import baselines, evaluate

    settings = write_feature_lake(tmp_lake).replace(gate_metric="ndcg_at_3")
    # night 1: no production yet; EASE beats popularity and is promoted
    dirs = baselines.train_baselines(settings, names=("popularity", "ease"), params={"ease": {"lam": 1.0}})
    first = evaluate.evaluate(settings, dirs)
    values = {m["name"]: m["metrics"]["all"]["ndcg_at_3"] for m in first["models"]}
    assert values["ease"] > values["popularity"]
    decision = gate.decide(settings, first)
    assert decision["action"] == "promote" and decision["promoted"]["name"] == "ease"
    assert registry.production(settings)["name"] == "ease"

    # night 2: the only candidate learnt from shuffled interactions (structure destroyed)
    users, items = tiny_matrix()
    shuffled = np.random.default_rng(1).permutation(items)
    module = baselines.fit_ease(baselines.interaction_matrix(users, shuffled, N_USERS, N_ITEMS), lam=1.0)
    candidate = registry.register(
        settings, module, "ease_shuffled", {"lam": 1.0, "shuffled": True}, kind="deep"
    )
    second = evaluate.evaluate(settings, [candidate])
    roles = {m["name"]: m["role"] for m in second["models"]}
    assert roles == {"ease_shuffled": "candidate", "ease": "production"}
    decision = gate.decide(settings, second)
    assert decision["action"] == "keep"
    assert decision["production"]["value"] > decision["best"]["value"]
    assert "does not beat production ease" in decision["reason"]
    assert registry.production(settings)["name"] == "ease"  # unchanged
    assert [h["action"] for h in registry.history(settings)] == ["promote", "keep"]

    # the metrics table and the report of the run
    table = pq.read_table(lake.partition(tmp_lake, lake.METRICS, settings.ds))
    assert table.schema.names == METRIC.names
    rows = table.to_pylist()
    assert {r["role"] for r in rows} == {
        "candidate",
        "production",
    }  # rerun of the date replaced night 1's rows
    assert {r["segment"] for r in rows} == {"all", "cold", "warm"}
    cold_users = {r["users"] for r in rows if r["segment"] == "cold"}
    assert cold_users == {6}
    report = Path(second["report"])
    assert report.exists() and "ease_shuffled" in report.read_text()
    for png in ("metrics_per_model.png", "metrics_across_runs.png", "popularity_bias.png"):
        assert (report.parent / png).read_bytes()[:4] == b"\x89PNG"
    # evaluation recorded its numbers in the candidate's registry metadata
    meta = registry.read_metadata(candidate)
    assert meta["metrics"]["all"]["ndcg_at_3"] == pytest.approx(decision["best"]["value"])
    assert not [n for n in os.listdir(Path(second["metrics_path"])) if n.endswith(".tmp")]


@pytest.mark.tf
def test_evaluation_never_counts_unavailable_items_or_seen_items(tmp_lake: str) -> None:
    from test_baselines import write_feature_lake

    from models import baselines, evaluate

    settings = write_feature_lake(tmp_lake, unavailable=(3, 9))
    data = evaluate.load_validation(settings)
    assert 3 not in data["items"]["item_idx"] and 9 not in data["items"]["item_idx"]
    assert int(data["cold"].sum()) == 6
    module = baselines.fit_popularity(baselines.load_training_data(settings)["interactions"])
    top, _ = evaluate.topk_for(module, data["users"], data["items"], k=5)
    assert not np.isin(top, [3, 9]).any()
    seen = data["users"]["seen"]
    assert not any(set(row) & set(s[s > 0]) for row, s in zip(top.tolist(), seen, strict=True))
