"""Atomic publish: contract checks before anything moves, one-step swap, and a killed publish leaves the previous
publication complete and readable (the publish runs in a subprocess that is SIGKILLed at named steps)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import publish
from schemas import lake
from schemas.outputs import ITEM_EMBEDDING, RECOMMENDATION, SIMILAR_ITEM, USER_EMBEDDING
from schemas.settings import Settings
from storage import publish as published

DAY1, DAY2 = dt.date(2026, 1, 14), dt.date(2026, 1, 15)
REPO = Path(__file__).resolve().parents[1]


def recommendations(version: str, users: int = 3, n: int = 4) -> pa.Table:
    at = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
    rows = [
        {
            "user_id": f"u{u}",
            "rank": r,
            "item_id": f"i{(u + r) % 9}",
            "score": float(10 - r),
            "model_version": version,
            "strategy": "model",
            "generated_at": at,
        }
        for u in range(users)
        for r in range(1, n + 1)
    ]
    return pa.Table.from_pylist(rows, schema=RECOMMENDATION)


def similar(version: str) -> pa.Table:
    at = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
    rows = [
        {
            "item_id": f"i{i}",
            "rank": r,
            "similar_item_id": f"i{i + r}",
            "score": 1.0 / r,
            "model_version": version,
            "generated_at": at,
        }
        for i in range(4)
        for r in (1, 2)
    ]
    return pa.Table.from_pylist(rows, schema=SIMILAR_ITEM)


def embeddings(version: str, schema: pa.Schema, ids: list[str]) -> pa.Table:
    """Two-dimensional vectors, one row per id (users with their seen items, or items with their availability)."""
    at = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
    extra = (
        {"seen_item_ids": ["i0"]} if "seen_item_ids" in schema.names else {"available": True, "category": "c"}
    )
    rows = [
        {"vector": [1.0, float(n)], "dimension": 2, "model_version": version, "generated_at": at, **extra}
        for n in range(len(ids))
    ]
    return pa.Table.from_pylist(
        [{schema.names[0]: i, **r} for i, r in zip(ids, rows, strict=True)], schema=schema
    )


def stage(
    root: str, date: dt.date, run_id: str, recs: pa.Table, sims: pa.Table | None = None, success: bool = True
) -> None:
    """What the score job leaves behind: Parquet parts plus the writer's _SUCCESS, for every published table (the
    embeddings of the recommendations' users and of five items)."""
    version = recs["model_version"][0].as_py() if recs.num_rows else "v"
    users = sorted(set(recs["user_id"].to_pylist())) or ["u0"]
    for name, table in (
        (lake.RECOMMENDATIONS, recs),
        (lake.SIMILAR_ITEMS, sims if sims is not None else similar("v")),
        (lake.USER_EMBEDDINGS, embeddings(version, USER_EMBEDDING, users)),
        (lake.ITEM_EMBEDDINGS, embeddings(version, ITEM_EMBEDDING, [f"i{i}" for i in range(5)])),
    ):
        folder = Path(lake.staging(root, name, date, run_id))
        folder.mkdir(parents=True, exist_ok=True)
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), folder / "part-00000.parquet")
        pq.write_table(table.slice(half), folder / "part-00001.parquet")
        if success:
            (folder / "_SUCCESS").touch()


def settings_for(root: str, date: dt.date) -> Settings:
    return Settings.load({"lake_root": root, "run_date": date}, env={})


def pointer(root: str, name: str = lake.RECOMMENDATIONS) -> str:
    return Path(lake.latest_pointer(root, name)).read_text().strip()


def sorted_rows(table: pa.Table) -> list[dict]:
    return sorted(table.select(RECOMMENDATION.names).to_pylist(), key=lambda r: (r["user_id"], r["rank"]))


def run_publish_killed_at(root: str, date: dt.date, run_id: str, step: str, exchange: bool = True) -> int:
    """Runs ``python -m jobs.publish`` in a child that SIGKILLs itself at ``step``; returns its exit code."""
    patch = "" if exchange else "import storage.publish as s; s._exchange = lambda a, b: False; "
    code = (
        f"import jobs.publish as p; {patch}"
        f"p.main(['--lake-root', {root!r}, '--date', {date.isoformat()!r}, '--run-id', {run_id!r}])"
    )
    env = {**os.environ, published.CRASH_ENV: step, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True).returncode


def test_publish_moves_staging_into_place_with_marker_manifest_and_pointer(tmp_lake: str) -> None:
    stage(tmp_lake, DAY1, "r1", recommendations("v1"))
    summary = publish.publish(settings_for(tmp_lake, DAY1), run_id="r1")
    final = Path(lake.partition(tmp_lake, lake.RECOMMENDATIONS, DAY1))
    assert (final / "_SUCCESS").exists()
    manifest = json.loads((final / published.MANIFEST).read_text())
    assert manifest["rows"] == 12 and manifest["run_id"] == "r1" and manifest["model_versions"] == ["v1"]
    assert summary[lake.RECOMMENDATIONS]["rows"] == 12
    assert not Path(lake.staging(tmp_lake, lake.RECOMMENDATIONS, DAY1, "r1")).exists()
    assert pointer(tmp_lake) == "dt=2026-01-14" and pointer(tmp_lake, lake.SIMILAR_ITEMS) == "dt=2026-01-14"
    assert sorted_rows(published.read_latest(tmp_lake)) == sorted_rows(recommendations("v1"))
    assert published.read_latest(tmp_lake, lake.SIMILAR_ITEMS).num_rows == similar("v").num_rows
    # the stage's run manifest, and the run summary's rows in and out for it
    run = json.loads(Path(lake.run_manifest(tmp_lake, "publish", DAY1)).read_text())
    assert run["counts"] == {
        "rows_in": 28,
        "rows_out": 28,
        "users": 3,
        "items": 6,
        "recommendations_rows": 12,
        "similar_items_rows": 8,
        "user_embeddings_rows": 3,
        "item_embeddings_rows": 5,
    }, run["counts"]
    assert run["seconds"] >= 0 and run["publish_run_id"] == "r1" and run["already_published"] == []
    from jobs import summary as summary_job

    stages = summary_job.collect(settings_for(tmp_lake, DAY1))["stages"]
    assert [(s["stage"], s["rows_in"], s["rows_out"]) for s in stages] == [("publish", 28, 28)]
    assert "| publish |" in summary_job.to_markdown(summary_job.collect(settings_for(tmp_lake, DAY1)))


def test_a_file_uri_lake_root_publishes_like_its_plain_path(tmp_lake: str) -> None:
    stage(tmp_lake, DAY1, "r1", recommendations("v1"))
    uri = f"file://{tmp_lake}"
    summary = publish.publish(settings_for(uri, DAY1), run_id="r1")
    assert summary[lake.RECOMMENDATIONS]["rows"] == 12
    assert pointer(tmp_lake) == "dt=2026-01-14"
    assert not Path(lake.staging(tmp_lake, lake.RECOMMENDATIONS, DAY1, "r1")).exists()
    assert sorted_rows(published.read_latest(uri)) == sorted_rows(published.read_latest(tmp_lake))


@pytest.mark.parametrize("defect", ["no_success", "wrong_type", "empty", "missing"])
def test_a_bad_staging_copy_is_refused_and_nothing_moves(tmp_lake: str, defect: str) -> None:
    stage(tmp_lake, DAY1, "r1", recommendations("v1"))
    publish.publish(settings_for(tmp_lake, DAY1), run_id="r1")
    bad = recommendations("v2")
    if defect == "wrong_type":
        bad = bad.set_column(bad.schema.get_field_index("score"), "score", bad["score"].cast(pa.float64()))
    if defect == "empty":
        bad = bad.slice(0, 0)
    if defect != "missing":
        stage(tmp_lake, DAY2, "r2", bad, success=defect != "no_success")
    with pytest.raises(publish.StagingError):
        publish.publish(settings_for(tmp_lake, DAY2), run_id="r2")
    assert not Path(lake.partition(tmp_lake, lake.RECOMMENDATIONS, DAY2)).exists()
    assert not Path(lake.partition(tmp_lake, lake.SIMILAR_ITEMS, DAY2)).exists()  # verified before any move
    assert pointer(tmp_lake) == "dt=2026-01-14"
    assert sorted_rows(published.read_latest(tmp_lake)) == sorted_rows(recommendations("v1"))


@pytest.mark.parametrize("exchange", [True, False])
def test_republishing_a_date_replaces_it_whole(tmp_lake: str, exchange: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if not exchange:
        monkeypatch.setattr(published, "_exchange", lambda a, b: False)
    stage(tmp_lake, DAY1, "r1", recommendations("v1", users=5))
    publish.publish(settings_for(tmp_lake, DAY1), run_id="r1")
    stage(tmp_lake, DAY1, "r2", recommendations("v2", users=2))
    publish.publish(settings_for(tmp_lake, DAY1), run_id="r2")
    assert sorted_rows(published.read_latest(tmp_lake)) == sorted_rows(recommendations("v2", users=2))
    table_dir = Path(lake.table(tmp_lake, lake.RECOMMENDATIONS))
    assert sorted(p.name for p in table_dir.iterdir()) == [
        "_LATEST",
        published.PREVIOUS,
        "dt=2026-01-14",
    ] or sorted(p.name for p in table_dir.iterdir()) == ["_LATEST", "dt=2026-01-14"]
    assert not any((table_dir / published.PREVIOUS).glob("*"))  # nothing left aside
    assert not Path(lake.staging(tmp_lake, lake.RECOMMENDATIONS, DAY1, "r1")).exists()


def test_an_older_date_does_not_move_latest_back(tmp_lake: str) -> None:
    stage(tmp_lake, DAY2, "r2", recommendations("v2"))
    publish.publish(settings_for(tmp_lake, DAY2), run_id="r2")
    stage(tmp_lake, DAY1, "r1", recommendations("v1"))
    publish.publish(settings_for(tmp_lake, DAY1), run_id="r1")  # a backfill
    assert pointer(tmp_lake) == "dt=2026-01-15"
    assert Path(lake.partition(tmp_lake, lake.RECOMMENDATIONS, DAY1)).exists()


@pytest.mark.parametrize(
    ("step", "exchange", "same_date"),
    [
        ("after_verify", True, False),  # killed between staging and publish: nothing moved
        ("before_rename", True, False),
        ("between_renames", False, True),  # the non-exchange path, killed with dt=D set aside
        ("after_exchange", True, True),
        ("after_move", True, False),  # new partition in place, manifest and pointer not yet written
        ("before_pointer", True, False),
    ],
)
def test_a_killed_publish_leaves_the_previous_publication_complete(
    tmp_lake: str, step: str, exchange: bool, same_date: bool
) -> None:
    old = recommendations("v1", users=4)
    stage(tmp_lake, DAY1, "r1", old)
    publish.publish(settings_for(tmp_lake, DAY1), run_id="r1")
    new_date = DAY1 if same_date else DAY2
    new = recommendations("v2", users=2)
    stage(tmp_lake, new_date, "r2", new)

    assert run_publish_killed_at(tmp_lake, new_date, "r2", step, exchange) == -signal.SIGKILL

    # consumers still get a complete table: the old one, or (once the swap happened) the whole new one
    assert pointer(tmp_lake) == "dt=2026-01-14"
    seen = sorted_rows(published.read_latest(tmp_lake))
    assert seen in (sorted_rows(old), sorted_rows(new))
    if step in ("after_verify", "before_rename", "between_renames"):
        assert seen == sorted_rows(old)
    # and rerunning the publish finishes the job, whatever step it died at
    publish.publish(settings_for(tmp_lake, new_date), run_id="r2")
    assert sorted_rows(published.read_latest(tmp_lake)) == sorted_rows(new)
    assert pointer(tmp_lake) == f"dt={new_date.isoformat()}"
    assert not any(Path(lake.table(tmp_lake, lake.RECOMMENDATIONS), published.PREVIOUS).glob("*"))
    assert not Path(lake.staging(tmp_lake, lake.RECOMMENDATIONS, new_date, "r2")).exists()


# every crash point, each where the publish reaches it: (step, exchange, same_date)
KILLS = [
    ("after_verify", True, False),
    ("after_verify", True, True),
    ("before_rename", True, False),
    ("after_exchange", True, True),
    ("between_renames", False, True),
    ("after_move", True, False),
    ("after_move", True, True),
    ("after_move", False, True),
    ("before_pointer", True, False),
    ("before_pointer", True, True),
]


def test_the_kills_cover_every_crash_point() -> None:
    assert {step for step, _, _ in KILLS} == set(published.CRASH_POINTS)


@pytest.mark.parametrize(("step", "exchange", "same_date"), KILLS)
def test_a_plain_rerun_after_a_killed_publish_completes_the_publication(
    tmp_lake: str, step: str, exchange: bool, same_date: bool
) -> None:
    """A retry of the publish task alone (same run id, nothing restaged) ends what the killed one began."""
    stage(tmp_lake, DAY1, "r1", recommendations("v1", users=4))
    publish.publish(settings_for(tmp_lake, DAY1), run_id="r1")
    new_date = DAY1 if same_date else DAY2
    new = recommendations("v2", users=2)
    stage(tmp_lake, new_date, "r2", new, similar("v2"))

    assert run_publish_killed_at(tmp_lake, new_date, "r2", step, exchange) == -signal.SIGKILL
    assert run_publish_killed_at(tmp_lake, new_date, "r2", "none", exchange) == 0  # the plain rerun

    tables = (
        (lake.RECOMMENDATIONS, new.num_rows),
        (lake.SIMILAR_ITEMS, similar("v2").num_rows),
        (lake.USER_EMBEDDINGS, 2),
        (lake.ITEM_EMBEDDINGS, 5),
    )
    for name, rows in tables:
        final = Path(lake.partition(tmp_lake, name, new_date))
        manifest = json.loads((final / published.MANIFEST).read_text())
        assert (manifest["run_id"], manifest["rows"], manifest["model_versions"]) == ("r2", rows, ["v2"]), (
            name
        )
        assert sorted(p.name for p in final.glob("_*")) == [published.MANIFEST, published.SUCCESS], name
        assert pointer(tmp_lake, name) == f"dt={new_date.isoformat()}"
        assert published.read_latest(tmp_lake, name).num_rows == rows
        assert not any(Path(lake.table(tmp_lake, name), published.PREVIOUS).glob("*"))
        assert not any(Path(lake.staging(tmp_lake, name, new_date, "r2")).parent.glob("*")), name
    assert sorted_rows(published.read_latest(tmp_lake)) == sorted_rows(new)
    run = json.loads(Path(lake.run_manifest(tmp_lake, "publish", new_date)).read_text())
    assert run["publish_run_id"] == "r2"
    assert run["counts"]["rows_out"] == sum(rows for _, rows in tables)
    assert run["counts"]["recommendations_rows"] == new.num_rows and run["counts"]["users"] == 2
    # only a table whose _PUBLISHED.json the killed publish had written counts as already published
    done_before = [lake.RECOMMENDATIONS] if step == "before_pointer" else []
    assert run["already_published"] == done_before
    assert run["counts"]["rows_in"] == sum(rows for name, rows in tables if name not in done_before)


def test_a_partition_left_unfinished_is_completed_before_a_republish_swaps_it_out(tmp_lake: str) -> None:
    """Killed after its move, then restaged and killed after the exchange: the swapped-out copy must be known
    as the old one, not published back."""
    stage(tmp_lake, DAY1, "r1", recommendations("v1", users=4))
    publish.publish(settings_for(tmp_lake, DAY1), run_id="r1")
    stage(tmp_lake, DAY1, "r2", recommendations("v2", users=3))
    assert run_publish_killed_at(tmp_lake, DAY1, "r2", "after_move") == -signal.SIGKILL
    newest = recommendations("v3", users=2)
    stage(tmp_lake, DAY1, "r2", newest)  # the score job reran
    assert run_publish_killed_at(tmp_lake, DAY1, "r2", "after_exchange") == -signal.SIGKILL
    publish.publish(settings_for(tmp_lake, DAY1), run_id="r2")
    assert sorted_rows(published.read_latest(tmp_lake)) == sorted_rows(newest)
    manifest = json.loads(
        (Path(lake.partition(tmp_lake, lake.RECOMMENDATIONS, DAY1)) / published.MANIFEST).read_text()
    )
    assert manifest["model_versions"] == ["v3"]
