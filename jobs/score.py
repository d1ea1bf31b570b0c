"""Batch scoring: top-N recommendations for every user and similar items, written to staging.

``spark-submit jobs/score.py --date D [--model-dir DIR] [--run-id ID] [--generated-at ISO]``

- Model: the production model (``lake.production_pointer``: JSON with ``model_dir`` and ``version``), or
  ``--model-dir``. Score of (user, item) = dot product of the exported towers' embeddings.
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
from schemas.outputs import RECOMMENDATION, SIMILAR_ITEM
from schemas.settings import Settings

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
        from scoring.contract import LoadedModel

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


def item_side(items: pa.Table, embeddings: np.ndarray) -> dict[str, Any]:
    """What every worker needs about the catalogue (broadcast once): candidates = available items."""
    available = items["available"].to_numpy(zero_copy_only=False).astype(bool)
    item_idx = items["item_idx"].to_numpy().astype(np.int64)
    candidates = np.flatnonzero(available)
    position = np.full(int(item_idx.max(initial=0)) + 1, -1, np.int32)  # item_idx -> candidate position
    position[item_idx[candidates]] = np.arange(len(candidates), dtype=np.int32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    return {
        "embeddings": np.ascontiguousarray(embeddings[candidates]),
        "unit_embeddings": np.ascontiguousarray(unit[candidates]),
        "categories": items["category_idx"].to_numpy().astype(np.int32)[candidates],
        "item_ids": np.asarray(items["item_id"].to_pylist(), dtype=object)[candidates],
        "position": position,
        # the similar-items sources: every catalogue item (unavailable ones too: their pages still exist)
        "source_ids": np.asarray(items["item_id"].to_pylist(), dtype=object),
        "source_unit": np.ascontiguousarray(unit),
        "source_position": np.where(available, position[item_idx], -1).astype(np.int32),
    }


def _scorer(side: dict[str, Any], key: str, kind: str) -> Any:
    from scoring.topn import TopNScorer

    cache_key = (kind, key)
    if cache_key not in _SCORERS:
        _SCORERS.clear()  # one broadcast at a time per worker: a new run's items replace the old ones
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
# the candidate item positions it holds (what the manifest counts)
TASK_FILE = pa.schema(
    [
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
        use_dictionary=[n for n in schema.names if n not in ("rank", "score")],
        column_encoding={"score": "BYTE_STREAM_SPLIT"},
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
    for field in list(schema)[4:]:
        value = pa.array([constants[field.name]], field.type)
        if field.type == pa.string():
            columns.append(pa.DictionaryArray.from_arrays(zeros, value, safe=False))
        elif pa.types.is_timestamp(field.type):  # one value repeated, from a numpy fill instead of a take
            filled = np.full(len(zeros), value.cast(pa.int64())[0].as_py(), np.int64)
            columns.append(pa.Array.from_buffers(field.type, len(zeros), [None, pa.py_buffer(filled)]))
        else:
            raise TypeError(f"no constant column of type {field.type} ({field.name})")
    return pa.RecordBatch.from_arrays(columns, schema=_encoded(schema))


def _write_task_file(
    blocks: Iterator[tuple[Any, pa.RecordBatch]], task_dir: str, schema: pa.Schema, num_items: int
) -> Iterator[pa.RecordBatch]:
    """Writes the ``(top-N, rows)`` blocks to one Parquet file named by this task's partition and attempt;
    yields its TASK_FILE row (what the manifest counts, so the staged table need not be read back)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    name = (
        f"part-{context.partitionId():05d}-{context.taskAttemptId()}.parquet"
        if context
        else "part-00000.parquet"
    )
    path = f"{task_dir}/{name}"
    rows = keys = 0
    present = np.zeros(num_items, bool)
    writer = None
    try:
        for top, block in blocks:
            if writer is None:
                writer = task_writer(path, schema)
            writer.write_batch(block)
            rows += block.num_rows
            keys += int((top.positions[:, 0] >= 0).sum())
            present[top.positions[top.positions >= 0]] = True
    finally:
        if writer is not None:
            writer.close()
    if rows:
        items = pa.array([np.flatnonzero(present).astype(np.int32)], pa.list_(pa.int32()))
        yield pa.record_batch(
            [pa.array([path]), pa.array([rows], pa.int64()), pa.array([keys], pa.int64()), items],
            schema=TASK_FILE,
        )


def recommend_batch(
    batch: pa.RecordBatch, model: Any, scorer: Any, position: np.ndarray, params: dict[str, Any]
) -> Any:
    """One block of users (user_idx, user_id, history, seen, age_bucket_idx, region_idx) -> its top-N."""
    seen = batch.column("seen")
    embeddings = model.encode_users(
        **user_inputs(
            batch.column("user_idx").to_numpy(),
            batch.column("history").to_pylist(),
            seen.to_pylist(),
            params["history_length"],
            age_bucket_idx=batch.column("age_bucket_idx").to_numpy(),
            region_idx=batch.column("region_idx").to_numpy(),
        )
    )
    seen_items = seen.flatten().to_numpy().astype(np.int64)
    seen_rows = pc.list_parent_indices(seen).to_numpy().astype(np.int64)
    known = (seen_items >= 0) & (seen_items < len(position))
    seen_positions = np.full(len(seen_items), -1, np.int64)
    seen_positions[known] = position[seen_items[known]]
    return scorer.top_n(embeddings, params["top_n"], seen_rows, seen_positions, params["category_cap"])


def recommend_partition(
    batches: Iterator[pa.RecordBatch], side_broadcast: Any, params: dict[str, Any]
) -> Iterator[pa.RecordBatch]:
    model = loaded_model(params["model_dir"], one_core=True)
    side = side_broadcast.value
    scorer, item_ids = _scorer(side, params["side_key"], "users")
    constants = {
        "model_version": params["model_version"],
        "strategy": MODEL,
        "generated_at": params["generated_at"],
    }

    def blocks() -> Iterator[tuple[Any, pa.RecordBatch]]:
        for batch in batches:
            if batch.num_rows:
                top = recommend_batch(batch, model, scorer, side["position"], params)
                yield top, ranked_rows(top, batch.column("user_id"), item_ids, RECOMMENDATION, constants)

    return _write_task_file(blocks(), params["recommendations_tasks"], RECOMMENDATION, len(item_ids))


def similar_partition(
    batches: Iterator[pa.RecordBatch], side_broadcast: Any, params: dict[str, Any]
) -> Iterator[pa.RecordBatch]:
    """Source item numbers (``id`` from spark.range) -> SIMILAR_ITEM rows by cosine, self excluded."""
    side = side_broadcast.value
    scorer, item_ids = _scorer(side, params["side_key"], "items")
    sources = pa.array(side["source_ids"], pa.string())
    constants = {"model_version": params["model_version"], "generated_at": params["generated_at"]}

    def blocks() -> Iterator[tuple[Any, pa.RecordBatch]]:
        for batch in batches:
            numbers = batch.column("id").to_numpy().astype(np.int64)
            if len(numbers):
                top = scorer.top_n(
                    side["source_unit"][numbers],
                    params["similar_items_n"],
                    np.arange(len(numbers)),
                    side["source_position"][numbers],
                )
                yield (
                    top,
                    ranked_rows(top, pc.take(sources, pa.array(numbers)), item_ids, SIMILAR_ITEM, constants),
                )

    return _write_task_file(blocks(), params["similar_items_tasks"], SIMILAR_ITEM, len(item_ids))


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
    paths = {
        name: lake.staging(root, name, date, run_id) for name in (lake.RECOMMENDATIONS, lake.SIMILAR_ITEMS)
    }
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
    }
    items_df = read_partition(spark, root, lake.ITEM_FEATURES, date, ITEM_FEATURE)
    items = (
        items_df.select(
            "item_idx", "item_id", "category_idx", "price_bucket", "title_tokens", "age_days", "available"
        )
        .orderBy("item_idx")
        .toArrow()
    )
    side = item_side(items, encode_catalogue(model, items, settings.title_tokens))
    # Arrow batches = scoring blocks: one encode_users call and one TopNScorer call per block of users
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(settings.score_block_users))
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    histories = read_partition(spark, root, lake.USER_HISTORIES, date, USER_HISTORY)
    users = read_partition(spark, root, lake.USER_FEATURES, date, USER_FEATURE)
    cold = cold_start_rows(histories, users, items_df, settings, model_version, generated_at)
    cold_counts, recommended, similar = score_and_write(
        spark, model_input(histories, users), cold, side, params, paths
    )
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
    )
    return paths


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
    returns (cold-start counts, the recommendation tasks' files, the similar-items tasks' files)."""
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
    commit_task_files(recommended, paths[lake.RECOMMENDATIONS])
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
) -> None:
    """``runs/score/dt=D``: users in, staged rows out, users and items recommended. Counted from what the tasks
    and Spark wrote, not by reading the staged tables back (10M rows per 100k users); model and cold-start users
    are disjoint (with or without a history row)."""
    from storage import manifest as manifests

    rows = sum(int(row["rows"]) for row in recommended) + int(cold_counts["rows"])
    similar_rows = sum(int(row["rows"]) for row in similar)
    model_items = {side["item_ids"][p] for row in recommended for p in row["items"]}
    manifests.record_stage(
        settings.lake_root,
        "score",
        settings.run_date,
        {
            "rows_in": users_in,
            "rows_out": rows + similar_rows,
            "users": sum(int(row["keys"]) for row in recommended) + int(cold_counts["users"]),
            "items": len(model_items | set(cold_counts["items"])),
            "recommendations_rows": rows,
            "similar_items_rows": similar_rows,
            "candidate_items": int(len(side["item_ids"])),
        },
        seconds,
        spark,
        model_version=model_version,
        staging=paths,
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
