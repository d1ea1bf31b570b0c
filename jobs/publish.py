"""Atomic publish: a checked staging partition becomes ``<table>/dt=D`` in one step; consumers never see half.

``python -m jobs.publish --date D [--run-id ID]`` (run id defaults to :func:`jobs.score.default_run_id`).

For each output table (recommendations, similar_items), first all are verified, then each is published:
1. verify ``staging/<table>/dt=D/run=<id>/``: the writer's ``_SUCCESS`` marker, Parquet matching the
   ``schemas.outputs`` contract (names, types, no nulls), at least one row. Nothing moves if any check fails.
2. move the folder into place with one rename:
   - ``dt=D`` absent (the nightly case): ``rename(staging, dt=D)``, atomic on POSIX and HDFS.
   - ``dt=D`` present (a rerun): on Linux ``renameat2(RENAME_EXCHANGE)`` swaps the two folders atomically, then
     the old copy (now at the staging path) is deleted. Where the exchange is unsupported, the old folder is
     renamed aside to ``<table>/_previous/dt=D`` first; for the microseconds between the two renames ``dt=D`` is
     absent (never partial), and a crash there is repaired by the next publish, while :func:`read_latest` falls
     back to the aside copy.
3. write ``dt=D/_PUBLISHED.json`` (rows, run id, schema version, model versions; the writer's ``_SUCCESS``
   came with the data), then update ``<table>/_LATEST`` (``dt=YYYY-MM-DD``) by ``os.replace`` of a temp file, only moving forwards in time
   (a backfill of an older date does not take ``latest`` back).
Rerunning a publish that was killed part-way finishes it (a staging folder with ``_PUBLISHED.json`` is the
previous copy swapped out by a killed exchange, and is deleted, never published).

Filesystems: local paths use ``os`` renames (guarantees above). Other URIs go through ``pyarrow.fs``:
``move`` is an atomic rename on HDFS; on S3/GCS a directory move is a copy + delete (not atomic, and pyarrow
refuses some directory moves): there, consumers must go through ``_LATEST`` via :func:`read_latest`, which is
written last. Two publishes of the same table must not run at once (the DAG runs one publish per table at a time).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import time
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from models import lake_io
from schemas import lake
from schemas.outputs import RECOMMENDATION, RECOMMENDATIONS_VERSION, SIMILAR_ITEM, SIMILAR_ITEMS_VERSION
from schemas.settings import Settings

CONTRACTS = {lake.RECOMMENDATIONS: (RECOMMENDATION, RECOMMENDATIONS_VERSION),
             lake.SIMILAR_ITEMS: (SIMILAR_ITEM, SIMILAR_ITEMS_VERSION)}
SUCCESS = "_SUCCESS"
MANIFEST = "_PUBLISHED.json"
PREVIOUS = "_previous"
# test hook: kill this process at a named step, as a crash or an OOM-kill would (see tests/test_publish.py)
CRASH_ENV = "RECFLOW_PUBLISH_CRASH_AT"


class StagingError(RuntimeError):
    """The staging copy is not fit to publish; nothing was moved."""


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


# ---- verify ---------------------------------------------------------------------------------------------------
def verify(staging: str, schema: pa.Schema) -> dict[str, Any]:
    """Checks a staging folder against its contract; returns a summary (rows, model versions)."""
    fs, path = lake_io.filesystem(staging)
    if not _exists(fs, path):
        raise StagingError(f"{staging}: no staging copy (did the score job run for this date and run id?)")
    if not _exists(fs, f"{path}/{SUCCESS}"):
        raise StagingError(f"{staging}: no {SUCCESS} marker: the writer did not finish")
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
    if problems:
        raise StagingError(f"{staging} breaks its contract: " + "; ".join(problems))
    versions = sorted(set(table["model_version"].to_pylist()))
    return {"rows": table.num_rows, "model_versions": versions}


# ---- the one-step move --------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), a)


def _aside(table_path: str, partition: str) -> str:
    return f"{table_path}/{PREVIOUS}/{partition}"


def recover(fs: pafs.FileSystem, table_path: str, partition: str) -> None:
    """Repairs a publish killed between its two renames: the aside copy goes back if dt=D is missing."""
    aside, final = _aside(table_path, partition), f"{table_path}/{partition}"
    if not _exists(fs, aside):
        return
    if _exists(fs, final):
        fs.delete_dir(aside)  # the new copy made it in: the aside one is garbage
    else:
        fs.move(aside, final)


def _move_into_place(fs: pafs.FileSystem, local: bool, staging: str, table_path: str, partition: str) -> None:
    final = f"{table_path}/{partition}"
    fs.create_dir(table_path, recursive=True)
    if not _exists(fs, final):
        _crash_point("before_rename")
        if local:
            os.rename(staging, final)
        else:
            fs.move(staging, final)
        return
    if local and _exchange(staging, final):
        _crash_point("after_exchange")
        shutil.rmtree(staging)  # now the old copy
        return
    aside = _aside(table_path, partition)
    fs.create_dir(f"{table_path}/{PREVIOUS}", recursive=True)
    fs.move(final, aside)
    _crash_point("between_renames")
    fs.move(staging, final)
    fs.delete_dir(aside)


# ---- the latest pointer -----------------------------------------------------------------------------------------
def read_pointer(fs: pafs.FileSystem, pointer: str) -> str | None:
    if not _exists(fs, pointer):
        return None
    with fs.open_input_stream(pointer) as fh:
        return fh.read().decode().strip() or None


def _write_pointer(fs: pafs.FileSystem, local: bool, pointer: str, partition: str) -> None:
    current = read_pointer(fs, pointer)
    if current is not None and current > partition:  # "dt=YYYY-MM-DD" compares by date
        return
    temp = f"{pointer}.tmp-{os.getpid()}"
    with fs.open_output_stream(temp) as fh:
        fh.write(f"{partition}\n".encode())
    if local:
        os.replace(temp, pointer)  # atomic: readers see the old or the new line, never a torn one
    else:
        fs.move(temp, pointer)


# ---- publish and read --------------------------------------------------------------------------------------------
def _read_manifest(fs: pafs.FileSystem, folder: str) -> dict[str, Any] | None:
    if not _exists(fs, f"{folder}/{MANIFEST}"):
        return None
    with fs.open_input_stream(f"{folder}/{MANIFEST}") as fh:
        manifest: dict[str, Any] = json.loads(fh.read())
    return manifest


def _plan(root: str, name: str, date: Any, run_id: str) -> dict[str, Any] | None:
    """The verified summary of a fresh staging copy, or None when this run is already published.

    A staging folder holding ``_PUBLISHED.json`` is not fresh: it is the previous publication, swapped out by an
    exchange whose publish was killed before deleting it; it is removed here, never published again.
    """
    schema, version = CONTRACTS[name]
    staging = lake.staging(root, name, date, run_id)
    fs, staging_path = lake_io.filesystem(staging)
    _, final = lake_io.filesystem(f"{lake.table(root, name)}/dt={date.isoformat()}")
    if _exists(fs, staging_path) and _read_manifest(fs, staging_path) is None:
        return {**verify(staging, schema), "schema_version": version}
    if _exists(fs, staging_path):
        fs.delete_dir(staging_path)
    manifest = _read_manifest(fs, final) if _exists(fs, final) else {"run_id": None}
    if _exists(fs, final) and (manifest is None or manifest.get("run_id") == run_id):
        return None  # a killed publish of this run had already moved it into place
    raise StagingError(f"{staging}: no staging copy (did the score job run for this date and run id?)")


def publish(settings: Settings, run_id: str | None = None,
            tables: tuple[str, ...] = (lake.RECOMMENDATIONS, lake.SIMILAR_ITEMS)) -> dict[str, Any]:
    """Verifies every table's staging copy, then publishes each in one step; returns what was published.

    Idempotent: rerunning a publish that was killed part-way finishes it.
    """
    from jobs.score import default_run_id

    started = time.perf_counter()
    root, date = settings.lake_root, settings.run_date
    run_id = run_id or default_run_id(date)
    partition = f"dt={date.isoformat()}"
    for name in tables:
        fs, table_path = lake_io.filesystem(lake.table(root, name))
        recover(fs, table_path, partition)
    plans = {name: _plan(root, name, date, run_id) for name in tables}  # all verified before anything moves
    _crash_point("after_verify")
    summaries: dict[str, Any] = {}
    for name in tables:
        fs, staging = lake_io.filesystem(lake.staging(root, name, date, run_id))
        local = lake_io.is_local(fs)
        _, table_path = lake_io.filesystem(lake.table(root, name))
        final = f"{table_path}/{partition}"
        summary = plans[name]
        if summary is not None:
            _move_into_place(fs, local, staging, table_path, partition)
            _crash_point("after_move")
            manifest = {"table": name, "dt": date.isoformat(), "run_id": run_id, **summary}
            with fs.open_output_stream(f"{final}/{MANIFEST}") as fh:  # beside the data; readers skip _ files
                fh.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
        _crash_point("before_pointer")
        _write_pointer(fs, local, f"{table_path}/_LATEST", partition)
        summaries[name] = {**(summary or {"already_published": True}),
                           "path": f"{lake.table(root, name)}/{partition}"}
    print(json.dumps({"stage": "publish", "date": date.isoformat(), "run_id": run_id, "tables": summaries}))
    record_manifest(settings, run_id, plans, time.perf_counter() - started)
    return summaries


def record_manifest(settings: Settings, run_id: str, plans: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``runs/publish/dt=D``: rows in (verified staging rows; 0 when already published), rows out (the published
    partitions), users and items of the published recommendations."""
    from jobs import manifest as manifests

    root, date = settings.lake_root, settings.run_date
    published: dict[str, pa.Table] = {}
    for name in plans:
        fs, path = lake_io.filesystem(lake.partition(root, name, date))
        columns = ["user_id", "item_id"] if name == lake.RECOMMENDATIONS else ["item_id"]
        published[name] = ds.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns)
    recs = published.get(lake.RECOMMENDATIONS)
    counts = {
        "rows_in": sum(plan["rows"] for plan in plans.values() if plan is not None),
        "rows_out": sum(table.num_rows for table in published.values()),
        "users": len(recs.column("user_id").unique()) if recs is not None else 0,
        "items": len(recs.column("item_id").unique()) if recs is not None else 0,
        **{f"{name}_rows": table.num_rows for name, table in published.items()},
    }
    return manifests.record_stage(root, "publish", date, counts, seconds, publish_run_id=run_id,
                                  already_published=[name for name, plan in plans.items() if plan is None])


def latest_partition(root: str, name: str) -> str:
    """The path of the newest published partition of ``name`` (from ``_LATEST``)."""
    fs, _ = lake_io.filesystem(lake.table(root, name))
    partition = read_pointer(fs, lake_io.filesystem(lake.latest_pointer(root, name))[1])
    if partition is None:
        raise FileNotFoundError(f"{lake.table(root, name)} has no publication yet (no _LATEST)")
    return f"{lake.table(root, name)}/{partition}"


def read_latest(root: str, name: str = lake.RECOMMENDATIONS) -> pa.Table:
    """The newest published partition of an output table, complete (files starting with _ or . are skipped)."""
    path = latest_partition(root, name)
    fs, inner = lake_io.filesystem(path)
    if not _exists(fs, inner):  # a publish died between its two renames: read the copy set aside
        table_path, partition = inner.rsplit("/", 1)
        inner = _aside(table_path, partition)
    return ds.dataset(inner, filesystem=fs, format="parquet").to_table()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run-id", help="the staging run id to publish (default: derived from the date)")
    extra, rest = parser.parse_known_args(argv)
    settings = Settings.from_cli(rest, description=__doc__.splitlines()[0])
    publish(settings, run_id=extra.run_id)


if __name__ == "__main__":
    main()

