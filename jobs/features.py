"""Spark feature job: clean tables -> vocabularies, content features, histories, train/validation examples.

    spark-submit jobs/features.py --date 2026-01-14      (or: python -m jobs.features --date 2026-01-14)

For run date D (window = the ``window_days`` days before D):

1. ``features/daily_interactions/dt=X``: one row per (user, item, day) with the day's summed event strength.
   Computed only for days that lack it (or whose clean partition is newer), plus D always, then reused: the
   sliding window costs one day of clean events per night, not ``window_days``.
2. Everything else is built from those daily aggregates (the "unit" below is one (user, item, day) row):
   vocabularies (stable, extended), item and user features, the decayed interaction matrix, training examples
   (one per first (user, item) unit in the window, with the previous distinct items as history), next-day
   validation examples and the scoring input (state through D).

Sequence order everywhere (training histories, validation, scoring) is the unit's ``first_time`` then
``item_idx``; an item engaged again later moves to the end of the history (latest engagement wins).
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from schemas import lake
from schemas.clean import CLEAN_EVENT, CLEAN_ITEM, CLEAN_USER
from schemas.features import (
    DAILY_INTERACTION,
    INTERACTION,
    ITEM_FEATURE,
    TRAIN_EXAMPLE,
    USER_FEATURE,
    USER_HISTORY,
    VALIDATION_EXAMPLE,
    VOCAB_ITEM,
    VOCAB_USER,
)
from schemas.raw import EVENT_STRENGTH
from schemas.settings import Settings
from schemas.spark import to_spark
from storage import manifest as manifests
from storage.lake_io import count_rows
from storage.spark import (
    check_schema,
    delete_path,
    hadoop_path,
    in_parallel,
    path_exists,
    read_partition,
    read_partitions,
    replace_partitions,
    run_staging,
    spark_session,
    write_empty_partition,
    write_partition,
)

log = logging.getLogger("recflow.features")

SEEN_LIMIT = 500  # most recent distinct items kept in `seen` (exclusion lists at evaluation and scoring)
HISTORY_SCAN_FACTOR = 2  # a training example looks back this many x history_length units for distinct items
UNKNOWN = "unknown"
SECONDS_PER_DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class FeatureInputs:
    """What the pure transforms need, already read from the lake."""

    units: DataFrame  # daily_interactions for the window through D, with `dt`
    catalogue: DataFrame  # clean/items of D
    profiles: DataFrame  # clean/users of D (empty when the scenario has no profiles)
    previous_vocab_users: DataFrame  # latest vocab before D (empty on the first run)
    previous_vocab_items: DataFrame
    labels: LabelSets  # small categorical values (category, age bucket, region): earlier indices and today's


@dataclasses.dataclass(frozen=True)
class LabelSets:
    """Categorical values small enough for the driver: indices of the previous run and the values seen on D."""

    previous: Mapping[str, Mapping[str, int]]  # kind -> label -> index (from the latest earlier run)
    current: Mapping[str, frozenset[str]]  # kind -> labels present on D


LABEL_KINDS = ("category", "age_bucket", "region")


# ---- small column helpers ------------------------------------------------------------------------------
def epoch_seconds(day: dt.date) -> int:
    return calendar.timegm(day.timetuple())


def event_strength(event_type: Column) -> Column:
    mapping = F.create_map(*[F.lit(x) for pair in EVENT_STRENGTH.items() for x in pair])
    return F.coalesce(mapping[event_type], F.lit(0.0))


def decay(time_col: Column, reference_epoch: float, half_life_days: float) -> Column:
    """0.5 ** (age in days / half life); age measured from ``time_col`` to the reference, never negative."""
    age_days = F.greatest(
        F.lit(0.0), (F.lit(float(reference_epoch)) - time_col.cast("double")) / SECONDS_PER_DAY
    )
    return F.pow(F.lit(0.5), age_days / F.lit(float(half_life_days)))


def ids(col: Column) -> Column:
    """An int list column as the contracts declare it: never null, no null elements (array<int> not null)."""
    return F.transform(
        F.coalesce(col, F.array().cast("array<int>")), lambda x: F.coalesce(x.cast("int"), F.lit(0))
    )


def last_distinct(items: Column, limit: int) -> Column:
    """The distinct items of an oldest-first list, each at its latest position, keeping the newest ``limit``."""
    distinct = F.reverse(F.array_distinct(F.reverse(items)))
    return F.slice(distinct, F.greatest(F.size(distinct) - F.lit(limit - 1), F.lit(1)), F.lit(limit))


def ordered_items(units: DataFrame, *keys: str) -> DataFrame:
    """Per ``keys``: the unit items in sequence order (first_time, item_idx), oldest first, repeats kept."""
    seq = F.array_sort(F.collect_list(F.struct("first_time", "item_idx")))
    return units.groupBy(*keys).agg(F.transform(seq, lambda s: s["item_idx"]).alias("items"))


# ---- transforms: daily aggregates ------------------------------------------------------------------------
def daily_interactions(events: DataFrame) -> DataFrame:
    """Clean events (with ``dt``) -> one row per (dt, user, item): summed strength, count, first and last time."""
    return events.groupBy("dt", "user_id", "item_id").agg(
        F.sum(event_strength(F.col("event_type"))).alias("strength"),
        F.count(F.lit(1)).alias("events"),
        F.max("event_time").alias("last_time"),
        F.min("event_time").alias("first_time"),
    )


# ---- transforms: vocabularies ----------------------------------------------------------------------------
def extend_index(
    existing: DataFrame, candidates: DataFrame, key: str, idx: str, order_by: Sequence[str] = ()
) -> DataFrame:
    """Keep every existing (key, idx); candidate keys not yet indexed get max(idx)+1, +2, ... ordered by
    ``order_by`` then key, so the same inputs always give the same indices. ``candidates`` has distinct keys
    and the columns of ``existing`` other than ``idx``."""
    fresh = candidates.join(existing.select(key), key, "left_anti")
    base = existing.agg(F.coalesce(F.max(idx), F.lit(0)).alias("_base"))
    rank = F.row_number().over(Window.orderBy(*order_by, key))
    numbered = fresh.crossJoin(F.broadcast(base)).withColumn(idx, (F.col("_base") + rank).cast("int"))
    return existing.select(*existing.columns).unionByName(numbered.select(*existing.columns))


def vocab_users(previous: DataFrame, units: DataFrame, profiles: DataFrame, run_date: dt.date) -> DataFrame:
    """Users with events in the window through D or a profile on D; first_seen = first day observed."""
    seen = units.select("user_id", F.col("dt").alias("first_seen"))
    profiled = profiles.select("user_id", F.lit(run_date).alias("first_seen"))
    candidates = seen.unionByName(profiled).groupBy("user_id").agg(F.min("first_seen").alias("first_seen"))
    return extend_index(previous.select(*VOCAB_USER.names), candidates, "user_id", "user_idx", ["first_seen"])


def vocab_items(previous: DataFrame, units: DataFrame, catalogue: DataFrame, run_date: dt.date) -> DataFrame:
    """Items with events in the window through D or in D's catalogue (new items get indices before any click)."""
    seen = units.select("item_id", F.col("dt").alias("first_seen"))
    listed = catalogue.select("item_id", F.lit(run_date).alias("first_seen"))
    candidates = seen.unionByName(listed).groupBy("item_id").agg(F.min("first_seen").alias("first_seen"))
    return extend_index(previous.select(*VOCAB_ITEM.names), candidates, "item_id", "item_idx", ["first_seen"])


def extend_labels(previous: Mapping[str, int], labels: Iterable[str]) -> dict[str, int]:
    """Label -> index, stable across runs: earlier indices kept, new labels appended in name order (from 1)."""
    out = dict(previous)
    last = max(out.values(), default=0)
    for label in sorted(set(labels) - out.keys()):
        last += 1
        out[label] = last
    return out


def label_index(mapping: Mapping[str, int], label: Column) -> Column:
    """The label's index from a driver-side mapping as a literal map (no join); 0 for unknown or null."""
    if not mapping:
        return F.lit(0)
    literal = F.create_map(*[F.lit(x) for pair in sorted(mapping.items()) for x in pair])
    return F.coalesce(literal[label], F.lit(0)).cast("int")


def index_units(units: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """Daily units keyed by user_idx and item_idx (both vocabularies cover every unit by construction). The id
    strings are dropped: this frame is cached, and ints cache far smaller and faster than strings."""
    return (
        units.join(users.select("user_id", "user_idx"), "user_id")
        .join(items.select("item_id", "item_idx"), "item_id")
        .select("dt", "user_idx", "item_idx", "strength", "events", "first_time", "last_time")
    )


# ---- transforms: content and profile features ------------------------------------------------------------
def price_bucket(price: Column, cuts: Column) -> Column:
    """1 + the number of quantile cuts strictly below the price; 0 without a (positive) price."""
    bucket = F.size(F.filter(cuts, lambda c: c < price)) + F.lit(1)
    return F.when(price.isNotNull() & (price > 0), bucket).otherwise(F.lit(0)).cast("int")


def title_tokens(title: Column, buckets: int, limit: int) -> Column:
    """Lowercased word tokens hashed (xxhash64, stable across runs and machines) into [1, buckets]."""
    words = F.filter(
        F.split(F.lower(F.coalesce(title, F.lit(""))), r"[^\p{L}\p{N}]+"), lambda w: F.length(w) > 0
    )
    hashed = F.transform(
        words, lambda w: F.coalesce((F.pmod(F.xxhash64(w), F.lit(buckets)) + 1).cast("int"), F.lit(0))
    )
    return F.slice(F.array_distinct(hashed), 1, limit)


def item_popularity(units: DataFrame, reference_epoch: float, half_life_days: float) -> DataFrame:
    strength = F.col("strength") * decay(F.col("last_time"), reference_epoch, half_life_days)
    return units.groupBy("item_idx").agg(F.sum(strength).alias("popularity"))


def item_features(
    items: DataFrame,
    catalogue: DataFrame,
    categories: Mapping[str, int],
    popularity: DataFrame,
    settings: Settings,
) -> DataFrame:
    """One row per vocabulary item; items missing from D's catalogue are unavailable with unknown content."""
    n = settings.price_buckets
    probabilities = [k / n for k in range(1, n)]
    priced = catalogue.where(F.col("price") > 0)
    cut_expr = (
        F.percentile("price", F.array(*[F.lit(p) for p in probabilities]))
        if probabilities
        else F.array().cast("array<double>")
    )
    cuts = priced.agg(cut_expr.alias("cuts"))
    end_of_day = epoch_seconds(settings.run_date + dt.timedelta(days=1))
    age = (F.lit(float(end_of_day)) - F.col("publish_time").cast("double")) / SECONDS_PER_DAY
    return (
        items.select("item_id", "item_idx")
        .join(
            catalogue.select("item_id", "category", "price", "title", "publish_time", "available"),
            "item_id",
            "left",
        )
        .join(popularity, "item_idx", "left")
        .crossJoin(F.broadcast(cuts))
        .select(
            F.col("item_idx").cast("int").alias("item_idx"),
            "item_id",
            "category",
            label_index(categories, F.col("category")).alias("category_idx"),
            price_bucket(F.col("price"), F.coalesce(F.col("cuts"), F.array().cast("array<double>"))).alias(
                "price_bucket"
            ),
            ids(title_tokens(F.col("title"), settings.title_hash_buckets, settings.title_tokens)).alias(
                "title_tokens"
            ),
            F.coalesce(F.greatest(age, F.lit(0.0)), F.lit(0.0)).cast("float").alias("age_days"),
            F.coalesce(F.col("available"), F.lit(False)).alias("available"),
            F.coalesce(F.col("popularity"), F.lit(0.0)).alias("popularity"),
            "title",
        )
    )


def user_features(
    users: DataFrame, profiles: DataFrame, age_buckets: Mapping[str, int], regions: Mapping[str, int]
) -> DataFrame:
    """One row per vocabulary user; segment "age_bucket|region" ("unknown" parts; "unknown" without profile)."""
    profile = profiles.groupBy("user_id").agg(
        F.max("age_bucket").alias("age_bucket"), F.max("region").alias("region")
    )
    segment = F.when(F.col("age_bucket").isNull() & F.col("region").isNull(), F.lit(UNKNOWN)).otherwise(
        F.concat_ws("|", F.coalesce("age_bucket", F.lit(UNKNOWN)), F.coalesce("region", F.lit(UNKNOWN)))
    )
    return (
        users.select("user_id", "user_idx")
        .join(profile, "user_id", "left")
        .select(
            F.col("user_idx").cast("int").alias("user_idx"),
            "user_id",
            label_index(age_buckets, F.col("age_bucket")).alias("age_bucket_idx"),
            label_index(regions, F.col("region")).alias("region_idx"),
            segment.alias("segment"),
        )
    )


# ---- transforms: interactions, examples, histories -------------------------------------------------------
def interactions(before: DataFrame, reference_epoch: float, half_life_days: float) -> DataFrame:
    """The training window per (user, item): strength decayed to the start of D, events, last time."""
    strength = F.col("strength") * decay(F.col("last_time"), reference_epoch, half_life_days)
    return before.groupBy("user_idx", "item_idx").agg(
        F.sum(strength).alias("strength"),
        F.sum("events").cast("long").alias("events"),
        F.max("last_time").alias("last_time"),
    )


def train_examples(before: DataFrame, history_length: int) -> DataFrame:
    """One example per (user, item) at its first unit in the window: the distinct items the user engaged with
    before it (latest ``history_length``, oldest first) predict it. Repeat engagements are not targets (scoring
    excludes seen items, so the model should learn what is picked up next), but they do refresh the history.
    Weight: log2(1 + that day's strength), so view=1, view+click~1.6, a purchase funnel (15) = 4."""
    sequence = Window.partitionBy("user_idx").orderBy("first_time", "item_idx")
    lookback = sequence.rowsBetween(-HISTORY_SCAN_FACTOR * history_length, -1)
    pair = Window.partitionBy("user_idx", "item_idx")
    return (
        before.withColumn("previous", F.collect_list("item_idx").over(lookback))
        .withColumn("first_day", F.min("dt").over(pair))
        .where(F.col("dt") == F.col("first_day"))
        .select(
            F.col("user_idx").cast("int").alias("user_idx"),
            ids(last_distinct(F.col("previous"), history_length)).alias("history"),
            F.col("item_idx").cast("int").alias("item_idx"),
            (F.log2(F.lit(1.0) + F.col("strength"))).cast("float").alias("weight"),
            F.col("first_time").alias("event_time"),
        )
    )


def validation_examples(before: DataFrame, on_day: DataFrame, history_length: int) -> DataFrame:
    """Users active on D: history through D-1, seen = window items before D, targets = D's new items for them."""
    state = ordered_items(before, "user_idx").select(
        "user_idx", F.reverse(F.array_distinct(F.reverse("items"))).alias("distinct_items")
    )
    today = ordered_items(on_day, "user_idx").select("user_idx", F.array_distinct("items").alias("today"))
    seen_all = F.coalesce(F.col("distinct_items"), F.array().cast("array<int>"))
    return (
        today.join(state, "user_idx", "left")
        .select(
            F.col("user_idx").cast("int").alias("user_idx"),
            ids(last_distinct(seen_all, history_length)).alias("history"),
            ids(last_distinct(seen_all, SEEN_LIMIT)).alias("seen"),
            ids(F.array_except("today", seen_all)).alias("targets"),
        )
        .where(F.size("targets") > 0)
    )


def user_histories(through_d: DataFrame, users: DataFrame, history_length: int) -> DataFrame:
    """Scoring input: every user with a unit in the window through D, latest history and seen items."""
    return (
        ordered_items(through_d, "user_idx")
        .join(users.select("user_idx", "user_id"), "user_idx")
        .select(
            F.col("user_idx").cast("int").alias("user_idx"),
            "user_id",
            ids(last_distinct(F.col("items"), history_length)).alias("history"),
            ids(last_distinct(F.col("items"), SEEN_LIMIT)).alias("seen"),
        )
    )


def build_features(inputs: FeatureInputs, settings: Settings) -> dict[str, DataFrame]:
    """All feature tables of run date D from its inputs (pure: no reads or writes)."""
    run_date = settings.run_date
    users = vocab_users(inputs.previous_vocab_users, inputs.units, inputs.profiles, run_date).cache()
    items = vocab_items(inputs.previous_vocab_items, inputs.units, inputs.catalogue, run_date).cache()
    # Cached once, read by every table below. (Pre-partitioning it by user does not spare the later shuffles:
    # with adaptive execution Spark does not trust a cached plan's partitioning, so each table shuffles anyway.)
    units = index_units(inputs.units, users, items).cache()
    before = units.where(F.col("dt") < F.lit(run_date))
    on_day = units.where(F.col("dt") == F.lit(run_date))
    start_of_day = epoch_seconds(run_date)
    end_of_day = epoch_seconds(run_date + dt.timedelta(days=1))
    half_life = settings.decay_half_life_days
    labels = {
        kind: extend_labels(inputs.labels.previous.get(kind, {}), inputs.labels.current.get(kind, ()))
        for kind in LABEL_KINDS
    }
    return {
        lake.VOCAB_USERS: users,
        lake.VOCAB_ITEMS: items,
        lake.ITEM_FEATURES: item_features(
            items,
            inputs.catalogue,
            labels["category"],
            item_popularity(units, end_of_day, half_life),
            settings,
        ),
        lake.USER_FEATURES: user_features(users, inputs.profiles, labels["age_bucket"], labels["region"]),
        lake.INTERACTIONS: interactions(before, start_of_day, half_life),
        lake.TRAIN_EXAMPLES: train_examples(before, settings.history_length),
        lake.VALIDATION: validation_examples(before, on_day, settings.history_length),
        lake.USER_HISTORIES: user_histories(units, users, settings.history_length),
    }


OUTPUT_SCHEMAS = {
    lake.VOCAB_USERS: VOCAB_USER,
    lake.VOCAB_ITEMS: VOCAB_ITEM,
    lake.ITEM_FEATURES: ITEM_FEATURE,
    lake.USER_FEATURES: USER_FEATURE,
    lake.INTERACTIONS: INTERACTION,
    lake.TRAIN_EXAMPLES: TRAIN_EXAMPLE,
    lake.VALIDATION: VALIDATION_EXAMPLE,
    lake.USER_HISTORIES: USER_HISTORY,
}


# ---- lake access ------------------------------------------------------------------------------------------
def newest_modification(spark: SparkSession, path: str) -> int:
    """Newest modification time (ms) of the data files in a partition folder; 0 when it does not exist."""
    fs, hpath = hadoop_path(spark, path)
    if not fs.exists(hpath):
        return 0
    files = fs.listFiles(hpath, True)
    newest = 0
    while files.hasNext():
        status = files.next()
        name = status.getPath().getName()
        if not name.startswith((".", "_")):
            newest = max(newest, int(status.getModificationTime()))
    return newest


def latest_partition_before(spark: SparkSession, root: str, name: str, date: dt.date) -> dt.date | None:
    """The newest ``dt=`` partition of a table strictly before ``date`` (None if the table has none)."""
    fs, hpath = hadoop_path(spark, lake.table(root, name))
    if not fs.exists(hpath):
        return None
    found: list[dt.date] = []
    for status in fs.listStatus(hpath):
        folder = status.getPath().getName()
        if status.isDirectory() and folder.startswith("dt="):
            try:
                day = dt.date.fromisoformat(folder[3:])
            except ValueError:
                continue
            if day < date:
                found.append(day)
    return max(found) if found else None


def _empty(spark: SparkSession, schema: object) -> DataFrame:
    return spark.createDataFrame([], to_spark(schema))  # type: ignore[arg-type]


def _previous(spark: SparkSession, settings: Settings, name: str, schema: object) -> DataFrame:
    day = latest_partition_before(spark, settings.lake_root, name, settings.run_date)
    if day is None:
        return _empty(spark, schema)
    log.info("extending %s from dt=%s", name, day)
    return read_partition(spark, settings.lake_root, name, day, schema)  # type: ignore[arg-type]


# ---- extract and load -----------------------------------------------------------------------------------
def stale_daily_dates(spark: SparkSession, settings: Settings) -> list[dt.date]:
    """Days of the window through D whose daily aggregate is missing or older than their clean events, plus D.
    Window days without clean events are skipped (nothing to aggregate); D without clean events is an error."""
    root = settings.lake_root
    stale: list[dt.date] = []
    for day in [*settings.window_dates(), settings.run_date]:
        clean_path = lake.partition(root, lake.CLEAN_EVENTS, day)
        clean_time = newest_modification(spark, clean_path)
        if not path_exists(spark, clean_path):
            if day == settings.run_date:
                raise FileNotFoundError(
                    f"no clean events for the run date: {clean_path} (run jobs/clean.py first)"
                )
            log.warning("no clean events for %s (%s): the window has a gap", day, clean_path)
            continue
        daily_time = newest_modification(spark, lake.partition(root, lake.DAILY_INTERACTIONS, day))
        if day == settings.run_date or daily_time == 0 or daily_time < clean_time:
            stale.append(day)
    return stale


def update_daily_interactions(spark: SparkSession, settings: Settings, out_root: str) -> list[dt.date]:
    """Extract -> transform -> load for the stale daily aggregates only, under ``out_root`` (the run's staging
    root, the lake's layout); returns the days (re)computed. A stale day without events gets an empty partition,
    so that publishing it replaces the old aggregate."""
    stale = stale_daily_dates(spark, settings)
    events = read_partitions(spark, settings.lake_root, lake.CLEAN_EVENTS, stale, CLEAN_EVENT)
    daily = daily_interactions(events)
    check_schema(daily, DAILY_INTERACTION, lake.DAILY_INTERACTIONS)
    # one write for all stale days (dynamic partition overwrite replaces exactly those dt= folders)
    (
        daily.select(*DAILY_INTERACTION.names, "dt")
        .write.mode("overwrite")
        .partitionBy("dt")
        .parquet(lake.table(out_root, lake.DAILY_INTERACTIONS))
    )
    for day in stale:
        if not path_exists(spark, lake.partition(out_root, lake.DAILY_INTERACTIONS, day)):
            write_empty_partition(spark, out_root, lake.DAILY_INTERACTIONS, day, DAILY_INTERACTION)
    log.info("daily_interactions computed for %s", [d.isoformat() for d in stale])
    return stale


def extract(
    spark: SparkSession, settings: Settings, staged: str | None = None, staged_days: Sequence[dt.date] = ()
) -> FeatureInputs:
    """The inputs of :func:`build_features`; the daily aggregates of ``staged_days`` are read from the run's
    staging root ``staged`` (written there by :func:`update_daily_interactions`, not yet published)."""
    root, run_date = settings.lake_root, settings.run_date
    days = [*settings.window_dates(), run_date]
    parts = []
    for where, wanted in ((staged, list(staged_days)), (root, [d for d in days if d not in staged_days])):
        existing = [
            d
            for d in wanted
            if where and path_exists(spark, lake.partition(where, lake.DAILY_INTERACTIONS, d))
        ]
        if where and existing:
            parts.append(read_partitions(spark, where, lake.DAILY_INTERACTIONS, existing, DAILY_INTERACTION))
    units = (
        functools.reduce(DataFrame.unionByName, parts)
        if parts
        else _empty(spark, DAILY_INTERACTION).withColumn("dt", F.lit(None).cast("date"))
    )
    catalogue_path = lake.partition(root, lake.CLEAN_ITEMS, run_date)
    if not path_exists(spark, catalogue_path):
        raise FileNotFoundError(f"no item catalogue for the run date: {catalogue_path}")
    catalogue = read_partition(spark, root, lake.CLEAN_ITEMS, run_date, CLEAN_ITEM)
    profiles_path = lake.partition(root, lake.CLEAN_USERS, run_date)
    profiles = (
        read_partition(spark, root, lake.CLEAN_USERS, run_date, CLEAN_USER)
        if path_exists(spark, profiles_path)
        else _empty(spark, CLEAN_USER)
    )
    return FeatureInputs(
        units=units,
        catalogue=catalogue,
        profiles=profiles,
        previous_vocab_users=_previous(spark, settings, lake.VOCAB_USERS, VOCAB_USER),
        previous_vocab_items=_previous(spark, settings, lake.VOCAB_ITEMS, VOCAB_ITEM),
        labels=extract_labels(spark, settings, catalogue, profiles),
    )


def extract_labels(
    spark: SparkSession, settings: Settings, catalogue: DataFrame, profiles: DataFrame
) -> LabelSets:
    """One small query: the categorical values of D and the indices the latest earlier run gave them.
    Age-bucket and region indices of earlier runs are read back from their ``segment`` ("age_bucket|region")."""
    previous_items = _previous(spark, settings, lake.ITEM_FEATURES, ITEM_FEATURE)
    previous_users = _previous(spark, settings, lake.USER_FEATURES, USER_FEATURE)
    segment = F.split(F.col("segment"), r"\|")
    parts = [
        previous_items.select(
            F.lit("category").alias("kind"),
            F.col("category").alias("label"),
            F.col("category_idx").alias("idx"),
        ),
        previous_users.select(F.lit("age_bucket"), F.get(segment, 0), F.col("age_bucket_idx")),
        previous_users.select(F.lit("region"), F.get(segment, 1), F.col("region_idx")),
        catalogue.select(F.lit("category"), F.col("category"), F.lit(None).cast("int")),
        profiles.select(F.lit("age_bucket"), F.col("age_bucket"), F.lit(None).cast("int")),
        profiles.select(F.lit("region"), F.col("region"), F.lit(None).cast("int")),
    ]
    union = parts[0]
    for part in parts[1:]:
        union = union.union(part)
    rows = (
        union.where(F.col("label").isNotNull() & (F.col("idx").isNull() | (F.col("idx") > 0)))
        .distinct()
        .collect()
    )
    previous: dict[str, dict[str, int]] = {kind: {} for kind in LABEL_KINDS}
    current: dict[str, set[str]] = {kind: set() for kind in LABEL_KINDS}
    for kind, label, idx in rows:
        if idx is None:
            current[kind].add(label)
        else:
            previous[kind][label] = int(idx)
    return LabelSets(previous=previous, current={k: frozenset(v) for k, v in current.items()})


def load(outputs: dict[str, DataFrame], settings: Settings, out_root: str) -> None:
    """Write every table's dt=D under ``out_root`` (the run's staging root). A table that is empty this run (e.g.
    no events on D) still gets a valid, empty partition, so publishing it never keeps rows of an earlier run."""
    spark = next(iter(outputs.values())).sparkSession

    def write(name: str, df: DataFrame) -> None:
        path = lake.partition(out_root, name, settings.run_date)
        write_partition(df, out_root, name, settings.run_date, OUTPUT_SCHEMAS[name])
        if not path_exists(spark, path):
            df.select(*OUTPUT_SCHEMAS[name].names).limit(0).write.mode("overwrite").parquet(path)

    in_parallel([functools.partial(write, name, df) for name, df in outputs.items()])


def publish(spark: SparkSession, settings: Settings, out_root: str, daily_days: Sequence[dt.date]) -> None:
    """Moves the run's staged partitions into place together: the recomputed daily aggregates and every table's
    dt=D (all of them, or none when one cannot be moved)."""
    staged = [(lake.DAILY_INTERACTIONS, day) for day in daily_days]
    staged += [(name, settings.run_date) for name in OUTPUT_SCHEMAS]
    replace_partitions(
        spark,
        [
            (lake.partition(out_root, name, day), lake.partition(settings.lake_root, name, day))
            for name, day in staged
        ],
        aside=f"{out_root}/_replaced",
    )


def run(spark: SparkSession, settings: Settings) -> dict[str, object]:
    """The whole job for ``settings.run_date``; returns a summary (days aggregated, rows written, seconds)."""
    started = time.perf_counter()
    # every table (the daily aggregates included) is written to the run's staging root first and moved into
    # place only when all writes succeeded: a failed run changes no table
    staged = run_staging(settings.lake_root, "features", manifests.new_run_id("features"))
    try:
        computed = update_daily_interactions(spark, settings, staged)
        outputs = build_features(extract(spark, settings, staged, computed), settings)
        try:
            load(outputs, settings, staged)
        finally:
            for df in outputs.values():
                df.unpersist()
            spark.catalog.clearCache()
        publish(spark, settings, staged, computed)
    finally:
        delete_path(spark, staged)
    # row counts from the Parquet footers (pyarrow: no Spark job), of what consumers will actually read
    rows = {name: count_rows(lake.partition(settings.lake_root, name, settings.run_date)) for name in outputs}
    summary: dict[str, object] = {
        "run_date": settings.ds,
        "daily_computed": [d.isoformat() for d in computed],
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("features %s", summary)
    # the stage's run manifest runs/features/dt=D: rows in (clean events of the window and D) and out (all tables)
    rows_in = sum(
        count_rows(path)
        for day in [*settings.window_dates(), settings.run_date]
        if path_exists(spark, path := lake.partition(settings.lake_root, lake.CLEAN_EVENTS, day))
    )
    manifests.record_stage(
        settings.lake_root,
        "features",
        settings.run_date,
        {
            "rows_in": rows_in,
            "rows_out": sum(rows.values()),
            "users": rows.get(lake.USER_FEATURES, 0),
            "items": rows.get(lake.ITEM_FEATURES, 0),
            "rows_by_table": rows,
        },
        time.perf_counter() - started,
        spark,
        daily_computed=summary["daily_computed"],
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_cli(argv, description=__doc__.splitlines()[0] if __doc__ else "")
    spark = spark_session(settings, "features")
    summary = run(spark, settings)
    print(summary)  # the task log's one-line summary


if __name__ == "__main__":
    main()
