"""Batch scoring: top-N recommendations for every user and similar items, written to staging.

``spark-submit jobs/score.py --date D [--model-dir DIR] [--run-id ID] [--generated-at ISO]``

- Model: the production model (``lake.production_pointer``: JSON with ``model_dir`` and ``version``), or
  ``--model-dir``. Score of (user, item) = dot product of the exported towers' embeddings.
- Items: ``features/items/dt=D`` encoded once on the driver and broadcast; only available items are candidates.
- Users with a ``features/user_histories/dt=D`` row ("model" strategy): embeddings computed inside Spark partitions
  (``mapInArrow``) by the exported user tower, loaded once per Python worker; per Arrow batch of
  ``score_block_users`` users, :class:`jobs.topn.TopNScorer` selects the top ``top_n`` items, never one the user
  already interacted with (``seen``) nor an unavailable one, at most ``category_cap`` per category when set.
- Users in ``features/users/dt=D`` without a history row are cold ("cold_start" strategy): the items most users of
  their segment interacted with (distinct users, from the histories' ``seen``), ties and short lists filled by the
  items' global ``popularity``; available items only, same category cap. Their ``score`` is
  ``segment_users + popularity / (max_popularity * (1 + 1e-6))``: the ordering key, non-increasing by rank.
- Similar items: for every catalogue item, the ``similar_items_n`` available items with the highest cosine
  similarity of item embeddings, never the item itself.
- Output: ``staging/<table>/dt=D/run=<run_id>/`` (Parquet and Spark's ``_SUCCESS``), checked against
  ``schemas.outputs`` before writing. ``generated_at`` is the run's logical time (default: D+1 00:00 UTC, when
  the recommendations for D+1 take effect), never the wall clock, so a rerun writes identical rows.
  ``run_id`` defaults to one derived from the date, so a rerun replaces its own staging copy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import lake
from schemas.features import pad_ids
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
    import tensorflow as tf

    path = lake.production_pointer(root)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"no production model: {path} is missing (run the gate, or pass --model-dir)")
    with tf.io.gfile.GFile(path) as fh:
        pointer: dict[str, Any] = json.load(fh)
    if "path" not in pointer:  # the registry's pointer: {"name", "version", "path", ...}
        raise ValueError(f"{path} names no model path: {pointer}")
    return pointer


def loaded_model(model_dir: str, one_core: bool = False) -> Any:
    """The exported model, loaded once per process (driver or Python worker). ``one_core``: inside a Spark task,
    which owns one core: TensorFlow then runs its ops on one thread instead of a pool per core, whose threads spin
    after each op and took the core from the top-N kernel beside them (bench_score's Spark job: the user tower
    1.4 -> 0.4 s, the exclusions 2.0 -> 0.05 s, summed over 100k users)."""
    if model_dir not in _MODELS:
        from models.scoring import LoadedModel

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
    from jobs.topn import TopNScorer

    cache_key = (kind, key)
    if cache_key not in _SCORERS:
        _SCORERS.clear()  # one broadcast at a time per worker: a new run's items replace the old ones
        embeddings = side["embeddings"] if kind == "users" else side["unit_embeddings"]
        scorer = TopNScorer(embeddings, side["categories"], threads=1)  # a Spark task owns one core
        _SCORERS[cache_key] = (scorer, pa.array(side["item_ids"], pa.string()))
    return _SCORERS[cache_key]


# what the Python workers return: the ranked columns only. The run's constants (model_version, strategy,
# generated_at) are added by Spark as literals instead of three more columns of every row through Arrow into the
# JVM (bench_score's Spark job, 100k users x top 100: the scoring stage 16.3 -> 15.4 s)
RANKED = pa.schema([RECOMMENDATION.field(i) for i in range(4)])
SIMILAR_RANKED = pa.schema([SIMILAR_ITEM.field(i) for i in range(4)])


# ---- user side (inside Spark partitions) ------------------------------------------------------------------
def recommend_batch(batch: pa.RecordBatch, model: Any, scorer: Any, item_ids: pa.Array, position: np.ndarray,
                    params: dict[str, Any]) -> pa.RecordBatch:
    """One block of users (user_idx, user_id, history, seen, age_bucket_idx, region_idx) -> RANKED rows."""
    seen = batch.column("seen")
    histories = batch.column("history").to_pylist()
    seen_lists = seen.to_pylist()
    seen_width = max(1, max((len(s) for s in seen_lists), default=1))
    embeddings = model.encode_users(
        user_idx=batch.column("user_idx").to_numpy().astype(np.int32),
        history=pad_ids(histories, params["history_length"]),
        seen=pad_ids(seen_lists, seen_width),
        age_bucket_idx=batch.column("age_bucket_idx").to_numpy().astype(np.int32),
        region_idx=batch.column("region_idx").to_numpy().astype(np.int32),
    )
    seen_items = seen.flatten().to_numpy().astype(np.int64)
    seen_rows = pc.list_parent_indices(seen).to_numpy().astype(np.int64)
    known = (seen_items >= 0) & (seen_items < len(position))
    seen_positions = np.full(len(seen_items), -1, np.int64)
    seen_positions[known] = position[seen_items[known]]
    top = scorer.top_n(embeddings, params["top_n"], seen_rows, seen_positions, params["category_cap"])
    return _ranked_rows(top, batch.column("user_id"), item_ids, RANKED)


def _ranked_rows(top: Any, keys: pa.Array, item_ids: pa.Array, schema: pa.Schema) -> pa.RecordBatch:
    """(key, rank, item, score) rows of a block's top-N, in ``schema``'s names."""
    mask = top.positions >= 0
    rows, cols = np.nonzero(mask)  # row-major: each row's items in rank order (selected items come first)
    return pa.RecordBatch.from_arrays([
        pc.take(keys, pa.array(rows)), pa.array((cols + 1).astype(np.int32)),
        pc.take(item_ids, pa.array(top.positions[mask])), pa.array(top.scores[mask].astype(np.float32)),
    ], schema=schema)


def recommend_partition(batches: Iterator[pa.RecordBatch], side_broadcast: Any,
                        params: dict[str, Any]) -> Iterator[pa.RecordBatch]:
    model = loaded_model(params["model_dir"], one_core=True)
    side = side_broadcast.value
    scorer, item_ids = _scorer(side, params["side_key"], "users")
    for batch in batches:
        if batch.num_rows:
            yield recommend_batch(batch, model, scorer, item_ids, side["position"], params)


def similar_partition(batches: Iterator[pa.RecordBatch], side_broadcast: Any,
                      params: dict[str, Any]) -> Iterator[pa.RecordBatch]:
    """Source item numbers (``id`` from spark.range) -> SIMILAR_ITEM rows by cosine, self excluded."""
    side = side_broadcast.value
    scorer, item_ids = _scorer(side, params["side_key"], "items")
    sources = pa.array(side["source_ids"], pa.string())
    for batch in batches:
        numbers = batch.column("id").to_numpy().astype(np.int64)
        if not len(numbers):
            continue
        self_positions = side["source_position"][numbers]
        top = scorer.top_n(side["source_unit"][numbers], params["similar_items_n"],
                           np.arange(len(numbers)), self_positions)
        yield _ranked_rows(top, pc.take(sources, pa.array(numbers)), item_ids, SIMILAR_RANKED)


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
        .groupBy("segment", "item_idx").agg(F.countDistinct("user_idx").alias("segment_users"))
    )
    popular = available.orderBy(F.desc("popularity"), "item_idx").limit(pool_size).select("item_idx")
    fill = users.select("segment").distinct().crossJoin(popular).withColumn("segment_users", F.lit(0))
    candidates = (
        segment_counts.unionByName(fill.select("segment", "item_idx", "segment_users"))
        .groupBy("segment", "item_idx").agg(F.max("segment_users").alias("segment_users"))
        .join(available, "item_idx")
    )
    order = [F.desc("segment_users"), F.desc("popularity"), F.asc("item_idx")]
    if settings.category_cap:
        per_category = Window.partitionBy("segment", "category_idx").orderBy(*order)
        candidates = candidates.withColumn("in_category", F.row_number().over(per_category)).filter(
            F.col("in_category") <= settings.category_cap)
    max_popularity = available.agg(F.max("popularity")).first()[0] or 0.0
    ranked = (
        candidates.withColumn("rank", F.row_number().over(Window.partitionBy("segment").orderBy(*order)))
        .filter(F.col("rank") <= settings.top_n)
        .withColumn("score", (F.col("segment_users") + F.col("popularity") / F.lit(
            max(max_popularity, 1e-12) * (1 + 1e-6))).cast("float"))
    )
    cold_users = users.join(histories.select("user_idx"), "user_idx", "left_anti")
    return cold_users.select("user_id", "segment").join(ranked.select("segment", "rank", "item_id", "score"),
                                                        "segment")


def run(settings: Settings, spark: Any = None, model_dir: str | None = None, model_version: str | None = None,
        run_id: str | None = None, generated_at: dt.datetime | None = None) -> dict[str, str]:
    """Scores ``settings.run_date`` into staging; returns ``{table name: staging path}``."""
    import importlib

    from pyspark.sql import functions as F

    from jobs.spark import check_schema, read_partition, spark_session
    from schemas.features import ITEM_FEATURE, USER_FEATURE, USER_HISTORY
    from schemas.spark import to_spark

    started = time.perf_counter()
    root, date = settings.lake_root, settings.run_date
    spark = spark or spark_session(settings, "score")
    if model_dir is None:
        pointer = read_production_pointer(root)
        model_dir, model_version = pointer["path"], model_version or pointer.get("version")
    model = loaded_model(model_dir)
    model_version = str(model_version or model.metadata.get("version") or model_dir.rstrip("/").rsplit("/", 1)[-1])
    run_id = run_id or default_run_id(date)
    generated_at = generated_at or default_generated_at(date)
    params = {
        "model_dir": model_dir, "model_version": model_version, "generated_at": generated_at,
        "top_n": settings.top_n, "category_cap": settings.category_cap, "history_length": settings.history_length,
        "similar_items_n": settings.similar_items_n,
        "side_key": uuid.uuid4().hex,  # names this run's broadcast in the worker caches (not written anywhere)
    }

    items_df = read_partition(spark, root, lake.ITEM_FEATURES, date, ITEM_FEATURE)
    items = items_df.select("item_idx", "item_id", "category_idx", "price_bucket", "title_tokens", "age_days",
                            "available").orderBy("item_idx").toArrow()
    side = item_side(items, encode_catalogue(model, items, settings.title_tokens))
    side_broadcast = spark.sparkContext.broadcast(side)

    # Arrow batches = scoring blocks: one encode_users call and one TopNScorer call per block of users
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(settings.score_block_users))
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    parallelism = spark.sparkContext.defaultParallelism
    histories = read_partition(spark, root, lake.USER_HISTORIES, date, USER_HISTORY)
    users = read_partition(spark, root, lake.USER_FEATURES, date, USER_FEATURE)
    model_input = (
        histories.join(users.select("user_idx", "age_bucket_idx", "region_idx"), "user_idx", "left")
        .select("user_idx", "user_id", "history", "seen",
                F.coalesce("age_bucket_idx", F.lit(0)).alias("age_bucket_idx"),
                F.coalesce("region_idx", F.lit(0)).alias("region_idx"))
        .repartition(parallelism)
    )
    # by reference to the importable module (not __main__ under spark-submit), so the worker caches persist
    this = importlib.import_module("jobs.score")
    run_constants = [F.lit(model_version).alias("model_version"),
                     F.lit(generated_at).cast("timestamp").alias("generated_at")]
    recommended = model_input.mapInArrow(
        lambda batches: this.recommend_partition(batches, side_broadcast, params), to_spark(RANKED)
    ).select(*RANKED.names, F.lit(MODEL).alias("strategy"), *run_constants)
    cold = cold_start(histories, users, items_df, settings).select(
        *RANKED.names, F.lit(COLD_START).alias("strategy"), *run_constants)
    recommendations = recommended.unionByName(
        cold.select(*[F.col(f.name).cast(to_spark(RECOMMENDATION)[f.name].dataType) for f in RECOMMENDATION]))
    sources = len(side["source_ids"])
    similar = spark.range(0, sources, numPartitions=max(1, min(parallelism, sources))).mapInArrow(
        lambda batches: this.similar_partition(batches, side_broadcast, params), to_spark(SIMILAR_RANKED)
    ).select(*SIMILAR_RANKED.names, *run_constants)

    paths = {}
    for name, frame, schema in ((lake.RECOMMENDATIONS, recommendations, RECOMMENDATION),
                                (lake.SIMILAR_ITEMS, similar, SIMILAR_ITEM)):
        check_schema(frame, schema, name)
        path = lake.staging(root, name, date, run_id)
        frame.select(*schema.names).write.mode("overwrite").parquet(path)
        paths[name] = path
    side_broadcast.unpersist()
    print(json.dumps({"stage": "score", "date": date.isoformat(), "run_id": run_id, "model_dir": model_dir,
                      "model_version": model_version, "candidate_items": int(len(side["item_ids"])),
                      "catalogue_items": int(len(side["source_ids"])), "staging": paths,
                      "seconds": round(time.perf_counter() - started, 1)}))
    # the stage's run manifest runs/score/dt=D: users in, staged rows out, users and items recommended
    from jobs import manifest as manifests

    staged = spark.read.parquet(paths[lake.RECOMMENDATIONS]).agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct("user_id").alias("users"),
        F.countDistinct("item_id").alias("items")).first()
    similar_rows = spark.read.parquet(paths[lake.SIMILAR_ITEMS]).count()
    manifests.record_stage(root, "score", date, {
        "rows_in": users.count(), "rows_out": int(staged["rows"]) + similar_rows, "users": int(staged["users"]),
        "items": int(staged["items"]), "recommendations_rows": int(staged["rows"]), "similar_items_rows": similar_rows,
        "candidate_items": int(len(side["item_ids"])),
    }, time.perf_counter() - started, spark, model_version=model_version, staging=paths)
    return paths


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model-dir", help="score with this exported model instead of the production one")
    parser.add_argument("--model-version", help="model_version written in the rows (default: the pointer's)")
    parser.add_argument("--run-id", help="staging run id (default: derived from the date)")
    parser.add_argument("--generated-at", help="ISO timestamp written as generated_at (default: D+1 00:00 UTC)")
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
    run(settings, model_dir=extra.model_dir, model_version=extra.model_version, run_id=extra.run_id,
        generated_at=generated_at)


if __name__ == "__main__":
    main()
