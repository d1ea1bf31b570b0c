"""OpenLineage: the tiny DAG run's events (file transport) name each task's lake tables as inputs and outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import LINEAGE_EVENTS

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.spark, pytest.mark.tf]

DAG_ID = "recflow_nightly"

# What each stage reads and writes, as the jobs do (jobs/clean.py, jobs/features.py, jobs/score.py,
# jobs/publish.py), relative to the lake root
EXPECTED = {
    "clean": (
        {"raw/events", "raw/items", "raw/users"},
        {"clean/events", "clean/items", "clean/users", "quarantine/events"},
    ),
    "features": (
        {
            "clean/events",
            "clean/items",
            "clean/users",
            "features/daily_interactions",  # earlier days' aggregates, reused
            "features/vocab_users",  # the earlier day's vocabularies and labels, extended
            "features/vocab_items",
            "features/items",
            "features/users",
        },
        {
            "features/daily_interactions",
            "features/vocab_users",
            "features/vocab_items",
            "features/items",
            "features/users",
            "features/interactions",
            "features/train_examples",
            "features/validation",
            "features/user_histories",
        },
    ),
    "score": (
        {"features/items", "features/users", "features/user_histories", "models"},
        {
            "staging/recommendations",
            "staging/similar_items",
            "staging/user_embeddings",
            "staging/item_embeddings",
        },
    ),
    "publish": (
        {
            "staging/recommendations",
            "staging/similar_items",
            "staging/user_embeddings",
            "staging/item_embeddings",
        },
        {"recommendations", "similar_items", "user_embeddings", "item_embeddings"},
    ),
}


def _run_events(dag_run: Any) -> list[dict[str, Any]]:
    """The task events of this DAG run (the file holds every run of the test session)."""
    assert LINEAGE_EVENTS.exists(), f"no OpenLineage events written to {LINEAGE_EVENTS}"
    events = [json.loads(line) for line in LINEAGE_EVENTS.read_text().splitlines() if line.strip()]
    return [
        event
        for event in events
        if event["job"]["name"].startswith(f"{DAG_ID}.")
        and event["run"]["facets"].get("airflow", {}).get("dagRun", {}).get("run_id") == dag_run.run_id
    ]


def _names(datasets: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in datasets}


@pytest.fixture(scope="module")
def lineage(tiny_run: dict[str, Any]) -> dict[str, Any]:
    dag_run = tiny_run["dag_run"]
    assert str(dag_run.state) == "success"
    by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for event in _run_events(dag_run):
        task_id = event["job"]["name"].removeprefix(f"{DAG_ID}.")
        by_task.setdefault(task_id, {}).setdefault(event["eventType"], []).append(event)
    return {"by_task": by_task, "root": str(Path(tiny_run["lake_root"]).resolve()), "dag_run": dag_run}


@pytest.mark.parametrize("stage", sorted(EXPECTED))
def test_stage_events_name_its_lake_tables(lineage: dict[str, Any], stage: str) -> None:
    root = lineage["root"]
    inputs, outputs = EXPECTED[stage]
    events = lineage["by_task"][stage]
    assert [len(events.get("START", [])), len(events.get("COMPLETE", []))] == [1, 1], sorted(events)
    for kind in ("START", "COMPLETE"):
        event = events[kind][0]
        assert event["job"]["namespace"] == "recflow"
        assert _names(event["inputs"]) == {("file", f"{root}/{name}") for name in inputs}, kind
        assert _names(event["outputs"]) == {("file", f"{root}/{name}") for name in outputs}, kind
    # the names are the tables the run actually read and wrote (the staging copies are gone after publish)
    # (the embedding tables are published only for a model with moderate embeddings: the tiny run's deep model
    # has its wide part, so they are skipped there, with the reason in _SKIPPED.json)
    skippable = {"staging/user_embeddings", "staging/item_embeddings", "user_embeddings", "item_embeddings"}
    for name in {n for n in inputs | outputs if not n.startswith("staging/")} - skippable:
        assert Path(root, name).is_dir(), name


def test_every_task_that_ran_has_start_and_complete(lineage: dict[str, Any]) -> None:
    ran = {ti.task_id for ti in lineage["dag_run"].get_task_instances() if str(ti.state) == "success"}
    assert {"clean", "features", "score", "publish", "summary"} <= ran
    for task_id in ran:
        events = lineage["by_task"].get(task_id, {})
        assert len(events.get("START", [])) == 1 and len(events.get("COMPLETE", [])) == 1, task_id


def test_tasks_without_lake_tables_name_no_datasets(lineage: dict[str, Any]) -> None:
    for task_id in ("resolve_settings", "promote", "keep_production"):
        for events in lineage["by_task"].get(task_id, {}).values():
            assert all(not e["inputs"] and not e["outputs"] for e in events), task_id


def test_lineage_adds_no_asset_events(lineage: dict[str, Any]) -> None:
    """Lineage is reported as OpenLineage datasets, not Assets: only publish's Assets get events."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        sources = {
            (event.source_task_id, event.asset_id)
            for event in session.query(AssetEvent).filter(
                AssetEvent.source_run_id == lineage["dag_run"].run_id
            )
        }
    assert {task for task, _ in sources} == {"publish"}
    assert len(sources) == 4  # recommendations, similar items and the two embedding tables
