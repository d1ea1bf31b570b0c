"""The lake layout: one function per table, giving its location (for a date) under the lake root.

The root may be a local path or any Hadoop-compatible URI (file://, s3a://, hdfs://); paths are joined with "/".
Tables are partitioned by ``dt=YYYY-MM-DD``; a rerun of a date replaces exactly that partition.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

DateLike = dt.date | str


def _ds(date: DateLike) -> str:
    return date if isinstance(date, str) else date.isoformat()


def table(root: str, name: str) -> str:
    """The folder of a whole table, e.g. ``table(root, "clean/events")``."""
    return f"{root.rstrip('/')}/{name}"


def partition(root: str, name: str, date: DateLike) -> str:
    return f"{table(root, name)}/dt={_ds(date)}"


# raw: JSON lines as the applications write them
RAW_EVENTS = "raw/events"
RAW_ITEMS = "raw/items"
RAW_USERS = "raw/users"
# clean
CLEAN_EVENTS = "clean/events"
CLEAN_ITEMS = "clean/items"
CLEAN_USERS = "clean/users"
QUARANTINE_EVENTS = "quarantine/events"
RUNS = "runs"  # run manifests: runs/<stage>/dt=.../manifest.json and the runs/table Parquet table
# features
DAILY_INTERACTIONS = "features/daily_interactions"
VOCAB_USERS = "features/vocab_users"
VOCAB_ITEMS = "features/vocab_items"
ITEM_FEATURES = "features/items"
USER_FEATURES = "features/users"
INTERACTIONS = "features/interactions"
TRAIN_EXAMPLES = "features/train_examples"
VALIDATION = "features/validation"
USER_HISTORIES = "features/user_histories"
# models, metrics, reports
MODELS = "models"
METRICS = "metrics"
USER_METRICS = "metrics_per_user"  # per-user values behind metrics/ (schemas.outputs.USER_METRIC)
CHECKPOINTS = "checkpoints"  # state of unfinished trainings
REPORTS = "reports"
# outputs: staging then published
STAGING = "staging"
RECOMMENDATIONS = "recommendations"
SIMILAR_ITEMS = "similar_items"
USER_EMBEDDINGS = "user_embeddings"  # the production model's user vectors (schemas.outputs.USER_EMBEDDING)
ITEM_EMBEDDINGS = "item_embeddings"  # its item vectors: user . item = the recommendation score
EMBEDDINGS = (USER_EMBEDDINGS, ITEM_EMBEDDINGS)
PUBLISHED = (RECOMMENDATIONS, SIMILAR_ITEMS, *EMBEDDINGS)  # every table the publish stage makes visible


def raw_events(root: str, date: DateLike) -> str:
    return partition(root, RAW_EVENTS, date)


def raw_items(root: str, date: DateLike) -> str:
    return partition(root, RAW_ITEMS, date)


def raw_users(root: str, date: DateLike) -> str:
    return partition(root, RAW_USERS, date)


def model_dir(root: str, name: str, version: str) -> str:
    return f"{table(root, MODELS)}/{name}/{version}"


def production_pointer(root: str) -> str:
    """JSON file naming the production model (name, version, path); written by the gate."""
    return f"{table(root, MODELS)}/production.json"


def run_manifest(root: str, stage: str, date: DateLike) -> str:
    return f"{partition(root, f'{RUNS}/{stage}', date)}/manifest.json"


def checkpoint_dir(root: str, name: str, version: str, date: DateLike) -> str:
    """Private training state of one model version for a date; removed when the training finishes."""
    return f"{partition(root, f'{CHECKPOINTS}/{name}', date)}/{version}"


def report_dir(root: str, date: DateLike) -> str:
    return partition(root, REPORTS, date)


def staging(root: str, name: str, date: DateLike, run_id: str) -> str:
    """A run's private staging copy of an output table's partition (never read by consumers)."""
    return f"{table(root, STAGING)}/{name}/dt={_ds(date)}/run={run_id}"


def latest_pointer(root: str, name: str) -> str:
    """``<table>/_LATEST``: one line naming the newest published partition (``dt=YYYY-MM-DD``)."""
    return f"{table(root, name)}/_LATEST"


# ---- lineage: the tables each stage of the nightly run reads and writes -----------------------------------------
# Whole tables (a stage reads and writes partitions of them); run manifests (runs/) and private working state
# (checkpoints, a Spark job's own staging root) are not listed. The published tables' staging copies are: score
# writes them, validate_recommendations and publish read them.
STAGED_RECOMMENDATIONS = f"{STAGING}/{RECOMMENDATIONS}"
STAGED_SIMILAR_ITEMS = f"{STAGING}/{SIMILAR_ITEMS}"
STAGED_EMBEDDINGS = tuple(f"{STAGING}/{name}" for name in EMBEDDINGS)
RAW_TABLES = (RAW_EVENTS, RAW_ITEMS, RAW_USERS)
FEATURE_TABLES = (
    VOCAB_USERS,
    VOCAB_ITEMS,
    ITEM_FEATURES,
    USER_FEATURES,
    INTERACTIONS,
    TRAIN_EXAMPLES,
    VALIDATION,
    USER_HISTORIES,
)


class StageTables(NamedTuple):
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


# keyed by stage, as the nightly DAG names its tasks
STAGE_TABLES: dict[str, StageTables] = {
    "generate_demo_data": StageTables((), RAW_TABLES),
    "validate_raw": StageTables((RAW_EVENTS,), ()),
    "clean": StageTables(RAW_TABLES, (CLEAN_EVENTS, CLEAN_ITEMS, CLEAN_USERS, QUARANTINE_EVENTS)),
    "validate_clean": StageTables((CLEAN_EVENTS, CLEAN_ITEMS), ()),
    # the daily aggregates and the earlier day's vocabularies and labels are read back and extended
    "features": StageTables(
        (
            CLEAN_EVENTS,
            CLEAN_ITEMS,
            CLEAN_USERS,
            DAILY_INTERACTIONS,
            VOCAB_USERS,
            VOCAB_ITEMS,
            ITEM_FEATURES,
            USER_FEATURES,
        ),
        (DAILY_INTERACTIONS, *FEATURE_TABLES),
    ),
    "validate_features": StageTables(
        (VOCAB_ITEMS, VOCAB_USERS, ITEM_FEATURES, TRAIN_EXAMPLES, USER_HISTORIES), ()
    ),
    "train": StageTables((TRAIN_EXAMPLES, VALIDATION, ITEM_FEATURES, USER_FEATURES, INTERACTIONS), (MODELS,)),
    "evaluate": StageTables(
        (VALIDATION, INTERACTIONS, ITEM_FEATURES, MODELS), (METRICS, USER_METRICS, REPORTS)
    ),
    "validate_metrics": StageTables((METRICS,), ()),
    "gate": StageTables((METRICS, MODELS), (MODELS,)),  # models/production.json
    "score": StageTables(
        (ITEM_FEATURES, USER_FEATURES, USER_HISTORIES, MODELS),
        (STAGED_RECOMMENDATIONS, STAGED_SIMILAR_ITEMS, *STAGED_EMBEDDINGS),
    ),
    "validate_recommendations": StageTables((STAGED_RECOMMENDATIONS, ITEM_FEATURES, USER_HISTORIES), ()),
    "validate_embeddings": StageTables(STAGED_EMBEDDINGS, ()),
    "publish": StageTables((STAGED_RECOMMENDATIONS, STAGED_SIMILAR_ITEMS, *STAGED_EMBEDDINGS), PUBLISHED),
    "summary": StageTables((METRICS, RECOMMENDATIONS, SIMILAR_ITEMS, MODELS), (REPORTS,)),
}


def stage_tables(root: str, stage: str) -> StageTables:
    """The locations of the tables ``stage`` reads and writes under ``root`` (none for a stage not listed)."""
    tables = STAGE_TABLES.get(stage, StageTables((), ()))
    return StageTables(
        tuple(table(root, name) for name in tables.inputs),
        tuple(table(root, name) for name in tables.outputs),
    )
