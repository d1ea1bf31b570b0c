"""The publish stage: every output table's staging partition is checked, then published in one step each.

``python -m jobs.publish --date D [--run-id ID]`` (run id defaults to :func:`jobs.score.default_run_id`).

1. verify every ``staging/<table>/dt=D/run=<id>/`` first: the writer's ``_SUCCESS`` marker, Parquet matching the
   ``schemas.outputs`` contract (names, types, no nulls), at least one row. Nothing moves if any check fails.
2. then, table by table, the atomic move into ``<table>/dt=D`` (the manifest travels with the data as
   ``_PUBLISHING.json``), its rename to ``_PUBLISHED.json`` and the ``_LATEST`` pointer, which only moves
   forwards in time (``storage.publish`` says how each step stays atomic).

Rerunning a publish that was killed part-way finishes it, also on its own (an Airflow retry, nothing
restaged): a ``dt=D`` holding ``_PUBLISHING.json`` of this run is completed, and a staging folder with
``_PUBLISHED.json`` is the previous copy swapped out by a killed exchange, and is deleted, never published.
Two publishes of the same table must not run at once (the DAG runs one publish per date at a time).

Tables: ``recommendations``, ``similar_items``, ``user_embeddings``, ``item_embeddings``. The score job stages the
embeddings only for a model of moderate dimension; otherwise their staging folders hold ``_SKIPPED.json`` and the
publish records ``not_published`` with the reason (in its result and its run manifest) instead.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from schemas import lake
from schemas.outputs import (
    EMBEDDINGS_VERSION,
    ITEM_EMBEDDING,
    RECOMMENDATION,
    RECOMMENDATIONS_VERSION,
    SIMILAR_ITEM,
    SIMILAR_ITEMS_VERSION,
    USER_EMBEDDING,
)
from schemas.settings import Settings
from storage import lake_io
from storage import publish as published

CONTRACTS = {
    lake.RECOMMENDATIONS: (RECOMMENDATION, RECOMMENDATIONS_VERSION),
    lake.SIMILAR_ITEMS: (SIMILAR_ITEM, SIMILAR_ITEMS_VERSION),
    lake.USER_EMBEDDINGS: (USER_EMBEDDING, EMBEDDINGS_VERSION),
    lake.ITEM_EMBEDDINGS: (ITEM_EMBEDDING, EMBEDDINGS_VERSION),
}
# the columns the publish manifest counts distinct values of, per table
KEYS = {
    lake.RECOMMENDATIONS: ["user_id", "item_id"],
    lake.SIMILAR_ITEMS: ["item_id"],
    lake.USER_EMBEDDINGS: ["user_id"],
    lake.ITEM_EMBEDDINGS: ["item_id"],
}


class StagingError(RuntimeError):
    """The staging copy is not fit to publish; nothing was moved."""


# ---- verify ---------------------------------------------------------------------------------------------------
def verify(staging: str, schema: pa.Schema) -> dict[str, Any]:
    """Checks a staging folder against its contract; returns a summary (rows, model versions)."""
    fs, path = lake_io.filesystem(staging)
    if not lake_io.exists(path, fs):
        raise StagingError(f"{staging}: no staging copy (did the score job run for this date and run id?)")
    if not lake_io.exists(f"{path}/{published.SUCCESS}", fs):
        raise StagingError(f"{staging}: no {published.SUCCESS} marker: the writer did not finish")
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table()
    problems = []
    for field in schema:
        if field.name not in table.column_names:
            problems.append(f"missing column {field.name}")
            continue
        actual = table.schema.field(field.name).type
        if actual != field.type:
            problems.append(f"{field.name}: {actual} != {field.type}")
        elif not field.nullable and table[field.name].null_count:
            problems.append(f"{field.name}: {table[field.name].null_count} nulls")
    if table.num_rows == 0:
        problems.append("no rows")
    if not problems and "vector" in schema.names:
        problems += _vector_problems(table, schema.names[0])
    if problems:
        raise StagingError(f"{staging} breaks its contract: " + "; ".join(problems))
    versions = sorted(set(table["model_version"].to_pylist()))
    summary: dict[str, Any] = {"rows": table.num_rows, "model_versions": versions}
    if "vector" in schema.names:
        summary["dimension"] = int(table["dimension"][0].as_py())
    return summary


def _vector_problems(table: pa.Table, key: str) -> list[str]:
    """An embeddings table: one row per id, one dimension, every vector that long, every value finite."""
    import pyarrow.compute as pc

    problems = []
    if len(table[key].unique()) != table.num_rows:
        problems.append(f"{key}: {table.num_rows - len(table[key].unique())} duplicate ids")
    dimensions = table["dimension"].unique().to_pylist()
    if len(dimensions) != 1 or dimensions[0] < 1:
        problems.append(f"dimension: {sorted(dimensions)}, not one positive value")
    short = pc.sum(pc.not_equal(pc.list_value_length(table["vector"]), table["dimension"])).as_py()
    if short:
        problems.append(f"vector: {short} rows whose length is not the dimension")
    values = pc.list_flatten(table["vector"])
    bad = len(values) - pc.sum(pc.is_finite(values)).as_py() if len(values) else 0
    if bad:
        problems.append(f"vector: {bad} values NaN, infinite or null")
    return problems


# ---- publish and read --------------------------------------------------------------------------------------------
def _plan(
    root: str, name: str, date: Any, run_id: str, completed: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The verified summary of a fresh staging copy; the summary of this run's publication that
    ``storage.publish.recover`` just completed (``completed``, marked ``resumed``); or None when this run is
    already published.

    A staging folder holding ``_PUBLISHED.json`` is not fresh: it is the previous publication, swapped out by
    an exchange whose publish was killed before deleting it; it is removed here, never published again.
    A staging folder holding only ``_SKIPPED.json`` is a table the score job decided not to stage (embeddings of
    a model with catalogue-length vectors): ``{"not_published": reason}``; nothing of that table moves.
    """
    schema, version = CONTRACTS[name]
    staging = lake.staging(root, name, date, run_id)
    fs, staging_path = lake_io.filesystem(staging)
    _, final = lake_io.filesystem(f"{lake.table(root, name)}/dt={date.isoformat()}")
    skipped = lake_io.read_json(f"{staging_path}/{published.SKIPPED}", fs)
    if skipped is not None and not lake_io.exists(f"{staging_path}/{published.SUCCESS}", fs):
        return {"not_published": str(skipped.get("reason", "the score job staged no rows"))}
    if lake_io.exists(staging_path, fs) and published.read_manifest(fs, staging_path) is None:
        return {**verify(staging, schema), "schema_version": version}
    if lake_io.exists(staging_path, fs):
        fs.delete_dir(staging_path)
    manifest = published.read_manifest(fs, final) if lake_io.exists(final, fs) else None
    if manifest is not None and manifest.get("run_id") == run_id:
        if completed is not None and completed.get("run_id") == run_id:
            summary = {key: completed[key] for key in ("rows", "model_versions", "schema_version")}
            return {**summary, "resumed": True}
        return None  # a killed publish of this run had already completed it
    raise StagingError(f"{staging}: no staging copy (did the score job run for this date and run id?)")


def publish(
    settings: Settings,
    run_id: str | None = None,
    tables: tuple[str, ...] = lake.PUBLISHED,
) -> dict[str, Any]:
    """Verifies every table's staging copy, then publishes each in one step; returns what was published (a table
    the score job did not stage, with its reason: ``{"not_published": reason}``; its partitions and ``_LATEST``
    stay as they were).

    Idempotent: rerunning a publish that was killed part-way finishes it.
    """
    from jobs.score import default_run_id

    started = time.perf_counter()
    root, date = settings.lake_root, settings.run_date
    run_id = run_id or default_run_id(date)
    partition = f"dt={date.isoformat()}"
    completed: dict[str, dict[str, Any] | None] = {}
    for name in tables:
        fs, table_path = lake_io.filesystem(lake.table(root, name))
        completed[name] = published.recover(fs, table_path, partition)
    # all verified before anything moves
    plans = {name: _plan(root, name, date, run_id, completed[name]) for name in tables}
    published.crash_point("after_verify")
    summaries: dict[str, Any] = {}
    for name in tables:
        fs, staging = lake_io.filesystem(lake.staging(root, name, date, run_id))
        local = lake_io.is_local(fs)
        _, table_path = lake_io.filesystem(lake.table(root, name))
        final = f"{table_path}/{partition}"
        summary = plans[name]
        if summary is not None and "not_published" in summary:
            summaries[name] = summary
            continue
        if summary is not None and not summary.get("resumed"):
            manifest = {"table": name, "dt": date.isoformat(), "run_id": run_id, **summary}
            # moves in with the data (readers skip _ files), so a rerun knows whose partition it finds
            lake_io.write_text_atomic(
                f"{staging}/{published.PENDING}", json.dumps(manifest, indent=2, sort_keys=True), fs
            )
            published.move_into_place(fs, local, staging, table_path, partition)
            published.crash_point("after_move")
            published.complete(fs, final)
        published.crash_point("before_pointer")
        published.write_pointer(fs, f"{table_path}/_LATEST", partition)
        summaries[name] = {
            **(summary or {"already_published": True}),
            "path": f"{lake.table(root, name)}/{partition}",
        }
    print(json.dumps({"stage": "publish", "date": date.isoformat(), "run_id": run_id, "tables": summaries}))
    record_manifest(settings, run_id, plans, time.perf_counter() - started)
    return summaries


def record_manifest(settings: Settings, run_id: str, plans: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``runs/publish/dt=D``: rows in (verified staging rows, or the rows of a killed publication this run
    completed; 0 when already published), rows out (the published partitions), users and items of the
    published recommendations; ``already_published`` and ``resumed`` name the tables of either kind."""
    from storage import manifest as manifests

    root, date = settings.lake_root, settings.run_date
    published: dict[str, pa.Table] = {}
    not_published = {
        name: plan["not_published"] for name, plan in plans.items() if plan and "not_published" in plan
    }
    for name in plans:
        if name in not_published:
            continue
        fs, path = lake_io.filesystem(lake.partition(root, name, date))
        published[name] = ds.dataset(path, filesystem=fs, format="parquet").to_table(columns=KEYS[name])
    recs = published.get(lake.RECOMMENDATIONS)
    counts = {
        "rows_in": sum(plan.get("rows", 0) for plan in plans.values() if plan is not None),
        "rows_out": sum(table.num_rows for table in published.values()),
        "users": len(recs.column("user_id").unique()) if recs is not None else 0,
        "items": len(recs.column("item_id").unique()) if recs is not None else 0,
        **{f"{name}_rows": table.num_rows for name, table in published.items()},
    }
    if not_published:  # the run summary shows the counts: say there why a table was not published
        counts["not_published"] = "; ".join(f"{name}: {reason}" for name, reason in not_published.items())
    return manifests.record_stage(
        root,
        "publish",
        date,
        counts,
        seconds,
        publish_run_id=run_id,
        already_published=[name for name, plan in plans.items() if plan is None],
        resumed=[name for name, plan in plans.items() if plan is not None and plan.get("resumed")],
        not_published=not_published,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run-id", help="the staging run id to publish (default: derived from the date)")
    extra, rest = parser.parse_known_args(argv)
    settings = Settings.from_cli(rest, description=__doc__.splitlines()[0])
    publish(settings, run_id=extra.run_id)


if __name__ == "__main__":
    main()
