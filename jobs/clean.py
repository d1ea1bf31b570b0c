"""Clean raw JSON-lines logs into typed, deduplicated, pseudonymised Parquet; every unusable row is quarantined.

``spark-submit jobs/clean.py --date D --lake-root R`` (or ``python -m jobs.clean ...``) cleans day D and, in the same
Spark session, every day of D's window (``settings.window_dates()``) that has raw events but no clean manifest yet, so
a first run on a fresh lake backfills its window. D itself is always recomputed. Outputs per cleaned day:
``clean/events``, ``clean/items``, ``clean/users``, ``quarantine/events`` (each replaced for exactly that day, an
empty but valid partition when there are no rows), a manifest ``runs/clean/dt=D/manifest.json`` and a row in
``runs/table``.

Decisions (the why lives here, the rules in the code below):

* Raw lines are read as text, so the quarantine keeps the original line byte for byte (invalid UTF-8 is stored with
  U+FFFD replacements), then parsed with the declared schema (every field read as text, then typed by us, so that a
  wrong type is told apart from malformed JSON).
* A JSON-lines line is exactly one JSON object (RFC 8259; surrounding whitespace allowed). Anything else is
  ``malformed_json``: two objects, characters after the object, a raw control character inside a string (JSON
  requires them escaped), single quotes, unquoted NaN, an empty or blank line (counted as a raw line, never
  skipped). Spark's JSON parsers read the first value and ignore the rest, so :func:`json_fault` checks the rest.
* A row gets the first reason that applies, in the order of the rules in :func:`flag_row_problems` then duplicate,
  bot, unknown item. ``user_id`` absent, JSON null, blank or a placeholder (``"null"``, ``"undefined"``, see
  :data:`PLACEHOLDER_IDS`) is ``null_user``; any other required field absent or blank (a placeholder, for the ids)
  is ``missing_field``. ``wrong_type``: event_time not an ISO-8601 date-time, price not a number, or an id field
  holding a JSON object, array or boolean (a number in an id field is accepted as its text, as Spark's own JSON
  reader does).
* ``oversized_field`` holds for the whole line: a line longer than :func:`max_line_bytes`, or any declared field,
  undeclared key or undeclared key's value (its JSON text) longer than ``max_field_chars``.
* Late or early events (event_time not on the folder's day, in UTC) are *quarantined* as ``timestamp_out_of_day``,
  not moved to their own day: a day's rerun then depends only on that day's folder, and rerunning D never rewrites
  another day's partition. The quarantined line can be replayed into its day's folder if it matters.
* Duplicate event ids (within a day, among otherwise valid rows): the first by (event_time, source file, position in
  the file) is kept and every later copy is *quarantined* as ``duplicate_event_id``, so nothing is silently lost
  and ``duplicates_dropped`` in the reconciliation is always 0.
* Bot users: a user with more than ``settings.bot_events_per_minute`` valid, deduplicated events in any one minute
  of the day has all that day's remaining events quarantined as ``bot_user``.
* Unknown items: item_id not in that day's catalogue (``raw/items/dt=D``).
* Unknown extra JSON keys are tolerated; their names and row counts go to the manifest as schema drift.
* Pseudonyms: ``user_id`` in events and users is HMAC-SHA256 with a deployment secret (:mod:`jobs.pseudonymise`).
  PII (email, phone, name, ip, address, user_agent) is never selected into a clean table. The quarantine keeps raw
  lines and so holds PII: it has the access class of ``raw/``, not of ``clean/``.
* Reconciliation, exactly, per day: raw lines (counted by an independent scan of the raw files) = clean rows +
  quarantined rows (per reason) + duplicates dropped (0), with clean and quarantine counted from what was written.
  A mismatch raises :class:`storage.manifest.ReconciliationError` naming the numbers.
* Bad input: a truncated or corrupt file (e.g. gzip) fails the run with :class:`CorruptInputFile` naming the file,
  before anything is written; a day folder with no lines gives an empty but valid run (zero counts, empty
  partitions); a missing folder for D (events or items) raises :class:`MissingPartition` naming the path (``main``
  exits with status 2, :data:`EXIT_MISSING_INPUT`, at once: a missing input is not transient); window
  days without raw events are skipped and listed in D's manifest. ``raw/users`` is optional (profiles are not
  always exported): without it clean/users for the day is empty and the manifest says so.
* Memory: the raw files are parsed once, into a run-private Parquet table ``staging/clean_lines/<run_id>`` that
  every later pass reads column-pruned; the run removes it at its end, failed or not (a killed process leaves it
  behind: it is safe to delete). So a day's size is bounded by disk, not by the executors' memory. The table keeps
  the raw line only where the row rules quarantine it, and a hash of every line: the few lines quarantined later
  (duplicate, bot, unknown item) are read again from the raw files and checked against their hash, so raw files
  that change during the run fail it instead of putting a different line in the quarantine.
* All or nothing: the four tables of every cleaned day are written to the run's own staging root
  ``staging/clean_outputs/<run_id>`` and reconciled there; only then are the partitions moved into place
  (:func:`storage.spark.replace_partitions`). A failed write or count changes no published table; the staging
  root is removed at the end, failed or not.
* Idempotent: data columns hold nothing run-time dependent and tie-breaks are total orders, so two runs of a date
  give identical tables; run ids and timestamps go to the manifest only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.pseudonymise import pseudonym_column, resolve_key
from schemas import lake
from schemas.clean import CLEAN_EVENT, CLEAN_ITEM, CLEAN_USER, QUARANTINE_EVENT, QUARANTINE_REASONS
from schemas.raw import RAW_EVENT, RAW_ITEM, REQUIRED_EVENT_FIELDS, SCENARIO_EVENT_TYPES
from schemas.settings import Settings
from schemas.spark import to_spark
from storage import lake_io
from storage import manifest as manifests
from storage.spark import (
    check_schema,
    delete_path,
    in_parallel,
    path_exists,
    replace_partitions,
    run_staging,
    spark_session,
    write_empty_partition,
)

STAGE = "clean"
OUTPUT_TABLES = (lake.CLEAN_EVENTS, lake.QUARANTINE_EVENTS, lake.CLEAN_ITEMS, lake.CLEAN_USERS)
EVENT_FIELDS: tuple[str, ...] = tuple(RAW_EVENT.names)
ID_FIELDS = ("event_id", "user_id", "session_id", "event_type", "item_id")
AGE_BUCKETS = (
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (55, "45-54"),
    (65, "55-64"),
    (121, "65+"),
)
DUPLICATES_DROPPED = 0  # duplicates are quarantined (reason duplicate_event_id), never dropped
RECONCILIATION_RULE = (
    "raw_events = clean_events + sum(quarantined_by_reason) + duplicates_dropped; duplicates "
    "are quarantined as duplicate_event_id, so duplicates_dropped is always 0"
)
_ISO_DATETIME = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"


class MissingPartition(FileNotFoundError):
    """A raw partition the run needs does not exist."""


EXIT_MISSING_INPUT = 2  # main's exit status for MissingPartition; any other failure exits 1


class CorruptInputFile(RuntimeError):
    """A raw file cannot be read to its end (truncated gzip, bad compression)."""


# ---- extract ---------------------------------------------------------------------------------------------------
def extract_events(spark: SparkSession, root: str, dates: Sequence[str]) -> DataFrame:
    """Raw event lines as text: ``dt`` (the folder's day), ``source_file``, ``value`` (the line)."""
    lines = _read_days(spark.read, "text", root, lake.RAW_EVENTS, dates)
    return lines.select("dt", F.col("_metadata.file_path").alias("source_file"), F.col("value"))


def extract_items(spark: SparkSession, root: str, dates: Sequence[str]) -> DataFrame:
    return _read_days(spark.read.schema(to_spark(RAW_ITEM)), "json", root, lake.RAW_ITEMS, dates)


def extract_users(spark: SparkSession, root: str, dates: Sequence[str]) -> DataFrame:
    """Only user_id, age and region are declared to the reader: the PII columns are never even parsed."""
    schema = T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("age", T.IntegerType()),
            T.StructField("region", T.StringType()),
        ]
    )
    if not dates:
        return spark.createDataFrame([], schema.add("dt", T.StringType()))
    return _read_days(spark.read.schema(schema), "json", root, lake.RAW_USERS, dates)


# ---- transforms: events ------------------------------------------------------------------------------------------
UNPARSED = (
    "_unparsed"  # from_json's column for a line it cannot parse (a key of that name is not read into it)
)
STRICT_JSON = {  # RFC 8259, not Jackson's leniencies
    "columnNameOfCorruptRecord": UNPARSED,
    "allowSingleQuotes": "false",
    "allowNonNumericNumbers": "false",
}
NOT_ONE_OBJECT = "characters after the first JSON value (a JSON-lines line is exactly one object)"
CONTROL_CHARACTER = "not valid JSON: a raw control character (U+0000-U+001F), which JSON strings must escape"


def parse_events(raw: DataFrame, max_field_chars: int = Settings.max_field_chars) -> DataFrame:
    """Adds every declared field as text, ``extra_keys`` (undeclared keys, null when none), ``json_fault`` (why
    the line is not exactly one JSON object; null when it is) and ``long_keys`` (see :func:`_long_keys`). (A
    ``map<string,string>`` parse of every line would give fields and keys from one parse, but measured twice as
    slow as this struct parse plus ``json_object_keys``; so did a parse of ``[line]`` as an array.)"""
    as_text = T.StructType([T.StructField(name, T.StringType()) for name in (*EVENT_FIELDS, UNPARSED)])
    # Spark evaluates from_json outside the stage's generated code, so this projection is a step of its own, and
    # what only needs the line goes here: _long_keys (a JSON parse and lambdas, also not compiled: in a later
    # projection they would take it out of the generated code too, measured 1.7x slower) and the check after the
    # first value (which keeps the stage's one generated method below the JIT's limit, see flag_row_problems)
    parsed = raw.select(
        "*",
        F.from_json("value", as_text, STRICT_JSON).alias("_json"),
        F.json_object_keys("value").alias("_keys"),
        _nothing_after_first_value(F.col("value")).alias("_nothing_after"),
        _long_keys(F.col("value"), max_field_chars).alias("long_keys"),
    )
    extra = F.array_except(F.col("_keys"), F.array(*[F.lit(n) for n in EVENT_FIELDS]))
    return parsed.select(
        *raw.columns,
        json_fault(F.col("value"), F.col("_keys"), F.col("_json")[UNPARSED], F.col("_nothing_after")).alias(
            "json_fault"
        ),
        F.when(F.size(extra) > 0, extra).alias("extra_keys"),
        "long_keys",
        *[F.col("_json")[name].alias(name) for name in EVENT_FIELDS],
    )


def _long_keys(value: Column, limit: int) -> Column:
    """The keys, declared or not, that are, or whose value is (a nested value as its JSON text), longer than
    ``limit`` characters, comma-separated ("" when none). Parsed (a map of every key) only for lines of more than
    ``limit`` bytes; null for the others, which cannot hold anything longer."""
    as_map = F.from_json(value, T.MapType(T.StringType(), T.StringType()))
    too_long = F.map_filter(as_map, lambda k, v: (F.length(k) > limit) | (F.length(v) > limit))
    names = F.transform(F.map_keys(too_long), lambda k: F.substring(k, 1, 60))
    return F.when(F.octet_length(value) > limit, F.substring(F.array_join(names, ", "), 1, 200))


def json_fault(value: Column, keys: Column, unparsed: Column, nothing_after: Column) -> Column:
    """Null when ``value`` is exactly one JSON object (surrounding whitespace allowed), else the fault in words.
    ``keys``: the top-level keys of a lenient parse (null unless the line starts with an object); ``unparsed``: set
    when the strict parse failed (a raw control character in a string, single quotes, NaN); ``nothing_after``:
    :func:`_nothing_after_first_value`. The details are worked out only for the faulty lines."""
    starts_with_object = keys.isNotNull() & unparsed.isNull()
    return (
        F.when(starts_with_object & nothing_after, F.lit(None).cast("string"))
        .when(value.rlike(r"^\s*$"), F.lit("empty line"))
        .when(starts_with_object, F.lit(NOT_ONE_OBJECT))
        .when(value.rlike(r"[\x00-\x1f]"), F.lit(CONTROL_CHARACTER))
        .when(F.ltrim(value).startswith("{"), F.lit("not valid JSON (a truncated or broken object)"))
        .otherwise(F.lit("not a JSON object"))
    )


def _nothing_after_first_value(value: Column) -> Column:
    """For a line that starts with a valid JSON object: whether only whitespace follows it. Spark's JSON parsers
    read the first value and ignore the rest of the text, so the rest is checked here, column expressions only.

    Nearly every line has a single ``}`` byte, its last: the object, which ends in a ``}``, ends there. Otherwise
    the line is parsed twice more, wrapped: ``[line]`` must hold one element (after the object only whitespace or
    ``]``, as a ``,`` would add an element), and ``{"_":line}`` must parse (after the object only whitespace, ``,``
    or ``}``): both hold only when whitespace alone follows the object."""
    # bytes, not characters: the binary slice is a copy, and contains() on bytes a tight loop, where
    # substring_index and instr test every position with a call (4x the cost of this, measured)
    all_but_last = F.substring(value.cast("binary"), F.lit(1), F.octet_length(value) - 1)
    single_brace_last = value.endswith("}") & ~F.contains(all_but_last, F.lit(bytearray(b"}")))
    in_array = F.json_array_length(F.concat(F.lit("["), value, F.lit("]"))) == 1
    in_object = F.json_object_keys(F.concat(F.lit('{"_":'), value, F.lit("}"))).isNotNull()
    return single_brace_last | F.coalesce(in_array & in_object, F.lit(False))


# what stands for "no value" in an id field: a serialised null or undefined, or a JSON boolean (read as text,
# ``true`` and ``"true"`` look the same, and neither names a user, item or event)
# (more than 10 values: Spark tests them with one hash lookup, not one comparison each, in less code)
PLACEHOLDER_IDS = (
    "null",
    "NULL",
    "Null",
    "undefined",
    "UNDEFINED",
    "None",
    "none",
    "nil",
    "NaN",
    "true",
    "false",
)
ABSENT_IF_PLACEHOLDER = ("event_id", "user_id", "item_id")
BYTES_PER_CHAR = 4  # the widest UTF-8 character


def max_line_bytes(settings: Settings) -> int:
    """The longest raw line accepted: room for every declared field at ``max_field_chars`` in the widest
    characters, and as much again for undeclared keys and the JSON around them."""
    return 2 * BYTES_PER_CHAR * len(EVENT_FIELDS) * settings.max_field_chars


def _blank(name: str) -> Column:
    return F.col(name).isNull() | (F.trim(F.col(name)) == "")


def _absent(name: str) -> Column:
    """Absent, JSON null, blank, or for an id a placeholder such as ``"null"`` or ``"undefined"``."""
    if name in ABSENT_IF_PLACEHOLDER:
        return _blank(name) | F.col(name).isin(*PLACEHOLDER_IDS)
    return _blank(name)


def _structured(name: str) -> Column:
    """The field held a JSON object or array (read as text: ``{...}``, ``[...]``). (A boolean is not told from
    the string ``"true"`` here: the raw line would have to be read, code the stage cannot afford; in the ids it
    is a placeholder, see :data:`PLACEHOLDER_IDS`.)"""
    return F.substring(F.ltrim(F.col(name)), 1, 1).isin("{", "[")


def _price_value(price: Column) -> Column:
    """The price as a double. Spark gives a JSON number beyond a double's range as the text ``"Infinity"`` (quotes
    included): a number out of range, so that the price rule, not the type rule, judges it."""
    return (
        F.when(price == '"Infinity"', F.lit(float("inf")))
        .when(price == '"-Infinity"', F.lit(float("-inf")))
        .otherwise(price.try_cast("double"))
    )


def _quoted(name: str, limit: int = 60) -> Column:
    return F.concat(F.lit(f"{name} '"), F.substring(F.col(name), 1, limit), F.lit("'"))


def _oversized(settings: Settings) -> tuple[Column, Column]:
    """(condition, detail) of ``oversized_field``: the line is longer than :func:`max_line_bytes`, or a key or
    value, declared or not, is longer than ``max_field_chars`` (``long_keys`` of :func:`parse_events`, where the
    costly part runs: only on lines of more than ``max_field_chars`` bytes; octet_length is O(1))."""
    limit, line_limit = settings.max_field_chars, max_line_bytes(settings)
    line_bytes = F.octet_length("value")
    long_keys = F.coalesce(F.col("long_keys"), F.lit(""))
    condition = (line_bytes > line_limit) | (long_keys != "")
    detail = F.concat_ws(
        "; ",
        F.when(long_keys != "", F.concat(F.lit(f"longer than {limit} characters: "), long_keys)),
        F.when(
            line_bytes > line_limit,
            F.concat(
                F.lit("line is "),
                line_bytes.cast("string"),
                F.lit(f" bytes, over the {line_limit}-byte limit"),
            ),
        ),
    )
    return condition, detail


def flag_row_problems(parsed: DataFrame, settings: Settings) -> DataFrame:
    """Row-local checks: adds ``event_ts``, ``price_value`` and ``reason``/``detail`` (null when the row is fine).

    The checks are column expressions compiled into one method per stage, which the JIT leaves interpreted above
    8000 bytes of bytecode (the first pass then runs 2x slower): keep them lean (a detail's text computed once,
    as a column, where a condition needs it too), and look at ``maxMethodCodeSize`` after adding one."""
    event_types = list(SCENARIO_EVENT_TYPES[settings.scenario])
    other_required = [name for name in REQUIRED_EVENT_FIELDS if name != "user_id"]
    df = (
        parsed.withColumn(
            "event_ts",
            F.when(F.col("event_time").rlike(_ISO_DATETIME), F.try_to_timestamp(F.col("event_time"))),
        )
        .withColumn("price_value", _price_value(F.col("price")))
        .withColumn(
            "_missing", F.concat_ws(",", *[F.when(_absent(name), F.lit(name)) for name in other_required])
        )
    )
    wrong_type = F.concat_ws(
        "; ",
        *[F.when(_structured(name), F.lit(f"{name} is not a string")) for name in ID_FIELDS],
        F.when(F.col("event_ts").isNull(), F.lit("event_time is not an ISO-8601 date-time")),
        F.when(F.col("price").isNotNull() & F.col("price_value").isNull(), F.lit("price is not a number")),
    )
    df = df.withColumn("_wrong_type", wrong_type)
    # byte-wise tests where they say the same: contains() scans bytes, instr() counts characters (per 1M lines:
    # instr 0.7 s; is_valid_utf8 and contains together 0.4 s)
    invalid_utf8 = ~F.is_valid_utf8("value") | F.col("value").contains("\ufffd")
    oversized, oversized_detail = _oversized(settings)
    price = F.col("price_value")
    bad_price = price.isNotNull() & (F.isnan(price) | (price < 0) | (price > settings.max_price))

    # (reason, condition, detail): the first matching rule wins
    rules: list[tuple[str, Column, Column]] = [
        ("invalid_utf8", invalid_utf8, F.lit("line is not valid UTF-8 (stored with U+FFFD replacements)")),
        ("malformed_json", F.col("json_fault").isNotNull(), F.col("json_fault")),
        ("oversized_field", oversized, oversized_detail),
        ("null_user", _absent("user_id"), F.lit("user_id is absent, null, blank or a placeholder")),
        (
            "missing_field",
            F.col("_missing") != "",
            F.concat(F.lit("missing, blank or a placeholder: "), F.col("_missing")),
        ),
        ("wrong_type", F.col("_wrong_type") != "", F.col("_wrong_type")),
        (
            "unknown_event_type",
            ~F.col("event_type").isin(event_types),
            F.concat(_quoted("event_type"), F.lit(f" not in {event_types}")),
        ),
        (
            "invalid_price",
            bad_price,
            F.concat(F.lit("price "), F.col("price"), F.lit(f" outside [0, {settings.max_price:g}]")),
        ),
        (
            "timestamp_out_of_day",
            F.to_date("event_ts") != F.to_date(F.col("dt")),
            F.concat(
                F.lit("event_time "), F.col("event_time"), F.lit(" is not on "), F.col("dt"), F.lit(" (UTC)")
            ),
        ),
    ]
    return df.withColumn("_verdict", _first_match(rules)).select(
        *parsed.columns,
        "event_ts",
        "price_value",
        F.col("_verdict.reason").alias("reason"),
        F.col("_verdict.detail").alias("detail"),
    )


def _first_match(rules: Sequence[tuple[str, Column, Column]]) -> Column:
    """struct(reason, detail) of the first rule whose condition holds, null when none does."""
    verdict: Any = F
    for reason, condition, detail in rules:
        verdict = verdict.when(condition, F.struct(F.lit(reason).alias("reason"), detail.alias("detail")))
    return verdict


def row_ids(flagged: DataFrame) -> DataFrame:
    """Adds ``_row``, a per-line id, unique within the run. :func:`run` stages the frame as Parquet right after,
    so every consumer sees the same ids (they only break ties between byte-identical lines: any fixed choice is
    fine)."""
    return flagged.withColumn("_row", F.monotonically_increasing_id())


BROADCAST_ROWS = 2_000_000  # small sets (repeated ids, duplicates, bots) below this many rows are broadcast


def _small(df: DataFrame, rows: int) -> DataFrame:
    """``df`` with a broadcast hint when it is known to be small (an empty cached frame reports the size of the
    plan it came from, so Spark alone would shuffle the big side)."""
    return F.broadcast(df) if rows <= BROADCAST_ROWS else df


def _id_hash() -> Column:
    return F.xxhash64("event_id").alias("_id_hash")


def repeated_event_ids(flagged: DataFrame) -> DataFrame:
    """(dt, _id_hash): 64-bit hashes of the event ids held by more than one valid row. A narrow aggregate (ids only,
    combined before the shuffle) over 8-byte keys instead of the id strings; a hash collision only makes a candidate
    that :func:`find_duplicates` drops, since it ranks the candidates by the ids themselves."""
    valid = flagged.where(F.col("reason").isNull())
    return (
        valid.groupBy("dt", _id_hash())
        .agg(F.count(F.lit(1)).alias("_n"))
        .where(F.col("_n") > 1)
        .select("dt", "_id_hash")
    )


def find_duplicates(flagged: DataFrame, repeated: DataFrame) -> DataFrame:
    """``_row`` of every later copy of a repeated (dt, event_id) among valid rows: the first by event_time, then
    source file, then position in the file (``_row`` grows along each file) is kept. Only the rows of repeated ids
    (``repeated``: dt, _id_hash) are ranked: no full-row shuffle or sort."""
    valid = flagged.where(F.col("reason").isNull()).select(
        "dt", "event_id", "event_ts", "source_file", "_row", _id_hash()
    )
    copies = valid.join(repeated, ["dt", "_id_hash"], "left_semi")
    order = Window.partitionBy("dt", "event_id").orderBy("event_ts", "source_file", "_row")
    return copies.withColumn("_copy", F.row_number().over(order)).where(F.col("_copy") > 1).select("_row")


def find_bots(flagged: DataFrame, duplicates: DataFrame, events_per_minute: int) -> DataFrame:
    """(dt, user_id, _worst_minute) of users with more than ``events_per_minute`` valid, deduplicated events in one
    minute of the day: two narrow aggregates, no full-row shuffle."""
    valid = (
        flagged.where(F.col("reason").isNull())
        .select("dt", "user_id", "event_ts", "_row")
        .join(duplicates, "_row", "left_anti")
    )  # duplicates: broadcast by the caller when small
    per_minute = valid.groupBy(
        "dt", "user_id", F.date_trunc("minute", F.col("event_ts")).alias("_minute")
    ).agg(F.count(F.lit(1)).alias("_per_minute"))
    return (
        per_minute.groupBy("dt", "user_id")
        .agg(F.max("_per_minute").alias("_worst_minute"))
        .where(F.col("_worst_minute") > events_per_minute)
    )


def flag_duplicates_and_bots(
    flagged: DataFrame, duplicates: DataFrame, bots: DataFrame, events_per_minute: int
) -> DataFrame:
    """Sets reason/detail ``duplicate_event_id`` for the rows in ``duplicates`` (``_row``, ``_dup``), then
    ``bot_user`` for the remaining valid rows of the users in ``bots`` (dt, user_id, _worst_minute). Both are small
    as a rule: the caller gives them broadcast hints when they are."""
    joined = flagged.join(duplicates, "_row", "left").join(bots, ["dt", "user_id"], "left")
    is_dup = F.col("reason").isNull() & F.col("_dup").isNotNull()
    is_bot = F.col("reason").isNull() & F.col("_dup").isNull() & F.col("_worst_minute").isNotNull()
    detail = (
        F.when(is_dup, F.lit("a row with this event_id and an earlier or equal event_time is kept"))
        .when(
            is_bot,
            F.concat(
                F.lit("user has "),
                F.col("_worst_minute").cast("string"),
                F.lit(f" events in one minute (threshold {events_per_minute})"),
            ),
        )
        .otherwise(F.col("detail"))
    )
    reason = (
        F.when(is_dup, F.lit("duplicate_event_id")).when(is_bot, F.lit("bot_user")).otherwise(F.col("reason"))
    )
    return joined.withColumn("detail", detail).withColumn("reason", reason).drop("_dup", "_worst_minute")


def flag_unknown_items(df: DataFrame, items: DataFrame) -> DataFrame:
    """Quarantines valid events whose item_id is not in that day's clean catalogue (``items``: dt, item_id)."""
    catalogue = items.select("dt", "item_id", F.lit(True).alias("_known"))
    joined = df.join(F.broadcast(catalogue), on=["dt", "item_id"], how="left")
    unknown = F.col("reason").isNull() & F.col("_known").isNull()
    return (
        joined.withColumn(
            "detail",
            F.when(unknown, F.concat(_quoted("item_id"), F.lit(" not in the catalogue"))).otherwise(
                F.col("detail")
            ),
        )
        .withColumn("reason", F.when(unknown, F.lit("unknown_item")).otherwise(F.col("reason")))
        .drop("_known")
    )


def flag_events(raw: DataFrame, settings: Settings) -> DataFrame:
    """raw lines -> one row per line, parsed once, with the row-local verdict and ``_row`` (stage this).

    The line itself (``value``) is kept only where the row rules already quarantine it; every line keeps
    ``_line_hash``, so that a line quarantined later (duplicate, bot, unknown item) is read again from its raw file
    by :func:`recover_lines` and checked against it. Most lines are clean and never need their text again.
    """
    flagged = flag_row_problems(parse_events(raw, settings.max_field_chars), settings)
    keep: list[Column | str] = [
        "dt",
        "source_file",
        F.when(F.col("reason").isNotNull(), F.col("value")).alias("value"),
        F.xxhash64("value").alias("_line_hash"),
        "extra_keys",
        "reason",
        "detail",
        "event_ts",
        "price_value",
        "event_id",
        "user_id",
        "session_id",
        "event_type",
        "item_id",
    ]
    return row_ids(flagged.select(*keep))


def recover_lines(raw: DataFrame, wanted: DataFrame) -> DataFrame:
    """(_row, _line): the raw lines of the ``wanted`` rows (``_row``, ``_line_hash``; broadcast by the caller when
    small), from a second scan of the same raw files. ``_row`` is the same on that scan (same files, same splits,
    same per-split position); a line whose hash differs means the files changed during the run, which fails it."""
    lines = row_ids(raw).join(wanted, "_row", "inner")
    changed = F.xxhash64("value") != F.col("_line_hash")
    return lines.select(
        "_row",
        F.when(changed, _raw_changed("", " (a line read twice differs)"))
        .otherwise(F.col("value"))
        .alias("_line"),
    )


def _raw_changed(before: str, after: str) -> Column:
    """Fails the query: a raw file of ``source_file`` changed between the two reads of :func:`run`."""
    return F.raise_error(
        F.concat(
            F.lit(f"raw file changed during the clean run: {before}"),
            F.col("source_file"),
            F.lit(f"{after}; nothing was published for its day, rerun it"),
        )
    )


def route_events(
    flagged: DataFrame,
    duplicates: DataFrame,
    bots: DataFrame,
    items: DataFrame,
    settings: Settings,
    key: bytes,
) -> DataFrame:
    """flagged lines -> one row per line with ``reason`` (null = clean), quarantine fields and clean fields.

    Quarantine fields are null on clean rows and clean fields null on quarantined rows; each table's write selects
    its rows and columns, so the pseudonyms are only computed for the clean table.
    """
    routed = flag_duplicates_and_bots(flagged, duplicates, bots, settings.bot_events_per_minute)
    routed = flag_unknown_items(routed, items)
    clean = F.col("reason").isNull()
    quarantined = F.col("reason").isNotNull()
    return routed.select(
        "dt",
        "reason",
        "detail",
        "_row",
        "_line_hash",
        F.when(quarantined, F.col("value")).alias("value"),  # null where it was not staged (see flag_events)
        F.when(quarantined, F.col("source_file")).alias("source_file"),
        F.when(clean, F.col("event_id")).alias("event_id"),
        F.when(clean, F.col("event_ts")).alias("event_time"),
        F.when(clean, pseudonym_column(F.col("user_id"), key)).alias("user_id"),
        F.when(clean, F.col("session_id")).alias("session_id"),
        F.when(clean, F.col("event_type")).alias("event_type"),
        F.when(clean, F.col("item_id")).alias("item_id"),
        F.when(clean, F.col("price_value")).alias("price"),
    )


def clean_events(routed: DataFrame) -> DataFrame:
    return routed.where(F.col("reason").isNull()).select("dt", *CLEAN_EVENT.names)


def quarantined_rows(routed: DataFrame) -> DataFrame:
    """The quarantine's rows with ``_row``, ``_line_hash`` and ``value`` (null where the line was not staged)."""
    return routed.where(F.col("reason").isNotNull()).select(
        "dt", "reason", "detail", "source_file", "value", "_row", "_line_hash"
    )


def quarantine_events(quarantined: DataFrame, recovered: DataFrame) -> DataFrame:
    """:func:`quarantined_rows` with their raw lines: staged, or read again (``recovered``: _row, _line)."""
    joined = quarantined.join(recovered, "_row", "left")
    vanished = _raw_changed("a line of ", " is gone")
    raw_line = F.make_valid_utf8(F.coalesce(F.col("value"), F.col("_line"), vanished))
    return joined.withColumn("raw_line", raw_line).select("dt", *QUARANTINE_EVENT.names)


# ---- transforms: items and users ---------------------------------------------------------------------------------
def _first_per_key(df: DataFrame, key: str, order: Iterable[str]) -> DataFrame:
    """One row per (dt, key): the first by ``order`` (a total order, so reruns pick the same row)."""
    w = Window.partitionBy("dt", key).orderBy(*[F.col(c).asc_nulls_last() for c in order])
    return df.withColumn("_rank", F.row_number().over(w)).where(F.col("_rank") == 1).drop("_rank")


def clean_items(raw_items: DataFrame, settings: Settings) -> DataFrame:
    """One row per item and day; bad prices become null, unknown availability means unavailable."""
    with_id = raw_items.where(~_blank("item_id"))
    first = _first_per_key(
        with_id, "item_id", ["title", "category", "price", "publish_time", "available", "source"]
    )
    price = F.col("price")
    return first.select(
        "dt",
        "item_id",
        "category",
        F.when((price >= 0) & (price <= settings.max_price) & ~F.isnan(price), price).alias("price"),
        "title",
        F.try_to_timestamp(F.col("publish_time")).alias("publish_time"),
        F.coalesce(F.col("available"), F.lit(False)).alias("available"),
        "source",
    )


def age_bucket(age: Column) -> Column:
    bucket: Any = F
    low = 0
    for upper, label in AGE_BUCKETS:
        bucket = bucket.when((age >= low) & (age < upper), F.lit(label))
        low = upper
    return bucket.otherwise(F.lit(None).cast("string"))


def clean_users(raw_users: DataFrame, key: bytes) -> DataFrame:
    """Pseudonymised id, age bucket, region; nothing else of the profile."""
    with_id = raw_users.where(~_blank("user_id"))
    first = _first_per_key(with_id, "user_id", ["age", "region"])
    return first.select(
        "dt",
        pseudonym_column(F.col("user_id"), key).alias("user_id"),
        age_bucket(F.col("age")).alias("age_bucket"),
        "region",
    )


# ---- load --------------------------------------------------------------------------------------------------------
def write_days(
    df: DataFrame,
    root: str,
    name: str,
    schema: pa.Schema,
    dates: Sequence[str],
    nonempty: Iterable[str],
    sort_by: Sequence[str] = (),
) -> None:
    """Replace exactly the ``dates`` partitions of the table: data via dynamic overwrite, empty days explicitly.

    Spark's dynamic overwrite leaves a partition untouched when the new data has no row for it, which would keep a
    previous run's rows; so days without rows are replaced by an empty file carrying the schema, written directly
    (no Spark job per empty day), and a table without any row this run costs no Spark job at all.
    """
    check_schema(df, schema, name)
    columns = [*schema.names, "dt"]
    data = df.select(*columns)
    if sort_by:  # a stable order inside each file: byte-identical reruns and better compression
        data = data.sortWithinPartitions("dt", *sort_by)
    nonempty = set(nonempty)
    if nonempty:
        data.write.mode("overwrite").partitionBy("dt").parquet(lake.table(root, name))
    spark = df.sparkSession
    for ds in dates:
        if ds not in nonempty:
            write_empty_partition(spark, root, name, ds, schema)


def _counts_by(df: DataFrame, *keys: str) -> dict[tuple[str, ...], int]:
    def hashable(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    return {
        tuple(hashable(row[k]) for k in keys): int(row["rows"])
        for row in df.groupBy(*keys).agg(F.count(F.lit(1)).alias("rows")).collect()
    }


def _duplicates_and_bots(
    flagged: DataFrame, events_per_minute: int, cached: list[DataFrame]
) -> tuple[DataFrame, DataFrame]:
    """(duplicates: _row, _dup; bots: dt, user_id, _worst_minute), each materialised once (small as a rule, then
    broadcast back onto the lines: no shuffle or sort of whole rows); the frames it persists go to ``cached``."""
    repeated = repeated_event_ids(flagged).persist()
    cached.append(repeated)
    duplicates = find_duplicates(flagged, _small(repeated, repeated.count())).persist()
    cached.append(duplicates)
    n_duplicates = duplicates.count()
    bots = find_bots(flagged, _small(duplicates, n_duplicates), events_per_minute).persist()
    cached.append(bots)
    n_bots = bots.count()
    return (
        _small(duplicates.select("_row", F.lit(True).alias("_dup")), n_duplicates),
        _small(bots.select("dt", "user_id", "_worst_minute"), n_bots),
    )


def _line_and_profile_counts(
    flagged: DataFrame, raw_items: DataFrame, raw_users: DataFrame
) -> tuple[
    dict[tuple[str, tuple[str, ...] | None], int], dict[str, tuple[int, int]], dict[str, tuple[int, int]]
]:
    """One query for the day counts read before routing: event lines per (dt, extra_keys), and for items and users
    dt -> (raw rows, distinct non-blank keys = rows of the clean table)."""
    no_keys, no_key = F.lit(None).cast("array<string>"), F.lit(None).cast("string")
    parts = [
        flagged.select(F.lit("events").alias("_table"), "dt", "extra_keys", no_key.alias("_key")),
        raw_items.select(F.lit("items"), "dt", no_keys, F.when(~_blank("item_id"), F.col("item_id"))),
        raw_users.select(F.lit("users"), "dt", no_keys, F.when(~_blank("user_id"), F.col("user_id"))),
    ]
    union = parts[0].union(parts[1]).union(parts[2])
    rows = (
        union.groupBy("_table", "dt", "extra_keys")
        .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("_key").alias("keys"))
        .collect()
    )
    lines: dict[tuple[str, tuple[str, ...] | None], int] = {}
    profiles: dict[str, dict[str, tuple[int, int]]] = {"items": {}, "users": {}}
    for row in rows:
        if row["_table"] == "events":
            keys = tuple(row["extra_keys"]) if row["extra_keys"] is not None else None
            lines[(row["dt"], keys)] = int(row["rows"])
        else:
            profiles[row["_table"]][row["dt"]] = (int(row["rows"]), int(row["keys"]))
    return lines, profiles["items"], profiles["users"]


def _rows_by_reason(root: str, ds: str) -> dict[str, int]:
    """The written quarantine partition of ``ds``: rows per reason."""
    reasons = lake_io.read_partition(root, lake.QUARANTINE_EVENTS, ds, columns=["reason"]).column("reason")
    return {str(entry["values"]): int(entry["counts"]) for entry in reasons.value_counts().to_pylist()}


def _read_days(reader: Any, fmt: str, root: str, name: str, dates: Sequence[str]) -> DataFrame:
    """The ``dates`` partitions of a table in one scan, ``dt`` (the folder's day) as text: one read of all days,
    not a union of one read per day, which Spark would plan and schedule per day."""
    days = (
        reader.format(fmt)
        .option("basePath", lake.table(root, name))
        .load([lake.partition(root, name, ds) for ds in dates])
    )
    return days.withColumn("dt", F.col("dt").cast("string"))  # partition discovery infers a date


# ---- the run ----------------------------------------------------------------------------------------------------
def plan_dates(spark: SparkSession, settings: Settings) -> dict[str, list[str]]:
    """Which days this run cleans: D always; window days with raw events and no clean manifest yet."""
    root = settings.lake_root
    if not path_exists(spark, lake.raw_events(root, settings.ds)):
        raise MissingPartition(
            f"no raw events for the run date: {lake.raw_events(root, settings.ds)} does not exist"
        )
    plan: dict[str, list[str]] = {"backfilled": [], "skipped_no_raw": [], "already_clean": []}
    for day in settings.window_dates():
        ds = day.isoformat()
        if not path_exists(spark, lake.raw_events(root, ds)):
            plan["skipped_no_raw"].append(ds)
        elif manifests.manifest_exists(root, STAGE, ds, spark):
            plan["already_clean"].append(ds)
        else:
            plan["backfilled"].append(ds)
    plan["cleaned"] = [*plan["backfilled"], settings.ds]
    for ds in plan["cleaned"]:
        if not path_exists(spark, lake.raw_items(root, ds)):
            raise MissingPartition(
                f"no item catalogue for {ds}: {lake.raw_items(root, ds)} does not exist "
                "(needed to check item ids)"
            )
    return plan


@dataclasses.dataclass
class RawTally:
    """What clean counted while reading: raw lines per day, extra keys per (day, key), and (raw, clean) rows of
    the item and user profiles per day."""

    lines: dict[str, int]
    drift: dict[tuple[str, str], int]
    items: dict[str, tuple[int, int]]
    users: dict[str, tuple[int, int]]


def run(spark: SparkSession, settings: Settings) -> dict[str, dict[str, Any]]:
    """Clean the planned days; returns the manifest written for each day."""
    started_at = manifests.utc_now()
    run_id = manifests.new_run_id(STAGE)
    _use_utc_micros(spark)
    key = resolve_key(settings)  # before any work: no key, no run
    plan = plan_dates(spark, settings)
    dates = plan["cleaned"]
    user_dates = [ds for ds in dates if path_exists(spark, lake.raw_users(settings.lake_root, ds))]
    # the four tables of every day are written to the run's own staging root and reconciled there; only then are
    # the partitions moved into place, so a failed write or a count that does not add up changes no table
    staged = run_staging(settings.lake_root, STAGE, run_id)
    try:
        tally = clean_and_write(spark, settings, key, dates, user_dates, run_id, staged)
        counts_by_day = {ds: reconciled_counts(staged, ds, tally) for ds in dates}
        replace_partitions(
            spark,
            [
                (lake.partition(staged, name, ds), lake.partition(settings.lake_root, name, ds))
                for name in OUTPUT_TABLES
                for ds in dates
            ],
            aside=f"{staged}/_replaced",
        )
    finally:
        delete_path(spark, staged)
    finished_at = manifests.utc_now()
    out: dict[str, dict[str, Any]] = {}
    for ds in dates:
        counts = counts_by_day[ds]
        manifest = day_manifest(settings, ds, run_id, counts, tally, user_dates, (started_at, finished_at))
        if ds == settings.ds:
            manifest["window"] = {k: plan[k] for k in ("backfilled", "skipped_no_raw", "already_clean")}
        manifests.write_manifest(settings.lake_root, STAGE, ds, manifest, spark)
        manifests.record_run(settings.lake_root, STAGE, ds, manifest, spark)
        out[ds] = manifest
    return out


def _use_utc_micros(spark: SparkSession) -> None:
    spark.conf.set("spark.sql.session.timeZone", "UTC")  # "the day" of an event is its UTC day
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    # Parquet timestamps as UTC-adjusted micros (what the contract's timestamp("us", "UTC") means), not INT96
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")


def clean_and_write(
    spark: SparkSession,
    settings: Settings,
    key: bytes,
    dates: list[str],
    user_dates: list[str],
    run_id: str,
    out_root: str,
) -> RawTally:
    """Read, flag, route and write the four tables of every planned day under ``out_root`` (the lake's layout);
    returns what was counted on the way."""
    root = settings.lake_root
    # the parsed lines are written once to a run-private Parquet staging table and every later step reads the
    # columns it needs from there: one read and one JSON parse of the raw files per run, and memory that does not
    # grow with the day's size (an in-memory cache of them ran out of a 2 GiB heap at 16M events)
    lines_path = lake.table(root, f"{lake.STAGING}/{STAGE}_lines/{run_id}")
    raw_items = extract_items(spark, root, dates).persist()
    raw_users = extract_users(spark, root, user_dates).persist()
    items = clean_items(raw_items, settings).persist()
    cached = [raw_items, raw_users, items]
    try:
        with _naming_bad_files():
            # the first pass reads every raw file (a truncated one fails here, before any table is written)
            flag_events(extract_events(spark, root, dates), settings).write.parquet(lines_path)
            flagged = spark.read.parquet(lines_path)
            # the day counts and the duplicate/bot chain read the staged lines independently: submitted together,
            # their small jobs fill the cores each leaves idle
            (line_counts, item_counts, user_counts), (duplicates, bots) = in_parallel(
                [
                    functools.partial(_line_and_profile_counts, flagged, raw_items, raw_users),
                    functools.partial(_duplicates_and_bots, flagged, settings.bot_events_per_minute, cached),
                ]
            )
        tally = _tally_lines(line_counts, dates, item_counts, user_counts)
        routed = route_events(flagged, duplicates, bots, items.select("dt", "item_id"), settings, key)
        # the quarantined rows (a small share as a rule) are materialised once: their counts say which days have
        # clean and quarantined rows, and the lines quarantined after the row rules are read again from raw
        quarantined = quarantined_rows(routed).persist()
        cached.append(quarantined)
        quarantined_per_day = {ds: rows for (ds,), rows in _counts_by(quarantined, "dt").items()}
        unstaged = quarantined.where(F.col("value").isNull()).select("_row", "_line_hash").persist()
        cached.append(unstaged)
        recovered = recover_lines(extract_events(spark, root, dates), _small(unstaged, unstaged.count()))
        tables = [  # (frame, table, contract, days with rows, sort order)
            (
                clean_events(routed),
                lake.CLEAN_EVENTS,
                CLEAN_EVENT,
                {ds for ds in dates if tally.lines[ds] > quarantined_per_day.get(ds, 0)},
                ("event_time", "event_id"),
            ),
            (
                quarantine_events(quarantined, recovered),
                lake.QUARANTINE_EVENTS,
                QUARANTINE_EVENT,
                set(quarantined_per_day),
                ("reason", "source_file", "raw_line"),
            ),
            (items, lake.CLEAN_ITEMS, CLEAN_ITEM, _days_with_rows(tally.items), ("item_id",)),
            (
                clean_users(raw_users, key),
                lake.CLEAN_USERS,
                CLEAN_USER,
                _days_with_rows(tally.users),
                ("user_id",),
            ),
        ]
        in_parallel(  # four tables, four independent writes
            [
                functools.partial(write_days, frame, out_root, name, schema, dates, days, sort_by=order)
                for frame, name, schema, days, order in tables
            ]
        )
    finally:
        for frame in cached:
            frame.unpersist()
        delete_path(spark, lines_path)
    return tally


def _tally_lines(
    line_counts: dict[tuple[str, Any], int],
    dates: list[str],
    item_counts: dict[str, tuple[int, int]],
    user_counts: dict[str, tuple[int, int]],
) -> RawTally:
    """raw_events per day: one row per line read, before any filter or join (the staged lines are the text lines
    plus row-local columns), so it stays independent of the routing; extra keys counted per day."""
    lines: dict[str, int] = dict.fromkeys(dates, 0)
    drift: dict[tuple[str, str], int] = {}
    for (ds, extra_keys), rows in line_counts.items():
        lines[ds] += rows
        for name in extra_keys or ():
            drift[(ds, name)] = drift.get((ds, name), 0) + rows
    return RawTally(lines, drift, item_counts, user_counts)


def _days_with_rows(profile_counts: dict[str, tuple[int, int]]) -> set[str]:
    return {ds for ds, (_, clean_rows) in profile_counts.items() if clean_rows}


def reconciled_counts(root: str, ds: str, tally: RawTally) -> dict[str, Any]:
    """The day's counts, with the events that landed read back from the written tables (footers and the reason
    column, with pyarrow: no Spark job); raises unless raw = clean + quarantined + duplicates dropped."""
    written = _rows_by_reason(root, ds)
    unexpected = set(written) - set(QUARANTINE_REASONS)
    if unexpected:
        raise ValueError(f"quarantine for {ds} has undeclared reasons {sorted(unexpected)}")
    by_reason = {reason: written.get(reason, 0) for reason in QUARANTINE_REASONS}
    counts: dict[str, Any] = {
        "raw_events": tally.lines[ds],
        "clean_events": lake_io.count_rows(lake.partition(root, lake.CLEAN_EVENTS, ds)),
        "quarantined_events": sum(by_reason.values()),
        "quarantined_by_reason": by_reason,
        "duplicates_dropped": DUPLICATES_DROPPED,
        "raw_items": tally.items.get(ds, (0, 0))[0],
        "clean_items": tally.items.get(ds, (0, 0))[1],  # one row per distinct non-blank item_id
        "raw_users": tally.users.get(ds, (0, 0))[0],
        "clean_users": tally.users.get(ds, (0, 0))[1],
    }
    manifests.reconcile(
        f"clean {ds} events",
        counts["raw_events"],
        {
            "clean": counts["clean_events"],
            **{f"quarantined {r}": n for r, n in by_reason.items() if n},
            "duplicates dropped": DUPLICATES_DROPPED,
        },
    )
    return counts


def day_manifest(
    settings: Settings,
    ds: str,
    run_id: str,
    counts: dict[str, Any],
    tally: RawTally,
    user_dates: list[str],
    times: tuple[Any, Any],
) -> dict[str, Any]:
    """The run manifest of one cleaned day: inputs, outputs, reconciled counts, schema drift, notes."""
    root = settings.lake_root
    notes = []
    if counts["raw_events"] == 0:
        notes.append("raw events folder has no lines: empty but valid run")
    if ds not in user_dates:
        notes.append(f"no {lake.raw_users(root, ds)}: clean/users is empty for this day")
    return {
        "stage": STAGE,
        "dt": ds,
        "run_id": run_id,
        "run_date": settings.ds,
        "started_at": times[0].isoformat(),
        "finished_at": times[1].isoformat(),
        "why": "run date" if ds == settings.ds else "backfill: raw events present, no clean manifest yet",
        "inputs": {
            "events": lake.raw_events(root, ds),
            "items": lake.raw_items(root, ds),
            "users": lake.raw_users(root, ds) if ds in user_dates else None,
        },
        "outputs": {
            name: lake.partition(root, name, ds)
            for name in (lake.CLEAN_EVENTS, lake.CLEAN_ITEMS, lake.CLEAN_USERS, lake.QUARANTINE_EVENTS)
        },
        "counts": counts,
        "reconciliation": {"rule": RECONCILIATION_RULE, "ok": True},
        "schema_drift": {"extra_keys": {k: n for (d, k), n in sorted(tally.drift.items()) if d == ds}},
        "settings": {
            name: getattr(settings, name)
            for name in ("scenario", "bot_events_per_minute", "max_field_chars", "max_price")
        },
        "notes": notes,
    }


@contextlib.contextmanager
def _naming_bad_files() -> Iterator[None]:
    """Turns Spark's read failure into :class:`CorruptInputFile` naming the file and the cause."""
    try:
        yield
    except Exception as err:
        text = str(err)
        found = re.search(r"error while reading file (\S+?)\.?\s", text)
        if not found:
            raise
        causes = re.findall(r"Caused by: ([^\n]+)", text)
        cause = causes[-1].strip() if causes else type(err).__name__
        raise CorruptInputFile(
            f"cannot read raw file {found.group(1)}: truncated or corrupt ({cause}). Nothing was written for this "
            "run; repair or remove the file and rerun the date."
        ) from err


def missing_input(err: MissingPartition) -> SystemExit:
    """The job's exit for a missing raw folder: status :data:`EXIT_MISSING_INPUT`, the message on stderr (the
    task log) and in the exception. Rerunning cannot help until the folder is delivered."""
    message = f"clean: {err}. Nothing was written; deliver the folder, then rerun the date."
    print(message, file=sys.stderr, flush=True)
    exit_ = SystemExit(message)
    exit_.code = EXIT_MISSING_INPUT  # the message stays in args; the process exits with this status
    return exit_


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_cli(argv, description=__doc__.splitlines()[0] if __doc__ else "")
    spark = spark_session(settings, STAGE)
    try:
        written = run(spark, settings)
    except MissingPartition as err:
        raise missing_input(err) from err
    for ds, manifest in written.items():
        counts = manifest["counts"]
        reasons = {r: n for r, n in counts["quarantined_by_reason"].items() if n}
        print(
            f"clean {ds}: {counts['raw_events']} raw = {counts['clean_events']} clean + "
            f"{counts['quarantined_events']} quarantined {reasons}; drift {manifest['schema_drift']['extra_keys']}"
        )


if __name__ == "__main__":
    main()
