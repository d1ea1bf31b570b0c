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


USERS = 139  # the night a 0.005 lead over 139 users was promoted


def _night(settings: Settings, production: np.ndarray, **candidates: np.ndarray) -> dict[str, Any]:
    """What evaluate hands the gate: the means of each model and, on disk, the per-user values behind them."""
    from models import evaluate

    users = np.arange(1, len(production) + 1)
    per_user = {("ease", True): production, **{(name, False): v for name, v in candidates.items()}}
    table = evaluate.per_user_rows(
        (
            {"name": name, "version": "v1", "role": "candidate", "is_production": is_production},
            users,
            {"ndcg_at_10": values, "recall_at_10": values / 2},
        )
        for (name, is_production), values in per_user.items()
    )
    path = evaluate.write_per_user(settings, table)
    models = [_entry(name, float(np.mean(v)), is_production) for (name, is_production), v in per_user.items()]
    return {"models": models, "per_user_path": path}


def _production_values(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(USERS) < 0.3, 0.0, rng.uniform(0.1, 0.6, USERS))  # many users without a hit


def _lead(seed: int, mean: float, sd: float) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sd, USERS)
    return noise - noise.mean() + mean  # exactly ``mean`` on average


def test_a_tiny_noisy_lead_does_not_replace_production(tmp_lake: str) -> None:
    settings = _settings(tmp_lake)  # default margin 0
    production = _production_values()
    night = _night(settings, production, two_tower=production + _lead(1, 0.005, 0.1))
    decision = gate.decide(settings, night, apply=False)
    assert decision["action"] == "keep", decision["reason"]
    test = decision["significance"]
    assert test["users"] == USERS and test["lead"] == pytest.approx(0.005)
    assert test["ci_low"] < 0 < test["ci_high"] and not test["significant"]
    assert (test["confidence"], test["resamples"]) == (0.95, 2_000)
    assert f"lead not significant: +0.0050, 95% CI [{test['ci_low']:+.4f}, " in decision["reason"]
    assert f"over {USERS} users" in decision["reason"]


def test_a_clearly_better_candidate_is_promoted_with_its_interval_on_record(tmp_lake: str) -> None:
    settings = _settings(tmp_lake)
    production = _production_values()
    night = _night(settings, production, two_tower=production + _lead(1, 0.05, 0.05), ease2=production)
    for name in ("two_tower", "ease"):
        folder = Path(registry.model_dir(settings, name, "v1"))
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(json.dumps(registry.metadata(settings, name, "v1", "x", {})))
    decision = gate.decide(settings, night)
    assert decision["action"] == "promote" and decision["promoted"]["name"] == "two_tower"
    test = decision["significance"]
    assert test["significant"] and 0 < test["ci_low"] < 0.05 < test["ci_high"] < 0.1
    assert test["candidate"] == "two_tower/v1" and test["production"] == "ease/v1"
    assert "95% CI" in decision["reason"] and f"over {USERS} users" in decision["reason"]
    # the record the gate writes: the production pointer and the history line carry the interval
    pointer = json.loads(Path(lake.production_pointer(tmp_lake)).read_text())
    assert pointer["name"] == "two_tower" and pointer["significance"] == test
    assert registry.history(settings)[-1]["significance"] == test
    # the same inputs give the same interval and decision
    again = gate.decide(settings, night, apply=False)
    assert again["significance"] == test and again["reason"] == decision["reason"]
    # the margin still applies: the interval's lower bound must lie above it
    strict = gate.decide(settings.replace(gate_margin=0.1), night, apply=False)
    assert strict["action"] == "keep" and "margin 0.1" in strict["reason"]
    assert strict["significance"]["ci_low"] == test["ci_low"] and not strict["significance"]["significant"]


def test_a_worse_or_equal_candidate_keeps_production_and_says_why(tmp_lake: str) -> None:
    settings = _settings(tmp_lake, gate_margin=0.01)
    production = _production_values()
    worse = gate.decide(settings, _night(settings, production, two_tower=production - 0.05), apply=False)
    assert worse["action"] == "keep" and worse["significance"]["ci_high"] < 0
    same = gate.decide(settings, _night(settings, production, two_tower=production.copy()), apply=False)
    assert same["action"] == "keep"
    assert (same["significance"]["ci_low"], same["significance"]["ci_high"]) == (0.0, 0.0)
    # without per-user values there is nothing to test the lead on: production stays
    bare = {"models": [_entry("two_tower", 0.5), _entry("ease", 0.3, production=True)]}
    missing = gate.decide(settings, bare, apply=False)
    assert missing["action"] == "keep" and "per-user" in missing["reason"]


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
    test = decision["significance"]
    assert (
        test["ci_low"] <= test["lead"] <= test["ci_high"] < 0 and test["users"] == second["validation_users"]
    )
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
    # the report shows the interval the gate decided on
    assert f"[{test['ci_low']:+.4f}, {test['ci_high']:+.4f}]" in report.read_text()
    # per-user values of every model on the same users, averaging to the table's numbers
    per_user = pq.read_table(second["per_user_path"]).to_pylist()
    by_model: dict[str, dict[int, float]] = {}
    for row in per_user:
        if row["metric"] == "ndcg_at_3":
            by_model.setdefault(row["model"], {})[row["user_idx"]] = row["value"]
    assert set(by_model) == {"ease", "ease_shuffled"}
    assert set(by_model["ease"]) == set(by_model["ease_shuffled"]) and len(by_model["ease"]) == test["users"]
    assert np.mean(list(by_model["ease"].values())) == pytest.approx(decision["production"]["value"])
    assert {r["role"] for r in per_user if r["model"] == "ease"} == {"production"}
    assert {r["metric"] for r in per_user} >= {"ndcg_at_3", "recall_at_3", "map", "mrr_at_3"}
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
