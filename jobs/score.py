"""Batch scoring: top-N recommendations for every user, similar items and embeddings, written to staging.

``spark-submit jobs/score.py --date D [--model-dir DIR] [--run-id ID] [--generated-at ISO]``

- Model: the production model (``lake.production_pointer``: JSON with ``model_dir`` and ``version``), or
  ``--model-dir``. Score of (user, item) = dot product of the exported towers' embeddings; for an item-item model
  (``scoring.neighbours``: the sparse neighbour matrix S) the sum of S[h, item] over the user's seen items h,
  a sparse product (no catalogue-length vector), and similar items are each item's own neighbours. Item-item
  models have no embeddings to publish, and no category cap (refused when one is set).
- Items: ``features/items/dt=D`` encoded once on the driver and broadcast; only available items are candidates.
- Users with a ``features/user_histories/dt=D`` row ("model" strategy): embeddings computed inside Spark partitions
  (``mapInArrow``) by the exported user tower, loaded once per Python worker; per Arrow batch of
  ``score_block_users`` users, :class:`scoring.topn.TopNScorer` selects the top ``top_n`` items, never one the user
  already interacted with (``seen``) nor an unavailable one, at most ``category_cap`` per category when set.
- Users in ``features/users/dt=D`` without a history row are cold ("cold_start" strategy): the items most users of
  their segment interacted with (distinct users, from the histories' ``seen``), ties and short lists filled by the
  items' global ``popularity``; available items only, same category cap. Their ``score`` is
  ``segment_users + popularity / (max_popularity * (1 + 1e-6))``: the ordering key, non-increasing by rank.
- Similar items: for every catalogue item, the ``similar_items_n`` available items with the highest cosine
  similarity of item embeddings, never the item itself.
- Embeddings: the vectors scoring used, so that user . item = the score: ``user_embeddings`` (one row per "model"
  user, written by the same task and from the same ``encode_users`` call as the user's recommendations, with the
  available items excluded as seen) and ``item_embeddings`` (the whole catalogue, from the driver's
  ``encode_items``). Only for a model of at most ``EMBEDDINGS_MAX_DIMENSION`` dimensions: otherwise both staging
  folders hold only ``_SKIPPED.json`` with the reason, and the run manifest says why (never silently).
- Output: ``staging/<table>/dt=D/run=<run_id>/`` (Parquet and ``_SUCCESS``), in the ``schemas.outputs`` contract.
  Each scoring task writes its rows as one Parquet file (pyarrow) under ``_tasks/`` and returns only its name and
  counts; cold-start rows go through Spark's writer into ``_spark/``; the driver then moves the files of the
  successful attempts into place and writes ``_SUCCESS`` last (:func:`commit_task_files`), so a killed or failed run
  leaves no folder that publish would take. ``generated_at`` is the run's logical time (default: D+1 00:00 UTC, when
  the recommendations for D+1 take effect), never the wall clock, so a rerun writes identical rows.
  ``run_id`` defaults to one derived from the date, so a rerun replaces its own staging copy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from schemas import lake
from schemas.features import pad_ids, user_inputs
from schemas.outputs import (
    EMBEDDINGS_MAX_DIMENSION,
    ITEM_EMBEDDING,
    RECOMMENDATION,
    SIMILAR_ITEM,
    USER_EMBEDDING,
)
from schemas.settings import Settings
from scoring.neighbours import NeighbourModel

MODEL = "model"
COLD_START = "cold_start"

# per Python worker: the exported model and the item-side scorers, built once and reused by every task
_MODELS: dict[str, Any] = {}
_SCORERS: dict[tuple[str, str], Any] = {}


def default_run_id(date: dt.date) -> str:
    """Deterministic per date: a rerun of the date replaces its own staging copy."""
    return f"{date.isoformat()}-score"


def default_generated_at(date: dt.date) -> dt.datetime:
    """The logical time of D's recommendations: the start of D+1 (UTC), the day they are for."""
    return dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def read_production_pointer(root: str) -> dict[str, Any]:
    # pyarrow, not tf.io: TensorFlow is imported later, beside the Spark session's start
    from storage.lake_io import read_json

    path = lake.production_pointer(root)
    pointer = read_json(path)
    if pointer is None:
        raise FileNotFoundError(f"no production model: {path} is missing (run the gate, or pass --model-dir)")
    if "path" not in pointer:  # the registry's pointer: {"name", "version", "path", ...}
        raise ValueError(f"{path} names no model path: {pointer}")
    return dict(pointer)


def loaded_model(model_dir: str, one_core: bool = False) -> Any:
    """The exported model, loaded once per process (driver or Python worker). ``one_core``: inside a Spark task,
    which owns one core: TensorFlow then runs its ops on one thread instead of a pool per core, whose threads spin
    after each op and took the core from the top-N kernel beside them (bench_score's Spark job: the user tower
    1.4 -> 0.4 s, the exclusions 2.0 -> 0.05 s, summed over 100k users)."""
    if model_dir not in _MODELS:
        from scoring import neighbours
        from scoring.contract import LoadedModel
        from storage import lake_io

        if neighbours.is_item_item(lake_io.read_json(f"{model_dir}/{neighbours.METADATA}") or {}):
            _MODELS[model_dir] = neighbours.load(model_dir)  # no TensorFlow in this worker
            return _MODELS[model_dir]
        if one_core:
            import tensorflow as tf

            try:
                tf.config.threading.set_intra_op_parallelism_threads(1)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TensorFlow already ran an op in this worker: its pools exist, keep them
                pass
        _MODELS[model_dir] = LoadedModel(model_dir)
    return _MODELS[model_dir]


# ---- item side (driver) ---------------------------------------------------------------------------------
def encode_catalogue(model: Any, items: pa.Table, title_tokens: int) -> np.ndarray:
    """Item embeddings [N, d] for every catalogue row, in the table's order."""
    return model.encode_items(
        item_idx=items["item_idx"].to_numpy().astype(np.int32),
        category_idx=items["category_idx"].to_numpy().astype(np.int32),
        price_bucket=items["price_bucket"].to_numpy().astype(np.int32),
        title_tokens=pad_ids(items["title_tokens"].to_pylist(), title_tokens),
        age_days=items["age_days"].to_numpy().astype(np.float32),
    ).astype(np.float32)


def item_side(items: pa.Table, embeddings: np.ndarray | None) -> dict[str, Any]:
    """What every worker needs about the catalogue (broadcast once): candidates = available items.
    ``embeddings`` None: an item-item model, which scores from item numbers (``candidate_idx``, ``source_idx``)."""
    available = items["available"].to_numpy(zero_copy_only=False).astype(bool)
    item_idx = items["item_idx"].to_numpy().astype(np.int64)
    candidates = np.flatnonzero(available)
    position = np.full(int(item_idx.max(initial=0)) + 1, -1, np.int32)  # item_idx -> candidate position
    position[item_idx[candidates]] = np.arange(len(candidates), dtype=np.int32)
    common = {
        "categories": items["category_idx"].to_numpy().astype(np.int32)[candidates],
        "item_ids": np.asarray(items["item_id"].to_pylist(), dtype=object)[candidates],
        "position": position,
        # the similar-items sources: every catalogue item (unavailable ones too: their pages still exist)
        "source_ids": np.asarray(items["item_id"].to_pylist(), dtype=object),
        "source_position": np.where(available, position[item_idx], -1).astype(np.int32),
    }
    if embeddings is None:
        return {**common, "item_item": True, "candidate_idx": item_idx[candidates], "source_idx": item_idx}
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    return {
        **common,
        "item_item": False,
        "embeddings": np.ascontiguousarray(embeddings[candidates]),
        "unit_embeddings": np.ascontiguousarray(unit[candidates]),
        "source_unit": np.ascontiguousarray(unit),
    }


def _scorer(side: dict[str, Any], key: str, kind: str, model: Any = None) -> Any:
    from scoring.topn import TopNScorer

    cache_key = (kind, key)
    if cache_key not in _SCORERS:
        _SCORERS.clear()  # one broadcast at a time per worker: a new run's items replace the old ones
        if side["item_item"]:  # users: the sum of their seen items' rows; items: each item's own neighbours
            source = model if kind == "users" else model.similar_items()
            scorer = source.scorer(side["candidate_idx"], budget_mb=side["block_mb"])
        else:
            embeddings = side["embeddings"] if kind == "users" else side["unit_embeddings"]
            scorer = TopNScorer(embeddings, side["categories"], threads=1)  # a Spark task owns one core
        _SCORERS[cache_key] = (scorer, pa.array(side["item_ids"], pa.string()))
    return _SCORERS[cache_key]


# ---- user and item side (inside Spark partitions) ---------------------------------------------------------
# Each task writes its rows as one Parquet file with pyarrow, under the staging folder's _tasks/, and returns only
# one TASK_FILE row; the driver moves the files of the successful attempts into place (:func:`commit_task_files`).
# Through Spark's writer every row went Python -> Arrow -> JVM rows -> Parquet: bench_score's Spark job at 100k users
# x top 100 spent 8-9 s of JVM CPU and 2 s per task waiting on that path for 10M rows; pyarrow encodes them in
# about 0.25 s of CPU. TASK_FILE: the file, its rows, the keys (users or source items) with at least one row, and
# the candidate item positions it holds (what the manifest counts); a task may write one file per table
TASK_FILE = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("keys", pa.int64(), nullable=False),
        pa.field("items", pa.list_(pa.int32()), nullable=False),
    ]
)
TASKS = "_tasks"
SPARK_WRITTEN = "_spark"  # rows written by Spark itself (cold start), moved in by commit_task_files
# Parquet as readers expect it (the contract's names and types), written cheaply: id and constant columns are
# handed over dictionary-encoded (indices built by numpy, no per-row strings), which Parquet stores as its own
# dictionary pages; score is byte-stream-split (floats compress only once their bytes are grouped); one row group
# per block; snappy. No min/max statistics: a row group holds ranks 1..N and items from the whole catalogue, so
# no column's range could skip one, and computing them was a third of the encoding time. No Arrow schema stored:
# readers get plain strings.
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


def _encoded(schema: pa.Schema) -> pa.Schema:
    """``schema`` with its string columns dictionary-encoded: what the task writers are handed."""
    return pa.schema(
        [f.with_type(_DICTIONARY) if f.type == pa.string() else f for f in schema], metadata=schema.metadata
    )


def task_writer(path: str, schema: pa.Schema) -> Any:
    """A Parquet writer at ``path`` (a lake path or URI; its folder is created) for :func:`ranked_rows` batches of
    ``schema``: ids and constants dictionary-encoded, dictionary pages for every column but rank and score."""
    import pyarrow.parquet as pq

    from storage.lake_io import filesystem

    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    return pq.ParquetWriter(
        inner,
        _encoded(schema),
        filesystem=fs,
        compression="snappy",
        use_dictionary=[n for n in schema.names if n not in ("rank", "score", "vector")],
        column_encoding={"score": "BYTE_STREAM_SPLIT"} if "score" in schema.names else None,
        write_statistics=False,
        store_schema=False,
    )


@functools.lru_cache(maxsize=4)
def _full_block(rows: int, n: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(row, rank, zeros) of a block whose ``rows`` lists are all full: the same for every such block, built once."""
    return (
        pa.array(np.repeat(np.arange(rows, dtype=np.int32), n)),
        pa.array(np.tile(np.arange(1, n + 1, dtype=np.int32), rows)),
        pa.array(np.zeros(rows * n, np.int32)),
    )


def ranked_rows(
    top: Any, keys: pa.Array, item_ids: pa.Array, schema: pa.Schema, constants: dict[str, Any]
) -> pa.RecordBatch:
    """A block's top-N -> rows of ``schema`` (RECOMMENDATION or SIMILAR_ITEM: key, rank, item, score, then the
    run's ``constants``), best first per key, string columns dictionary-encoded. ``keys``: the block's rows' ids,
    ``item_ids``: the candidate items by position."""
    rows, n = top.positions.shape
    if rows and bool((top.positions[:, -1] >= 0).all()):  # every list full (the usual case): no mask needed
        row, rank, zeros = _full_block(rows, n)
        item, score = top.positions.ravel(), top.scores.ravel()
    else:
        mask = top.positions >= 0
        where_row, col = np.nonzero(
            mask
        )  # row-major: each row's items in rank order (selected items come first)
        row, rank = pa.array(where_row.astype(np.int32)), pa.array((col + 1).astype(np.int32))
        zeros = pa.array(np.zeros(len(where_row), np.int32))
        item, score = top.positions[mask], top.scores[mask]
    # indices in range by construction (rows of the block, candidate positions, 0): no bounds pass over them
    columns = [
        pa.DictionaryArray.from_arrays(row, keys, safe=False),
        rank,
        pa.DictionaryArray.from_arrays(pa.array(item.astype(np.int32, copy=False)), item_ids, safe=False),
        pa.array(score.astype(np.float32, copy=False)),
    ]
    columns += [constant_column(field, constants[field.name], zeros) for field in list(schema)[4:]]
    return pa.RecordBatch.from_arrays(columns, schema=_encoded(schema))


def constant_column(field: pa.Field, value: Any, zeros: pa.Array) -> pa.Array:
    """``value`` repeated ``len(zeros)`` times as ``field``'s column (strings dictionary-encoded); ``zeros``: int32
    zeros of that length, the dictionary indices."""
    one = pa.array([value], field.type)
    if field.type == pa.string():
        return pa.DictionaryArray.from_arrays(zeros, one, safe=False)
    if pa.types.is_timestamp(field.type) or field.type == pa.int32():  # a numpy fill instead of a take
        dtype = np.int32 if field.type == pa.int32() else np.int64
        filled = np.full(len(zeros), one.cast(pa.int64())[0].as_py(), dtype)
        return pa.Array.from_buffers(field.type, len(zeros), [None, pa.py_buffer(filled)])
    raise TypeError(f"no constant column of type {field.type} ({field.name})")


def vector_column(vectors: np.ndarray) -> pa.Array:
    """float32 [n, d] -> a list<float32> column of n rows of d values (no per-row Python)."""
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32) if d else np.zeros(n + 1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(vectors, np.float32).ravel()))


def embedding_rows(
    keys: pa.Array,
    vectors: np.ndarray,
    schema: pa.Schema,
    columns: dict[str, pa.Array],
    constants: dict[str, Any],
) -> pa.RecordBatch:
    """Rows of USER_EMBEDDING or ITEM_EMBEDDING: one per key with its vector, ``columns`` (the schema's other
    per-row columns) and the run's ``constants`` (``dimension``, ``model_version``, ``generated_at``)."""
    n = len(keys)
    zeros = pa.array(np.zeros(n, np.int32))
    out = []
    for field in schema:
        if field.name == schema.names[0]:
            out.append(
                pa.DictionaryArray.from_arrays(pa.array(np.arange(n, dtype=np.int32)), keys, safe=False)
            )
        elif field.name == "vector":
            out.append(vector_column(vectors))
        elif field.name in columns:
            column = columns[field.name]
            out.append(column.dictionary_encode() if field.type == pa.string() else column)
        else:
            out.append(constant_column(field, constants[field.name], zeros))
    return pa.RecordBatch.from_arrays(out, schema=_encoded(schema))


def _write_task_files(
    blocks: Iterator[dict[str, tuple[Any, pa.RecordBatch]]],
    outputs: dict[str, tuple[str, pa.Schema]],
    num_items: int,
) -> Iterator[pa.RecordBatch]:
    """Writes each block's rows per table (``{table: (top-N or None, rows)}``) to one Parquet file per table, named
    by this task's partition and attempt, under that table's task folder (``outputs``: ``{table: (folder,
    schema)}``); yields one TASK_FILE row per file (what the manifest counts, so the staged tables need not be read
    back). Rows without a top-N (embeddings) count one key per row and no items."""
    from pyspark import TaskContext

    context = TaskContext.get()
    name = (
        f"part-{context.partitionId():05d}-{context.taskAttemptId()}.parquet"
        if context
        else "part-00000.parquet"
    )
    writers: dict[str, Any] = {}
    rows = dict.fromkeys(outputs, 0)
    keys = dict.fromkeys(outputs, 0)
    present = {table: np.zeros(num_items, bool) for table in outputs}
    try:
        for block in blocks:
            for table, (top, batch) in block.items():
                if table not in writers:
                    folder, schema = outputs[table]
                    writers[table] = task_writer(f"{folder}/{name}", schema)
                writers[table].write_batch(batch)
                rows[table] += batch.num_rows
                if top is None:
                    keys[table] += batch.num_rows
                else:
                    keys[table] += int((top.positions[:, 0] >= 0).sum())
                    present[table][top.positions[top.positions >= 0]] = True
    finally:
        for writer in writers.values():
            writer.close()
    for table, (folder, _) in outputs.items():
        if rows[table]:
            items = pa.array([np.flatnonzero(present[table]).astype(np.int32)], pa.list_(pa.int32()))
            yield pa.record_batch(
                [
                    pa.array([table]),
                    pa.array([f"{folder}/{name}"]),
                    pa.array([rows[table]], pa.int64()),
                    pa.array([keys[table]], pa.int64()),
                    items,
                ],
                schema=TASK_FILE,
            )


def user_vectors(batch: pa.RecordBatch, model: Any, params: dict[str, Any]) -> np.ndarray:
    """One block of users (user_idx, user_id, history, seen, age_bucket_idx, region_idx) -> encode_users [B, d]."""
    return np.asarray(
        model.encode_users(
            **user_inputs(
                batch.column("user_idx").to_numpy(),
                batch.column("history").to_pylist(),
                batch.column("seen").to_pylist(),
                params["history_length"],
                age_bucket_idx=batch.column("age_bucket_idx").to_numpy(),
                region_idx=batch.column("region_idx").to_numpy(),
            )
        ),
        np.float32,
    )


def seen_candidates(batch: pa.RecordBatch, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, candidate position) of every item the block's users already interacted with: the exclusions;
    position -1 for an item that is no candidate (unavailable, or not in the catalogue)."""
    seen = batch.column("seen")
    seen_items = seen.flatten().to_numpy().astype(np.int64)
    seen_rows = pc.list_parent_indices(seen).to_numpy().astype(np.int64)
    known = (seen_items >= 0) & (seen_items < len(position))
    seen_positions = np.full(len(seen_items), -1, np.int64)
    seen_positions[known] = position[seen_items[known]]
    return seen_rows, seen_positions


def recommend_batch(
    batch: pa.RecordBatch,
    model: Any,
    scorer: Any,
    position: np.ndarray,
    params: dict[str, Any],
    embeddings: np.ndarray | None = None,
) -> Any:
    """One block of users (user_idx, user_id, history, seen, age_bucket_idx, region_idx) -> its top-N, scored from
    ``embeddings`` (the block's :func:`user_vectors`, computed here when not given)."""
    if isinstance(model, NeighbourModel):  # the seen items are the model's input and the exclusions alike
        seen = batch.column("seen")
        rows = pc.list_parent_indices(seen).to_numpy().astype(np.int64)
        items = seen.flatten().to_numpy().astype(np.int64)
        return scorer.top_n(params["top_n"], rows, items, batch.num_rows, rows, items)
    if embeddings is None:
        embeddings = user_vectors(batch, model, params)
    seen_rows, seen_positions = seen_candidates(batch, position)
    return scorer.top_n(embeddings, params["top_n"], seen_rows, seen_positions, params["category_cap"])


def user_embedding_rows(
    batch: pa.RecordBatch,
    embeddings: np.ndarray,
    position: np.ndarray,
    item_ids: pa.Array,
    constants: dict[str, Any],
) -> pa.RecordBatch:
    """The block's USER_EMBEDDING rows: each user's vector and the candidate items excluded as seen, in the order
    of the user's ``seen`` list."""
    seen_rows, seen_positions = seen_candidates(batch, position)
    kept = seen_positions >= 0
    counts = np.bincount(seen_rows[kept], minlength=batch.num_rows)
    offsets = np.zeros(batch.num_rows + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    seen_ids = pa.ListArray.from_arrays(pa.array(offsets), pc.take(item_ids, pa.array(seen_positions[kept])))
    return embedding_rows(
        batch.column("user_id"), embeddings, USER_EMBEDDING, {"seen_item_ids": seen_ids}, constants
    )


def recommend_partition(
    batches: Iterator[pa.RecordBatch], side_broadcast: Any, params: dict[str, Any]
) -> Iterator[pa.RecordBatch]:
    """Users -> RECOMMENDATION rows (and, when the embeddings are published, their USER_EMBEDDING rows, from the
    same ``encode_users`` call the scores come from)."""
    model = loaded_model(params["model_dir"], one_core=True)
    side = side_broadcast.value
    scorer, item_ids = _scorer(side, params["side_key"], "users", model)
    constants = {
        "model_version": params["model_version"],
        "strategy": MODEL,
        "generated_at": params["generated_at"],
        "dimension": 0 if side["item_item"] else int(side["embeddings"].shape[1]),
    }
    outputs = {lake.RECOMMENDATIONS: (params["recommendations_tasks"], RECOMMENDATION)}
    if params["embeddings"]:
        outputs[lake.USER_EMBEDDINGS] = (params["user_embeddings_tasks"], USER_EMBEDDING)

    def blocks() -> Iterator[dict[str, tuple[Any, pa.RecordBatch]]]:
        for batch in batches:
            if batch.num_rows:
                embeddings = None if side["item_item"] else user_vectors(batch, model, params)
                top = recommend_batch(batch, model, scorer, side["position"], params, embeddings)
                block = {
                    lake.RECOMMENDATIONS: (
                        top,
                        ranked_rows(top, batch.column("user_id"), item_ids, RECOMMENDATION, constants),
                    )
                }
                if params["embeddings"] and embeddings is not None:
                    rows = user_embedding_rows(batch, embeddings, side["position"], item_ids, constants)
                    block[lake.USER_EMBEDDINGS] = (None, rows)
                yield block

    return _write_task_files(blocks(), outputs, len(item_ids))


def similar_partition(
    batches: Iterator[pa.RecordBatch], side_broadcast: Any, params: dict[str, Any]
) -> Iterator[pa.RecordBatch]:
    """Source item numbers (``id`` from spark.range) -> SIMILAR_ITEM rows by cosine, self excluded."""
    side = side_broadcast.value
    model = loaded_model(params["model_dir"], one_core=True) if side["item_item"] else None
    scorer, item_ids = _scorer(side, params["side_key"], "items", model)
    sources = pa.array(side["source_ids"], pa.string())
    constants = {"model_version": params["model_version"], "generated_at": params["generated_at"]}

    def blocks() -> Iterator[dict[str, tuple[Any, pa.RecordBatch]]]:
        for batch in batches:
            numbers = batch.column("id").to_numpy().astype(np.int64)
            if not len(numbers):
                continue
            if side["item_item"]:  # the item itself is its one-item history, and excluded
                order, source_idx = np.arange(len(numbers)), side["source_idx"][numbers]
                top = scorer.top_n(
                    params["similar_items_n"], order, source_idx, len(numbers), order, source_idx, fill=False
                )
            else:
                top = scorer.top_n(
                    side["source_unit"][numbers],
                    params["similar_items_n"],
                    np.arange(len(numbers)),
                    side["source_position"][numbers],
                )
            rows = ranked_rows(top, pc.take(sources, pa.array(numbers)), item_ids, SIMILAR_ITEM, constants)
            yield {lake.SIMILAR_ITEMS: (top, rows)}

    outputs = {lake.SIMILAR_ITEMS: (params["similar_items_tasks"], SIMILAR_ITEM)}
    return _write_task_files(blocks(), outputs, len(item_ids))


def commit_task_files(written: list[Any], staging: str) -> None:
    """Makes ``staging`` whole: moves in the task files the job returned (its successful attempts: failed or
    speculative ones are left in ``_tasks/`` and deleted with it) and Spark's part files from ``_spark/``, then
    writes ``_SUCCESS`` last. Until then readers skip both folders (``_`` prefix) and publish refuses the folder."""
    from storage import lake_io
    from storage.lake_io import filesystem

    fs, inner = filesystem(staging)
    sources = [filesystem(row["file"])[1] for row in sorted(written, key=lambda row: row["file"])]
    spark_written = f"{inner}/{SPARK_WRITTEN}"
    if lake_io.exists(spark_written, fs):
        sources += sorted(
            info.path
            for info in fs.get_file_info(pafs.FileSelector(spark_written))
            if info.base_name.startswith("part-")
        )
    for number, source in enumerate(sources):
        fs.move(source, f"{inner}/part-{number:05d}.parquet")
    for folder in (TASKS, SPARK_WRITTEN):
        if lake_io.exists(f"{inner}/{folder}", fs):
            fs.delete_dir(f"{inner}/{folder}")
    with fs.open_output_stream(f"{inner}/_SUCCESS"):
        pass


# ---- the job ------------------------------------------------------------------------------------------------
def cold_start(histories: Any, users: Any, items: Any, settings: Settings) -> Any:
    """Per segment: items most of the segment's users interacted with, filled by global popularity."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    available = items.filter(F.col("available")).select("item_idx", "item_id", "category_idx", "popularity")
    pool_size = settings.top_n * (4 if settings.category_cap else 1)
    segment_counts = (
        histories.select("user_idx", F.explode("seen").alias("item_idx"))
        .join(users.select("user_idx", "segment"), "user_idx")
        .groupBy("segment", "item_idx")
        .agg(F.countDistinct("user_idx").alias("segment_users"))
    )
    popular = available.orderBy(F.desc("popularity"), "item_idx").limit(pool_size).select("item_idx")
    fill = users.select("segment").distinct().crossJoin(popular).withColumn("segment_users", F.lit(0))
    candidates = (
        segment_counts.unionByName(fill.select("segment", "item_idx", "segment_users"))
        .groupBy("segment", "item_idx")
        .agg(F.max("segment_users").alias("segment_users"))
        .join(available, "item_idx")
    )
    order = [F.desc("segment_users"), F.desc("popularity"), F.asc("item_idx")]
    if settings.category_cap:
        per_category = Window.partitionBy("segment", "category_idx").orderBy(*order)
        candidates = candidates.withColumn("in_category", F.row_number().over(per_category)).filter(
            F.col("in_category") <= settings.category_cap
        )
    max_popularity = available.agg(F.max("popularity")).first()[0] or 0.0
    ranked = (
        candidates.withColumn("rank", F.row_number().over(Window.partitionBy("segment").orderBy(*order)))
        .filter(F.col("rank") <= settings.top_n)
        .withColumn(
            "score",
            (
                F.col("segment_users") + F.col("popularity") / F.lit(max(max_popularity, 1e-12) * (1 + 1e-6))
            ).cast("float"),
        )
    )
    cold_users = users.join(histories.select("user_idx"), "user_idx", "left_anti")
    return cold_users.select("user_id", "segment").join(
        ranked.select("segment", "rank", "item_id", "score"), "segment"
    )


def run(
    settings: Settings,
    spark: Any = None,
    model_dir: str | None = None,
    model_version: str | None = None,
    run_id: str | None = None,
    generated_at: dt.datetime | None = None,
) -> dict[str, str]:
    """Scores ``settings.run_date`` into staging; returns ``{table name: staging path}``."""
    from schemas.features import ITEM_FEATURE, USER_FEATURE, USER_HISTORY
    from storage.spark import delete_path, read_partition

    started = time.perf_counter()
    root, date = settings.lake_root, settings.run_date
    spark, model, model_dir, model_version = load_model_and_session(settings, spark, model_dir, model_version)
    run_id = run_id or default_run_id(date)
    generated_at = generated_at or default_generated_at(date)
    paths = {name: lake.staging(root, name, date, run_id) for name in lake.PUBLISHED}
    for path in paths.values():  # a rerun of the same run id starts from an empty staging folder
        delete_path(spark, path)
    params = {
        "model_dir": model_dir,
        "model_version": model_version,
        "generated_at": generated_at,
        "top_n": settings.top_n,
        "category_cap": settings.category_cap,
        "history_length": settings.history_length,
        "similar_items_n": settings.similar_items_n,
        "side_key": uuid.uuid4().hex,  # names this run's broadcast in the worker caches (not written anywhere)
        "recommendations_tasks": f"{paths[lake.RECOMMENDATIONS]}/{TASKS}",
        "similar_items_tasks": f"{paths[lake.SIMILAR_ITEMS]}/{TASKS}",
        "user_embeddings_tasks": f"{paths[lake.USER_EMBEDDINGS]}/{TASKS}",
    }
    items_df = read_partition(spark, root, lake.ITEM_FEATURES, date, ITEM_FEATURE)
    items = (
        items_df.select(
            "item_idx",
            "item_id",
            "category",
            "category_idx",
            "price_bucket",
            "title_tokens",
            "age_days",
            "available",
        )
        .orderBy("item_idx")
        .toArrow()
    )
    if isinstance(model, NeighbourModel):
        if settings.category_cap > 0:
            raise ValueError(
                f"category_cap={settings.category_cap} is not supported for the item-item model {model_dir}: "
                "set category_cap 0, or promote a model with embeddings"
            )
        item_vectors = None
        side = {**item_side(items, None), "block_mb": settings.item_block_mb}
        dimension = 0
        too_large: str | None = (
            "the production model is an item-item model (sparse neighbours): its scores are sums of item "
            "similarities, not a dot product of embeddings; not published"
        )
    else:
        item_vectors = encode_catalogue(model, items, settings.title_tokens)
        side = item_side(items, item_vectors)
        dimension = int(item_vectors.shape[1])
        too_large = embeddings_decision(dimension)
    params["embeddings"] = too_large is None
    constants = {
        "model_version": model_version,
        "generated_at": generated_at,
        "dimension": dimension,
    }
    if item_vectors is not None and too_large is None:
        write_item_embeddings(items, item_vectors, paths[lake.ITEM_EMBEDDINGS], constants)
    # Arrow batches = scoring blocks: one encode_users call and one TopNScorer call per block of users
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(settings.score_block_users))
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    histories = read_partition(spark, root, lake.USER_HISTORIES, date, USER_HISTORY)
    users = read_partition(spark, root, lake.USER_FEATURES, date, USER_FEATURE)
    cold = cold_start_rows(histories, users, items_df, settings, model_version, generated_at)
    cold_counts, recommended, similar = score_and_write(
        spark, model_input(histories, users), cold, side, params, paths
    )
    embedded = [row for row in recommended if row["table"] == lake.USER_EMBEDDINGS]
    recommended = [row for row in recommended if row["table"] == lake.RECOMMENDATIONS]
    not_published: dict[str, str] = {}  # table -> why it was not staged
    if too_large is not None:
        not_published = dict.fromkeys(lake.EMBEDDINGS, too_large)
    elif not embedded:
        not_published = {lake.USER_EMBEDDINGS: "no user has a history: no user was scored by the model"}
    if not_published:
        skip_embeddings(paths, not_published, date, run_id, dimension, model_version)
    else:
        commit_task_files(embedded, paths[lake.USER_EMBEDDINGS])
    print(
        json.dumps(
            {
                "stage": "score",
                "date": date.isoformat(),
                "run_id": run_id,
                "model_dir": model_dir,
                "model_version": model_version,
                "candidate_items": int(len(side["item_ids"])),
                "catalogue_items": int(len(side["source_ids"])),
                "dimension": dimension,
                "embeddings_not_published": not_published or None,
                "staging": paths,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    record_manifest(
        settings,
        spark,
        users.count(),
        cold_counts,
        recommended,
        similar,
        side,
        paths,
        model_version,
        time.perf_counter() - started,
        embedded=embedded,
        dimension=dimension,
        not_published=not_published,
    )
    return paths


def embeddings_decision(dimension: int) -> str | None:
    """Why the embeddings are not published for a model of ``dimension``, or None when they are: only up to
    ``EMBEDDINGS_MAX_DIMENSION`` (a two-tower or factor model). Item-to-item models (item cosine, EASE) and a deep
    model with its wide item-item part have vectors as long as the catalogue: rows that size per user would cost
    more than the recommendations themselves and serve no ANN index."""
    if dimension <= EMBEDDINGS_MAX_DIMENSION:
        return None
    return (
        f"the production model's embeddings have {dimension} dimensions, more than {EMBEDDINGS_MAX_DIMENSION} "
        "(catalogue-length vectors of an item-to-item model or a wide part): not published"
    )


def write_item_embeddings(
    items: pa.Table, vectors: np.ndarray, staging: str, constants: dict[str, Any]
) -> int:
    """ITEM_EMBEDDING rows of the whole catalogue (the vectors scoring uses, already on the driver), written as
    the tasks write theirs, then ``_SUCCESS``; returns the rows."""
    from storage.lake_io import filesystem

    rows = embedding_rows(
        items["item_id"].combine_chunks(),
        vectors,
        ITEM_EMBEDDING,
        {
            "available": items["available"].combine_chunks(),
            "category": items["category"].combine_chunks(),
        },
        constants,
    )
    with task_writer(f"{staging}/part-00000.parquet", ITEM_EMBEDDING) as writer:
        writer.write_batch(rows)
    fs, inner = filesystem(staging)
    with fs.open_output_stream(f"{inner}/_SUCCESS"):
        pass
    return rows.num_rows


def skip_embeddings(
    paths: dict[str, str],
    reasons: dict[str, str],
    date: dt.date,
    run_id: str,
    dimension: int,
    model_version: str,
) -> None:
    """Both embedding tables' staging folders hold only ``_SKIPPED.json`` (a table staged alone is never published
    beside a missing other half): publish records the reason instead of publishing, and fails on neither."""
    from storage import lake_io
    from storage.publish import SKIPPED

    reason = "; ".join(dict.fromkeys(reasons.values()))
    for name in lake.EMBEDDINGS:
        fs, inner = lake_io.filesystem(paths[name])
        if lake_io.exists(inner, fs):
            fs.delete_dir(inner)
        marker = {
            "table": name,
            "dt": date.isoformat(),
            "run_id": run_id,
            "reason": reasons.get(name, reason),
            "dimension": dimension,
            "max_dimension": EMBEDDINGS_MAX_DIMENSION,
            "model_version": model_version,
        }
        lake_io.write_text_atomic(f"{inner}/{SKIPPED}", json.dumps(marker, indent=2, sort_keys=True), fs)


def load_model_and_session(
    settings: Settings, spark: Any, model_dir: str | None, model_version: str | None
) -> tuple[Any, Any, str, str]:
    """The model (the production one unless given) and a Spark session; returns (spark, model, dir, version)."""
    from storage.spark import spark_session

    if model_dir is None:
        pointer = read_production_pointer(settings.lake_root)
        model_dir, model_version = pointer["path"], model_version or pointer.get("version")
    # TensorFlow's import and the model's load (~5 s) run while the Spark session starts
    with ThreadPoolExecutor(1, thread_name_prefix="model-load") as loader:
        loading = loader.submit(loaded_model, model_dir)
        spark = spark or spark_session(settings, "score")
        model = loading.result()
    version = str(model_version or model.metadata.get("version") or model_dir.rstrip("/").rsplit("/", 1)[-1])
    return spark, model, model_dir, version


def model_input(histories: Any, users: Any) -> Any:
    """One row per user with a history: what ``encode_users`` takes, spread over the session's cores."""
    from pyspark.sql import functions as F

    return (
        histories.join(users.select("user_idx", "age_bucket_idx", "region_idx"), "user_idx", "left")
        .select(
            "user_idx",
            "user_id",
            "history",
            "seen",
            F.coalesce("age_bucket_idx", F.lit(0)).alias("age_bucket_idx"),
            F.coalesce("region_idx", F.lit(0)).alias("region_idx"),
        )
        .repartition(histories.sparkSession.sparkContext.defaultParallelism)
    )


def cold_start_rows(
    histories: Any, users: Any, items: Any, settings: Settings, model_version: str, generated_at: dt.datetime
) -> Any:
    """The cold-start users' recommendation rows in the published contract (from Spark SQL, Spark's writer)."""
    from pyspark.sql import functions as F

    from schemas.spark import to_spark
    from storage.spark import check_schema

    cold = cold_start(histories, users, items, settings).select(
        *[F.col(name) for name in ("user_id", "rank", "item_id", "score")],
        F.lit(model_version).alias("model_version"),
        F.lit(COLD_START).alias("strategy"),
        F.lit(generated_at).cast("timestamp").alias("generated_at"),
    )
    cold = cold.select(
        *[F.col(f.name).cast(to_spark(RECOMMENDATION)[f.name].dataType) for f in RECOMMENDATION]
    )
    check_schema(cold, RECOMMENDATION, lake.RECOMMENDATIONS)
    return cold


def score_and_write(
    spark: Any, users_in: Any, cold: Any, side: dict[str, Any], params: dict[str, Any], paths: dict[str, str]
) -> tuple[Any, list[Any], list[Any]]:
    """The model users' top N, the similar items and the cold-start rows, written and committed to staging;
    returns (cold-start counts, the user tasks' files, the similar-items tasks' files). The user tasks' files of
    ``user_embeddings`` (when staged) are left in its ``_tasks/`` for the caller to commit or drop."""
    import importlib

    from pyspark.sql import functions as F

    from schemas.spark import to_spark
    from storage.spark import in_parallel

    # by reference to the importable module (not __main__ under spark-submit), so the worker caches persist
    this = importlib.import_module("jobs.score")
    side_broadcast = spark.sparkContext.broadcast(side)
    sources = len(side["source_ids"])
    parallelism = spark.sparkContext.defaultParallelism

    def write_cold() -> Any:  # written, then counted (Spark skips a _ folder given as a path: not read back)
        persisted = cold.persist()
        persisted.write.parquet(f"{paths[lake.RECOMMENDATIONS]}/{SPARK_WRITTEN}")
        counts = persisted.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct("user_id").alias("users"),
            F.collect_set("item_id").alias("items"),
        ).first()
        persisted.unpersist()
        return counts

    # three independent jobs from driver threads: cold start is many small, driver-bound jobs, which start while
    # the scoring tasks hold the cores
    cold_counts, recommended, similar = in_parallel(
        [
            write_cold,
            lambda: users_in.mapInArrow(
                lambda batches: this.recommend_partition(batches, side_broadcast, params), to_spark(TASK_FILE)
            ).collect(),
            lambda: (
                spark.range(0, sources, numPartitions=max(1, min(parallelism, sources)))
                .mapInArrow(
                    lambda batches: this.similar_partition(batches, side_broadcast, params),
                    to_spark(TASK_FILE),
                )
                .collect()
            ),
        ]
    )
    commit_task_files(
        [row for row in recommended if row["table"] == lake.RECOMMENDATIONS], paths[lake.RECOMMENDATIONS]
    )
    commit_task_files(similar, paths[lake.SIMILAR_ITEMS])
    side_broadcast.unpersist()
    return cold_counts, recommended, similar


def record_manifest(
    settings: Settings,
    spark: Any,
    users_in: int,
    cold_counts: Any,
    recommended: list[Any],
    similar: list[Any],
    side: dict[str, Any],
    paths: dict[str, str],
    model_version: str,
    seconds: float,
    embedded: list[Any] | None = None,
    dimension: int = 0,
    not_published: dict[str, str] | None = None,
) -> None:
    """``runs/score/dt=D``: users in, staged rows out, users and items recommended, embedding rows (or why none
    were staged: ``embeddings_not_published``, also shown by the run summary). Counted from what the tasks and
    Spark wrote, not by reading the staged tables back (10M rows per 100k users); model and cold-start users are
    disjoint (with or without a history row)."""
    from storage import manifest as manifests

    rows = sum(int(row["rows"]) for row in recommended) + int(cold_counts["rows"])
    similar_rows = sum(int(row["rows"]) for row in similar)
    model_items = {side["item_ids"][p] for row in recommended for p in row["items"]}
    embedding_rows = {
        lake.USER_EMBEDDINGS: 0 if not_published else sum(int(row["rows"]) for row in embedded or []),
        lake.ITEM_EMBEDDINGS: 0 if not_published else int(len(side["source_ids"])),
    }
    counts: dict[str, Any] = {
        "rows_in": users_in,
        "rows_out": rows + similar_rows + sum(embedding_rows.values()),
        "users": sum(int(row["keys"]) for row in recommended) + int(cold_counts["users"]),
        "items": len(model_items | set(cold_counts["items"])),
        "recommendations_rows": rows,
        "similar_items_rows": similar_rows,
        **{f"{name}_rows": count for name, count in embedding_rows.items()},
        "candidate_items": int(len(side["item_ids"])),
        "dimension": dimension,
    }
    if not_published:
        counts["embeddings_not_published"] = "; ".join(dict.fromkeys(not_published.values()))
    manifests.record_stage(
        settings.lake_root,
        "score",
        settings.run_date,
        counts,
        seconds,
        spark,
        model_version=model_version,
        staging=paths,
        embeddings={
            "published": not not_published,
            "dimension": dimension,
            "max_dimension": EMBEDDINGS_MAX_DIMENSION,
            "not_published": not_published or {},
        },
    )


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model-dir", help="score with this exported model instead of the production one")
    parser.add_argument("--model-version", help="model_version written in the rows (default: the pointer's)")
    parser.add_argument("--run-id", help="staging run id (default: derived from the date)")
    parser.add_argument(
        "--generated-at", help="ISO timestamp written as generated_at (default: D+1 00:00 UTC)"
    )
    extra, rest = parser.parse_known_args(argv)
    settings = Settings.from_cli(rest, description=__doc__.splitlines()[0])
    return settings, extra


def main(argv: list[str] | None = None) -> None:
    settings, extra = parse_args(argv)
    generated_at = None
    if extra.generated_at:
        generated_at = dt.datetime.fromisoformat(extra.generated_at)
        if generated_at.tzinfo is None:
            generated_at = generated_at.replace(tzinfo=dt.UTC)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run(
        settings,
        model_dir=extra.model_dir,
        model_version=extra.model_version,
        run_id=extra.run_id,
        generated_at=generated_at,
    )


if __name__ == "__main__":
    main()
